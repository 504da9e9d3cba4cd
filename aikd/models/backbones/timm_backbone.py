"""Any timm model as a face recognition backbone: ``create_backbone("timm/<model_name>")``.

timm gives hundreds of trunks (ResNets, ConvNeXts, EfficientNets, ViTs...); an FR backbone needs an embedding
on top. Face recognition networks end in ``Linear -> BatchNorm1d`` (insightface's ``fc`` + ``features``), and
the same head is used here: pooled trunk features -> ``Linear(num_features, embedding_dim)`` ->
``BatchNorm1d(embedding_dim)``, returned *un-normalised* like the other backbones.

The input spec cuts the ArcFace-template crop at ``input_size`` and normalises with the trunk's own
``pretrained_cfg`` mean/std, so an ImageNet-pretrained trunk sees inputs scaled like its pretraining data.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import Tensor, nn

from aikd.geometry.align import Geometry
from aikd.geometry.preprocess import InputSpec
from aikd.models.backbones.base import FaceBackbone, register_backbone
from aikd.models.backbones.checkpoints import load_state_dict_flexible

__all__ = ["TimmBackbone", "timm_backbone"]


def _triple(values: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
    """A 3-channel statistic from a timm config (which may be missing or single-channel)."""
    if values is None:
        return default
    values = tuple(float(v) for v in values)
    if len(values) == 1:
        values = values * 3
    return values if len(values) == 3 else default  # type: ignore[return-value]


class TimmBackbone(FaceBackbone):
    """A timm trunk (``num_classes=0``, pooled features) plus an FR embedding head.

    Submodules: ``trunk`` (the timm model) and ``embedding`` (``Sequential(Linear, BatchNorm1d)``); a state
    dict of this module saved with ``torch.save``/``safetensors`` loads back through ``weights=``.

    Args:
        model_name: any name accepted by ``timm.create_model``.
        embedding_dim: embedding size.
        input_size: side of the square input crop (ArcFace template scaled to it).
        pretrained: download the trunk's pretrained weights from the timm/Hugging Face hub (needs internet).
        template: alignment template of the crop.
        **timm_kwargs: forwarded to ``timm.create_model`` (e.g. ``img_size=input_size`` for ViTs, whose
            position embeddings are sized for the pretraining resolution, or ``drop_path_rate``).
    """

    def __init__(
        self,
        model_name: str = "resnet18",
        *,
        embedding_dim: int = 512,
        input_size: int = 112,
        pretrained: bool = False,
        template: str = "arcface",
        **timm_kwargs: Any,
    ) -> None:
        super().__init__()
        self.arch = f"timm/{model_name}"
        self.trunk = timm.create_model(model_name, pretrained=pretrained, num_classes=0, **timm_kwargs)
        cfg = dict(getattr(self.trunk, "pretrained_cfg", None) or {})
        self.embedding_dim = int(embedding_dim)
        # With num_classes=0 some trunks (MobileNetV3, EfficientNet-style heads) output head_hidden_size features,
        # not num_features.
        width = int(getattr(self.trunk, "head_hidden_size", None) or self.trunk.num_features)
        self.embedding = nn.Sequential(nn.Linear(width, self.embedding_dim), nn.BatchNorm1d(self.embedding_dim))
        self.input_spec = InputSpec(
            geometry=Geometry(size=input_size, template=template),
            colour="RGB",
            mean=_triple(cfg.get("mean"), IMAGENET_DEFAULT_MEAN),
            std=_triple(cfg.get("std"), IMAGENET_DEFAULT_STD),
        )

    def forward_features(self, x: Tensor) -> Tensor:
        """Normalised input -> raw embedding ``(B, embedding_dim)``."""
        return self.embedding(self.trunk(x))


@register_backbone("timm")
def timm_backbone(
    model_name: str = "resnet18",
    weights: str | Path | None = None,
    embedding_dim: int = 512,
    input_size: int = 112,
    pretrained: bool = False,
    **kw: Any,
) -> TimmBackbone:
    """Build a :class:`TimmBackbone`; ``create_backbone("timm/convnext_tiny")`` routes here.

    Args:
        model_name: timm model name.
        weights: a ``.safetensors`` or ``.pt`` state dict of the whole module (trunk + embedding head), e.g.
            saved from a trained student; loaded strictly.
        embedding_dim: embedding size.
        input_size: input crop side.
        pretrained: fetch timm's pretrained trunk weights from the hub (not possible offline).
        **kw: forwarded to :class:`TimmBackbone` / ``timm.create_model``.
    """
    model = TimmBackbone(model_name, embedding_dim=embedding_dim, input_size=input_size, pretrained=pretrained, **kw)
    if weights is not None:
        load_state_dict_flexible(model, weights)
    return model
