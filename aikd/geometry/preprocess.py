"""What a model wants as input, declared once and applied by the framework.

Published FIQA code leaves users to hand-match crop, colour order and normalisation to each checkpoint, and
mismatches silently produce plausible but wrong scores. In aikd every model (FR backbone, teacher, student)
carries an :class:`InputSpec`; callers always hand over *canonical* faces - float ``(B, 3, H, W)`` RGB in
``[0, 1]`` cut with the spec's :class:`~aikd.geometry.align.Geometry` - and the model calls :meth:`InputSpec.normalize`
itself.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from aikd.geometry.align import Geometry

__all__ = ["InputSpec"]


@dataclass(frozen=True)
class InputSpec:
    """Input contract of a model.

    Args:
        geometry: how the face crop is cut (template, size, zoom or box crop).
        colour: channel order the network was trained with, ``"RGB"`` or ``"BGR"``.
        mean: per-channel mean subtracted after scaling to ``value_range`` (in the network's channel order).
        std: per-channel divisor.
        value_range: the pixel range the ``mean``/``std`` refer to: ``1.0`` for ``[0, 1]`` inputs, ``255.0`` for
            networks trained on ``0..255`` values.
        standardize: ``"none"`` or ``"prewhiten"`` (FaceNet: per-image ``(x - mean) / max(std, 1/sqrt(n))`` on
            ``0..255`` values, applied instead of ``mean``/``std``).
    """

    geometry: Geometry = field(default_factory=Geometry)
    colour: str = "RGB"
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    value_range: float = 1.0
    standardize: str = "none"

    def __post_init__(self) -> None:
        if self.colour not in ("RGB", "BGR"):
            raise ValueError(f"colour must be 'RGB' or 'BGR', got {self.colour!r}")
        if self.standardize not in ("none", "prewhiten"):
            raise ValueError(f"standardize must be 'none' or 'prewhiten', got {self.standardize!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need 3 values each, std > 0")

    @property
    def size(self) -> tuple[int, int]:
        """Input ``(height, width)``."""
        return self.geometry.hw

    def normalize(self, x: Tensor) -> Tensor:
        """Canonical ``(B, 3, H, W)`` RGB ``[0, 1]`` faces -> the tensor the network expects."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected canonical faces (B, 3, H, W), got {tuple(x.shape)}")
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(
                f"faces are {tuple(x.shape[-2:])} but this model expects {self.size} "
                f"({self.geometry.template} crop); cut them with aikd.geometry.align using the model's "
                "input_spec.geometry"
            )
        if self.colour == "BGR":
            x = x.flip(1)
        x = x * self.value_range
        if self.standardize == "prewhiten":
            n = x[0].numel()
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True, unbiased=False).clamp_min(1.0 / math.sqrt(n))
            return (x - mean) / std
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly form, stored in checkpoints and export metadata."""
        d = asdict(self)
        d["geometry"] = self.geometry.to_dict()
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSpec:
        d = dict(d)
        geometry = d.pop("geometry", None)
        g = Geometry.from_dict(geometry) if isinstance(geometry, dict) else (geometry or Geometry())
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(float(v) for v in d[k])
        return cls(geometry=g, **d)
