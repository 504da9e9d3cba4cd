"""``aikd generate-faces``: write a synthetic face dataset from the command line.

A thin front end to :meth:`aikd.data.synthetic.SyntheticFaces.write` (cartoon stand-ins for real faces, for the
demo and tests; not a face model).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from aikd.data.synthetic.generator import BROKEN_FILES, SyntheticFaces

__all__ = ["main_generate"]


def main_generate(argv: Sequence[str] | None = None) -> int:
    """``aikd generate-faces``: write a synthetic face dataset (a stand-in for real faces, not a face model)."""
    d = SyntheticFaces()
    ap = argparse.ArgumentParser(
        prog="aikd generate-faces",
        description="Write deterministic synthetic faces (cartoon stand-ins for real faces, for demos and tests) "
        "with exact 5-point landmarks and recorded degradation levels, in aikd's generic folder format.",
    )
    ap.add_argument("root", type=Path, help="dataset folder to write (a rerun with the same settings is a no-op)")
    ap.add_argument("--identities", type=int, default=d.n_identities, help="number of identities")
    ap.add_argument("--images", type=int, default=d.images_per_identity, help="images per identity")
    ap.add_argument("--seed", type=int, default=d.seed, help="generator seed")
    ap.add_argument("--min-size", type=int, default=d.min_size, help="smallest image side (px)")
    ap.add_argument("--max-size", type=int, default=d.max_size, help="largest image side (px)")
    ap.add_argument("--degradation", type=float, default=d.degradation, help="fraction of degraded images")
    ap.add_argument("--broken", action="store_true", help=f"also write the broken test files {sorted(BROKEN_FILES)}")
    ap.add_argument("--workers", type=int, default=0, help="render in this many processes")
    ap.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset written with other settings")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    gen = SyntheticFaces(
        n_identities=args.identities,
        images_per_identity=args.images,
        seed=args.seed,
        min_size=args.min_size,
        max_size=args.max_size,
        degradation=args.degradation,
        broken=args.broken,
        workers=args.workers,
    )
    if gen.is_current(args.root):
        print(f"{args.root}: up to date (same generator.json); nothing to do")
        return 0
    try:
        gen.write(args.root, overwrite=args.overwrite, progress=not args.quiet)
    except FileExistsError as e:
        print(f"error: {e}")
        return 2
    print(f"{args.root}: wrote {gen.n_identities * gen.images_per_identity} images, landmarks.csv, meta.csv")
    return 0
