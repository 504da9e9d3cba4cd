"""The per-dataset landmark cache: the 5 points a dataset lacks are detected once, then read back.

On top of a face detector (:class:`aikd.faces.mtcnn.MTCNN`, :class:`aikd.faces.yunet.YuNet` or any
:class:`~aikd.faces.detect.FaceDetector`; the command line and the data sources pick one by name from
:data:`~aikd.faces.detect.DETECTORS` with :func:`~aikd.faces.detect.make_detector`), :func:`detect_landmarks` fills
the unknown landmarks of a :class:`~aikd.data.index.FaceIndex`, choosing one face per image with
:func:`~aikd.faces.detect.select_face`, and caches the result as a landmarks CSV in the generic format (extra columns
``n_faces, score, box_x, box_y, box_w, box_h``) under ``aikd.io.cache_dir("landmarks")`` (in a pipeline run, under
its ``paths.cache_dir``). The cache key hashes the dataset root, the relative paths, each file's size and
modification time, and the detector and selection settings (including the model files' SHA-256), so detection runs
once per dataset and again only when an image or a setting changes. Partial progress is written every
``checkpoint_every`` images, so an interrupted run resumes where it stopped. Images where no face is found keep NaN
landmarks and are *reported* (``n_faces = 0`` rows, a log summary and :attr:`FaceIndex.issues`), never dropped;
unreadable images get ``n_faces = -1``.

The detectors know nothing about datasets (floor ``aikd.faces``); this module is where the two meet, and what
:class:`aikd.data.sources.FolderSource` and ``aikd detect-landmarks`` (:mod:`aikd.app.detect_landmarks`) call.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import numpy as np

from aikd.data.index import DataError, FaceIndex, read_landmarks_csv, write_landmarks_csv
from aikd.faces.detect import FaceDetector, detector_label, detector_name, make_detector, select_face
from aikd.io import cache_dir, content_key

log = logging.getLogger(__name__)

__all__ = [
    "detect_landmarks",
    "fill_missing_landmarks",
    "landmark_cache_path",
    "EXTRA_COLUMNS",
]

#: Bumped when detection or selection changes in a way that invalidates cached landmark files.
CACHE_VERSION = 1
#: Columns written after the landmark columns in landmark CSVs produced here.
EXTRA_COLUMNS: tuple[str, ...] = ("n_faces", "score", "box_x", "box_y", "box_w", "box_h")
#: FaceIndex attribute holding each column (``score`` becomes ``det_score``, as in :func:`aikd.data.cfp.read_cfp`).
_ATTRIBUTE = {"n_faces": "n_faces", "score": "det_score", "box_x": "box_x", "box_y": "box_y", "box_w": "box_w",
              "box_h": "box_h"}  # fmt: skip


# --------------------------------------------------------------------------------------------------------------
# Dataset-level detection with a cache


def _cache_key(root: Path, paths: Sequence[str], settings: dict[str, Any]) -> str:
    """Key of a detection run: settings, relative paths and each file's content (:func:`aikd.io.content_key`), so a
    copy of the data elsewhere finds its landmarks and an edited image is detected again."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True).encode())
    for rel in paths:
        h.update(f"\n{rel}\0{content_key(root / rel)}".encode())
    return h.hexdigest()[:32]


def landmark_cache_path(key: str, partial: bool = False) -> Path:
    """Where the landmark CSV for cache ``key`` lives (``partial``: the resumable in-progress file)."""
    return cache_dir("landmarks") / f"{key}{'.partial' if partial else ''}.csv"


def _empty_row() -> dict[str, float]:
    return {c: math.nan for c in EXTRA_COLUMNS}


def _rows_for(
    detector: FaceDetector, root: Path, rels: Sequence[str], select: dict[str, float]
) -> list[tuple[str, np.ndarray, dict[str, float], str | None]]:
    """Detect and select one face for each image of ``rels``: ``(rel, landmarks, extra columns, problem)``."""
    from aikd.data.dataset import read_image

    images: list[np.ndarray] = []
    readable: list[int] = []
    out: list[tuple[str, np.ndarray, dict[str, float], str | None]] = []
    nan = np.full((5, 2), np.nan, np.float32)
    for j, rel in enumerate(rels):
        file = root / rel
        try:
            if file.is_file() and file.stat().st_size == 0:  # the decoder would only say "cannot decode"
                raise DataError(f"{file}: empty file (0 bytes)")
            image = read_image(str(file))
        except (DataError, OSError) as err:
            out.append((rel, nan, {**_empty_row(), "n_faces": -1}, str(err)))
            continue
        h, w = image.shape[:2]
        if min(h, w) < detector.min_face_size:  # no pyramid level fits: say so rather than "no face detected"
            msg = f"{file}: image too small ({w}x{h} px) for face detection (min_face_size "
            out.append((rel, nan, {**_empty_row(), "n_faces": 0}, msg + f"{detector.min_face_size:g} px)"))
            continue
        images.append(image)
        readable.append(j)
        out.append((rel, nan, _empty_row(), None))
    for j, img, det in zip(readable, images, detector.detect_batch(images)):
        row = _empty_row()
        row["n_faces"] = len(det)
        k = select_face(det, img.shape, **select)
        if k is None:
            label = detector_label(detector)
            msg = f"{root / rels[j]}: no face detected ({label} thresholds {detector.thresholds}, min_face_size "
            out[j] = (rels[j], nan, row, msg + f"{detector.min_face_size:g}); landmarks stay NaN")
            continue
        x1, y1, x2, y2 = (float(v) for v in det.boxes[k])
        row.update(score=float(det.scores[k]), box_x=x1, box_y=y1, box_w=x2 - x1 + 1, box_h=y2 - y1 + 1)
        out[j] = (rels[j], det.landmarks[k], row, None)
    return out


def _write_rows(path: Path, rows: dict[str, tuple[np.ndarray, dict[str, float]]], order: Sequence[str]) -> None:
    done = [r for r in order if r in rows]
    lms = np.stack([rows[r][0] for r in done]) if done else np.zeros((0, 5, 2))
    extra = {c: [_format(rows[r][1][c], c) for r in done] for c in EXTRA_COLUMNS}
    write_landmarks_csv(path, done, lms, extra)


def _format(value: float, column: str) -> str:
    if value is None or not math.isfinite(value):
        return ""
    if column == "n_faces":
        return str(int(value))
    return f"{value:.4f}" if column == "score" else f"{value:.2f}"


def _read_rows(path: Path) -> dict[str, tuple[np.ndarray, dict[str, float]]]:
    table, extras, issues = read_landmarks_csv(path)
    if issues:
        raise DataError(f"{path}: cached landmark file is damaged ({issues[0]}); delete it to detect again")
    rows = {}
    for rel, lm in table.items():
        ex = extras.get(rel, {})
        rows[rel] = (lm, {c: float(ex[c]) if ex.get(c, "") != "" else math.nan for c in EXTRA_COLUMNS})
    return rows


def detect_landmarks(
    index: FaceIndex,
    only_missing: bool = True,
    cache: bool = True,
    progress: bool = True,
    workers: int | None = None,
    detector: FaceDetector | str | None = None,
    min_score: float = 0.0,
    centre_sigma: float = 0.5,
    chunk_size: int = 16,
    checkpoint_every: int = 500,
) -> FaceIndex:
    """Detect 5-point landmarks (MTCNN by default) for images of ``index``, one face per image (:func:`select_face`).

    Args:
        index: the dataset; images are read from ``index.root / index.paths[i]``.
        only_missing: detect only images whose landmarks are NaN; otherwise detect all and replace existing
            landmarks wherever a face is found (images without a detected face keep what they had).
        cache: read/write the landmark cache (see the module docstring); ``False`` always detects and writes nothing.
        progress: show a progress bar.
        workers: threads detecting in parallel (each runs whole chunks; onnxruntime runs with one thread each);
            default ``min(4, cpu count)``.
        detector: a configured :class:`FaceDetector` (:class:`~aikd.faces.mtcnn.MTCNN`, ``aikd.faces.yunet.YuNet``),
            or a name from :data:`~aikd.faces.detect.DETECTORS` built by :func:`make_detector` with its default
            settings and one onnxruntime thread per worker; default ``"mtcnn"``. The detector's settings are part of
            the cache key, so each detector keeps its own cached landmarks.
        min_score: :func:`select_face` threshold.
        centre_sigma: :func:`select_face` centre preference.
        chunk_size: images per batched detector call.
        checkpoint_every: write partial results after about this many newly detected images (resume point).

    Returns:
        A copy of ``index`` with landmarks filled in and attributes ``n_faces`` (``-1``: unreadable image),
        ``det_score``, ``box_x``, ``box_y``, ``box_w``, ``box_h`` (NaN for images not detected here; existing
        attributes of those names keep their values there). Images without a face, or unreadable, are listed in
        ``issues``.
    """
    todo_mask = ~index.has_landmarks if only_missing else np.ones(len(index), bool)
    todo = [index.paths[i] for i in np.flatnonzero(todo_mask)]
    if not todo:
        return index
    workers = max(1, int(workers if workers is not None else min(4, os.cpu_count() or 1)))
    if detector is None or isinstance(detector, str):
        detector = make_detector(detector or "mtcnn", num_threads=1 if workers > 1 else None)
    select = {"min_score": float(min_score), "centre_sigma": float(centre_sigma)}
    root = Path(index.root)

    rows: dict[str, tuple[np.ndarray, dict[str, float]]] = {}
    problems: dict[str, str] = {}
    final_path = partial_path = None
    if cache:
        key = _cache_key(root, todo, {**detector.settings, "select": select})
        final_path, partial_path = landmark_cache_path(key), landmark_cache_path(key, partial=True)
        if final_path.is_file():
            rows = _read_rows(final_path)
            log.info("landmarks: %d images from cache %s", len(rows), final_path)
        elif partial_path.is_file():
            rows = _read_rows(partial_path)
            log.info("landmarks: resuming from %s (%d of %d images done)", partial_path, len(rows), len(todo))
    pending = [r for r in todo if r not in rows]
    if pending:
        _detect_into(detector, root, pending, todo, rows, problems, select, workers, chunk_size, checkpoint_every,
                     partial_path, progress)  # fmt: skip
    if final_path is not None and (pending or not final_path.is_file()):
        _write_rows(final_path, rows, todo)
        if partial_path is not None and partial_path.exists():
            partial_path.unlink()
        log.info("landmarks: cached %d images in %s", len(todo), final_path)
    return _merge(index, todo_mask, todo, rows, problems)


def _detect_into(
    detector: FaceDetector,
    root: Path,
    pending: list[str],
    order: Sequence[str],
    rows: dict[str, tuple[np.ndarray, dict[str, float]]],
    problems: dict[str, str],
    select: dict[str, float],
    workers: int,
    chunk_size: int,
    checkpoint_every: int,
    partial_path: Path | None,
    progress: bool,
) -> None:
    """Run detection over ``pending`` in chunks on ``workers`` threads, checkpointing into ``partial_path``."""
    from tqdm.auto import tqdm

    chunks = [pending[i : i + chunk_size] for i in range(0, len(pending), chunk_size)]
    bar = tqdm(total=len(pending), desc=f"{detector_label(detector)} landmarks", unit="img", disable=not progress)
    since = 0
    lock = threading.Lock()

    def collect(result: list[tuple[str, np.ndarray, dict[str, float], str | None]]) -> None:
        nonlocal since
        with lock:
            for rel, lm, extra, problem in result:
                rows[rel] = (lm, extra)
                if problem:
                    problems[rel] = problem
            since += len(result)
            bar.update(len(result))
            if partial_path is not None and since >= checkpoint_every:
                _write_rows(partial_path, rows, order)
                since = 0

    try:
        if workers == 1:
            for chunk in chunks:
                collect(_rows_for(detector, root, chunk, select))
        else:
            prefix = f"landmarks-{detector_name(detector) or 'detector'}"
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=prefix) as pool:
                queue = iter(chunks)
                running: set[Future] = set()
                try:
                    while True:
                        while len(running) < 2 * workers and (chunk := next(queue, None)) is not None:
                            running.add(pool.submit(_rows_for, detector, root, chunk, select))
                        if not running:
                            break
                        done, running = wait(running, return_when=FIRST_COMPLETED)
                        for fut in done:
                            collect(fut.result())
                finally:
                    for fut in running:
                        fut.cancel()
    finally:
        bar.close()
        if partial_path is not None and since and len(rows) < len(order):
            _write_rows(partial_path, rows, order)  # interrupted: keep what was done


def _merge(
    index: FaceIndex,
    todo_mask: np.ndarray,
    todo: Sequence[str],
    rows: dict[str, tuple[np.ndarray, dict[str, float]]],
    problems: dict[str, str],
) -> FaceIndex:
    lms = index.landmarks.copy()
    attrs = {}
    for name in _ATTRIBUTE.values():
        prev = index.attributes.get(name)
        base = np.asarray(prev, dtype=np.float64).copy() if prev is not None and prev.dtype != object else None
        attrs[name] = base if base is not None else np.full(len(index), np.nan)
    no_face: list[str] = []
    unreadable: list[str] = []
    for i, rel in zip(np.flatnonzero(todo_mask), todo):
        lm, extra = rows[rel]
        for col, name in _ATTRIBUTE.items():
            attrs[name][i] = extra[col]
        if np.isfinite(lm).all():
            lms[i] = lm
        elif extra["n_faces"] == -1:
            unreadable.append(rel)
        else:
            no_face.append(rel)
    out = index.with_landmarks(lms, **attrs)
    for rel in unreadable:
        out.issues.append(problems.get(rel, f"{index.root / rel}: unreadable image (n_faces=-1 in the landmark cache)"))
    for rel in no_face:
        out.issues.append(problems.get(rel, f"{index.root / rel}: no face detected (n_faces=0); landmarks stay NaN"))
    log.info("landmarks: detected on %d images under %s", len(todo), index.root)
    if no_face:
        log.warning(
            "landmarks: no face detected in %d of %d images (kept with NaN landmarks, listed in FaceIndex.issues), "
            "e.g. %s",
            len(no_face),
            len(todo),
            ", ".join(no_face[:5]),
        )
    if unreadable:
        log.warning("landmarks: %d unreadable image(s), e.g. %s", len(unreadable), ", ".join(unreadable[:5]))
    return out


def fill_missing_landmarks(index: FaceIndex, detector: FaceDetector | str = "mtcnn", **kwargs: Any) -> FaceIndex:
    """Fill NaN landmarks with cached detections (what :class:`aikd.data.sources.FolderSource` calls).

    Args:
        index: the dataset.
        detector: a name from :data:`~aikd.faces.detect.DETECTORS` (``data.detector`` in the configs) or a
            detector object.
        **kwargs: the other arguments of :func:`detect_landmarks`.
    """
    return detect_landmarks(index, only_missing=True, detector=detector, **kwargs)
