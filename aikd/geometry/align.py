"""Face alignment: 5-point templates, least-squares similarity fits and batched warps.

Conventions used everywhere in aikd:

* Landmarks are ``(..., 5, 2)`` arrays of ``(x, y)`` pixel coordinates in the order left eye, right eye,
  nose tip, left mouth corner, right mouth corner, where "left" means the image-left side (the subject's
  right), as in the ArcFace template and MTCNN output.
* Pixel centres sit at integer coordinates (OpenCV's convention). Transforms are ``2x3`` matrices mapping
  homogeneous source coordinates to destination coordinates (``dst = M @ [x, y, 1]``), the ``cv2.warpAffine``
  convention; :func:`warp` is batched and runs on any device through ``kornia``.
* A :class:`Geometry` says how one model wants its crop cut (template, output size, zoom, or a box crop). A
  :class:`Canvas` is a loose aligned crop with a border; the data pipeline stores faces as canvases so that
  every model's crop and every misalignment can be cut later on the device, from the canvas, without
  border artefacts and without going back to the source image (all crops are affine maps of the source,
  so composing them with the canvas transform is exact).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "TEMPLATES",
    "Template",
    "register_template",
    "Geometry",
    "Canvas",
    "estimate_similarity",
    "apply_affine",
    "compose",
    "invert",
    "template_points",
    "template_matrix",
    "box_matrix",
    "crop_matrix",
    "warp",
    "crop",
    "crop_photo",
    "align",
    "align_image",
    "fit_residual",
]


@dataclass(frozen=True)
class Template:
    """Reference 5-point positions for a crop of ``width`` x ``height`` pixels."""

    points: tuple[tuple[float, float], ...]
    width: int
    height: int

    def array(self) -> np.ndarray:
        return np.asarray(self.points, dtype=np.float64)


#: Named alignment templates. ``arcface`` is the 112x112 template of insightface (ArcFace, CR-FIQA, MagFace,
#: AdaFace); ``sphereface`` is the 96x112 template of SphereFace/CosFace (the same points, 8 px to the left).
TEMPLATES: dict[str, Template] = {}


def register_template(name: str, points: Any, width: int, height: int) -> Template:
    """Add an alignment template under ``name`` (5 points in a ``width`` x ``height`` crop)."""
    pts = np.asarray(points, dtype=np.float64)
    if pts.shape != (5, 2):
        raise ValueError(f"template '{name}' needs 5 (x, y) points, got shape {pts.shape}")
    if name in TEMPLATES:
        raise ValueError(f"template '{name}' already exists")
    TEMPLATES[name] = Template(tuple(map(tuple, pts.tolist())), int(width), int(height))
    return TEMPLATES[name]


_ARCFACE = [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]]
register_template("arcface", _ARCFACE, 112, 112)
register_template("sphereface", [[x - 8.0, y] for x, y in _ARCFACE], 96, 112)


@dataclass(frozen=True)
class Geometry:
    """How a face crop is cut: which template, at which output size, how tight.

    Args:
        size: output side in pixels (square crops), or ``(height, width)``.
        template: a name in :data:`TEMPLATES`, or ``"box"`` for an axis-aligned crop around the landmarks'
            bounding box (no rotation, like a detector box crop).
        zoom: scales the template about the crop centre; ``> 1`` makes the face larger (tighter crop),
            ``< 1`` looser. Ignored for ``"box"`` crops.
        box_scale: box crops only: crop side divided by the larger side of the landmarks' bounding box.
            ``None`` derives it from the ``arcface`` template, so that on an upright frontal face a box crop
            frames the face like the template does.
        box_shift: box crops only: vertical offset of the crop centre from the landmark-box centre, as a
            fraction of the crop side (negative moves the crop up). ``None`` derives it like ``box_scale``.
    """

    size: int | tuple[int, int] = 112
    template: str = "arcface"
    zoom: float = 1.0
    box_scale: float | None = None
    box_shift: float | None = None

    def __post_init__(self) -> None:
        if self.template != "box" and self.template not in TEMPLATES:
            raise KeyError(f"unknown alignment template '{self.template}'. Known: {sorted(TEMPLATES)} or 'box'")
        h, w = self.hw
        if h <= 0 or w <= 0:
            raise ValueError(f"crop size must be positive, got {self.size}")
        if self.zoom <= 0:
            raise ValueError(f"zoom must be positive, got {self.zoom}")

    @property
    def hw(self) -> tuple[int, int]:
        """Output ``(height, width)``."""
        if isinstance(self.size, int):
            return (self.size, self.size)
        h, w = self.size
        return (int(h), int(w))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.hw)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Geometry:
        d = dict(d)
        size = d.pop("size", 112)
        if isinstance(size, (list, tuple)):
            size = int(size[0]) if len(size) == 2 and size[0] == size[1] else (int(size[0]), int(size[1]))
        return cls(size=size, **d)


@dataclass(frozen=True)
class Canvas:
    """A loose aligned crop: the face placed as ``face`` would place it, centred in a ``size`` x ``size`` image.

    The border (``size - face size``) leaves room for rotations, shifts, zoom-outs and box crops applied
    later on the batch.
    """

    size: int = 256
    face: Geometry = field(default_factory=lambda: Geometry(size=160))

    def __post_init__(self) -> None:
        if self.face.template == "box":
            raise ValueError("a canvas must be template-aligned; 'box' is not allowed as canvas face geometry")
        fh, fw = self.face.hw
        if fh > self.size or fw > self.size:
            raise ValueError(f"canvas size {self.size} is smaller than its face crop {self.face.hw}")

    def points(self) -> np.ndarray:
        """Template points in canvas pixel coordinates, shape ``(5, 2)``."""
        fh, fw = self.face.hw
        pts = template_points(self.face)
        return pts + np.array([(self.size - fw) / 2.0, (self.size - fh) / 2.0])

    def matrix(self, landmarks: np.ndarray) -> np.ndarray:
        """``canvas_from_source`` similarity for one face's source landmarks ``(5, 2)``."""
        src = torch.as_tensor(np.asarray(landmarks, dtype=np.float64))[None]
        dst = torch.as_tensor(self.points())[None]
        return estimate_similarity(src, dst)[0].numpy()

    def cut(self, image: np.ndarray, landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Align one ``H x W x C`` uint8 photo onto this canvas on the CPU with OpenCV.

        This is the first of the two resampling steps every face goes through - the data pipeline's
        (:class:`~aikd.data.dataset.AlignedFaces`, hence training, evaluation and caches) and ``aikd score``'s
        (:func:`crop_photo`) - so that a model sees the same pixels wherever its crop is cut. When the canvas
        shrinks the photo by more than 2x, the photo is first reduced by an integer factor with area averaging:
        bilinear warping alone aliases there (thin strands and edges turn into moire on large photos).

        Args:
            image: the source photo.
            landmarks: ``(5, 2)`` source landmarks.

        Returns:
            The ``size x size`` uint8 canvas and its ``2x3`` ``canvas_from_source`` matrix (float64, relative to
            the original photo, whatever the prefilter did).
        """
        import cv2

        m = self.matrix(landmarks)
        scale = math.hypot(m[0, 0], m[0, 1])
        if scale < 0.5:
            f = int(1.0 / scale)
            h0, w0 = image.shape[:2]
            image = cv2.resize(image, (max(1, w0 // f), max(1, h0 // f)), interpolation=cv2.INTER_AREA)
            sx, sy = image.shape[1] / w0, image.shape[0] / h0
            small_from_source = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
            m_warp = (np.vstack([m, [0, 0, 1]]) @ np.linalg.inv(small_from_source))[:2]
        else:
            m_warp = m
        s = self.size
        out = cv2.warpAffine(
            image, m_warp, (s, s), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
        )
        return out, m

    def to_dict(self) -> dict[str, Any]:
        """Plain form (for export metadata and checkpoints): ``{"size": S, "face": geometry dict}``."""
        return {"size": int(self.size), "face": self.face.to_dict()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Canvas:
        return cls(size=int(d["size"]), face=Geometry.from_dict(d["face"]))


def template_points(geometry: Geometry) -> np.ndarray:
    """The 5 template points of ``geometry`` in output pixel coordinates (scaled to its size and zoom)."""
    if geometry.template == "box":
        raise ValueError("a 'box' geometry has no template points")
    t = TEMPLATES[geometry.template]
    h, w = geometry.hw
    # Pixel centres: a template defined for width W maps to width w by scaling about the -0.5 edge.
    sx, sy = w / t.width, h / t.height
    pts = (t.array() + 0.5) * np.array([sx, sy]) - 0.5
    centre = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
    return centre + geometry.zoom * (pts - centre)


def _as_tensor(x: Any, like: Tensor | None = None) -> Tensor:
    if isinstance(x, Tensor):
        return x
    t = torch.as_tensor(np.asarray(x))
    if like is not None:
        t = t.to(device=like.device)
    return t


def estimate_similarity(src: Tensor, dst: Tensor, weights: Tensor | None = None) -> Tensor:
    """Least-squares 2-D similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    This is Umeyama's estimator restricted to proper rotations, in closed form, batched and
    differentiable; it runs on whatever device the inputs are on.

    Args:
        src: ``(B, N, 2)`` source points.
        dst: ``(B, N, 2)`` or ``(N, 2)`` destination points (broadcast over the batch).
        weights: optional ``(B, N)`` or ``(N,)`` non-negative point weights.

    Returns:
        ``(B, 2, 3)`` matrices ``M`` with ``dst ~= M @ [src, 1]``.
    """
    if src.ndim != 3 or src.shape[-1] != 2:
        raise ValueError(f"src must be (B, N, 2), got {tuple(src.shape)}")
    dtype = src.dtype if src.is_floating_point() else torch.float32
    src = src.to(dtype)
    dst = dst.to(device=src.device, dtype=dtype).expand_as(src)
    if weights is None:
        w = torch.ones(src.shape[:2], device=src.device, dtype=dtype)
    else:
        w = weights.to(device=src.device, dtype=dtype).expand(src.shape[:2])
    w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
    mu_s = (w[..., None] * src).sum(1)
    mu_d = (w[..., None] * dst).sum(1)
    s = src - mu_s[:, None]
    d = dst - mu_d[:, None]
    var = (w * (s**2).sum(-1)).sum(1).clamp_min(1e-12)
    a = (w * (s[..., 0] * d[..., 0] + s[..., 1] * d[..., 1])).sum(1) / var
    b = (w * (s[..., 0] * d[..., 1] - s[..., 1] * d[..., 0])).sum(1) / var
    lin = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # (B, 2, 2)
    t = mu_d - (lin @ mu_s[..., None])[..., 0]
    return torch.cat([lin, t[..., None]], dim=-1)


def apply_affine(matrix: Tensor, points: Tensor) -> Tensor:
    """Map ``(B, N, 2)`` points with ``(B, 2, 3)`` matrices."""
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]


def _homogeneous(m: Tensor) -> Tensor:
    bottom = torch.zeros(*m.shape[:-2], 1, 3, dtype=m.dtype, device=m.device)
    bottom[..., 0, 2] = 1
    return torch.cat([m, bottom], dim=-2)


def compose(outer: Tensor, inner: Tensor) -> Tensor:
    """``outer o inner`` for ``(B, 2, 3)`` affine matrices (apply ``inner`` first)."""
    return (_homogeneous(outer) @ _homogeneous(inner))[..., :2, :]


def invert(matrix: Tensor) -> Tensor:
    """Inverse of ``(B, 2, 3)`` affine matrices."""
    return torch.linalg.inv(_homogeneous(matrix))[..., :2, :]


def template_matrix(landmarks: Tensor, geometry: Geometry) -> Tensor:
    """``out_from_source`` similarity fitting ``(B, 5, 2)`` landmarks onto the template of ``geometry``."""
    dst = torch.as_tensor(template_points(geometry), dtype=landmarks.dtype, device=landmarks.device)
    return estimate_similarity(landmarks, dst)


def _box_defaults() -> tuple[float, float]:
    g = Geometry(size=112)
    pts = template_points(g)
    lo, hi = pts.min(0), pts.max(0)
    side = float(max(hi - lo))
    centre_y = float((lo[1] + hi[1]) / 2)
    return 112.0 / side, ((112 - 1) / 2.0 - centre_y) / 112.0


_BOX_SCALE, _BOX_SHIFT = _box_defaults()


def box_matrix(landmarks: Tensor, geometry: Geometry) -> Tensor:
    """``out_from_source`` for an axis-aligned square box crop around the landmarks (no rotation).

    The crop side is ``box_scale`` times the larger side of the 5 points' bounding box and its centre sits
    ``box_shift`` crop sides below (above, if negative) the box centre; the defaults reproduce the framing
    of the ``arcface`` template on an upright frontal face, so a box crop differs from a template crop only
    by what alignment removes (roll, and the scale change that yaw and pitch cause).
    """
    scale = geometry.box_scale if geometry.box_scale is not None else _BOX_SCALE
    shift = geometry.box_shift if geometry.box_shift is not None else _BOX_SHIFT
    lo = landmarks.amin(dim=1)
    hi = landmarks.amax(dim=1)
    side = (hi - lo).amax(dim=1) * scale  # (B,)
    cx = (lo[:, 0] + hi[:, 0]) / 2
    cy = (lo[:, 1] + hi[:, 1]) / 2 + shift * side
    h, w = geometry.hw
    out = max(h, w)
    k = out / side.clamp_min(1e-6)
    zeros = torch.zeros_like(k)
    tx = (w - 1) / 2.0 - k * cx
    ty = (h - 1) / 2.0 - k * cy
    return torch.stack([torch.stack([k, zeros, tx], -1), torch.stack([zeros, k, ty], -1)], -2)


def crop_matrix(landmarks: Tensor, geometry: Geometry, source_from_canvas: Tensor | None = None) -> Tensor:
    """``out_from_X`` matrices for ``geometry`` given ``(B, 5, 2)`` SOURCE-image landmarks.

    Args:
        landmarks: landmarks in source-image pixels.
        geometry: the crop to cut.
        source_from_canvas: if the pixels live on a canvas (see :class:`Canvas`), the ``(B, 2, 3)`` inverse
            canvas transforms; the result then maps canvas pixels to crop pixels.
    """
    m = box_matrix(landmarks, geometry) if geometry.template == "box" else template_matrix(landmarks, geometry)
    if source_from_canvas is not None:
        m = compose(m, source_from_canvas.to(m.dtype))
    return m


def warp(images: Tensor, matrix: Tensor, size: tuple[int, int] | int, padding_mode: str = "zeros") -> Tensor:
    """Warp ``(B, C, H, W)`` images with ``(B, 2, 3)`` ``dst_from_src`` matrices to ``size`` = (h, w).

    Uses bilinear sampling with OpenCV's pixel-centre convention (``align_corners=True`` in kornia), so a crop
    cut here matches ``cv2.warpAffine`` with the same matrix. Integer images are converted to float in
    ``[0, 1]``.
    """
    from kornia.geometry.transform import warp_affine

    if isinstance(size, int):
        size = (size, size)
    if not images.is_floating_point():
        images = images.float() / 255.0
    return warp_affine(
        images,
        matrix.to(images.dtype),
        dsize=tuple(size),
        mode="bilinear",
        padding_mode=padding_mode,
        align_corners=True,
    )


def crop(images: Tensor, landmarks: Tensor, geometry: Geometry, canvas_from_source: Tensor | None = None) -> Tensor:
    """Cut the clean crop of ``geometry``: each face aligned exactly as the model expects, from a batch.

    The crop a teacher scores, the student's clean view, cache entries, evaluation crops and ``aikd score``'s crop
    are all this one function, so that "properly aligned" means the same pixels everywhere. It equals
    :func:`aikd.geometry.misalign.misalign` with :meth:`~aikd.geometry.misalign.MisalignParams.identity` parameters (to
    float precision), without building parameters that do nothing.

    Args:
        images: ``(B, C, H, W)`` canvases (or source images of one size when ``canvas_from_source`` is None);
            integer images are read as ``[0, 255]``.
        landmarks: ``(B, 5, 2)`` source-image landmarks.
        geometry: the crop the model expects.
        canvas_from_source: ``(B, 2, 3)`` canvas transforms of the faces (as :class:`Canvas` and the data
            pipeline give them; inverted here in float64).

    Returns:
        ``(B, C, h, w)`` float crops in ``[0, 1]``.
    """
    m = crop_matrix(
        landmarks.to(torch.float64),
        geometry,
        None if canvas_from_source is None else invert(canvas_from_source.to(torch.float64)),
    )
    return warp(images, m.to(torch.float32), geometry.hw)


def crop_photo(image: np.ndarray, landmarks: np.ndarray, geometry: Geometry, canvas: Canvas) -> np.ndarray:
    """One photo's model crop, cut exactly as the data pipeline cuts it for training and evaluation.

    Scoring a single photo with a student must give the face the pixels the student was trained and evaluated on.
    The data pipeline resamples twice: photo -> ``canvas`` (:meth:`Canvas.cut`, area prefilter on large photos,
    uint8) and canvas -> crop (:func:`crop`, on the batch). Cutting the crop from the photo in one warp
    (:func:`align_image`) differs by several grey levels on large photos; this function repeats both steps,
    including the float32 storage of the landmarks and of the canvas transform, so the crops agree to float
    precision.

    Args:
        image: ``H x W x 3`` uint8 RGB photo.
        landmarks: ``(5, 2)`` source landmarks.
        geometry: the model's crop.
        canvas: the canvas the model was trained with (export metadata ``input.canvas``).

    Returns:
        The canonical face: ``(3, h, w)`` float32 RGB in ``[0, 1]``.
    """
    lm = np.asarray(landmarks, dtype=np.float32)  # stored as float32 by the data pipeline
    pixels, m = canvas.cut(image, lm)
    faces = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))[None].float() / 255.0
    mat = torch.from_numpy(m.astype(np.float32))[None]
    return crop(faces, torch.from_numpy(lm)[None], geometry, mat)[0].numpy()


def align(
    images: Tensor,
    landmarks: Tensor,
    geometry: Geometry,
    source_from_canvas: Tensor | None = None,
) -> Tensor:
    """Cut ``geometry`` crops from a batch: ``(B, C, H, W)`` images (sources or canvases), landmarks in source px.

    Same crop as :func:`crop`, for callers holding the inverse canvas transform (``source_from_canvas``).
    """
    m = crop_matrix(
        landmarks.to(torch.float64), geometry, None if source_from_canvas is None else source_from_canvas.double()
    )
    return warp(images, m.to(torch.float32), geometry.hw)


def align_image(image: np.ndarray, landmarks: np.ndarray, geometry: Geometry | Canvas) -> tuple[np.ndarray, np.ndarray]:
    """Align one ``H x W x C`` uint8 image on the CPU with OpenCV, in one warp from the photo.

    For looking at faces and for tests. It is not the pixels a model is trained, evaluated or scored on: those
    go through a canvas (:func:`crop_photo`), which on large photos differs by a few grey levels.

    Args:
        image: the source image.
        landmarks: ``(5, 2)`` source landmarks.
        geometry: a crop :class:`Geometry` or a :class:`Canvas`.

    Returns:
        The crop and the ``2x3`` ``out_from_source`` matrix (float64).
    """
    import cv2

    lm = torch.as_tensor(np.asarray(landmarks, dtype=np.float64))[None]
    if isinstance(geometry, Canvas):
        m = geometry.matrix(landmarks)
        h = w = geometry.size
    else:
        m = crop_matrix(lm, geometry)[0].numpy()
        h, w = geometry.hw
    crop = cv2.warpAffine(image, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return crop, m


def fit_residual(landmarks: Tensor, geometry: Geometry) -> Tensor:
    """Mean distance (output pixels) between the template points and the fitted landmarks, per face ``(B,)``.

    Large residuals flag landmarks that no similarity maps onto the template: strong yaw, a wrong detection,
    or swapped points.
    """
    lm = landmarks.to(torch.float64)
    m = template_matrix(lm, geometry)
    dst = torch.as_tensor(template_points(geometry), dtype=torch.float64, device=lm.device)
    return (apply_affine(m, lm) - dst).norm(dim=-1).mean(-1)
