"""``aikd score``: the command line of :mod:`aikd.serving.score` (a folder or list of face images -> scores CSV).

It imports the scorer, the loader and the detectors only - not Lightning or timm - so that the command starts fast.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from aikd.faces.detect import DETECTORS
from aikd.serving.load import BACKENDS, ScoreError, load_quality_model
from aikd.serving.score import (
    ASPECT_TOLERANCE,
    FLAT_STD,
    MIN_IMAGE_SIDE,
    SCORED,
    STATUSES,
    find_images,
    score_images,
    write_scores_csv,
)

#: The run's log lines keep the scorer's logger name (``INFO aikd.serving.score: model: ...``), as before the
#: command line had a module of its own.
log = logging.getLogger("aikd.serving.score")

__all__ = ["main_score"]


def _summary(rows: Sequence[Mapping[str, Any]]) -> str:
    counts = Counter(r["status"] for r in rows)
    images = len(rows) - counts["missing"]  # missing rows are landmark rows, not inputs
    scored = sum(counts[s] for s in SCORED)
    failed = ", ".join(f"{s} {counts[s]}" for s in STATUSES if s not in (*SCORED, "missing") and counts[s])
    text = f"scored {scored} of {images} images"
    if counts["suspect"]:
        text += f" ({counts['suspect']} suspect: see their detail)"
    text += f"; {images - scored} failed" + (f" ({failed})" if failed else "")
    if counts["missing"]:
        text += f"; {counts['missing']} landmark row(s) name no existing file (status missing)"
    return text


_EPILOG = f"""\
alignment:
  default       a detector finds the faces (--detector: mtcnn, the default, or yunet). In a photo
                with several faces the largest, most central, confident face is scored: the one
                maximising det_score x (box side / largest box side) x exp(-2 d^2), d = distance of
                the box centre from the image centre in half-diagonals.
                The detail names it and the detector: "det_score=0.9987; box=x1,y1,x2,y2; faces=N;
                detector=mtcnn" (box in pixels, inclusive, may reach past the image).
  --landmarks   a landmarks CSV (generic format, e.g. from aikd detect-landmarks; paths relative to
                INPUT's folder). A malformed row is named in the detail of the image it concerns
                ("landmarks.csv row 7 malformed: ..."); a row naming no existing file gets a row of its
                own with status missing.
  --aligned     the images are aligned crops, only resized. An aligned crop must be square (the
                model's input aspect ratio, within {ASPECT_TOLERANCE:.0%}), at least a quarter of the model's input
                side (16 px for a 64 px model, 28 px for 112) and cut with the template of the model's
                metadata (input.alignment). Other images are scored but marked suspect, with details
                such as "not square (500x250 px)", "tiny (12x12 px)", "flat image (pixel std 0.0)"
                (a largest per-channel std under {FLAT_STD:g} of 255: a solid colour, no face content).

status (CSV column):
  ok            scored
  suspect       scored, but the image is not what --aligned expects; the detail says why
  unreadable    file missing, empty (0 bytes) or not a decodable image
  too_small     a side under {MIN_IMAGE_SIDE} px (--aligned, --landmarks), or under --min-face-size (detection)
  no_face       detection found no face
  no_landmarks  --landmarks: no usable row for the image (none, empty fields or malformed: see detail)
  missing       --landmarks: a row names no existing file (these rows follow the inputs)
"""


def main_score(argv: Sequence[str] | None = None) -> int:
    """``aikd score INPUT --model MODEL --out scores.csv``: quality of every face image in a folder or list.

    Writes one CSV row per input image (``path, quality_0_100, quality_raw, status, detail``); images that cannot
    be scored are listed with empty scores and the reason, suspect ones with their score and the problem (see
    :data:`~aikd.serving.score.STATUSES` and the ``--help`` epilog). Exit code 0 when at least one image was scored
    (``ok`` or ``suspect``), 1 when none was, 2 on bad arguments.
    """
    parser = argparse.ArgumentParser(
        prog="aikd score",
        description="Score the quality of every face image in a folder (recursive), a list file or one image, with "
        "a student from aikd's distillation; writes one CSV row per image, failures included.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", help="folder of images (recursive), one image, or a text file listing images")
    parser.add_argument(
        "-m", "--model", required=True,
        help="export directory, its .json, an .onnx (with its .json beside it), a .safetensors student or a .ckpt",
    )  # fmt: skip
    parser.add_argument("-o", "--out", required=True, help="CSV file to write")
    how = parser.add_mutually_exclusive_group()
    how.add_argument("--landmarks", default=None, help="landmarks CSV (generic format) instead of detecting faces")
    how.add_argument("--aligned", action="store_true", help="inputs are aligned crops: only resize them (see below)")
    parser.add_argument("--batch-size", type=int, default=32, help="faces per model call (default 32)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N")
    parser.add_argument("--backend", choices=BACKENDS, default="auto", help="auto: ONNX if exported, else torch")
    parser.add_argument(
        "--detector", choices=DETECTORS, default="mtcnn",
        help="face detector when detecting (default mtcnn; yunet is faster); ignored with --landmarks or --aligned",
    )  # fmt: skip
    parser.add_argument(
        "--min-face-size", type=float, default=20.0, help="detection: smallest face side in px (default 20)"
    )
    parser.add_argument("--workers", type=int, default=None, help="image reading threads (default min(4, CPUs))")
    parser.add_argument("--threads", type=int, default=None, help="onnxruntime threads (default: its own)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help (0) and on bad arguments (2)
        return int(exc.code or 0)
    if args.batch_size < 1:
        print(f"aikd score: --batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    try:
        root, paths = find_images(args.input)
        if args.landmarks is not None and not Path(args.landmarks).expanduser().is_file():
            raise ScoreError(f"landmarks file not found: {args.landmarks}")
        model = load_quality_model(args.model, backend=args.backend, device=args.device, num_threads=args.threads)
        log.info("model: %r; %d image(s) from %s", model, len(paths), args.input)
        rows = score_images(
            paths, model, root=root, mode="aligned" if args.aligned else None, landmarks=args.landmarks,
            batch_size=args.batch_size, device=args.device, detector=args.detector, min_face_size=args.min_face_size,
            workers=args.workers,
            num_threads=args.threads, progress=not args.quiet,
        )  # fmt: skip
    except ScoreError as err:
        print(f"aikd score: {err}", file=sys.stderr)
        return 2
    out = write_scores_csv(rows, Path(args.out).expanduser())
    print(f"aikd score: {_summary(rows)} -> {out}", file=sys.stderr)
    return 0 if any(r["status"] in SCORED for r in rows) else 1
