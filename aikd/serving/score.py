"""Score face images with a trained student: :func:`score_images` (the command line: ``aikd score``,
:mod:`aikd.app.score_cli`).

The student was distilled to give the teacher's verdict on faces that are *not* perfectly aligned, so scoring
only needs a rough 5-point alignment to the template named in the model's metadata. Three ways to get there:

* ``detect`` (default): a face detector - MTCNN (:mod:`aikd.faces.mtcnn`, the default) or YuNet
  (:mod:`aikd.faces.yunet`), ``--detector`` - finds the faces and :func:`~aikd.faces.detect.select_face` picks the
  one the image is about;
* ``landmarks``: a landmarks CSV in the generic format (:func:`aikd.data.index.read_landmarks_csv`), with paths
  relative to the scored folder;
* ``aligned``: the inputs already are aligned crops; they are only resized to the model's input size.

Every input gets a row, in input order: ``path, quality_0_100, quality_raw, status, detail``. Images that cannot
be scored keep empty scores and say why: a quality list that silently drops the worst images would look better
than the data is. Statuses (:data:`STATUSES`):

* ``ok`` (scored): in ``detect`` mode the detail names the scored face (``det_score``, ``box``, ``faces``) and the
  detector (``detector=mtcnn`` or ``detector=yunet``);
* ``suspect`` (scored): ``aligned`` mode, the image does not look like an aligned crop (not the model's aspect
  ratio, tiny, or flat); the score is kept but says little, the detail names the problem;
* ``unreadable``: missing, empty (0 bytes) or undecodable file;
* ``too_small``: decodable but too small to hold a face: a side under :data:`MIN_IMAGE_SIDE` px (``aligned`` and
  ``landmarks`` modes), or under ``--min-face-size`` (``detect``: the detector cannot find a face there);
* ``no_face``: ``detect`` mode, the detector found no face;
* ``no_landmarks``: ``landmarks`` mode, no usable row for the image: none, empty fields, or a malformed row (the
  detail names the landmarks file's row and what is wrong with it);
* ``missing`` (``landmarks`` mode): a landmarks row names a file that does not exist, or no file at all. These rows
  come after the inputs, one per such landmarks row, so that no row of the landmarks file is dropped unnoticed.

An aligned crop (``aligned`` mode) must be what the model was trained on: cut with the template of the model's
metadata (``input.alignment``: template and size), square (the model's aspect ratio, within
:data:`ASPECT_TOLERANCE`), and at least :data:`TINY_FRACTION` of the model's input side (below that it is
upscaled more than 4x and the score mostly reflects interpolation). A flat image (largest per-channel pixel
standard deviation under :data:`FLAT_STD` of 255) has no face content: a model fed a solid colour returns some
number, possibly a high one, and that number means nothing. Such inputs are still scored (status ``suspect``) so
that a user who knows better keeps the number; images under :data:`MIN_IMAGE_SIDE` px are not scored at all.

In ``detect`` mode an image may show several faces; :func:`~aikd.faces.detect.select_face` scores the one maximising
``det_score * (box side / largest box side) * exp(-d**2 / 0.5)``, ``d`` the distance from the box centre to the
image centre in half-diagonals: the largest, most central, confident face, a subject photographed among
bystanders. The detail says which face that was (its box and score) and how many were found.

In ``detect`` and ``landmarks`` mode the crop is cut as training and evaluation cut it
(:func:`aikd.geometry.align.crop_photo`): the photo is aligned onto the canvas the student was trained with (metadata
``input.canvas``; exports that predate it get :data:`~aikd.serving.load.DEFAULT_CANVAS`), then the model's crop is
cut from that canvas. A one-step warp from the photo differs from the training crops by several grey levels on large
photos, and the scores with it.

Models load with :func:`aikd.serving.load.load_quality_model`, from any form aikd writes (export directory or
``.json``, ``.onnx``, ``.safetensors``, ``.ckpt``).
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aikd.data.index import IMAGE_EXTENSIONS, DataError, read_landmarks_csv
from aikd.faces.detect import FaceDetector, detector_label
from aikd.geometry.align import Canvas, Geometry, crop_photo
from aikd.io import atomic_path
from aikd.serving.load import QualityModel, ScoreError, load_quality_model

log = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "STATUSES",
    "SCORED",
    "MIN_IMAGE_SIDE",
    "FACE_RULE",
    "MODES",
    "find_images",
    "score_images",
    "write_scores_csv",
]

#: Columns of the scores CSV, in order.
COLUMNS: tuple[str, ...] = ("path", "quality_0_100", "quality_raw", "status", "detail")
#: Row statuses (see the module docstring): scored (``ok``, ``suspect``), or why not.
STATUSES: tuple[str, ...] = ("ok", "suspect", "unreadable", "too_small", "no_face", "no_landmarks", "missing")
#: Statuses of rows that carry scores.
SCORED: tuple[str, ...] = ("ok", "suspect")
#: Images with a side below this many pixels are not scored in ``aligned`` and ``landmarks`` mode (``too_small``):
#: nothing of a face survives at that size, yet the model would return a confident-looking number.
MIN_IMAGE_SIDE = 8
#: ``aligned`` mode: a crop whose short side is under this fraction of the model's input side is upscaled more than
#: 4x; the score then reflects interpolation more than the face (``suspect``, "tiny").
TINY_FRACTION = 0.25
#: ``aligned`` mode: largest relative difference between the crop's aspect ratio and the model input's before the
#: crop counts as "not square" (resizing then stretches the face the template placed).
ASPECT_TOLERANCE = 0.05
#: ``aligned`` mode: a crop whose largest per-channel pixel standard deviation (0..255 scale) is under this is flat:
#: a solid colour or nearly so, no face content (``suspect``, "flat image").
FLAT_STD = 2.0
#: How ``detect`` mode chooses among several faces (:func:`aikd.faces.detect.select_face`), for details and
#: ``--help``.
FACE_RULE = "largest, most central, confident face (max det_score x relative box side x centre weight)"
#: How faces are aligned before scoring.
MODES: tuple[str, ...] = ("detect", "landmarks", "aligned")


# --------------------------------------------------------------------------------------------------------------
# Inputs


def find_images(source: str | Path) -> tuple[Path, list[str]]:
    """The images to score: ``(root, paths)`` with ``paths`` relative to ``root`` where possible.

    Args:
        source: a folder (every image below it, recursively, sorted; hidden files and folders skipped), a single
            image file, or a text file listing images (one per line; blank lines and ``#`` comments skipped;
            relative entries are relative to the list file's folder and are kept as written).

    Raises:
        ScoreError: the source does not exist or holds no images.
    """
    src = Path(source).expanduser()
    if src.is_dir():
        paths = sorted(
            p.relative_to(src).as_posix()
            for p in src.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(src).parts)
        )
        if not paths:
            raise ScoreError(f"no images found under {src} (looked recursively for {', '.join(IMAGE_EXTENSIONS)})")
        return src, paths
    if src.is_file():
        if src.suffix.lower() in IMAGE_EXTENSIONS:
            return src.parent, [src.name]
        try:
            lines = src.read_text().splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ScoreError(f"{src}: cannot read the image list ({err}); pass a folder or a text file") from err
        paths = [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]
        if not paths:
            raise ScoreError(f"{src}: the image list is empty (one image path per line expected)")
        return src.parent, paths
    raise ScoreError(f"input not found: {src} (pass a folder of images or a text file listing images)")


def _key(path: str) -> str:
    key = str(path).replace("\\", "/")
    while key.startswith("./"):
        key = key[2:]
    return key


class _Landmarks:
    """A landmarks source with its provenance, so that every row can say where its landmarks came from or why not.

    Attributes:
        points: ``key -> (5, 2)`` landmarks of the rows that were read (NaN where the fields are empty).
        row_of: ``key -> row number`` of the row ``points`` came from (file rows counted with the header as row 1,
            as a spreadsheet or editor shows them); empty for a mapping.
        notes: ``key -> problems`` of skipped rows naming that key ("landmarks.csv row 7 malformed: ...").
        entries: ``(row number or None, key, problem or None)`` for every row, in file order, to report rows whose
            file does not exist.
        source: how details name the source: the file's name, or "the landmarks mapping".
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.points: dict[str, np.ndarray] = {}
        self.row_of: dict[str, int] = {}
        self.notes: dict[str, list[str]] = {}
        self.entries: list[tuple[int | None, str, str | None]] = []

    def where(self, key: str) -> str:
        """``"landmarks.csv row 7"`` for a file row, else the source's name."""
        row = self.row_of.get(key)
        return f"{self.source} row {row}" if row is not None else self.source


def _load_landmarks(landmarks: str | Path | Mapping[str, np.ndarray]) -> _Landmarks:
    if isinstance(landmarks, Mapping):
        out = _Landmarks("the landmarks mapping")
        for k, v in landmarks.items():
            out.points[_key(k)] = np.asarray(v, np.float64).reshape(5, 2)
            out.entries.append((None, _key(k), None))
        return out
    path = Path(landmarks)
    try:
        table, _, issues = read_landmarks_csv(path)
    except DataError as err:
        raise ScoreError(str(err)) from err
    for msg in issues[:10]:
        log.warning(msg)
    if len(issues) > 10:
        log.warning("... and %d more malformed landmark rows", len(issues) - 10)
    # read_landmarks_csv reports skipped rows as "<path>:<row>: malformed landmark row (<reason>); row skipped";
    # walking the rows again ties each one to the image it names, so the image's CSV row can give the reason.
    pattern = re.compile(re.escape(str(path)) + r":(\d+): malformed landmark row \((.*)\); row skipped$")
    reasons = {int(m[1]): m[2] for m in map(pattern.match, issues) if m}
    out = _Landmarks(path.name)
    out.points = {_key(k): v for k, v in table.items()}
    with open(path, newline="") as f:
        for row_no, row in enumerate(csv.DictReader(f), start=2):  # numbered as read_landmarks_csv numbers them
            key = _key((row.get("path") or "").strip())
            if key in out.points and key not in out.row_of and row_no not in reasons:
                out.row_of[key] = row_no
                out.entries.append((row_no, key, None))
                continue
            problem = f"{out.source} row {row_no} malformed: {reasons.get(row_no, 'skipped by the reader')}"
            out.entries.append((row_no, key, problem))
            if key:
                out.notes.setdefault(key, []).append(problem)
    return out


def _missing_rows(table: _Landmarks, keys: Sequence[str], base: Path | None) -> list[dict[str, Any]]:
    """``missing`` rows for landmark rows naming no existing file, in the landmarks' order (none is dropped).

    Rows for existing files that are not among the inputs (a list file scoring a subset, say) are not reported.
    """
    inputs = {_key(k) for k in keys}
    if base is not None:
        for k in keys:
            if Path(k).is_absolute():
                with contextlib.suppress(ValueError, OSError):
                    inputs.add(Path(k).resolve().relative_to(base.resolve()).as_posix())
    rows = []
    for row_no, key, problem in table.entries:
        if key in inputs:
            continue
        file = Path(key).expanduser() if key else None
        if file is not None and base is not None and not file.is_absolute():
            file = base / file
        if file is not None and file.exists():
            continue
        where = f"{table.source} row {row_no}" if row_no is not None else table.source
        if problem is None:
            detail = f"{where} names this file, but {file} does not exist"
        else:
            detail = problem + ("" if file is None else f"; and {file} does not exist")
        rows.append(_row(key, "missing", detail))
    return rows


# --------------------------------------------------------------------------------------------------------------
# Scoring


def _row(path: str, status: str, detail: str = "") -> dict[str, Any]:
    return {"path": path, "quality_0_100": None, "quality_raw": None, "status": status, "detail": detail}


def _to_canonical(crop: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 -> ``(3, H, W)`` float32 in ``[0, 1]`` (``aligned`` mode: the crop is the input)."""
    return (crop.astype(np.float32) / 255.0).transpose(2, 0, 1)


def _resize(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    if image.shape[:2] == (h, w):
        return image
    shrink = image.shape[0] > h or image.shape[1] > w
    return cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def _read(file: Path) -> np.ndarray:
    """Read an image as RGB uint8, saying "empty file (0 bytes)" where the decoder would only say "cannot decode"."""
    from aikd.data.dataset import read_image

    try:
        empty = file.is_file() and file.stat().st_size == 0
    except OSError:  # unreadable metadata: let read_image report the file
        empty = False
    if empty:
        raise DataError(f"empty file (0 bytes): {file}")
    return read_image(str(file))


def _tiny_side(geometry: Geometry) -> int:
    """Shortest side of a crop ``aligned`` mode takes without calling it tiny (:data:`TINY_FRACTION` of the input)."""
    return max(MIN_IMAGE_SIDE, math.ceil(TINY_FRACTION * min(geometry.hw)))


def _aligned_requirement(geometry: Geometry) -> str:
    """What an aligned crop for this model must be, for the details of ``suspect`` rows."""
    gh, gw = geometry.hw
    shape = "square" if gh == gw else f"{gw}:{gh} (width:height)"
    zoom = f" at zoom {geometry.zoom:g}" if geometry.zoom != 1 else ""
    return (
        f"an aligned crop must be {shape}, at least {_tiny_side(geometry)} px, cut with the model's "
        f"'{geometry.template}' template{zoom} (input {gw}x{gh} px); score photos without --aligned"
    )


def _aligned_problems(image: np.ndarray, crop: np.ndarray, geometry: Geometry) -> list[str]:
    """Why an ``aligned`` input does not look like an aligned crop for this model (empty when it does).

    Only what can be told without a detector: the aspect ratio (resizing stretches the face), the size (heavy
    upscaling), and flatness (a solid colour has no face, yet the model returns a number for it, even 100).
    """
    h, w = image.shape[:2]
    gh, gw = geometry.hw
    problems = []
    if abs((w / h) / (gw / gh) - 1) > ASPECT_TOLERANCE:
        shape = "not square" if gh == gw else f"not {gw}:{gh} (width:height)"
        problems.append(f"{shape} ({w}x{h} px): stretched to {gw}x{gh}")
    if min(h, w) < _tiny_side(geometry):
        problems.append(f"tiny ({w}x{h} px): upscaled more than {1 / TINY_FRACTION:g}x to {gw}x{gh}")
    std = float(crop.reshape(-1, crop.shape[-1]).std(axis=0).max())
    if std < FLAT_STD:
        problems.append(f"flat image (pixel std {std:.1f}): no face content")
    return problems


class _Prepared:
    """One input on its way to the model: a crop, or the row saying why there is none.

    ``crop`` is the canonical face the model takes: ``(3, h, w)`` float32 RGB in ``[0, 1]``, kept in float from the
    canvas on (rounding it to uint8 would add an error the training crops do not have).
    """

    __slots__ = ("path", "image", "crop", "row", "detail", "status")

    def __init__(self, path: str) -> None:
        self.path = path
        self.detail = ""
        self.status = "ok"
        self.image: np.ndarray | None = None
        self.crop: np.ndarray | None = None
        self.row: dict[str, Any] | None = None


def score_images(
    paths: Sequence[str | Path],
    model: QualityModel | str | Path,
    *,
    root: str | Path | None = None,
    mode: str | None = None,
    landmarks: str | Path | Mapping[str, np.ndarray] | None = None,
    batch_size: int = 32,
    device: str = "auto",
    backend: str = "auto",
    detector: FaceDetector | str | None = None,
    min_face_size: float = 20.0,
    workers: int | None = None,
    num_threads: int | None = None,
    progress: bool = False,
) -> list[dict[str, Any]]:
    """Score images with a student; one row per input, in input order, failures included.

    Args:
        paths: image paths; relative ones are read from ``root`` (default: the working directory). Rows carry
            the paths as given.
        model: a :class:`~aikd.serving.load.QualityModel`, or anything
            :func:`~aikd.serving.load.load_quality_model` loads.
        root: folder that relative ``paths`` (and the paths in a landmarks file) are relative to.
        mode: ``"detect"`` (a face detector), ``"landmarks"`` or ``"aligned"``; default ``"landmarks"`` when
            ``landmarks`` is given, else ``"detect"``.
        landmarks: a landmarks CSV in the generic format, or a mapping ``path -> (5, 2)`` array; keys are matched
            to ``paths`` as given (with ``/`` separators).
        batch_size: faces per model call (and images per detector call).
        device: see :func:`~aikd.serving.load.load_quality_model` (used when ``model`` is a path, and for the
            detector on CUDA).
        backend: see :func:`~aikd.serving.load.load_quality_model` (used when ``model`` is a path).
        detector: the face detector of ``"detect"`` mode: a name from :data:`aikd.faces.detect.DETECTORS`
            (``"mtcnn"``, the default, or ``"yunet"``), built here with ``min_face_size``, ``device`` and
            ``num_threads``, or a ready :class:`~aikd.faces.detect.FaceDetector` object. Ignored in the other modes.
        min_face_size: smallest face side in pixels a detector built here looks for.
        workers: threads reading and aligning images ahead of the model (default ``min(4, CPUs)``).
        num_threads: onnxruntime threads of the model and default detector (``None``: onnxruntime's default).
        progress: show a tqdm progress bar.

    Returns:
        Dicts with the keys of :data:`COLUMNS`, one per input in input order, then (``"landmarks"`` mode) one
        ``missing`` row per landmark row naming no existing file. ``quality_0_100`` and ``quality_raw`` are floats
        for the statuses in :data:`SCORED` (``ok``, ``suspect``) and ``None`` otherwise; ``detail`` says why a row
        is not ``ok``, and in ``"detect"`` mode which face was scored (``det_score``, ``box``, ``faces``) and by
        which detector (``detector=...``, for detectors that state their kind in ``settings``). The
        statuses and thresholds are described in the module docstring.

    Raises:
        ScoreError: bad model, mode or landmarks file.
    """
    mode = mode or ("landmarks" if landmarks is not None else "detect")
    if mode not in MODES:
        raise ScoreError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "landmarks" and landmarks is None:
        raise ScoreError("mode 'landmarks' needs a landmarks file (--landmarks file.csv)")
    if batch_size < 1:
        raise ScoreError(f"batch size must be >= 1, got {batch_size}")
    if not isinstance(model, QualityModel):
        model = load_quality_model(model, backend=backend, device=device, num_threads=num_threads)
    table = _load_landmarks(landmarks) if mode == "landmarks" else _Landmarks("")
    if mode == "detect" and (detector is None or isinstance(detector, str)):
        detector = _default_detector(min_face_size, model.device, num_threads, detector or "mtcnn")
    # Objects that do not say what they are (stand-ins without settings) are described as the default detector.
    label = detector_label(detector, default="MTCNN") if mode == "detect" else ""
    base = Path(root).expanduser() if root is not None else None
    geometry, canvas = model.geometry, model.canvas
    keys = [str(p) for p in paths]

    detect_floor = float(getattr(detector, "min_face_size", min_face_size)) if mode == "detect" else 0.0

    def prepare(path: str) -> _Prepared:
        item = _Prepared(path)
        file = Path(path).expanduser()
        if base is not None and not file.is_absolute():
            file = base / file
        try:  # read first: a broken file is reported as such whatever the mode
            image = _read(file)
        except DataError as err:
            item.row = _row(path, "unreadable", str(err))
            return item
        h, w = image.shape[:2]
        if mode == "detect" and min(h, w) < detect_floor:  # no face of the detector's smallest size fits
            why = f"face detection needs at least {detect_floor:g} px ({label} min_face_size, --min-face-size)"
        elif mode != "detect" and min(h, w) < MIN_IMAGE_SIDE:
            why = f"under {MIN_IMAGE_SIDE} px there is no face to score"
        else:
            why = ""
        if why:
            item.row = _row(path, "too_small", f"image too small ({w}x{h} px): {why}")
            return item
        if mode == "aligned":
            resized = _resize(image, geometry.hw)
            item.crop = _to_canonical(resized)
            problems = _aligned_problems(image, resized, geometry)
            if problems:
                item.status = "suspect"
                item.detail = "; ".join([*problems, _aligned_requirement(geometry)])
        elif mode == "landmarks":
            key = _key(path)
            lm = table.points.get(key)
            if lm is None and base is not None and Path(path).is_absolute():
                with contextlib.suppress(ValueError):  # an absolute list entry below the root
                    key = file.resolve().relative_to(base.resolve()).as_posix()
                    lm = table.points.get(key)
            notes = table.notes.get(key, [])
            if lm is None:
                why = "; ".join(notes) if notes else f"no row for this path in {table.source}"
                item.row = _row(path, "no_landmarks", why)
                return item
            if not np.isfinite(lm).all():
                why = f"{table.where(key)}: its landmark fields are empty (fill them with aikd detect-landmarks)"
                item.row = _row(path, "no_landmarks", "; ".join([why, *notes]))
                return item
            item.crop = crop_photo(image, lm, geometry, canvas)
            if notes:  # e.g. a later duplicate row for this path, skipped
                item.detail = "; ".join([f"landmarks from {table.where(key)}", *notes])
        else:
            item.image = image  # detected in batches on the calling thread
        return item

    workers = max(1, int(workers if workers is not None else min(4, os.cpu_count() or 1)))
    rows: list[dict[str, Any]] = []
    from tqdm.auto import tqdm

    bar = tqdm(total=len(keys), desc="scoring", unit="img", disable=not progress)
    try:
        for chunk in _prepared_chunks(keys, prepare, batch_size, workers):
            if mode == "detect":
                _detect_and_align(chunk, detector, geometry, canvas, label)
            todo = [it for it in chunk if it.row is None]
            if todo:
                raw, q = model(np.stack([it.crop for it in todo]))
                for it, r, v in zip(todo, raw.tolist(), q.tolist()):
                    it.row = {**_row(it.path, it.status, it.detail), "quality_0_100": v, "quality_raw": r}
            rows.extend(it.row for it in chunk)
            bar.update(len(chunk))
    finally:
        bar.close()
    if mode == "landmarks":
        rows.extend(_missing_rows(table, keys, base))
    return rows


def _prepared_chunks(
    keys: Sequence[str], prepare: Callable[[str], _Prepared], batch_size: int, workers: int
) -> Iterator[list[_Prepared]]:
    """Chunks of prepared inputs; with ``workers > 1`` the next chunk is read while the model runs on this one."""
    chunks = [keys[i : i + batch_size] for i in range(0, len(keys), batch_size)]
    if workers == 1:
        for chunk in chunks:
            yield [prepare(k) for k in chunk]
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="aikd-score") as pool:
        pending: list[list[Future]] = []
        queue = iter(chunks)
        try:
            for _ in range(2):
                chunk = next(queue, None)
                if chunk is not None:
                    pending.append([pool.submit(prepare, k) for k in chunk])
            while pending:
                futures = pending.pop(0)
                chunk = next(queue, None)
                if chunk is not None:
                    pending.append([pool.submit(prepare, k) for k in chunk])
                yield [f.result() for f in futures]
        finally:
            for futures in pending:
                for f in futures:
                    f.cancel()


def _default_detector(min_face_size: float, device: str, num_threads: int | None, name: str = "mtcnn") -> Any:
    """The detector ``name`` (see :func:`aikd.faces.detect.make_detector`) on the model's device where possible."""
    from aikd.faces.detect import DETECTORS, detector_unavailable, make_detector

    if name not in DETECTORS:
        raise ScoreError(f"unknown face detector {name!r}; choose one of {', '.join(DETECTORS)}")
    providers = None
    if device.startswith("cuda"):
        import onnxruntime as ort

        if "CUDAExecutionProvider" in ort.get_available_providers():
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    try:
        return make_detector(name, min_face_size=min_face_size, providers=providers, num_threads=num_threads)
    except (ImportError, FileNotFoundError, ValueError) as err:
        # the library's message names Python arguments (model_dir=); say what works on the command line
        why = detector_unavailable(err, name) if not isinstance(err, ValueError) else f"--detector {name}: {err}"
        raise ScoreError(
            f"{why}; or score without detection: --landmarks FILE.csv (landmarks from any detector) or --aligned "
            "(aligned crops)"
        ) from err


def _detect_and_align(
    chunk: list[_Prepared], detector: FaceDetector, geometry: Geometry, canvas: Canvas, label: str
) -> None:
    """Detect the faces of ``chunk`` in one batch and crop the chosen one (through ``canvas``, as in training);
    ``label`` names the detector in details.

    Scored rows end with ``detector=<name>`` when the detector states its kind, so a CSV mixing runs (or read
    months later) says which detector placed the face: the two detectors' points differ by a few percent of the
    face, which moves the scores a little.
    """
    from aikd.faces.detect import detector_name, select_face

    name = detector_name(detector)
    tag = f"; detector={name}" if name else ""
    todo = [it for it in chunk if it.row is None]
    if not todo:
        return
    for it, det in zip(todo, detector.detect_batch([it.image for it in todo])):
        k = select_face(det, it.image.shape)
        if k is None:
            size = getattr(detector, "min_face_size", "?")
            it.row = _row(it.path, "no_face", f"no face detected ({label}, min_face_size {size})")
        else:
            it.crop = crop_photo(it.image, det.landmarks[k], geometry, canvas)
            x1, y1, x2, y2 = (round(float(v)) for v in det.boxes[k])
            it.detail = f"det_score={float(det.scores[k]):.4f}; box={x1},{y1},{x2},{y2}; faces={len(det)}"
            if len(det) > 1:
                it.detail += f": scored the {FACE_RULE}"
            it.detail += tag
        it.image = None  # free the full-size image early


# --------------------------------------------------------------------------------------------------------------
# Output


def _fmt(value: float | None, digits: str) -> str:
    return "" if value is None else format(value, digits)


def write_scores_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Atomically write score rows (:data:`COLUMNS`); raw scores keep float32 precision, empty cells for failures."""
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in rows:
            w.writerow([r["path"], _fmt(r["quality_0_100"], ".4f"), _fmt(r["quality_raw"], ".8g"), r["status"],
                        r.get("detail") or ""])  # fmt: skip
    return Path(path)
