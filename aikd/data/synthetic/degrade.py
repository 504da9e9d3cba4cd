"""Graded degradations of synthetic faces: which ones exist, the occluder drawn into the scene, and :func:`degrade`.

Levels are in ``[0, 1]`` and relative to the face's size, so a level costs the same identity information at
every image size; the generator records them per image in ``meta.csv``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import cv2
import numpy as np

from aikd.data.synthetic.identity import Identity

__all__ = ["DEGRADATIONS", "CLEAN", "degrade"]

#: Degradations in the order they are applied to an image (occlusion is part of the scene, JPEG comes last).
DEGRADATIONS: tuple[str, ...] = ("occlusion", "blur", "downscale", "noise", "jpeg")

#: ``overrides`` that switch every degradation off.
CLEAN: dict[str, float] = {name: 0.0 for name in DEGRADATIONS}


def _occluder(p: Mapping[str, float], ident: Identity, level: float) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Occluder polygon in the face frame covering about ``0.5 * level`` of the face area, and its colour."""
    area = 0.5 * level * math.pi * ident.face_width * (ident.chin - ident.head_top) / 2
    kind = int(p["occlusion_kind"]) % 3
    if kind == 0:  # sunglasses / bar over the eyes
        w = 2 * ident.face_width + 0.1
        h = area / w
        cy = ident.eye_y + 0.1 * (p["occlusion_y"] - 0.5)
        poly = np.array([[-w / 2, cy - h / 2], [w / 2, cy - h / 2], [w / 2, cy + h / 2], [-w / 2, cy + h / 2]])
        return poly, (22.0, 22.0, 26.0)
    if kind == 1:  # random patch
        aspect = p["occlusion_aspect"]
        w = math.sqrt(area * aspect)
        h = area / w
        cx = (p["occlusion_x"] - 0.5) * 1.4 * ident.face_width
        cy = ident.head_top + 0.6 + p["occlusion_y"] * (ident.chin - ident.head_top - 1.0)
        poly = np.array(
            [[cx - w / 2, cy - h / 2], [cx + w / 2, cy - h / 2], [cx + w / 2, cy + h / 2], [cx - w / 2, cy + h / 2]]
        )
        colour = (60 + 160 * p["occlusion_x"], 60 + 160 * p["occlusion_y"], 60 + 160 * (1 - p["occlusion_aspect"] / 2))
        return poly, colour
    # lower-face mask from the chin up
    w = 2 * ident.face_width + 0.1
    h = area / w
    bottom = ident.chin + 0.1
    poly = np.array([[-w / 2, bottom - h], [w / 2, bottom - h], [w / 2 * 0.85, bottom], [-w / 2 * 0.85, bottom]])
    return poly, (196.0, 214.0, 228.0)


def degrade(
    image: np.ndarray,
    levels: Mapping[str, float],
    iod: float,
    noise_rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Apply blur, down-scaling, noise and JPEG at the given levels (occlusion is drawn into the scene instead).

    Levels are relative to the face so that a level costs the same identity information at any image size:

    * ``blur``: Gaussian, sigma = ``0.3 * level * iod`` pixels (``iod`` = inter-ocular distance in pixels);
    * ``downscale``: down with area averaging so the inter-ocular distance becomes ``iod * (2.5 / iod) ** level``
      pixels (2.5 px at level 1), then back up bilinearly to the original size;
    * ``noise``: additive Gaussian sensor noise, sigma = ``60 * level`` grey levels, independent per channel;
    * ``jpeg``: JPEG quality ``95 - 90 * level``.

    Args:
        image: ``H x W x 3`` uint8 RGB.
        levels: degradation name -> level in ``[0, 1]``; missing names count as 0.
        iod: inter-ocular distance of the face in pixels.
        noise_rng: generator for the noise (a fixed default keeps the function deterministic).

    Returns:
        The degraded uint8 image (a new array).
    """
    out = image.copy()
    h, w = out.shape[:2]
    blur = float(levels.get("blur", 0.0))
    if blur > 0:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=max(0.3, 0.3 * blur * iod), borderType=cv2.BORDER_REFLECT)
    down = float(levels.get("downscale", 0.0))
    if down > 0 and iod > 2.5:
        f = (2.5 / iod) ** down
        sw, sh = max(2, int(round(w * f))), max(2, int(round(h * f)))
        small = cv2.resize(out, (sw, sh), interpolation=cv2.INTER_AREA)
        out = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    noise = float(levels.get("noise", 0.0))
    if noise > 0:
        rng = noise_rng if noise_rng is not None else np.random.default_rng(0)
        n = rng.standard_normal(out.shape, dtype=np.float32) * (60.0 * noise)
        out = np.clip(out.astype(np.float32) + n, 0, 255).round().astype(np.uint8)
    jpeg = float(levels.get("jpeg", 0.0))
    if jpeg > 0:
        q = int(round(95 - 90 * jpeg))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, q])
        if not ok:  # pragma: no cover - OpenCV always encodes uint8 images
            raise RuntimeError("JPEG encoding failed")
        out = np.ascontiguousarray(cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1])
    return out
