"""CFP verification accuracy (official 10-fold FF and FP protocols) with an FR backbone on 5-point aligned crops.

    python benchmarks/cfp_verification.py --cfp $AIKD_DATA/cfp --backbone facenet

Landmarks come from ``Data/landmarks_mtcnn.csv``; images where that detector found no face (107 of 7,000) are
aligned with ``--missing`` (default ``centre``: the CFP image is taken as a rough face crop). Embeddings are
cached (``$AIKD_CACHE/embeddings``), so reruns only redo the protocol.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch

from aikd.data.cfp import read_cfp, read_cfp_pairs
from aikd.data.dataset import centre_landmarks, read_image
from aikd.evaluation.runner import comparison_scores
from aikd.evaluation.verification import kfold_accuracy
from aikd.geometry.align import Canvas, Geometry
from aikd.geometry.misalign import MisalignParams, misalign
from aikd.io import cache_dir, write_json
from aikd.models.backbones import create_backbone
from aikd.models.teacher import module_fingerprint
from aikd.training.cache import RowCache, cache_key, dataset_fingerprint, fill_cache


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cfp", type=Path, default=Path(os.environ.get("AIKD_DATA", "data")) / "cfp")
    ap.add_argument("--backbone", default="facenet")
    ap.add_argument("--weights", default="default")
    ap.add_argument("--missing", choices=["centre", "skip"], default="centre")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    index = read_cfp(args.cfp, identities=None, check_fiducials=False)
    canvas = Canvas(size=256, face=Geometry(size=160))
    n_missing = int((~index.has_landmarks).sum())
    if args.missing == "centre" and n_missing:
        lms = index.landmarks.copy()
        for i in np.flatnonzero(~index.has_landmarks):
            h, w = read_image(str(index.path(i))).shape[:2]
            lms[i] = centre_landmarks(h, w, canvas)
        index = index.with_landmarks(lms)
    net = create_backbone(args.backbone, weights=args.weights).eval()
    g = net.input_spec.geometry
    key = cache_key(
        module_fingerprint(net, args.backbone), dataset_fingerprint(index), canvas, {"geometry": g.to_dict()}
    )
    cache = RowCache(cache_dir("embeddings") / key, len(index), {"embedding": ((net.embedding_dim,), np.float32)})
    t0 = time.perf_counter()

    def compute(b: dict) -> dict:
        crops, _ = misalign(
            b["image"], b["landmarks"], g, MisalignParams.identity(len(b["index"])), b["canvas_from_source"]
        )
        return {"embedding": net(crops)}

    fill_cache(cache, index, canvas, compute, batch_size=args.batch, desc=f"{args.backbone} embeddings")
    embed_s = time.perf_counter() - t0
    emb = np.asarray(cache.arrays["embedding"])
    out: dict = {
        "backbone": args.backbone,
        "missing_landmarks": n_missing,
        "missing_policy": args.missing,
        "embed_s": embed_s,
    }
    for protocol in ("FF", "FP"):
        pairs = read_cfp_pairs(args.cfp, index, protocol)
        ok = cache.done[pairs.a] & cache.done[pairs.b]
        s = comparison_scores(emb, pairs.a[ok], pairs.b[ok])
        acc = kfold_accuracy(s, pairs.mated[ok], pairs.fold[ok])
        out[protocol] = {**acc.to_dict(), "pairs_used": int(ok.sum())}
        print(f"CFP-{protocol}: accuracy {acc.mean:.4f} +- {acc.std:.4f} over 10 folds ({ok.sum()} pairs)")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / f"cfp_verification_{args.backbone}.json", out)
    return out


if __name__ == "__main__":
    main()
