"""Blocks per stage of the iResNet families, by registered backbone name.

The networks (:mod:`aikd.models.backbones.iresnet`, :mod:`aikd.models.backbones.irse`) are built from these tables,
and the checkpoint reader (:mod:`aikd.models.backbones.checkpoints`) infers a file's architecture from its block
counts with them. They live here, below both, so that the networks can use the checkpoint reader to load weights
without it importing them back.
"""

from __future__ import annotations

__all__ = ["IRESNET_LAYERS", "IR_UNITS"]

#: Residual blocks per stage for each depth (the insightface definitions).
IRESNET_LAYERS: dict[str, tuple[int, int, int, int]] = {
    "iresnet18": (2, 2, 2, 2),
    "iresnet34": (3, 4, 6, 3),
    "iresnet50": (3, 4, 14, 3),
    "iresnet100": (3, 13, 30, 3),
}

#: Blocks per stage. AdaFace's "IR-101" has 100 layers (3-13-30-3), the same depth as insightface's iResNet-100.
IR_UNITS: dict[str, tuple[int, int, int, int]] = {
    "ir_18": (2, 2, 2, 2),
    "ir_34": (3, 4, 6, 3),
    "ir_50": (3, 4, 14, 3),
    "ir_101": (3, 13, 30, 3),
}
