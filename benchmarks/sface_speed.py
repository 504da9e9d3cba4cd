"""SFace in PyTorch and onnxruntime, and YuNet: parity on real CFP crops and CPU throughput.

Parity: cosine and largest absolute difference between the unmodified ONNX file (onnxruntime, batch 1, its
unused inputs fed) and (a) the PyTorch port, (b) the cleaned int8 model, (c) the cleaned dequantised float32
model, over N CFP crops aligned by aikd (5 shipped MTCNN points -> ArcFace 112 template).

Throughput (images/s, best of ``--repeats``; the machine may be shared, the best run is the least disturbed):

* the PyTorch port, batched, ``torch.inference_mode``;
* the original file in onnxruntime (batch 1, its only mode);
* the cleaned int8 and float32 models in onnxruntime, batched;
* YuNet (onnxruntime, one image at a time, as detection runs) on the CFP source images.

Usage::

    AIKD_DATA=/path/to/data python benchmarks/sface_speed.py --n 64 --batch 64 --threads 2
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch

from aikd.faces.yunet import YuNet
from aikd.geometry.align import align_image
from aikd.io import data_root
from aikd.models.backbones.sface import sface
from aikd.models.backbones.sface_net import SFACE_INPUT_SPEC
from aikd.models.backbones.sface_onnx import SFaceOnnx, run_original_sface

LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


def cfp_images(root: Path, n: int) -> tuple[list[np.ndarray], np.ndarray]:
    """``n`` CFP images spread over the landmark file (frontal and profile) and their aligned 112x112 RGB crops."""
    data = root / "cfp" / "Data"
    with open(data / "landmarks_mtcnn.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["n_faces"]) > 0]
    step = max(1, len(rows) // n)
    images, crops = [], []
    for row in rows[::step][:n]:
        bgr = cv2.imread(str(data / row["path"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"cannot read {data / row['path']}")
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        lm = np.array([[float(row[f"{k}_x"]), float(row[f"{k}_y"])] for k in LANDMARKS])
        images.append(rgb)
        crops.append(align_image(rgb, lm, SFACE_INPUT_SPEC.geometry)[0])
    return images, np.stack(crops)


def throughput(fn: Callable[[], object], n_images: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_images / best


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=64, help="CFP crops for parity and speed")
    p.add_argument("--batch", type=int, default=64, help="batch size of the batched runs")
    p.add_argument("--threads", type=int, default=2, help="CPU threads for torch and onnxruntime")
    p.add_argument("--repeats", type=int, default=3, help="timed repetitions (best is reported)")
    args = p.parse_args(argv)

    root = data_root()
    if root is None:
        print("set AIKD_DATA (e.g. AIKD_DATA=/path/to/data) to run on CFP", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    images, crops = cfp_images(root, args.n)
    faces = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255.0  # canonical
    raw = crops.transpose(0, 3, 1, 2).astype(np.float32)  # the graph's own input, RGB 0..255

    model = sface(weights="default").eval()
    runners = {dq: SFaceOnnx(dequantize=dq, num_threads=args.threads, batch_size=args.batch) for dq in (False, True)}

    def port() -> np.ndarray:
        with torch.inference_mode():
            return torch.cat([model(faces[i : i + args.batch]) for i in range(0, len(faces), args.batch)]).numpy()

    ref = run_original_sface(raw, num_threads=args.threads)
    outputs = {
        "PyTorch port": port(),
        "ORT cleaned int8": runners[False](faces),
        "ORT cleaned fp32": runners[True](faces),
    }

    print(f"SFace (2021dec int8bq) on {len(crops)} CFP crops 112x112, {args.threads} threads")
    print(f"{'vs original file (ORT, batch 1)':<34}{'cos min':>12}{'max |diff|':>12}{'max |ref|':>11}")
    for name, out in outputs.items():
        cos = cosine(out, ref)
        print(f"{name:<34}{cos.min():>12.8f}{np.abs(out - ref).max():>12.2e}{np.abs(ref).max():>11.3f}")

    speed = {
        f"PyTorch port (batch {args.batch})": throughput(port, len(faces), args.repeats),
        "ORT original file (batch 1)": throughput(
            lambda: run_original_sface(raw[:16], num_threads=args.threads), 16, args.repeats
        ),
        f"ORT cleaned int8 (batch {args.batch})": throughput(lambda: runners[False](faces), len(faces), args.repeats),
        f"ORT cleaned fp32 (batch {args.batch})": throughput(lambda: runners[True](faces), len(faces), args.repeats),
    }
    detector = YuNet(num_threads=args.threads)
    speed["YuNet detection (1 image/run)"] = throughput(
        lambda: [detector.detect(img) for img in images], len(images), args.repeats
    )
    print(f"{'throughput':<40}{'images/s':>10}")
    for name, ips in speed.items():
        print(f"{name:<40}{ips:>10.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
