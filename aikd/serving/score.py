"""Score face images with a trained student: ``aikd score`` and :func:`score_images`.

The student was distilled to give the teacher's verdict on faces that are *not* perfectly aligned, so scoring
only needs a rough 5-point alignment to the template named in the model's metadata. Three ways to get there:

* ``detect`` (default): a face detector - MTCNN (:mod:`aikd.faces.landmarks`, the default) or YuNet
(:mod:`aikd.faces.yunet`),
  ``--detector`` - finds the faces and :func:`~aikd.faces.landmarks.select_face` picks the one the image is about;
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

In ``detect`` mode an image may show several faces; :func:`~aikd.faces.landmarks.select_face` scores the one maximising
``det_score * (box side / largest box side) * exp(-d**2 / 0.5)``, ``d`` the distance from the box centre to the
image centre in half-diagonals: the largest, most central, confident face, a subject photographed among
bystanders. The detail says which face that was (its box and score) and how many were found.

In ``detect`` and ``landmarks`` mode the crop is cut as training and evaluation cut it
(:func:`aikd.geometry.align.crop_photo`): the photo is aligned onto the canvas the student was trained with (metadata
``input.canvas``; exports that predate it
get :data:`DEFAULT_CANVAS`), then the model's crop is cut from that canvas. A one-step warp from the photo differs
from the training crops by several grey levels on large photos, and the scores with it.

Models load from an export (directory or its ``<name>.json``: the ONNX file on onnxruntime when present, else the
safetensors weights), an ``.onnx`` file with its sibling ``.json``, a ``.safetensors`` student, or a Lightning
``.ckpt`` from distillation. Whatever the format, the model takes canonical faces (RGB ``[0, 1]``, cut with the
metadata's geometry) and normalises them itself.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import os
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aikd import METADATA_FORMAT
from aikd.data.index import IMAGE_EXTENSIONS, DataError, read_landmarks_csv
from aikd.faces.landmarks import DETECTORS, FaceDetector, detector_label
from aikd.geometry.align import Canvas, Geometry, crop_photo
from aikd.io import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "COLUMNS",
    "STATUSES",
    "SCORED",
    "MIN_IMAGE_SIDE",
    "FACE_RULE",
    "MODES",
    "ScoreError",
    "QualityModel",
    "load_quality_model",
    "find_images",
    "score_images",
    "write_scores_csv",
    "main_score",
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
#: How ``detect`` mode chooses among several faces (:func:`aikd.faces.landmarks.select_face`), for details and
#: ``--help``.
FACE_RULE = "largest, most central, confident face (max det_score x relative box side x centre weight)"
#: How faces are aligned before scoring.
MODES: tuple[str, ...] = ("detect", "landmarks", "aligned")
BACKENDS: tuple[str, ...] = ("auto", "onnx", "torch")
#: The canvas of models whose metadata does not name one (exports from before it was recorded, students never
#: distilled): :class:`~aikd.data.FaceDataModule`'s default, a 256 px canvas with the face at 160 px on the arcface
#: template, as in ``conf/data/cfp.yaml`` and ``conf/data/folder.yaml``. A student trained on another canvas (the
#: synthetic and RecordIO configs use 176 px with the face at 112 px) scores a few grey levels off its training
#: crops with it; re-export it to record its own.
DEFAULT_CANVAS = Canvas()


class ScoreError(ValueError):
    """Bad scoring input (model, image list, landmarks file): the message names the file and what to do."""


# --------------------------------------------------------------------------------------------------------------
# Models


class QualityModel:
    """A loaded student: canonical faces ``(B, 3, H, W)`` float32 RGB ``[0, 1]`` -> ``(quality_raw, quality_0_100)``.

    Attributes:
        geometry: how faces must be cut for it (template, size), from the model's metadata.
        metadata: the export metadata (for checkpoints and safetensors files: rebuilt from the student).
        source: the file the weights came from.
        backend: ``"onnx"`` (onnxruntime) or ``"torch"``.
        device: where it runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...).
        canvas: the canvas the student was trained with (metadata ``input.canvas``, else :data:`DEFAULT_CANVAS`):
            photos are aligned onto it before the crop is cut, as in training.
    """

    def __init__(
        self,
        run: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
        geometry: Geometry,
        metadata: dict[str, Any],
        source: Path,
        backend: str,
        device: str,
        max_batch: int | None = None,
        canvas: Canvas | None = None,
    ) -> None:
        self._run = run
        self.geometry = geometry
        self.canvas = canvas or DEFAULT_CANVAS
        self.metadata = metadata
        self.source = source
        self.backend = backend
        self.device = device
        self.max_batch = max_batch

    def __repr__(self) -> str:
        h, w = self.geometry.hw
        return (
            f"QualityModel({self.source.name}, backend={self.backend}, device={self.device}, "
            f"input={self.geometry.template} {h}x{w})"
        )

    @property
    def input_size(self) -> tuple[int, int]:
        """Input ``(height, width)``."""
        return self.geometry.hw

    def __call__(self, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Score canonical faces; returns float32 ``(B,)`` raw and ``(B,)`` 0..100 quality."""
        faces = np.ascontiguousarray(faces, dtype=np.float32)
        if faces.ndim != 4 or faces.shape[1] != 3 or tuple(faces.shape[2:]) != self.input_size:
            raise ValueError(f"expected canonical faces (B, 3, {self.input_size[0]}, {self.input_size[1]}), got "
                             f"{faces.shape}; cut them with aikd.geometry.align using this model's "
                             "geometry")  # fmt: skip
        step = self.max_batch or max(len(faces), 1)
        raws, qs = [], []
        for i in range(0, len(faces), step):
            raw, q = self._run(faces[i : i + step])
            raws.append(np.asarray(raw, np.float32).reshape(-1))
            qs.append(np.asarray(q, np.float32).reshape(-1))
        if not raws:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        return np.concatenate(raws), np.concatenate(qs)


def _resolve_device(device: str) -> str:
    """``--device`` by the rule training and evaluation use (:func:`aikd.devices.resolve_device`)."""
    from aikd.devices import DeviceError, resolve_device

    try:
        return resolve_device(device)
    except DeviceError as err:
        raise ScoreError(f"--device {device}: {err}") from err


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise ScoreError(f"{path}: cannot read model metadata ({err})") from err
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise ScoreError(
            f'{path}: not aikd student metadata (no "format": "{METADATA_FORMAT}"); pass the JSON written next '
            "to an export by aikd.serving.export.export_student / `aikd export`"
        )
    return meta


def _geometry_of(meta: dict[str, Any], path: Path) -> Geometry:
    try:
        return Geometry.from_dict(meta["input"]["alignment"])
    except (KeyError, TypeError, ValueError) as err:
        raise ScoreError(f"{path}: metadata lacks a valid input.alignment geometry ({err})") from err


def _canvas_of(meta: dict[str, Any], path: Path) -> Canvas:
    """The training canvas from the metadata; :data:`DEFAULT_CANVAS` for metadata without one (older exports)."""
    value = (meta.get("input") or {}).get("canvas")
    if not value:
        return DEFAULT_CANVAS
    try:
        return Canvas.from_dict(value)
    except (KeyError, TypeError, ValueError) as err:
        raise ScoreError(f"{path}: metadata has an invalid input.canvas ({err})") from err


def _onnx_model(
    onnx_path: Path, meta: dict[str, Any], device: str, explicit_device: bool, num_threads: int | None
) -> QualityModel:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise ScoreError(
            f"{onnx_path}: running ONNX models needs onnxruntime (pip install onnxruntime); or score the "
            "safetensors weights (--backend torch)"
        ) from err
    providers: list[Any] = ["CPUExecutionProvider"]
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" in ort.get_available_providers():
            device_id = int(device.split(":", 1)[1]) if ":" in device else 0
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device_id}))
        elif explicit_device:
            raise ScoreError(
                f"--device {device}: this onnxruntime has no CUDAExecutionProvider (pip install onnxruntime-gpu), "
                "or use --backend torch / --device cpu"
            )
        else:
            device = "cpu"
    opts = ort.SessionOptions()
    if num_threads:
        opts.intra_op_num_threads = int(num_threads)
        opts.inter_op_num_threads = 1
    try:
        sess = ort.InferenceSession(str(onnx_path), sess_options=opts, providers=providers)
    except Exception as err:  # onnxruntime raises its own exception types for bad files
        raise ScoreError(f"{onnx_path}: onnxruntime cannot load this model ({err})") from err
    inp = sess.get_inputs()[0]
    names = [o.name for o in sess.get_outputs()]
    wanted = ["quality_raw", "quality_0_100"]
    outputs = wanted if all(n in names for n in wanted) else names[:2]
    if len(outputs) < 2:
        raise ScoreError(f"{onnx_path}: expected outputs (quality_raw, quality_0_100), the model has {names}")
    fixed = inp.shape[0] if isinstance(inp.shape[0], int) and inp.shape[0] > 0 else None

    def run(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raw, q = sess.run(outputs, {inp.name: faces})
        return raw, q

    geometry = _geometry_of(meta, onnx_path)
    canvas = _canvas_of(meta, onnx_path)
    return QualityModel(run, geometry, meta, onnx_path, "onnx", device, max_batch=fixed, canvas=canvas)


def _torch_model(student: Any, meta: dict[str, Any], source: Path, device: str) -> QualityModel:
    import torch

    from aikd.models.student import QualityExport

    model = QualityExport(student.eval()).to(device).eval()

    def run(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        with torch.inference_mode():
            raw, q = model(torch.from_numpy(faces).to(device))
        return raw.float().cpu().numpy(), q.float().cpu().numpy()

    return QualityModel(run, _geometry_of(meta, source), meta, source, "torch", device, canvas=_canvas_of(meta, source))


def _load_student(path: Path) -> Any:
    from aikd.serving.export import load_student

    try:
        return load_student(path)
    except (ValueError, FileNotFoundError, KeyError) as err:
        raise ScoreError(str(err)) from err


def _safetensors_model(path: Path, meta: dict[str, Any] | None, device: str) -> QualityModel:
    from aikd.geometry.preprocess import InputSpec
    from aikd.serving.export import student_metadata

    student = _load_student(path)
    if meta is None:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("aikd", "{}"))
    stored = meta.get("network_input")
    if stored and stored != student.input_spec.to_dict():
        # The exporter saw the student's actual input spec (e.g. one taken over from the teacher); trust it.
        log.warning("%s: restoring the exported input spec %s (the rebuilt student had %s)", path, stored,
                    student.input_spec.to_dict())  # fmt: skip
        student.backbone.input_spec = InputSpec.from_dict(stored)
    return _torch_model(student, meta or student_metadata(student), path, device)


def _metadata_model(
    meta_path: Path, backend: str, device: str, explicit_device: bool, num_threads: int | None
) -> QualityModel:
    meta = _read_metadata(meta_path)
    files = meta.get("files") or {}
    onnx_file = meta_path.parent / files["onnx"] if files.get("onnx") else None
    st_file = meta_path.parent / files["safetensors"] if files.get("safetensors") else None
    onnx_ok = onnx_file is not None and onnx_file.is_file()
    st_ok = st_file is not None and st_file.is_file()
    if backend == "auto":
        try:
            import onnxruntime  # noqa: F401

            have_ort = True
        except ImportError:
            have_ort = False
        backend = "onnx" if onnx_ok and (have_ort or not st_ok) else "torch"
    if backend == "onnx":
        if not onnx_ok:
            raise ScoreError(f"{meta_path}: no ONNX file in this export (files: {files}); use --backend torch")
        return _onnx_model(onnx_file, meta, device, explicit_device, num_threads)
    if not st_ok:
        raise ScoreError(
            f"{meta_path}: no safetensors file in this export (files: {files}); re-export with "
            "`aikd export ... --formats onnx,safetensors` or use --backend onnx"
        )
    return _safetensors_model(st_file, meta, device)


def _metadata_in_dir(directory: Path) -> Path:
    found = []
    for p in sorted(directory.glob("*.json")):
        try:
            if json.loads(p.read_text()).get("format") == METADATA_FORMAT:
                found.append(p)
        except (OSError, ValueError, AttributeError):
            continue
    if not found:
        raise ScoreError(
            f"{directory}: no export metadata (<name>.json with format {METADATA_FORMAT}) in this directory; pass an "
            ".onnx, .safetensors or .ckpt file, or export the student with `aikd export`"
        )
    if len(found) > 1:
        preferred = [p for p in found if p.name == "student.json"]
        if preferred:
            return preferred[0]
        raise ScoreError(f"{directory}: several exports ({[p.name for p in found]}); pass one of their .json files")
    return found[0]


def load_quality_model(
    path: str | Path, backend: str = "auto", device: str = "auto", num_threads: int | None = None
) -> QualityModel:
    """Load a student for scoring from any of the forms aikd writes.

    Args:
        path: an export directory, its ``<name>.json`` metadata, an ``.onnx`` file (with ``<name>.json`` beside it),
            a ``.safetensors`` student, or a Lightning distillation ``.ckpt``.
        backend: ``"auto"`` (ONNX on onnxruntime when the export has it and onnxruntime is installed, else the
            safetensors weights on PyTorch), ``"onnx"`` or ``"torch"``.
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        num_threads: onnxruntime intra-op threads (``None``: its default).

    Raises:
        ScoreError: missing or unrecognised file, or a backend the export lacks (the message says what to pass).
    """
    if backend not in BACKENDS:
        raise ScoreError(f"backend must be one of {BACKENDS}, got {backend!r}")
    explicit_device = device != "auto"
    device = _resolve_device(device)
    p = Path(path).expanduser()
    if not p.exists():
        raise ScoreError(f"model not found: {p} (pass an export directory, .json, .onnx, .safetensors or .ckpt)")
    if p.is_dir():
        p = _metadata_in_dir(p)
    suffix = p.suffix.lower()
    if suffix == ".json":
        return _metadata_model(p, backend, device, explicit_device, num_threads)
    if suffix == ".onnx":
        if backend == "torch":
            raise ScoreError(f"{p}: an ONNX file runs on onnxruntime; use --backend auto/onnx or pass the export .json")
        meta_path = p.with_suffix(".json")
        if not meta_path.is_file():
            raise ScoreError(
                f"{p}: its metadata {meta_path.name} is missing; it holds the alignment template and input size the "
                "model needs. Keep the .json written by the export next to the .onnx file"
            )
        return _onnx_model(p, _read_metadata(meta_path), device, explicit_device, num_threads)
    if suffix in (".safetensors", ".ckpt"):
        if backend == "onnx":
            raise ScoreError(f"{p}: --backend onnx needs an ONNX export; this file runs on PyTorch (--backend torch)")
        if suffix == ".safetensors":
            return _safetensors_model(p, None, device)
        from aikd.serving.export import student_metadata

        student = _load_student(p)
        return _torch_model(student, student_metadata(student, extra={"source": str(p)}), p, device)
    raise ScoreError(
        f"{p}: unsupported model file (suffix {suffix!r}); pass an export directory, .json, .onnx, .safetensors or "
        ".ckpt"
    )


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
        model: a :class:`QualityModel`, or anything :func:`load_quality_model` loads.
        root: folder that relative ``paths`` (and the paths in a landmarks file) are relative to.
        mode: ``"detect"`` (a face detector), ``"landmarks"`` or ``"aligned"``; default ``"landmarks"`` when
            ``landmarks`` is given, else ``"detect"``.
        landmarks: a landmarks CSV in the generic format, or a mapping ``path -> (5, 2)`` array; keys are matched
            to ``paths`` as given (with ``/`` separators).
        batch_size: faces per model call (and images per detector call).
        device: see :func:`load_quality_model` (used when ``model`` is a path, and for the detector on CUDA).
        backend: see :func:`load_quality_model` (used when ``model`` is a path).
        detector: the face detector of ``"detect"`` mode: a name from :data:`aikd.faces.landmarks.DETECTORS`
            (``"mtcnn"``, the default, or ``"yunet"``), built here with ``min_face_size``, ``device`` and
            ``num_threads``, or a ready :class:`~aikd.faces.landmarks.FaceDetector` object. Ignored in the other modes.
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
    """The detector ``name`` (see :func:`aikd.faces.landmarks.make_detector`) on the model's device where possible."""
    from aikd.faces.landmarks import DETECTORS, detector_unavailable, make_detector

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
    from aikd.faces.landmarks import detector_name, select_face

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
# Output and command line


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
    :data:`STATUSES` and the ``--help`` epilog). Exit code 0 when at least one image was scored (``ok`` or
    ``suspect``), 1 when none was, 2 on bad arguments.
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
