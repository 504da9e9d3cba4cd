"""Score calibration: raw quality scores -> a bounded 0..100 scale.

Raw FIQA scores live on arbitrary scales (CR-FIQA's head output is unbounded, MagFace norms sit around 20-30),
so users cannot compare teachers or set thresholds across them. A :class:`Calibration` is a monotone
non-decreasing map fitted once on a reference set of raw scores and stored with the model (and in export
metadata):

* ``"ecdf"`` (default) - the empirical CDF of the reference scores, piecewise linear between quantile knots:
  a calibrated score of 73 means "better than 73% of the reference set";
* ``"logistic"`` - ``100 * sigmoid((x - centre) / scale)`` as OFIQ does for MagFace (there with
  :data:`OFIQ_MAGFACE_CENTRE` and :data:`OFIQ_MAGFACE_SCALE`, then rounded: :func:`magface_ofiq_score`); fitted
  here with centre = median and scale = IQR / (2 ln 3), which makes the logistic's quartiles match the reference
  quartiles.

Both are written with elementwise ops only, so they export to ONNX inside a model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = ["Calibration", "OFIQ_MAGFACE_CENTRE", "OFIQ_MAGFACE_SCALE", "magface_ofiq_score"]

#: OFIQ's (ISO/IEC 29794-5 reference implementation) MagFace mapping is ``100 * sigmoid((norm - centre) / scale)``
#: with this centre and scale, tuned to the released MagFace model's norms (about 15-35). Named once here: the
#: MagFace teacher's OFIQ calibration and :func:`magface_ofiq_score` must agree to the last digit.
OFIQ_MAGFACE_CENTRE = 23.0
OFIQ_MAGFACE_SCALE = 2.6


@dataclass
class Calibration:
    """Monotone map from raw scores to ``[0, 100]``.

    Attributes:
        kind: ``"ecdf"``, ``"logistic"`` or ``"identity"`` (clip raw scores into ``[0, 100]``).
        knots: ``"ecdf"``: increasing raw-score knots.
        levels: ``"ecdf"``: calibrated values (0..100) at the knots.
        centre, scale: ``"logistic"`` parameters.
        n_reference: size of the set it was fitted on.
    """

    kind: str = "identity"
    knots: list[float] = field(default_factory=list)
    levels: list[float] = field(default_factory=list)
    centre: float = 0.0
    scale: float = 1.0
    n_reference: int = 0

    def __post_init__(self) -> None:
        if self.kind not in ("ecdf", "logistic", "identity"):
            raise ValueError(f"calibration kind must be 'ecdf', 'logistic' or 'identity', got {self.kind!r}")
        if self.kind == "ecdf":
            if len(self.knots) < 2 or len(self.knots) != len(self.levels):
                raise ValueError("an ecdf calibration needs >= 2 knots and as many levels")
            if np.any(np.diff(self.knots) <= 0) or np.any(np.diff(self.levels) < 0):
                raise ValueError("ecdf knots must increase strictly and levels must not decrease")
        if self.kind == "logistic" and not self.scale > 0:
            raise ValueError("logistic scale must be > 0")

    @classmethod
    def fit(cls, raw: Any, kind: str = "ecdf", n_knots: int = 101) -> Calibration:
        """Fit on reference raw scores (NaNs ignored)."""
        x = np.asarray(raw, dtype=np.float64).reshape(-1)
        x = x[np.isfinite(x)]
        if x.size < 2:
            raise ValueError(f"need at least 2 finite reference scores to fit a calibration, got {x.size}")
        if kind == "logistic":
            q1, med, q3 = np.quantile(x, [0.25, 0.5, 0.75])
            scale = (q3 - q1) / (2 * math.log(3.0))
            if not scale > 0:
                scale = max(float(np.std(x)), 1e-6)
            return cls("logistic", centre=float(med), scale=float(scale), n_reference=int(x.size))
        if kind == "identity":
            return cls("identity", n_reference=int(x.size))
        if kind != "ecdf":
            raise ValueError(f"unknown calibration kind {kind!r}")
        probs = np.linspace(0.0, 1.0, n_knots)
        knots = np.quantile(x, probs)
        keep = np.concatenate([[True], np.diff(knots) > 1e-12 * max(1.0, float(np.abs(knots).max()))])
        knots, probs = knots[keep], probs[keep]
        if knots.size < 2:  # all reference scores equal: a step at that value
            v = float(knots[0])
            knots, probs = np.array([v - 1e-6, v + 1e-6]), np.array([0.0, 1.0])
        return cls("ecdf", knots=knots.tolist(), levels=(100.0 * probs).tolist(), n_reference=int(x.size))

    def __call__(self, raw: Tensor) -> Tensor:
        """Calibrated scores in ``[0, 100]`` (same shape as ``raw``; torch, differentiable, ONNX-friendly)."""
        if not isinstance(raw, Tensor):
            return self(torch.as_tensor(np.asarray(raw, dtype=np.float64))).numpy()
        x = raw.to(torch.float64) if raw.dtype == torch.float64 else raw.float()
        if self.kind == "identity":
            out = x.clamp(0.0, 100.0)
        elif self.kind == "logistic":
            out = 100.0 * torch.sigmoid((x - self.centre) / self.scale)
        else:
            knots = torch.tensor(self.knots, dtype=x.dtype, device=x.device)
            levels = torch.tensor(self.levels, dtype=x.dtype, device=x.device)
            widths = knots[1:] - knots[:-1]
            slopes = (levels[1:] - levels[:-1]) / widths
            seg = torch.minimum(torch.clamp(x[..., None] - knots[:-1], min=0.0), widths)
            out = levels[0] + (seg * slopes).sum(-1)
        return out.clamp(0.0, 100.0).to(raw.dtype if raw.is_floating_point() else torch.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "knots": list(map(float, self.knots)),
            "levels": list(map(float, self.levels)),
            "centre": float(self.centre),
            "scale": float(self.scale),
            "n_reference": int(self.n_reference),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Calibration:
        return cls(**d) if d else cls()


def magface_ofiq_score(norm: float | np.ndarray | Tensor) -> float | np.ndarray | Tensor:
    """OFIQ's (ISO/IEC 29794-5 reference implementation) MagFace mapping to 0..100.

    ``Q = round(clip(100 * sigmoid((x - centre) / scale), 0, 100))`` with OFIQ's centre and scale
    (:data:`OFIQ_MAGFACE_CENTRE`, :data:`OFIQ_MAGFACE_SCALE`). Rounding is half away from zero (C/C++ ``std::round``;
    for these non-negative values ``floor(v + 0.5)``), not Python's/torch's half-to-even.
    Returns the input's kind: a float for a scalar, an array for an array, a float tensor for a tensor.
    """
    if isinstance(norm, Tensor):
        x = norm.double() if norm.dtype == torch.float64 else norm.float()
        return torch.floor(
            (100.0 * torch.sigmoid((x - OFIQ_MAGFACE_CENTRE) / OFIQ_MAGFACE_SCALE)).clamp(0.0, 100.0) + 0.5
        )
    x = np.asarray(norm, dtype=np.float64)
    out = np.floor(np.clip(100.0 / (1.0 + np.exp(-(x - OFIQ_MAGFACE_CENTRE) / OFIQ_MAGFACE_SCALE)), 0.0, 100.0) + 0.5)
    return float(out) if out.ndim == 0 else out
