"""Load a trained student for scoring, whatever form it was saved in: :func:`load_quality_model`.

Models load from an export (directory or its ``<name>.json``: the ONNX file on onnxruntime when present, else the
safetensors weights), an ``.onnx`` file with its sibling ``.json``, a ``.safetensors`` student, or a Lightning
``.ckpt`` from distillation. Whatever the format, the model takes canonical faces (RGB ``[0, 1]``, cut with the
metadata's geometry) and normalises them itself: :class:`QualityModel` wraps each backend behind that one call,
with the geometry and training canvas (:data:`DEFAULT_CANVAS` for exports that predate it) that
:mod:`aikd.serving.score` cuts faces with.

The exporter (:mod:`aikd.serving.export`, which pulls in timm) is imported only when a PyTorch model is loaded, so
that ``aikd score`` on an ONNX export starts without it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from aikd import METADATA_FORMAT
from aikd.geometry.align import Canvas, Geometry

log = logging.getLogger(__name__)

__all__ = [
    "BACKENDS",
    "DEFAULT_CANVAS",
    "ScoreError",
    "QualityModel",
    "load_quality_model",
]

#: What runs the model (``backend=``, ``--backend``); ``auto``: ONNX if exported, else PyTorch.
BACKENDS: tuple[str, ...] = ("auto", "onnx", "torch")
#: The canvas of models whose metadata does not name one (exports from before it was recorded, students never
#: distilled): :class:`~aikd.data.FaceDataModule`'s default, a 256 px canvas with the face at 160 px on the arcface
#: template, as in ``conf/data/cfp.yaml`` and ``conf/data/folder.yaml``. A student trained on another canvas (the
#: synthetic and RecordIO configs use 176 px with the face at 112 px) scores a few grey levels off its training
#: crops with it; re-export it to record its own.
DEFAULT_CANVAS = Canvas()


class ScoreError(ValueError):
    """Bad scoring input (model, image list, landmarks file): the message names the file and what to do."""


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
