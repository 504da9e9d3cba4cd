"""Deterministic synthetic "faces": a stand-in for real face images in the demo and in tests.

**This is not a face model.** The images are cartoon-like faces drawn with OpenCV polygons (ellipses, curves,
flat colours with simple shading). They exist so that the whole pipeline - alignment, teacher training,
distillation, evaluation - can run on a fresh machine in minutes without downloading any data, and so that tests
have data with *exactly known* landmarks and *exactly known* degradations. Figures measured on them say nothing
about real faces; use real data (e.g. CFP through ``$AIKD_DATA``) for anything you report.

What the generator models, and why:

* **Identities** (:class:`Identity`): face width and jaw shape, skin tone, eye spacing/size/tilt/colour, brow
  shape, nose length/width, mouth position/width, lips, ears, hair colour and style, glasses, beard. These are
  drawn once per identity from ``(seed, identity)``, so a small CNN has identity to learn, and most of it sits in
  fine geometry (spacing, shapes) that degradations destroy.
* **Per-image nuisance** (the ``params`` of :meth:`SyntheticFaces.image_params`): roll, yaw (rendered by
  projecting a curved head surface, so features shift and compress horizontally while the outline stays),
  scale, position in the image, image size, illumination (directional gradient, brightness, contrast, white
  balance), expression (smile, open mouth, raised brows, eye openness) and a cluttered background. Alignment
  therefore has real work to do.
* **Graded degradations** with recorded levels in ``[0, 1]``: Gaussian blur, sensor noise, down-scaling (down
  then back up), occlusion (sunglasses bar, random patch or lower-face mask) and JPEG compression. A fraction
  ``degradation`` of images is degraded; the others are clean. Levels are relative to the face's size (blur and
  down-scaling are given in inter-ocular distances), so a level means the same loss of identity information at
  every image size. ``severity = 1 - prod(1 - level)`` combines them.
* **Exact landmarks**: the 5 points (image-left eye centre, image-right eye centre, nose tip, image-left and
  image-right mouth corner) are projected with the very function that projects the drawn polygons, in pixel
  coordinates with pixel centres at integers (the :mod:`aikd.geometry.align` convention). Drawing is super-sampled
  (``_SUPERSAMPLE`` x) and box-filtered down, which keeps anti-aliased shapes centred on their geometry to
  a few hundredths of a pixel.

Every image is a pure function of ``(seed, identity, index)``: :meth:`SyntheticFaces.render` can be called in any
order, from any process, and gives the same bytes. Independent random streams are used for the per-image
parameters, the background and the sensor noise, so overriding one parameter (e.g. forcing ``blur=0.5`` in a
test) leaves everything else about the image unchanged.

On disk (:meth:`SyntheticFaces.write`) the generator writes the generic folder format the real-data loader reads::

    root/id_0007/0003.png        one folder per identity, zero-padded
    root/landmarks.csv           path,left_eye_x,left_eye_y,...,mouth_right_y  (2 decimals; '/' separators)
    root/meta.csv                path,identity,seed,size,yaw,roll,scale,illumination,blur,noise,downscale,
                                 occlusion,severity,jpeg
    root/generator.json          generator parameters + version; an identical file makes a rerun a no-op
"""

from __future__ import annotations

import argparse
import csv
import functools
import io
import json
import logging
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aikd.data.index import LANDMARK_COLUMNS as _INDEX_LANDMARK_COLUMNS
from aikd.io import atomic_path, write_json

__all__ = [
    "VERSION",
    "LANDMARK_COLUMNS",
    "META_COLUMNS",
    "DEGRADATIONS",
    "PARAM_NAMES",
    "CLEAN",
    "FRONTAL",
    "BROKEN_FILES",
    "Identity",
    "SyntheticFaces",
    "identity_name",
    "image_name",
    "degrade",
    "main_generate",
]

log = logging.getLogger(__name__)

#: ``(root, generator spec)`` pairs this process has written or reported up to date. A run's train and val sources
#: share one root and each prepares it: the second answer goes to DEBUG instead of a contradicting "nothing to do".
_REPORTED: set[tuple[str, str]] = set()

#: Bumped whenever the rendering changes, so that datasets written by an older generator are seen as stale.
VERSION = 1

#: Header of the landmarks file written: the generic format of :mod:`aikd.data.index`.
LANDMARK_COLUMNS: tuple[str, ...] = ("path", *_INDEX_LANDMARK_COLUMNS)

#: ``meta.csv`` columns. ``scale`` is the face height (top of head to chin) as a fraction of the image side,
#: ``illumination`` the strength of the directional light gradient, ``yaw``/``roll`` are degrees, the
#: degradation columns are levels in ``[0, 1]``; ``seed`` is the generator seed (``render(identity, index)`` of a
#: generator with that seed reproduces the row); ``jpeg`` comes after ``severity`` so the documented leading
#: columns stay fixed.
META_COLUMNS: tuple[str, ...] = (
    "path",
    "identity",
    "seed",
    "size",
    "yaw",
    "roll",
    "scale",
    "illumination",
    "blur",
    "noise",
    "downscale",
    "occlusion",
    "severity",
    "jpeg",
)

#: Degradations in the order they are applied to an image (occlusion is part of the scene, JPEG comes last).
DEGRADATIONS: tuple[str, ...] = ("occlusion", "blur", "downscale", "noise", "jpeg")

#: Names accepted by ``overrides`` in :meth:`SyntheticFaces.render` / :meth:`SyntheticFaces.image_params`.
PARAM_NAMES: tuple[str, ...] = (
    "size",
    "roll",
    "yaw",
    "scale",
    "shift_x",
    "shift_y",
    "light_angle",
    "illumination",
    "brightness",
    "contrast",
    "white_balance_r",
    "white_balance_b",
    "smile",
    "mouth_open",
    "brow_raise",
    "eye_open",
    "occlusion_kind",
    "occlusion_x",
    "occlusion_y",
    "occlusion_aspect",
    *DEGRADATIONS,
)

#: ``overrides`` that switch every degradation off.
CLEAN: dict[str, float] = {name: 0.0 for name in DEGRADATIONS}
#: ``overrides`` for an upright frontal face.
FRONTAL: dict[str, float] = {"yaw": 0.0, "roll": 0.0}

#: Deliberately broken files written with ``broken=True`` (relative path -> what is wrong with it). All three
#: also have a regular row in ``meta.csv``; the first has a correct landmarks row.
BROKEN_FILES: dict[str, str] = {
    "id_0000/broken_corrupt.png": "image file is truncated garbage after the PNG signature (cannot be decoded)",
    "id_0000/broken_malformed.png": "valid image; its left_eye_x field in landmarks.csv is 'x12.5' (not a number)",
    "id_0000/broken_nolandmarks.png": "valid image; all ten landmark fields of its landmarks.csv row are empty",
}

_SUPERSAMPLE = 3  # drawing resolution factor; box-filtered down (see module docstring)
_HEAD_DEPTH = 1.0  # half-depth of the head surface, in inter-ocular units (drives the yaw projection)
_FACE_HEIGHT = 4.3  # top of hair to chin, in inter-ocular units; what ``scale`` refers to
_STREAM_IDENTITY, _STREAM_PARAMS, _STREAM_SCENE, _STREAM_NOISE = 101, 202, 303, 404


def identity_name(identity: int) -> str:
    """Folder name of an identity (``id_0007``)."""
    return f"id_{identity:04d}"


def image_name(identity: int, index: int) -> str:
    """Path of an image relative to the dataset root, with ``/`` separators (``id_0007/0003.png``)."""
    return f"{identity_name(identity)}/{index:04d}.png"


def _rng(*keys: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(k) for k in keys]))


# ----------------------------------------------------------------------------------------------------------------
# identities


_SKIN_LIGHT = np.array([238.0, 204.0, 180.0])
_SKIN_MID = np.array([198.0, 148.0, 112.0])
_SKIN_DARK = np.array([98.0, 64.0, 46.0])
_HAIR = np.array(
    [
        [28, 24, 22],  # black
        [62, 42, 30],  # dark brown
        [108, 72, 46],  # brown
        [142, 70, 38],  # auburn
        [196, 160, 98],  # blonde
        [226, 204, 152],  # light blonde
        [150, 148, 146],  # grey
        [214, 212, 206],  # white
    ],
    dtype=np.float64,
)
_HAIR_P = np.array([0.22, 0.2, 0.16, 0.08, 0.12, 0.07, 0.09, 0.06])
_IRIS = np.array(
    [[64, 38, 22], [104, 66, 34], [118, 96, 52], [76, 112, 66], [66, 104, 160], [112, 124, 136]], dtype=np.float64
)
_HAIR_STYLES = ("short", "fringe", "long", "bob", "curly", "bald", "side", "bun")
_BEARDS = ("none", "full", "goatee", "moustache", "stubble")
_GLASSES = ("none", "round", "rectangular")


@dataclass(frozen=True)
class Identity:
    """The parameters that make one synthetic person. Lengths are in inter-ocular units of the average face.

    The face frame has its origin between the eyes of the average face, ``x`` to the image right and ``y``
    down; colours are RGB in ``0..255``; angles are degrees. Fields come in groups: head shape (``face_width``
    = cheek half-width, ``head_top``, ``chin``, ``jaw_*``), eyes (``eye_*``, ``iris``), brows (``brow_*``), nose
    (``nose_*``; ``nose_depth`` is how far the tip stands out, which drives its shift under yaw), mouth
    (``mouth_*``, ``lip_*``, ``lips``), hair (``hair*``, ``sideburn``) and accessories (``beard``, ``glasses``).
    The average face's eyes, nose tip and mouth corners sit where the ArcFace template puts them, so frontal
    faces align with a small residual; per-identity deviations from it are part of what makes identities
    differ.
    """

    index: int
    face_width: float
    head_top: float
    chin: float
    jaw_taper: float
    jaw_power: float
    skin: tuple[float, float, float]
    eye_spacing: float
    eye_y: float
    eye_width: float
    eye_height: float
    eye_tilt: float
    iris: tuple[float, float, float]
    brow_height: float
    brow_length: float
    brow_thickness: float
    brow_arch: float
    brow_angle: float
    nose_length: float
    nose_width: float
    nose_depth: float
    mouth_y: float
    mouth_width: float
    lip_upper: float
    lip_lower: float
    lips: tuple[float, float, float]
    ear_size: float
    hair: tuple[float, float, float]
    hair_style: str
    hairline: float
    hair_part: float
    hair_volume: float
    sideburn: float
    beard: str
    glasses: str
    glasses_colour: tuple[float, float, float]

    @classmethod
    def sample(cls, seed: int, identity: int) -> Identity:
        """Draw identity ``identity`` of generator ``seed`` (independent of how many identities exist)."""
        r = _rng(seed, _STREAM_IDENTITY, identity)
        u = r.uniform
        t = u(0.0, 1.0)
        skin = (
            _SKIN_LIGHT + (_SKIN_MID - _SKIN_LIGHT) * min(1.0, 2 * t) + (_SKIN_DARK - _SKIN_MID) * max(0.0, 2 * t - 1)
        )
        skin = np.clip(skin * (1 + r.normal(0, 0.035, 3)), 0, 255)
        hair = _HAIR[r.choice(len(_HAIR), p=_HAIR_P)] * (1 + r.normal(0, 0.08, 3))
        iris = _IRIS[r.integers(len(_IRIS))] * (1 + r.normal(0, 0.08, 3))
        lip_mix = u(0.25, 0.55)
        lips = (skin * (1 - lip_mix) + np.array([182.0, 78.0, 88.0]) * lip_mix) * u(0.72, 0.9)
        style = _HAIR_STYLES[r.integers(len(_HAIR_STYLES))]
        beard = _BEARDS[r.choice(len(_BEARDS), p=[0.62, 0.1, 0.08, 0.1, 0.1])]
        glasses = _GLASSES[r.choice(len(_GLASSES), p=[0.72, 0.14, 0.14])]
        glasses_colour = r.choice([20.0, 60.0, 150.0], size=3) * u(0.6, 1.2)
        return cls(
            index=int(identity),
            face_width=u(0.98, 1.24),
            head_top=-u(1.75, 2.05),
            chin=u(1.72, 2.02),
            jaw_taper=u(0.05, 0.42),
            jaw_power=u(1.7, 3.6),
            skin=_tuple(skin),
            eye_spacing=u(0.92, 1.08),
            eye_y=u(-0.03, 0.03),
            eye_width=u(0.18, 0.26),
            eye_height=u(0.45, 0.62),
            eye_tilt=u(-9.0, 9.0),
            iris=_tuple(np.clip(iris, 0, 255)),
            brow_height=u(0.26, 0.42),
            brow_length=u(0.34, 0.52),
            brow_thickness=u(0.04, 0.12),
            brow_arch=u(0.0, 0.12),
            brow_angle=u(-14.0, 10.0),
            nose_length=u(0.51, 0.65),
            nose_width=u(0.13, 0.24),
            nose_depth=u(0.3, 0.55),
            mouth_y=u(1.08, 1.22),
            mouth_width=u(0.37, 0.47),
            lip_upper=u(0.035, 0.09),
            lip_lower=u(0.05, 0.12),
            lips=_tuple(np.clip(lips, 0, 255)),
            ear_size=u(0.8, 1.2),
            hair=_tuple(np.clip(hair, 0, 255)),
            hair_style=style,
            hairline=-u(0.95, 1.35),
            hair_part=u(-0.45, 0.45),
            hair_volume=u(0.04, 0.22),
            sideburn=u(-0.35, 0.2),
            beard=beard,
            glasses=glasses,
            glasses_colour=_tuple(np.clip(glasses_colour, 0, 255)),
        )


@functools.lru_cache(maxsize=4096)
def _identity(seed: int, identity: int) -> Identity:
    return Identity.sample(seed, identity)  # frozen, so sharing one instance between renders is safe


def _tuple(a: np.ndarray) -> tuple[float, float, float]:
    return (float(a[0]), float(a[1]), float(a[2]))


# ----------------------------------------------------------------------------------------------------------------
# geometry: face frame -> image pixels


class _Pose:
    """Projects face-frame points ``(x, y)`` (plus a depth offset) to output-image pixels.

    The head is a vertical elliptic cylinder: a point at ``x`` sits at depth ``z = D sqrt(1 - (x / W)^2)`` (plus
    any extra depth, e.g. for the nose tip), and yaw maps ``x -> x cos(yaw) + z sin(yaw)``. Central features
    therefore shift and the far half compresses while the outline (``z = 0``) stays - a cheap but consistent
    stand-in for out-of-plane rotation. Roll, scale (pixels per inter-ocular unit) and translation follow.
    """

    def __init__(self, iod: float, roll: float, yaw: float, origin: tuple[float, float], width: float) -> None:
        self.iod = iod
        self.roll = math.radians(roll)
        self.yaw = math.radians(yaw)
        self.origin = np.asarray(origin, dtype=np.float64)
        self.width = width
        c, s = math.cos(self.roll), math.sin(self.roll)
        self.rot = np.array([[c, -s], [s, c]])

    def depth(self, x: np.ndarray) -> np.ndarray:
        return _HEAD_DEPTH * np.sqrt(np.maximum(1.0 - (x / self.width) ** 2, 0.0))

    def __call__(self, pts: np.ndarray, dz: float | np.ndarray = 0.0, surface: bool = True) -> np.ndarray:
        pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
        x, y = pts[:, 0], pts[:, 1]
        z = self.depth(x) + dz if surface else dz
        x = x * math.cos(self.yaw) + z * math.sin(self.yaw)
        out = np.empty_like(pts)
        out[:, 0] = self.origin[0] + self.iod * (self.rot[0, 0] * x + self.rot[0, 1] * y)
        out[:, 1] = self.origin[1] + self.iod * (self.rot[1, 0] * x + self.rot[1, 1] * y)
        return out

    def to_face(self, px: np.ndarray, py: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of the in-plane part (ignores yaw): pixel grids -> face-frame coordinates."""
        dx = (px - float(self.origin[0])) / self.iod
        dy = (py - float(self.origin[1])) / self.iod
        c, s = math.cos(self.roll), math.sin(self.roll)
        return c * dx + s * dy, -s * dx + c * dy


def _ellipse(cx: float, cy: float, a: float, b: float, angle: float = 0.0, n: int = 40) -> np.ndarray:
    t = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    pts = np.stack([a * np.cos(t), b * np.sin(t)], axis=1)
    return _rotate(pts, angle) + np.array([cx, cy])


def _rotate(pts: np.ndarray, angle_deg: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = math.cos(a), math.sin(a)
    return pts @ np.array([[c, -s], [s, c]]).T


def _head_outline(ident: Identity, n: int = 72) -> np.ndarray:
    """Closed face outline (skin region), starting at the image-left cheek line and going over the top."""
    w, c0 = ident.face_width, 0.15
    hu = c0 - ident.head_top
    phi = np.linspace(np.pi, 2 * np.pi, n // 2, endpoint=False)
    upper = np.stack([w * np.cos(phi), c0 + hu * np.sin(phi)], axis=1)
    v = np.sin(np.linspace(0.0, np.pi, n // 2 + 1)) ** 0.7  # 0 -> 1 (chin) -> 0, denser near the chin
    side = np.where(np.arange(v.size) <= v.size // 2, 1.0, -1.0)
    x = side * w * np.sqrt(np.clip(1 - v**ident.jaw_power, 0, None)) * (1 - ident.jaw_taper * v**2)
    lower = np.stack([x, c0 + v * (ident.chin - c0)], axis=1)
    return np.concatenate([upper, lower[:-1]])


def _outline_x(ident: Identity, y: float) -> float:
    """Half-width of the face outline at height ``y`` (upper ellipse part)."""
    c0 = 0.15
    hu = c0 - ident.head_top
    return ident.face_width * math.sqrt(max(0.0, 1 - ((y - c0) / hu) ** 2)) if y < c0 else ident.face_width


# ----------------------------------------------------------------------------------------------------------------
# drawing


class _Painter:
    """Draws face-frame polygons on a super-sampled canvas, with optional alpha, through a :class:`_Pose`."""

    def __init__(self, image: np.ndarray, pose: _Pose, k: int) -> None:
        self.img = image
        self.pose = pose
        self.k = k

    def big(self, px: np.ndarray) -> np.ndarray:
        """Output pixels -> super-sampled pixels (pixel centres at integers in both)."""
        return (px + 0.5) * self.k - 0.5

    def _fixed(self, px: np.ndarray) -> np.ndarray:
        return np.round(self.big(px) * 16).astype(np.int32)

    def fill(self, px: np.ndarray, colour: Sequence[float], alpha: float = 1.0) -> None:
        """Fill a polygon given in OUTPUT pixels."""
        img = self.img
        pts = self._fixed(px)
        colour = tuple(float(c) for c in colour)
        if alpha >= 1.0:
            cv2.fillPoly(img, [pts], colour, cv2.LINE_AA, 4)
            return
        roi, off = self._roi(img, pts, pad=2)
        if roi is None:
            return
        over = roi.copy()
        cv2.fillPoly(over, [pts - off], colour, cv2.LINE_AA, 4)
        cv2.addWeighted(over, alpha, roi, 1 - alpha, 0.0, dst=roi)

    def line(
        self, px: np.ndarray, colour: Sequence[float], width: float, alpha: float = 1.0, closed: bool = False
    ) -> None:
        """Poly-line in OUTPUT pixels, ``width`` in output pixels."""
        pts = self._fixed(px)
        thick = max(1, int(round(width * self.k)))
        colour = tuple(float(c) for c in colour)
        if alpha >= 1.0:
            cv2.polylines(self.img, [pts], closed, colour, thick, cv2.LINE_AA, 4)
            return
        roi, off = self._roi(self.img, pts, pad=thick + 2)
        if roi is None:
            return
        over = roi.copy()
        cv2.polylines(over, [pts - off], closed, colour, thick, cv2.LINE_AA, 4)
        cv2.addWeighted(over, alpha, roi, 1 - alpha, 0.0, dst=roi)

    @staticmethod
    def _roi(img: np.ndarray, pts: np.ndarray, pad: int) -> tuple[np.ndarray | None, np.ndarray]:
        lo = pts.min(0) // 16 - pad
        hi = pts.max(0) // 16 + pad + 1
        x0, y0 = max(0, int(lo[0])), max(0, int(lo[1]))
        x1, y1 = min(img.shape[1], int(hi[0])), min(img.shape[0], int(hi[1]))
        if x1 <= x0 or y1 <= y0:
            return None, np.zeros(2, np.int32)
        return img[y0:y1, x0:x1], np.array([x0 * 16, y0 * 16], np.int32)


def _shade(colour: Sequence[float], f: float) -> tuple[float, float, float]:
    return tuple(float(np.clip(c * f, 0, 255)) for c in colour)  # type: ignore[return-value]


def _mix(a: Sequence[float], b: Sequence[float], t: float) -> tuple[float, float, float]:
    return tuple(float(x * (1 - t) + y * t) for x, y in zip(a, b))  # type: ignore[return-value]


def _background(size: int, k: int, r: np.random.Generator) -> np.ndarray:
    """Smooth two-colour gradient plus random shapes (clutter), at super-sampled resolution."""
    c1, c2 = r.uniform(20, 235, 3), r.uniform(20, 235, 3)
    ang = r.uniform(0, 2 * np.pi)
    small = 32
    yy, xx = np.mgrid[0:small, 0:small] / (small - 1) - 0.5
    t = np.clip(0.5 + xx * math.cos(ang) + yy * math.sin(ang), 0, 1)[..., None]
    grad = (c1 * (1 - t) + c2 * t).astype(np.float32)
    img = cv2.resize(grad, (size * k, size * k), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    n = int(r.integers(3, 10))
    for _ in range(n):
        kind = int(r.integers(4))
        colour = tuple(float(v) for v in r.uniform(0, 255, 3))
        cx, cy = r.uniform(-0.1, 1.1, 2) * size * k
        ext = r.uniform(0.05, 0.35) * size * k
        if kind == 0:
            w, h = ext, ext * r.uniform(0.3, 2.0)
            pts = _rotate(np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2, r.uniform(0, 180)) + [cx, cy]
            cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, 4)
        elif kind == 1:
            pts = _ellipse(cx, cy, ext / 2, ext / 2 * r.uniform(0.4, 1.0), r.uniform(0, 180))
            cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, 4)
        elif kind == 2:
            pts = np.array([[cx, cy], [cx + ext * r.normal(), cy + ext * r.normal()]])
            th = max(1, int(r.uniform(0.005, 0.03) * size * k))
            cv2.polylines(img, [np.round(pts * 16).astype(np.int32)], False, colour, th, cv2.LINE_AA, 4)
        else:
            m = int(r.integers(3, 7))
            pts = np.stack([cx + ext * r.normal(size=m) / 2, cy + ext * r.normal(size=m) / 2], 1)
            cv2.fillPoly(img, [np.round(pts * 16).astype(np.int32)], colour, cv2.LINE_AA, 4)
    return img


def _draw_face(
    paint: _Painter,
    ident: Identity,
    p: Mapping[str, float],
    scene: np.random.Generator,
    mask: np.ndarray,
) -> np.ndarray:
    """Draw the person (hair, body, face, features, glasses) and return the 5 landmarks in output pixels."""
    P = paint.pose
    iod = P.iod
    W = ident.face_width
    skin = ident.skin
    hair = ident.hair
    dark_skin = _shade(skin, 0.72)

    outline = _head_outline(ident)

    # -- hair behind the head
    style = ident.hair_style
    vol = ident.hair_volume
    if style in ("long", "bob", "bun"):
        if style == "bun":
            paint.fill(P(_ellipse(0.25 * ident.hair_part, ident.head_top - 0.3, 0.5, 0.42)), hair)
        else:
            bottom = 2.9 if style == "long" else 1.3
            phi = np.linspace(np.pi, 2 * np.pi, 30)
            top = np.stack(
                [(W + 0.12 + vol) * np.cos(phi), 0.15 + (0.15 - ident.head_top + 0.12 + vol) * np.sin(phi)], 1
            )
            back = np.concatenate(
                [
                    top,
                    [
                        [W + 0.2 + vol, bottom - 0.2],
                        [W * 0.6, bottom],
                        [-W * 0.6, bottom],
                        [-W - 0.2 - vol, bottom - 0.2],
                    ],
                ]
            )
            paint.fill(P(back), _shade(hair, 0.85))

    # -- body: shoulders (clothing colour is per image, so it carries no identity) and neck
    cloth = tuple(float(v) for v in scene.uniform(15, 240, 3))
    shoulders = np.array([[-0.5 * W, 2.3], [-2.3, 2.95], [-3.3, 5.5], [3.3, 5.5], [2.3, 2.95], [0.5 * W, 2.3]])
    paint.fill(P(shoulders, surface=False), cloth)
    collar = np.array([[-0.52 * W, 1.2], [0.52 * W, 1.2], [0.52 * W, 2.5], [0.0, 2.95], [-0.52 * W, 2.5]])
    paint.fill(P(collar, surface=False), _shade(skin, 0.82))

    # -- ears (behind the face outline; negative depth so they move opposite to the features under yaw)
    for sgn in (-1.0, 1.0):
        e = _ellipse(sgn * (W - 0.03), 0.28, 0.15 * ident.ear_size, 0.3 * ident.ear_size, sgn * 8)
        paint.fill(P(e, dz=-0.35, surface=False), _shade(skin, 0.93))
        e2 = _ellipse(sgn * (W + 0.02), 0.3, 0.06 * ident.ear_size, 0.17 * ident.ear_size, sgn * 8)
        paint.fill(P(e2, dz=-0.35, surface=False), _shade(skin, 0.7), alpha=0.6)

    # -- face
    face_px = P(outline)
    paint.fill(face_px, skin)
    cv2.fillPoly(mask, [paint._fixed(face_px)], 255, cv2.LINE_AA, 4)

    # -- beard (under the nose and mouth, which are drawn on top)
    if ident.beard != "none":
        alpha = 0.35 if ident.beard == "stubble" else 0.92
        n_ = ident.nose_length
        if ident.beard in ("full", "stubble"):
            lower = outline[outline[:, 1] > 0.45]
            inner = np.array(
                [
                    [W * 0.85, 0.5],
                    [0.45, n_ + 0.22],
                    [0.15, n_ + 0.2],
                    [-0.15, n_ + 0.2],
                    [-0.45, n_ + 0.22],
                    [-W * 0.85, 0.5],
                ]
            )
            order = np.argsort(np.arctan2(lower[:, 1] - 0.45, lower[:, 0]))
            beard = np.concatenate([lower[order][::-1], inner])
            paint.fill(P(beard), _shade(hair, 0.9), alpha)
        if ident.beard == "goatee":
            paint.fill(P(_ellipse(0.0, ident.chin - 0.2, 0.24, 0.22)), _shade(hair, 0.9), alpha)
        if ident.beard in ("goatee", "moustache"):
            # a crescent from under the nose down past the mouth corners
            um = np.linspace(-1.0, 1.0, 21)
            mw = ident.mouth_width + 0.07
            top = np.stack([mw * um, n_ + 0.13 + (ident.mouth_y - n_ - 0.05) * np.abs(um) ** 2.5], 1)
            bottom = np.stack([mw * um, ident.mouth_y - ident.lip_upper * 0.6 + 0.12 * np.abs(um) ** 3], 1)[::-1]
            paint.fill(P(np.concatenate([top, bottom])), _shade(hair, 0.85), alpha)

    # -- eyes
    eye_open = p["eye_open"]
    a = ident.eye_width
    b_up = ident.eye_height * a * eye_open
    b_lo = ident.eye_height * a * 0.8 * max(eye_open, 0.6)
    r_iris = min(0.62 * ident.eye_height * a * 1.25, 0.55 * a)
    uu = np.linspace(-1.0, 1.0, 25)
    landmarks = []
    lid = (38.0, 28.0, 24.0)
    for sgn in (-1.0, 1.0):
        cx, cy = sgn * ident.eye_spacing / 2, ident.eye_y
        tilt = -sgn * ident.eye_tilt
        centre = np.array([cx, cy])

        def eye_frame(pts: np.ndarray, centre: np.ndarray = centre, tilt: float = tilt) -> np.ndarray:
            return _rotate(pts, tilt) + centre

        dz = 0.12
        # socket shadow, sclera
        paint.fill(P(eye_frame(_ellipse(0, -0.03, a * 1.35, a * 0.75)), dz=dz), dark_skin, alpha=0.18)
        upper = np.stack([a * uu, -b_up * (1 - uu**2) ** 0.75], 1)
        lower = np.stack([a * uu[::-1], b_lo * (1 - uu[::-1] ** 2) ** 0.75], 1)
        paint.fill(P(eye_frame(np.concatenate([upper, lower[1:-1]])), dz=dz), (236, 232, 226))

        def clipped_disc(radius: float) -> np.ndarray:
            t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
            x, y = radius * np.cos(t), radius * np.sin(t)
            q = np.clip(1 - (x / a) ** 2, 0, None) ** 0.75
            return np.stack([x, np.clip(y, -b_up * q, b_lo * q)], 1)

        paint.fill(P(eye_frame(clipped_disc(r_iris)), dz=dz), ident.iris)
        paint.fill(P(eye_frame(clipped_disc(r_iris * 0.45)), dz=dz), (14, 12, 12))
        if b_up > 0.3 * r_iris:
            hl = _ellipse(-0.42 * r_iris, -0.4 * r_iris, 0.14 * r_iris, 0.14 * r_iris, n=12)
            paint.fill(P(eye_frame(hl), dz=dz), (250, 250, 250), alpha=0.85)
        paint.line(P(eye_frame(upper), dz=dz), lid, width=max(0.8, 0.035 * iod))
        paint.line(P(eye_frame(lower), dz=dz), _shade(skin, 0.6), width=max(0.6, 0.02 * iod), alpha=0.45)
        landmarks.append(P(centre[None], dz=dz)[0])

        # brow
        bl, bt = ident.brow_length, ident.brow_thickness
        ub = np.linspace(-1.0, 1.0, 17)
        inner_side = -sgn * ub  # 1 at the inner end (towards the nose)
        th = bt * (0.55 + 0.45 * (inner_side + 1) / 2)
        arch = -ident.brow_arch * (1 - ub**2)
        top = np.stack([ub * bl / 2, arch - th / 2], 1)
        bot = np.stack([ub[::-1] * bl / 2, (arch + th / 2)[::-1]], 1)
        brow = _rotate(np.concatenate([top, bot]), sgn * ident.brow_angle)
        brow += [cx + sgn * 0.04, cy - ident.brow_height - p["brow_raise"]]
        paint.fill(P(brow, dz=0.1), _shade(_mix(hair, (30, 24, 20), 0.35), 0.85), alpha=0.92)

    # -- nose: tip at (0, nose_length), standing out by nose_depth
    n_ = ident.nose_length
    nw = ident.nose_width
    for sgn in (-1.0, 1.0):
        bridge = np.array([[sgn * 0.1, 0.02], [sgn * 0.12, n_ * 0.5], [sgn * nw * 0.85, n_ - 0.05]])
        paint.line(
            P(bridge, dz=np.array([0.2, 0.3, 0.35]) * ident.nose_depth / 0.45),
            dark_skin,
            width=max(0.6, 0.03 * iod),
            alpha=0.28,
        )
        wing = _ellipse(sgn * nw * 0.78, n_ + 0.02, nw * 0.42, 0.085, n=20)[
            [14, 16, 18, 0, 2, 4, 6] if sgn > 0 else [4, 6, 8, 10, 12, 14, 16]
        ]
        paint.line(P(wing, dz=0.3 * ident.nose_depth), _shade(skin, 0.58), width=max(0.7, 0.028 * iod), alpha=0.7)
        nostril = _ellipse(sgn * nw * 0.48, n_ + 0.075, 0.065, 0.032, sgn * 15, n=16)
        paint.fill(P(nostril, dz=0.55 * ident.nose_depth), _shade(skin, 0.35), alpha=0.9)
    paint.fill(P(_ellipse(0.0, n_ - 0.05, 0.075, 0.06, n=16), dz=0.9 * ident.nose_depth), _shade(skin, 1.12), alpha=0.5)
    landmarks.append(P(np.array([[0.0, n_]]), dz=ident.nose_depth)[0])

    # -- mouth: corners are the polygon's end points (the landmarks)
    smile, opening = p["smile"], p["mouth_open"]
    mw = ident.mouth_width * (1 + 0.08 * smile)
    my = ident.mouth_y
    um = np.linspace(-1.0, 1.0, 31)
    line = my - 0.05 * smile * um**2
    bump = (1 - um**2) ** 0.7
    upper = np.stack(
        [mw * um, line - opening * 0.25 * bump - ident.lip_upper * bump * (1 - 0.35 * np.exp(-((um / 0.2) ** 2)))], 1
    )
    lower = np.stack([mw * um, line + opening * bump + ident.lip_lower * bump], 1)[::-1]
    paint.fill(P(np.concatenate([upper, lower[1:-1]])), ident.lips)
    if opening > 0.02:
        inner_up = np.stack([mw * 0.92 * um, line - opening * 0.25 * bump], 1)
        inner_lo = np.stack([mw * 0.92 * um, line + opening * bump], 1)[::-1]
        paint.fill(P(np.concatenate([inner_up, inner_lo])), (52, 22, 26))
        teeth = np.stack([mw * 0.6 * um, line - opening * 0.25 * bump + 0.05 * opening], 1)
        teeth_lo = np.stack([mw * 0.6 * um, line + opening * 0.3 * bump], 1)[::-1]
        paint.fill(P(np.concatenate([teeth, teeth_lo])), (226, 222, 210), alpha=0.9)
    paint.line(P(np.stack([mw * um, line], 1)), _shade(ident.lips, 0.45), width=max(0.7, 0.03 * iod), alpha=0.85)
    landmarks.append(P(np.array([[-mw, my - 0.05 * smile]]))[0])
    landmarks.append(P(np.array([[mw, my - 0.05 * smile]]))[0])

    # -- hair on top of the head
    _draw_cap(paint, ident, outline)

    # -- glasses
    if ident.glasses != "none":
        gc = ident.glasses_colour
        lens = []
        for sgn in (-1.0, 1.0):
            cx = sgn * ident.eye_spacing / 2
            if ident.glasses == "round":
                rim = _ellipse(cx, ident.eye_y + 0.02, 0.31, 0.29, n=40)
            else:
                t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
                c, s = np.cos(t), np.sin(t)
                rim = np.stack(
                    [
                        cx + 0.36 * np.sign(c) * np.abs(c) ** 0.4,
                        ident.eye_y + 0.03 + 0.23 * np.sign(s) * np.abs(s) ** 0.4,
                    ],
                    1,
                )
            lens.append(rim)
            paint.fill(P(rim, dz=0.35), (200, 220, 232), alpha=0.15)
            paint.line(P(rim, dz=0.35), gc, width=max(0.8, 0.045 * iod), closed=True)
            temple = np.array([[sgn * (abs(cx) + 0.33), ident.eye_y - 0.05], [sgn * (W + 0.02), ident.eye_y + 0.05]])
            paint.line(P(temple, dz=np.array([0.3, -0.3]), surface=False), gc, width=max(0.8, 0.04 * iod))
        inner = [lens[0][np.argmax(lens[0][:, 0])], lens[1][np.argmin(lens[1][:, 0])]]
        bridge = np.array([inner[0], [0.0, ident.eye_y - 0.06], inner[1]])
        paint.line(P(bridge, dz=0.35), gc, width=max(0.8, 0.04 * iod))

    return np.stack(landmarks)


def _draw_cap(paint: _Painter, ident: Identity, outline: np.ndarray) -> None:
    """Hair over the top of the head: outer boundary around the skull, inner boundary along the hairline."""
    P = paint.pose
    style = ident.hair_style
    W = ident.face_width
    vol = ident.hair_volume + (0.2 if style == "curly" else 0.0)
    hu = 0.15 - ident.head_top + 0.06 + vol
    ho = W + 0.06 + vol
    sb = ident.sideburn
    phi0 = (
        math.pi - math.asin(np.clip((sb - 0.15) / hu, -1, 1))
        if sb > 0.15
        else math.pi + math.asin(np.clip((0.15 - sb) / hu, -1, 1))
    )
    phi = np.linspace(phi0, 3 * math.pi - phi0, 48)
    rad = 1.0 + (0.06 * np.abs(np.sin(9 * phi)) if style == "curly" else 0.0)
    outer = np.stack([ho * rad * np.cos(phi), 0.15 + hu * rad * np.sin(phi)], 1)

    hl = ident.hairline
    part = ident.hair_part
    xs = np.linspace(0.8, -0.8, 25) * W
    if style in ("fringe", "bob"):
        y = np.full_like(xs, -0.72 + 0.05 * part) + 0.06 * (np.arange(xs.size) % 2)  # jagged bangs
    elif style == "side":
        y = hl + 0.45 * (xs / W - 0.8) * np.sign(part + 1e-9) * 0.5 + 0.2 * (xs / W) ** 2
    else:
        y = hl + 0.25 * (xs / W) ** 2 - 0.12 * np.exp(-(((xs / W) - part) ** 2) / 0.02)  # parting notch
    temple_r = [[_outline_x(ident, sb) - 0.14, sb], [0.86 * W, hl + 0.35]]
    temple_l = [[-0.86 * W, hl + 0.35], [-(_outline_x(ident, sb) - 0.14), sb]]
    cap = np.concatenate([outer, temple_r, np.stack([xs, y], 1), temple_l])
    if style == "bald":  # shaved: a thin, translucent cap
        paint.fill(P(cap), ident.hair, alpha=0.3)
        return
    paint.fill(P(cap), ident.hair)
    # a few strands darker than the hair, so hair is not a flat blob
    strand = _shade(ident.hair, 0.7)
    for f in (-0.5, 0.0, 0.5):
        s = np.array(
            [
                [f * W, ident.head_top - 0.02],
                [f * W * 0.9 + 0.15 * part, (ident.head_top + hl) / 2],
                [f * W * 0.7, hl + 0.02],
            ]
        )
        paint.line(P(s), strand, width=max(0.6, 0.03 * P.iod), alpha=0.5)


# ----------------------------------------------------------------------------------------------------------------
# lighting and degradations


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


def _light(img: np.ndarray, face_mask: np.ndarray, pose: _Pose, ident: Identity, p: Mapping[str, float]) -> np.ndarray:
    """Directional light, face shading, white balance, brightness and contrast (float maths, uint8 out)."""
    h, w = img.shape[:2]
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    fx, fy = pose.to_face(xx, yy)  # broadcast to (h, w)
    ang = p["light_angle"]
    gain = 1.0 + p["illumination"] * np.clip((fx * math.cos(ang) + fy * math.sin(ang)) / 2.2, -1.0, 1.0)
    r2 = (fx / ident.face_width) ** 2 + ((fy - 0.1) / ((ident.chin - ident.head_top) / 2)) ** 2
    shading = 1.0 - 0.28 * np.clip(r2, 0, 1) ** 2 * (face_mask.astype(np.float32) / 255.0)
    out = img.astype(np.float32) * (gain * shading * p["brightness"])[..., None]
    out *= np.array([p["white_balance_r"], 1.0, p["white_balance_b"]], dtype=np.float32)
    mean = out.mean()
    out = (out - mean) * p["contrast"] + mean
    return np.clip(out, 0, 255).round().astype(np.uint8)


# ----------------------------------------------------------------------------------------------------------------
# the generator


@dataclass
class SyntheticFaces:
    """Deterministic generator of synthetic faces with exact landmarks and recorded degradations.

    A stand-in for real faces in the demo and in tests (see the module docstring); not a face model.

    Args:
        n_identities: number of identities written by :meth:`write`.
        images_per_identity: images per identity written by :meth:`write`.
        seed: generator seed; every image is a pure function of ``(seed, identity, index)``.
        min_size: smallest image side in pixels (images are square).
        max_size: largest image side in pixels.
        degradation: fraction of images that get at least one degradation (the rest are clean).
        max_roll: largest in-plane rotation in degrees.
        max_yaw: largest yaw in degrees (rendered by the head-surface projection, see :class:`_Pose`).
        broken: :meth:`write` adds the deliberately broken files of :data:`BROKEN_FILES` (for loader tests).
        workers: processes used by :meth:`write` (``0`` or ``1``: render in this process). Does not change the
            output, so it is not part of ``generator.json``.
    """

    n_identities: int = 40
    images_per_identity: int = 12
    seed: int = 0
    min_size: int = 96
    max_size: int = 224
    degradation: float = 0.35
    max_roll: float = 20.0
    max_yaw: float = 30.0
    broken: bool = False
    workers: int = 0

    def __post_init__(self) -> None:
        if self.n_identities < 1 or self.images_per_identity < 1:
            raise ValueError(
                f"need at least one identity and one image per identity, got n_identities={self.n_identities}, "
                f"images_per_identity={self.images_per_identity}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if not 32 <= self.min_size <= self.max_size:
            raise ValueError(f"need 32 <= min_size <= max_size, got min_size={self.min_size}, max_size={self.max_size}")
        if not 0.0 <= self.degradation <= 1.0:
            raise ValueError(f"degradation is a fraction of images in [0, 1], got {self.degradation}")

    # -- parameters ----------------------------------------------------------------------------------------------

    def identity(self, identity: int) -> Identity:
        """The parameters of ``identity`` (pure function of ``seed`` and ``identity``)."""
        return _identity(self.seed, identity)

    def image_params(self, identity: int, index: int, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
        """The per-image parameters of image ``index`` of ``identity``, without rendering it.

        Every parameter is drawn, always in the same order, from a stream keyed by ``(seed, identity, index)``;
        ``overrides`` then replace individual values (names in :data:`PARAM_NAMES`), leaving the others as they
        were. Degradation levels are 0 for clean images.
        """
        r = _rng(self.seed, _STREAM_PARAMS, identity, index)
        u = r.uniform
        p: dict[str, float] = {
            "size": float(r.integers(self.min_size, self.max_size + 1)),
            "roll": float(np.clip(r.normal(0.0, self.max_roll / 2.5), -self.max_roll, self.max_roll)),
            "yaw": float(np.clip(r.normal(0.0, self.max_yaw / 2.5), -self.max_yaw, self.max_yaw)),
            "scale": u(0.5, 0.9),
            "shift_x": u(-1, 1),
            "shift_y": u(-1, 1),
            "light_angle": u(0, 2 * math.pi),
            "illumination": u(0.0, 0.6),
            "brightness": u(0.75, 1.2),
            "contrast": u(0.75, 1.15),
            "white_balance_r": u(0.9, 1.1),
            "white_balance_b": u(0.9, 1.1),
            "smile": u(-0.25, 0.9),
            "mouth_open": max(0.0, u(-0.25, 0.2)),
            "brow_raise": u(-0.04, 0.1),
            "eye_open": u(0.8, 1.05),
            "occlusion_kind": float(r.integers(3)),
            "occlusion_x": u(0, 1),
            "occlusion_y": u(0, 1),
            "occlusion_aspect": u(0.5, 2.0),
        }
        degraded = u() < self.degradation
        count = int(r.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        chosen = r.permutation(len(DEGRADATIONS))[:count]
        raw = 0.1 + 0.9 * u(size=len(DEGRADATIONS)) ** 1.3  # many moderate levels, a tail of heavy ones
        for i, name in enumerate(DEGRADATIONS):
            p[name] = float(raw[i]) if degraded and i in chosen else 0.0
        if overrides:
            unknown = sorted(set(overrides) - set(PARAM_NAMES))
            if unknown:
                raise KeyError(f"unknown image parameter(s) {unknown}; known: {list(PARAM_NAMES)}")
            p.update({k: float(v) for k, v in overrides.items()})
        for name in DEGRADATIONS:
            if not 0.0 <= p[name] <= 1.0:
                raise ValueError(f"degradation level {name}={p[name]} is outside [0, 1]")
        return p

    @staticmethod
    def severity(params: Mapping[str, float]) -> float:
        """Combined degradation level ``1 - prod(1 - level)`` in ``[0, 1]`` (0: clean)."""
        return float(1.0 - np.prod([1.0 - params.get(name, 0.0) for name in DEGRADATIONS]))

    # -- rendering -----------------------------------------------------------------------------------------------

    def render(
        self, identity: int, index: int, overrides: Mapping[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Render image ``index`` of ``identity``.

        Args:
            identity: identity number (any non-negative integer; :meth:`write` uses ``0..n_identities-1``).
            index: image number within the identity.
            overrides: per-image parameters to force (see :meth:`image_params`), e.g. :data:`CLEAN` or
                :data:`FRONTAL`.

        Returns:
            ``(image, landmarks, meta)``: ``H x W x 3`` uint8 RGB image; ``(5, 2)`` float64 landmarks (image-left
            eye, image-right eye, nose tip, image-left and image-right mouth corner; pixel centres at integers);
            a dict with the ``meta.csv`` fields (``path``, ``identity``, ``seed``, ``size``, ``yaw``, ``roll``,
            ``scale``, ``illumination``, the degradation levels, ``severity``) plus ``index``, ``iod`` (pixels)
            and the remaining parameters.
        """
        if identity < 0 or index < 0:
            raise ValueError(f"identity and index must be non-negative, got {identity}, {index}")
        ident = self.identity(identity)
        p = self.image_params(identity, index, overrides)
        size = int(p["size"])
        k = _SUPERSAMPLE
        scene = _rng(self.seed, _STREAM_SCENE, identity, index)

        iod = p["scale"] * size / _FACE_HEIGHT
        slack = max(0.0, size - p["scale"] * size) / 2 * 0.85
        centre = np.array([size / 2 + p["shift_x"] * slack, size / 2 + p["shift_y"] * slack]) - 0.5
        # the face frame origin (between the eyes) sits above the face's vertical centre
        a = math.radians(p["roll"])
        up = np.array([math.sin(a), -math.cos(a)]) * 0.05 * iod
        pose = _Pose(iod, p["roll"], p["yaw"], (float(centre[0] + up[0]), float(centre[1] + up[1])), ident.face_width)

        big = _background(size, k, scene)
        mask_big = np.zeros(big.shape[:2], np.uint8)
        paint = _Painter(big, pose, k)
        landmarks = _draw_face(paint, ident, p, scene, mask_big)
        if p["occlusion"] > 0:
            poly, colour = _occluder(p, ident, p["occlusion"])
            paint.fill(pose(poly, dz=0.4), colour)
        img = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
        face_mask = cv2.resize(mask_big, (size, size), interpolation=cv2.INTER_AREA)
        img = _light(img, face_mask, pose, ident, p)
        img = degrade(img, p, iod, noise_rng=_rng(self.seed, _STREAM_NOISE, identity, index))

        meta: dict[str, Any] = {
            "path": image_name(identity, index),
            "identity": identity_name(identity),
            "seed": self.seed,
            "size": size,
            "yaw": p["yaw"],
            "roll": p["roll"],
            "scale": p["scale"],
            "illumination": p["illumination"],
            **{name: p[name] for name in DEGRADATIONS},
            "severity": self.severity(p),
            "index": index,
            "iod": iod,
        }
        meta.update({key: value for key, value in p.items() if key not in meta})
        return img, landmarks, meta

    # -- writing -------------------------------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """What ``generator.json`` holds: everything that determines the written files."""
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "workers"}
        return {
            "generator": "aikd.data.synthetic",
            "version": VERSION,
            "params": params,
            "images": self.n_identities * self.images_per_identity,
            "broken_files": sorted(BROKEN_FILES) if self.broken else [],
        }

    def is_current(self, root: str | Path) -> bool:
        """Whether ``root`` already holds exactly what :meth:`write` would write (same ``generator.json``)."""
        root = Path(root)
        try:
            existing = json.loads((root / "generator.json").read_text())
        except (OSError, ValueError):
            return False
        spec = json.loads(json.dumps(self.spec()))
        return existing == spec and (root / "landmarks.csv").is_file() and (root / "meta.csv").is_file()

    def write(self, root: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
        """Write the dataset under ``root`` in the generic folder format; a no-op if it is already there.

        Images go first, then ``landmarks.csv`` and ``meta.csv`` (atomically), and ``generator.json`` last, so a
        folder with a matching ``generator.json`` is always complete. While writing, ``root/.incomplete`` marks
        the folder as this generator's; an interrupted run is cleaned up and redone by the next call.

        Args:
            root: dataset folder (created if missing).
            overwrite: replace a synthetic dataset written with other parameters (one holding a different
                ``generator.json``). Folders holding anything else are never deleted.
            progress: show a tqdm progress bar.

        Returns:
            ``root``.

        Raises:
            FileExistsError: ``root`` holds a synthetic dataset with other parameters and ``overwrite`` is False,
                or holds files that this generator did not write.
        """
        root = Path(root)
        key = (str(root.resolve()), json.dumps(self.spec(), sort_keys=True))
        if self.is_current(root):
            # A run's train and val sources share one root and both prepare it: report it once per process.
            level = logging.DEBUG if key in _REPORTED else logging.INFO
            log.log(level, "synthetic faces in %s are up to date (generator.json matches); nothing to do", root)
            _REPORTED.add(key)
            return root
        self._prepare(root, overwrite)
        root.mkdir(parents=True, exist_ok=True)
        (root / ".incomplete").write_text(json.dumps(self.spec()) + "\n")

        jobs = [(i, j) for i in range(self.n_identities) for j in range(self.images_per_identity)]
        lm_rows: list[list[str]] = []
        meta_rows: list[list[str]] = []
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"synthetic faces -> {root}", unit="img", disable=not progress)
        for png, landmarks, meta in self._rendered(jobs):
            path = root / meta["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(png)
            lm_rows.append(_landmark_row(meta["path"], landmarks))
            meta_rows.append(_meta_row(meta))
            bar.update(1)
        bar.close()
        if self.broken:
            self._write_broken(root, lm_rows, meta_rows)

        _write_csv(root / "landmarks.csv", LANDMARK_COLUMNS, sorted(lm_rows))
        _write_csv(root / "meta.csv", META_COLUMNS, sorted(meta_rows))
        write_json(root / "generator.json", self.spec())
        (root / ".incomplete").unlink()
        log.info("wrote %d synthetic face images to %s", len(jobs), root)
        _REPORTED.add(key)
        return root

    def _prepare(self, root: Path, overwrite: bool) -> None:
        """Make ``root`` safe to write into: empty, or a stale/interrupted synthetic dataset that may be removed."""
        if not root.exists():
            return
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a directory; choose another dataset root")
        entries = list(root.iterdir())
        if not entries:
            return
        ours = (root / "generator.json").is_file() or (root / ".incomplete").is_file()
        if not ours:
            raise FileExistsError(
                f"{root} is not empty and holds no synthetic-faces generator.json; refusing to write into it. "
                "Choose an empty or new folder."
            )
        if (root / "generator.json").is_file() and not (root / ".incomplete").is_file() and not overwrite:
            raise FileExistsError(
                f"{root} holds synthetic faces written with other parameters (its generator.json differs from "
                f"{self.spec()['params']}); pass overwrite=True (CLI: --overwrite) to replace them, "
                "or use another root."
            )
        _remove_generated(root)

    def _rendered(self, jobs: Sequence[tuple[int, int]]) -> Iterator[tuple[bytes, np.ndarray, dict[str, Any]]]:
        if self.workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=self.workers) as ex:
                yield from ex.map(self._render_png, jobs, chunksize=8)
        else:
            for job in jobs:
                yield self._render_png(job)

    def _render_png(self, job: tuple[int, int]) -> tuple[bytes, np.ndarray, dict[str, Any]]:
        img, landmarks, meta = self.render(*job)
        return _png(img), landmarks, meta

    def _write_broken(self, root: Path, lm_rows: list[list[str]], meta_rows: list[list[str]]) -> None:
        for k, rel in enumerate(BROKEN_FILES):
            img, landmarks, meta = self.render(0, self.images_per_identity + k)
            meta["path"] = rel
            png = _png(img)
            if "corrupt" in rel:
                png = png[:8] + bytes(_rng(self.seed, 7).integers(0, 256, 256, dtype=np.uint8))
            with atomic_path(root / rel) as tmp:
                tmp.write_bytes(png)
            row = _landmark_row(rel, landmarks)
            if "malformed" in rel:
                row[1] = "x12.5"
            elif "nolandmarks" in rel:
                row[1:] = [""] * 10
            lm_rows.append(row)
            meta_rows.append(_meta_row(meta))


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _landmark_row(path: str, landmarks: np.ndarray) -> list[str]:
    return [path, *(f"{v:.2f}" for v in np.asarray(landmarks, dtype=np.float64).reshape(-1))]


def _meta_row(meta: Mapping[str, Any]) -> list[str]:
    fmt = {"yaw": "{:.2f}", "roll": "{:.2f}", "scale": "{:.4f}", "illumination": "{:.4f}", "severity": "{:.4f}"}
    fmt.update({name: "{:.4f}" for name in DEGRADATIONS})
    return [fmt[c].format(meta[c]) if c in fmt else str(meta[c]) for c in META_COLUMNS]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _remove_generated(root: Path) -> None:
    """Delete what this generator writes under ``root`` (identity folders and its three files), nothing else."""
    import re

    for entry in root.iterdir():
        if entry.is_dir() and re.fullmatch(r"id_\d{4,}", entry.name):
            shutil.rmtree(entry)
        elif entry.name in ("landmarks.csv", "meta.csv", "generator.json", ".incomplete"):
            entry.unlink()


# ----------------------------------------------------------------------------------------------------------------
# command line


def main_generate(argv: Sequence[str] | None = None) -> int:
    """``aikd generate-faces``: write a synthetic face dataset (a stand-in for real faces, not a face model)."""
    d = SyntheticFaces()
    ap = argparse.ArgumentParser(
        prog="aikd generate-faces",
        description="Write deterministic synthetic faces (cartoon stand-ins for real faces, for demos and tests) "
        "with exact 5-point landmarks and recorded degradation levels, in aikd's generic folder format.",
    )
    ap.add_argument("root", type=Path, help="dataset folder to write (a rerun with the same settings is a no-op)")
    ap.add_argument("--identities", type=int, default=d.n_identities, help="number of identities")
    ap.add_argument("--images", type=int, default=d.images_per_identity, help="images per identity")
    ap.add_argument("--seed", type=int, default=d.seed, help="generator seed")
    ap.add_argument("--min-size", type=int, default=d.min_size, help="smallest image side (px)")
    ap.add_argument("--max-size", type=int, default=d.max_size, help="largest image side (px)")
    ap.add_argument("--degradation", type=float, default=d.degradation, help="fraction of degraded images")
    ap.add_argument("--broken", action="store_true", help=f"also write the broken test files {sorted(BROKEN_FILES)}")
    ap.add_argument("--workers", type=int, default=0, help="render in this many processes")
    ap.add_argument("--overwrite", action="store_true", help="replace a synthetic dataset written with other settings")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    args = ap.parse_args(argv)
    gen = SyntheticFaces(
        n_identities=args.identities,
        images_per_identity=args.images,
        seed=args.seed,
        min_size=args.min_size,
        max_size=args.max_size,
        degradation=args.degradation,
        broken=args.broken,
        workers=args.workers,
    )
    if gen.is_current(args.root):
        print(f"{args.root}: up to date (same generator.json); nothing to do")
        return 0
    try:
        gen.write(args.root, overwrite=args.overwrite, progress=not args.quiet)
    except FileExistsError as e:
        print(f"error: {e}")
        return 2
    print(f"{args.root}: wrote {gen.n_identities * gen.images_per_identity} images, landmarks.csv, meta.csv")
    return 0
