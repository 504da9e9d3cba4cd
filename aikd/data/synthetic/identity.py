"""Who a synthetic face is: the per-identity parameters (:class:`Identity`), names on disk and random streams.

Every identity is drawn once from ``(seed, identity)`` through :func:`_rng`; independent streams (the
``_STREAM_*`` keys) feed the identity, the per-image parameters, the scene and the sensor noise, so overriding
one image parameter leaves everything else about the image unchanged.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

__all__ = ["Identity", "identity_name", "image_name"]

#: Keys of the independent random streams (see :func:`_rng`): identity, per-image parameters, scene, noise.
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
