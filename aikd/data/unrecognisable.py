"""Heavy image degradations on batches (kornia): the unrecognisable-identity (UI) set of the RI teacher.

The Recognizability Index needs embeddings of faces an FR model cannot recognise. When no such folder is
given, aikd makes them from training faces: strong Gaussian blur, down-scaling to a few pixels, sensor noise and
a random occluding block, each drawn per image. The result keeps face-like layout and colour (so the UI
cluster sits where bad real faces land) but no identity.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["make_unrecognisable"]


def make_unrecognisable(faces: Tensor, generator: torch.Generator | None = None, strength: float = 1.0) -> Tensor:
    """Degrade canonical faces ``(B, 3, H, W)`` in ``[0, 1]`` until identity is gone.

    Args:
        faces: canonical faces.
        generator: CPU generator for reproducible draws.
        strength: scales blur, down-scaling, noise and occlusion (1.0 = the UI set recipe).
    """
    import kornia

    b, _, h, w = faces.shape
    dev = faces.device

    def u(lo: float, hi: float, n: int = b) -> Tensor:
        return (lo + (hi - lo) * torch.rand(n, generator=generator)).to(dev)

    sigma = u(0.04, 0.08) * max(h, w) * strength
    out = torch.stack(
        [
            kornia.filters.gaussian_blur2d(
                faces[i : i + 1], (int(2 * round(3 * float(s)) + 1),) * 2, (float(s), float(s))
            )[0]
            for i, s in enumerate(sigma.clamp_min(0.5))
        ]
    )
    side = (u(6, 14) / max(strength, 1e-3)).round().clamp(4, min(h, w)).long()
    out = torch.stack(
        [
            torch.nn.functional.interpolate(
                torch.nn.functional.interpolate(out[i : i + 1], size=(int(s), int(s)), mode="area"),
                size=(h, w),
                mode="bilinear",
                align_corners=False,
            )[0]
            for i, s in enumerate(side)
        ]
    )
    noise = torch.randn(out.shape, generator=generator).to(dev) * (0.08 * strength)
    out = out + noise
    # One occluding block per face, 30-60% of the side, at a random place.
    for i in range(b):
        bh, bw = int(u(0.3, 0.6, 1) * h * min(strength, 1.0)), int(u(0.3, 0.6, 1) * w * min(strength, 1.0))
        y0 = int(u(0, 1, 1) * max(h - bh, 1))
        x0 = int(u(0, 1, 1) * max(w - bw, 1))
        out[i, :, y0 : y0 + bh, x0 : x0 + bw] = u(0, 1, 1).item()
    return out.clamp(0.0, 1.0)
