"""Export a trained student: ONNX, ``torch.export`` (and TorchScript), safetensors - each with its metadata.

Every export takes *canonical* faces: float ``(B, 3, H, W)`` RGB in ``[0, 1]``, cut with the geometry named in
the metadata (template, size). Normalisation happens inside the exported graph, and it returns
``(quality_raw, quality_0_100)``. The metadata file (``<name>.json``) says everything a consumer needs:
input size and alignment template, colour order, normalisation, the teacher (name and fingerprint) and the
calibration. ONNX exports are checked against PyTorch with onnxruntime before they are kept.
"""

from __future__ import annotations

import contextlib
import json
import logging
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aikd import METADATA_FORMAT, __version__
from aikd.io import atomic_path, write_json
from aikd.models.calibration import Calibration
from aikd.models.student import QualityExport, Student, build_student

log = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "METADATA_FORMAT",
    "export_student",
    "load_student",
    "student_metadata",
    "onnx_parity",
    "quiet_exporters",
]

FORMATS = ("onnx", "torch_export", "torchscript", "safetensors")

#: Loggers of the ONNX exporters' helpers: at INFO they report every optimisation pass (dozens of lines per export).
_EXPORTER_LOGGERS = ("onnxscript", "onnx_ir")


@contextlib.contextmanager
def quiet_exporters() -> Iterator[None]:
    """Silence what the exporters report about their own work while exporting; leave problems visible.

    Tracing (``torch.jit.trace`` and the TorchScript-based ONNX exporter) warns (``TracerWarning``) about the
    input checks in :class:`~aikd.geometry.preprocess.InputSpec`; they are meant to become constants of the graph (the
    exported model has a fixed face size). The dynamo-based ONNX exporter logs every optimisation pass at INFO
    through ``onnxscript`` / ``onnx_ir``. Both buried the one line a user needs (where the files went). Their
    loggers are raised to WARNING only for the duration (then restored), and only those warning categories are
    ignored: exceptions, warnings and errors still show.
    """
    saved: dict[str, int] = {}
    for name in _EXPORTER_LOGGERS:
        logger = logging.getLogger(name)
        saved[name] = logger.level
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            # torch.jit.trace's own deprecation notice: the TorchScript format is an explicit choice of the caller
            warnings.filterwarnings(
                "ignore", message=r"`torch\.jit\.trace(_method)?` is deprecated", category=FutureWarning
            )
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def student_metadata(
    student: Student, teacher: Any | None = None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Everything needed to use an exported student correctly."""
    spec = student.input_spec
    h, w = spec.size
    canvas = getattr(student, "canvas", None)
    return {
        "format": METADATA_FORMAT,
        "aikd_version": __version__,
        "input": {
            "name": "faces",
            "shape": ["batch", 3, h, w],
            "dtype": "float32",
            "range": [0.0, 1.0],
            "colour": "RGB",
            "alignment": spec.geometry.to_dict(),
            # how the training crops were made (photo -> this canvas -> crop); absent when unknown
            **({"canvas": canvas.to_dict()} if canvas is not None else {}),
            "note": "canonical faces: RGB in [0, 1], aligned with the 5-point template above; the model "
            "normalises internally (see network_input)",
        },
        "network_input": spec.to_dict(),
        "outputs": ["quality_raw", "quality_0_100"],
        "student": student.config,
        "teacher": None
        if teacher is None
        else {"name": teacher.name, "fingerprint": teacher.fingerprint, "config": teacher.config},
        "calibration": student.calibration.to_dict(),
        **(extra or {}),
    }


def onnx_parity(model: torch.nn.Module, onnx_path: Path, inputs: torch.Tensor) -> float:
    """Max absolute difference between PyTorch and onnxruntime raw-quality outputs on ``inputs``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"faces": inputs.numpy()})[0]
    with torch.no_grad():
        ref = model(inputs)[0].numpy()
    return float(np.abs(got - ref).max())


def _export_onnx(
    model: QualityExport, example: torch.Tensor, path: Path, opset: int | None, dynamo: bool | None
) -> str:
    # verbose=False: the dynamo exporter otherwise prints a "[torch.onnx] ..." line per phase
    kwargs: dict[str, Any] = {
        "input_names": ["faces"],
        "output_names": ["quality_raw", "quality_0_100"],
        "verbose": False,
    }
    if opset is not None:
        kwargs["opset_version"] = opset
    attempts = [True, False] if dynamo is None else [dynamo]
    last: Exception | None = None
    for use_dynamo in attempts:
        try:
            with atomic_path(path) as tmp:
                if use_dynamo:
                    dyn = {"faces": {0: torch.export.Dim("batch", min=1, max=65536)}}
                    torch.onnx.export(
                        model, (example,), str(tmp), dynamo=True, dynamic_shapes=dyn, external_data=False, **kwargs
                    )
                else:
                    torch.onnx.export(
                        model, (example,), str(tmp), dynamo=False, dynamic_axes={"faces": {0: "batch"}}, **kwargs
                    )
            return "dynamo" if use_dynamo else "torchscript"
        except Exception as err:  # the exporters raise many types; try the other one
            last = err
            log.warning(
                "ONNX export with dynamo=%s failed (%s)%s",
                use_dynamo,
                type(err).__name__,
                "; retrying" if len(attempts) > 1 else "",
            )
    raise RuntimeError(f"ONNX export failed: {last}") from last


def export_student(
    student: Student,
    out_dir: str | Path,
    formats: Sequence[str] = ("onnx", "torch_export", "safetensors"),
    teacher: Any | None = None,
    name: str = "student",
    parity_inputs: torch.Tensor | None = None,
    parity_tolerance: float = 1e-3,
    opset: int | None = None,
    dynamo: bool | None = None,
    extra_metadata: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write the requested formats of ``student`` to ``out_dir`` plus ``<name>.json`` metadata.

    Args:
        student: the trained student (its ``calibration`` is exported with it).
        out_dir: destination directory.
        formats: any of :data:`FORMATS`.
        teacher: the teacher it was distilled from (name and fingerprint go into the metadata).
        name: file stem.
        parity_inputs: faces for the ONNX parity check (default: 8 random canonical faces).
        parity_tolerance: maximum allowed |PyTorch - onnxruntime| on raw quality; beyond it the export fails.
        opset: ONNX opset (default: the exporter's).
        dynamo: ONNX exporter: ``True`` (torch.export-based), ``False`` (TorchScript-based), ``None`` (try both).

    Returns:
        ``{"files": {format: path}, "metadata": path, "onnx_max_abs_diff": float | None}``.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise ValueError(f"unknown export format(s) {unknown}; choose from {FORMATS}")
    with quiet_exporters():
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        student = student.cpu().eval()
        model = QualityExport(student).eval()
        h, w = student.input_spec.size
        example = torch.rand(2, 3, h, w)
        parity_inputs = (
            parity_inputs
            if parity_inputs is not None
            else torch.rand(8, 3, h, w, generator=torch.Generator().manual_seed(0))
        )
        files: dict[str, str] = {}
        info: dict[str, Any] = {"onnx_max_abs_diff": None}
        if "onnx" in formats:
            path = out_dir / f"{name}.onnx"
            info["onnx_exporter"] = _export_onnx(model, example, path, opset, dynamo)
            diff = onnx_parity(model, path, parity_inputs.float())
            info["onnx_max_abs_diff"] = diff
            if not diff <= parity_tolerance:
                path.unlink(missing_ok=True)
                raise RuntimeError(
                    f"ONNX export disagrees with PyTorch (max |diff| {diff:.3g} > {parity_tolerance}); not kept"
                )
            files["onnx"] = str(path)
        if "torch_export" in formats:
            path = out_dir / f"{name}.pt2"
            ep = torch.export.export(
                model, (example,), dynamic_shapes={"faces": {0: torch.export.Dim("batch", min=1, max=65536)}}
            )
            with atomic_path(path) as tmp:
                torch.export.save(ep, str(tmp))
            files["torch_export"] = str(path)
        if "torchscript" in formats:
            path = out_dir / f"{name}.torchscript.pt"
            with torch.no_grad():
                traced = torch.jit.trace(model, example)
            with atomic_path(path) as tmp:
                traced.save(str(tmp))
            files["torchscript"] = str(path)
        meta = student_metadata(
            student, teacher, {**(extra_metadata or {}), **info, "files": {k: Path(v).name for k, v in files.items()}}
        )
        if "safetensors" in formats:
            from safetensors.torch import save_file

            path = out_dir / f"{name}.safetensors"
            state = {k: v.detach().cpu().contiguous() for k, v in student.state_dict().items()}
            with atomic_path(path) as tmp:
                save_file(state, str(tmp), metadata={"aikd": json.dumps(meta)})
            files["safetensors"] = str(path)
            meta["files"]["safetensors"] = path.name
        meta_path = write_json(out_dir / f"{name}.json", meta)
        return {"files": files, "metadata": str(meta_path), **info}


def load_student(path: str | Path) -> Student:
    """Load a student from an aikd safetensors export or a Lightning distillation checkpoint (``.ckpt``).

    Both load safely (safetensors; ``torch.load(weights_only=True)``) and rebuild the architecture from the
    stored student config; the calibration comes back with it.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"student file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("aikd", "{}"))
        if meta.get("format") != METADATA_FORMAT:
            raise ValueError(f"{path}: no aikd student metadata; export it with aikd.serving.export.export_student")
        student = build_student(meta["student"])
        _load_strict(student, load_file(str(path)), path)
        student.calibration = Calibration.from_dict(meta.get("calibration"))
        _restore_spec(student, meta.get("network_input"))
        _restore_canvas(student, (meta.get("input") or {}).get("canvas"))
        return student.eval()
    try:
        ckpt = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{path}: not a loadable checkpoint ({err})") from err
    hp = ckpt.get("hyper_parameters", {}) if isinstance(ckpt, dict) else {}
    if "student_config" not in hp:
        raise ValueError(f"{path}: not an aikd distillation checkpoint (no student_config in hyper_parameters)")
    student = build_student(hp["student_config"])
    state = {k[len("student.") :]: v for k, v in ckpt["state_dict"].items() if k.startswith("student.")}
    _load_strict(student, state, path)
    student.calibration = Calibration.from_dict(hp.get("calibration"))
    _restore_spec(student, hp.get("input_spec"))
    _restore_canvas(student, hp.get("canvas"))
    return student.eval()


def _restore_spec(student: Student, spec: dict[str, Any] | None) -> None:
    """Use the input spec stored with the weights (it can differ from the architecture's default, e.g. a
    student initialised from a teacher that crops tighter)."""
    if spec:
        from aikd.geometry.preprocess import InputSpec

        student.backbone.input_spec = InputSpec.from_dict(spec)


def _restore_canvas(student: Student, canvas: dict[str, Any] | None) -> None:
    """Give the student back the canvas it was trained with (older files have none: the scorer's default)."""
    if canvas:
        from aikd.geometry.align import Canvas

        student.canvas = Canvas.from_dict(canvas)


def _load_strict(student: Student, state: dict[str, torch.Tensor], path: Path) -> None:
    missing, unexpected = student.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit the stored student architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
