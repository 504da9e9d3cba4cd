"""Drawing one synthetic face: head geometry, the pose projection, the painter, background and lighting.

Face-frame polygons (inter-ocular units, origin between the eyes) go through :class:`_Pose` (a curved head
surface, so yaw shifts features but not the outline) onto a super-sampled canvas; the generator box-filters it
down, which keeps anti-aliased shapes centred on their geometry, so the landmarks projected by the same
:class:`_Pose` are exact.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import cv2
import numpy as np

from aikd.data.synthetic.identity import Identity

_SUPERSAMPLE = 3  # drawing resolution factor; box-filtered down (see :mod:`aikd.data.synthetic`)
_HEAD_DEPTH = 1.0  # half-depth of the head surface, in inter-ocular units (drives the yaw projection)
_FACE_HEIGHT = 4.3  # top of hair to chin, in inter-ocular units; what ``scale`` refers to


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
# lighting


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
