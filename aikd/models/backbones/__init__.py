"""Face recognition backbones: one registry, one factory (``create_backbone``).

Importing this package registers the built-in backbones.
"""

from aikd.models.backbones import facenet as _facenet  # noqa: F401  (registers "facenet")
from aikd.models.backbones import fastfacenet as _fastfacenet  # noqa: F401  (registers "fastfacenet")
from aikd.models.backbones import iresnet as _iresnet  # noqa: F401  (registers "iresnet18/34/50/100")
from aikd.models.backbones import irse as _irse  # noqa: F401  (registers "ir_18", "ir_50", "ir_101")
from aikd.models.backbones import mobilefacenet as _mobilefacenet  # noqa: F401  (registers "mobilefacenet")
from aikd.models.backbones import sface as _sface  # noqa: F401  (registers "sface")
from aikd.models.backbones import timm_backbone as _timm_backbone  # noqa: F401  (registers "timm")
from aikd.models.backbones.base import (
    BACKBONES,
    TRAINABLE_MODES,
    FaceBackbone,
    create_backbone,
    list_backbones,
    parse_trainable,
    register_backbone,
    set_trainable,
)

__all__ = [
    "BACKBONES",
    "TRAINABLE_MODES",
    "FaceBackbone",
    "create_backbone",
    "list_backbones",
    "parse_trainable",
    "register_backbone",
    "set_trainable",
]
