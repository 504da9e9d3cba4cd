"""Alignment figures on CFP: preview grid, similarity-fit residuals, misalignment throughput.

    python benchmarks/align_preview.py --cfp $AIKD_DATA/cfp --out benchmarks/results

Writes ``align_preview.png`` (frontal and profile faces: source with 5 points, aligned 112x112 crop, each
``conf/misalign`` preset) and ``align_figures.json``, and prints:

* the mean residual of the 5-point similarity fit (template vs transformed landmarks, template pixels at
  112x112) on CFP frontal and profile images;
* misalignment throughput (images/s) per preset on a batch of 256 loose canvases on the CPU.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate

from aikd.config import list_options, load_option
from aikd.data.cfp import read_cfp
from aikd.data.dataset import AlignedFaces, collate_faces, read_image
from aikd.evaluation.preview import alignment_preview, save_figure
from aikd.geometry.align import Canvas, Geometry, fit_residual
from aikd.io import write_json


def main(argv: list[str] | None = None) -> dict:
    default_cfp = Path(os.environ.get("AIKD_DATA", "data")) / "cfp"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfp", type=Path, default=default_cfp, help="CFP root (holding Data/ and Protocol/)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    index = read_cfp(args.cfp, identities=None, check_fiducials=False)
    pose = index.attributes["pose"]
    g = Geometry(size=112)
    figures: dict = {"residual_px_112": {}}
    for p in ("frontal", "profile"):
        ok = (pose == p) & index.has_landmarks
        res = fit_residual(torch.from_numpy(index.landmarks[ok]).double(), g).numpy()
        figures["residual_px_112"][p] = {"mean": float(res.mean()), "median": float(np.median(res)), "n": int(ok.sum())}
        print(
            f"similarity-fit residual, {p:7s}: mean {res.mean():.2f} px, median {np.median(res):.2f} px (n={ok.sum()})"
        )

    presets = {n: instantiate(load_option("misalign", n)) for n in list_options("misalign") if n != "none"}
    rng = np.random.default_rng(0)
    rows = []
    for p, k in (("frontal", 4), ("profile", 2)):
        cand = np.flatnonzero((pose == p) & index.has_landmarks & (index.attributes["cfp_id"] > 450))
        rows += list(rng.choice(cand, size=k, replace=False))
    fig = alignment_preview(
        [read_image(str(index.path(i))) for i in rows],
        [index.landmarks[i] for i in rows],
        presets,
        geometry=g,
        titles=[index.paths[i] for i in rows],
    )
    args.out.mkdir(parents=True, exist_ok=True)
    print("preview:", save_figure(fig, args.out / "align_preview.png"))

    canvas = Canvas(size=256, face=Geometry(size=160))
    ds = AlignedFaces(index.subset(np.flatnonzero(index.has_landmarks)[: args.batch], relabel=False), canvas)
    batch = collate_faces([ds[i] for i in range(len(ds))])
    images = batch["image"].float() / 255.0
    print(f"\nmisalignment throughput, batch {len(images)} canvases 256x256 -> 112x112, {args.threads} CPU threads")
    figures["throughput_img_s"] = {}
    for name, module in {"none": instantiate(load_option("misalign", "none")), **presets}.items():
        gen = torch.Generator().manual_seed(0)
        module(images, batch["landmarks"], g, batch["canvas_from_source"], generator=gen)  # warm-up
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            module(images, batch["landmarks"], g, batch["canvas_from_source"], generator=gen)
        rate = args.repeats * len(images) / (time.perf_counter() - t0)
        figures["throughput_img_s"][name] = rate
        print(f"  {name:10s} {rate:8.0f} images/s")
    write_json(args.out / "align_figures.json", figures)
    return figures


if __name__ == "__main__":
    main()
