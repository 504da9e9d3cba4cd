"""Time to fill the teacher-score cache of a new frozen-backbone teacher head on CFP, when the backbone's features
are already cached (as teacher training leaves them): scored from images (the backbone runs again over every face,
what aikd did before) vs by the head on the cached features.

    AIKD_DATA=/path/to/data python benchmarks/score_cache_speed.py --identities 1 60
    AIKD_DATA=/path/to/data python benchmarks/score_cache_speed.py              # the training split, 1-450

Everything is written under a fresh temporary cache (``--work`` keeps it); the FaceNet weights come from aikd's
cache (converted once, about 30 s). Prints one JSON object: the one-off feature pass, both fills, the backbone's
forward calls during the head-only fill (0), and the largest difference between the two fills' scores.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--identities", type=int, nargs=2, default=(1, 450), help="CFP identity range (inclusive)")
    ap.add_argument("--backbone", default="facenet")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--work", type=Path, default=None, help="cache folder to use (default: a temporary one)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from aikd.data import CFPSource
    from aikd.geometry.align import Canvas
    from aikd.io import data_root
    from aikd.models.teacher import create_teacher
    from aikd.training.cache import feature_cache, teacher_score_cache

    root = data_root()
    if root is None:
        raise SystemExit("set AIKD_DATA to the folder holding cfp/")
    index = CFPSource(str(root / "cfp"), identities=tuple(args.identities)).load()
    canvas = Canvas()

    def head(seed: int):  # a new CR-FIQA head (untrained: its values do not matter for timing) on the backbone
        torch.manual_seed(seed)
        return create_teacher("crfiqa", backbone=args.backbone, backbone_weights="default", projection_dim=512)

    teacher = head(0)
    work = args.work or Path(tempfile.mkdtemp(prefix="aikd-score-cache-"))
    out: dict = {"faces": len(index), "identities": list(args.identities), "backbone": args.backbone}
    out["threads"], out["device"], out["work"] = args.threads, args.device, str(work)

    t0 = time.perf_counter()
    feature_cache(teacher, index, canvas, work / "features", batch_size=args.batch, device=args.device)
    out["feature_pass_s"] = round(time.perf_counter() - t0, 1)  # once per backbone and dataset (teacher training)

    t0 = time.perf_counter()
    before = teacher_score_cache(
        teacher, index, canvas, work / "before", batch_size=args.batch, device=args.device, reuse_features=False
    )
    out["before_images_s"] = round(time.perf_counter() - t0, 1)

    calls = [0]
    handle = teacher.backbone.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    t0 = time.perf_counter()
    after = teacher_score_cache(
        teacher,
        index,
        canvas,
        work / "after",
        batch_size=args.batch,
        device=args.device,
        features_root=work / "features",
    )
    out["after_head_only_s"] = round(time.perf_counter() - t0, 2)
    handle.remove()
    out["backbone_calls_after"] = calls[0]
    rows = np.flatnonzero(before.done)
    out["rows"] = int(len(rows))
    out["max_abs_quality_diff"] = float(
        np.abs(np.asarray(before.arrays["quality"][rows]) - np.asarray(after.arrays["quality"][rows])).max()
    )
    out["same_rows"] = bool(np.array_equal(before.done, after.done))
    print(json.dumps(out, indent=2))
    return out


if __name__ == "__main__":
    main()
