"""Misalignment: the perturbations a FIQA method must become robust to, applied on the batch, on the device.

Design (after kornia): random parameter *sampling* is separate from the deterministic *application*.

* :class:`MisalignParams` holds per-sample parameters in the units users think in: landmark displacements in
  source-image pixels, rotation in degrees, zoom factors, shifts as fractions of the crop, box-crop and
  template-switch choices.
* :func:`misalign_matrix` / :func:`misalign` are pure functions of (canvas, landmarks, geometry, params): the
  same parameters always give the same crops, so evaluation conditions are exactly reproducible.
* :class:`Misalignment` modules sample parameters (training: from a generator; evaluation:
  :meth:`Misalignment.sample_for_indices`, seeded per sample index so a face gets the same perturbation
  whatever batch it lands in) and apply them. Components compose with :class:`Compose` (all of them) and
  :class:`OneOf` (one per sample, e.g. the ``mixed`` preset).

Perturbations:

* :class:`LandmarkJitter` - the AI-KD perturbation: ``U[-p, p]`` noise on each landmark coordinate, in source
  pixels (or as a fraction of the inter-ocular distance, which means the same thing on 150 px and 2,000 px
  images), then the similarity is re-estimated;
* :class:`RandomAffine` - rotation, zoom and shift of the aligned crop;
* :class:`BoxCrop` - crop the landmarks' bounding box without rotation (what a detector-box pipeline does);
* :class:`TemplateSwitch` - align to another template or template scale than the model expects.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import Any

import torch
from torch import Tensor, nn

from aikd.geometry.align import Geometry, apply_affine, compose, crop_matrix, invert, warp

__all__ = [
    "MisalignParams",
    "misalign_matrix",
    "misalign",
    "Misalignment",
    "NoMisalign",
    "LandmarkJitter",
    "RandomAffine",
    "BoxCrop",
    "DetectorShift",
    "TemplateSwitch",
    "Compose",
    "OneOf",
    "inter_ocular",
]


def inter_ocular(landmarks: Tensor) -> Tensor:
    """Inter-ocular distance ``(B,)`` of ``(B, 5, 2)`` landmarks."""
    return (landmarks[:, 0] - landmarks[:, 1]).norm(dim=-1)


@dataclass
class MisalignParams:
    """Per-sample perturbation parameters (identity values mean "aligned as the model expects").

    Attributes:
        jitter: ``(B, 5, 2)`` landmark displacement in source pixels, added before the similarity fit.
        angle: ``(B,)`` rotation of the face in the crop about its centre, degrees (positive = clockwise on screen).
        scale: ``(B,)`` zoom of the crop about its centre (``> 1`` face larger).
        shift: ``(B, 2)`` translation of the face in the crop, as fractions of the crop width and height.
        box: ``(B,)`` bool, cut an axis-aligned box crop (no rotation) instead of a template crop.
        template: ``(B,)`` int64, ``-1`` = the model's own template, ``k`` = ``templates[k]``.
        templates: alternative ``(template name, zoom)`` choices referenced by ``template``.
    """

    jitter: Tensor
    angle: Tensor
    scale: Tensor
    shift: Tensor
    box: Tensor
    template: Tensor
    templates: tuple[tuple[str, float], ...] = ()

    @classmethod
    def identity(
        cls, batch: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
    ) -> MisalignParams:
        """Parameters that leave every face aligned as the model expects."""
        kw = {"device": device, "dtype": dtype}
        return cls(
            jitter=torch.zeros(batch, 5, 2, **kw),
            angle=torch.zeros(batch, **kw),
            scale=torch.ones(batch, **kw),
            shift=torch.zeros(batch, 2, **kw),
            box=torch.zeros(batch, dtype=torch.bool, device=device),
            template=torch.full((batch,), -1, dtype=torch.int64, device=device),
        )

    def __len__(self) -> int:
        return self.angle.shape[0]

    def tensors(self) -> dict[str, Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "templates"}

    def select(self, mask: Tensor, other: MisalignParams) -> MisalignParams:
        """Per sample: ``self`` where ``mask`` is True, ``other`` elsewhere (templates merged)."""
        templates, remap_other = _merge_templates(self.templates, other.templates)
        out = {}
        for name, a in self.tensors().items():
            b = getattr(other, name)
            if name == "template":
                b = torch.where(b >= 0, remap_other.to(b.device)[b.clamp_min(0)], b)
            m = mask.view(-1, *([1] * (a.ndim - 1)))
            out[name] = torch.where(m, a, b)
        return MisalignParams(**out, templates=templates)

    def to(self, device: torch.device | str) -> MisalignParams:
        return MisalignParams(**{k: v.to(device) for k, v in self.tensors().items()}, templates=self.templates)

    @staticmethod
    def cat(items: Sequence[MisalignParams]) -> MisalignParams:
        """Concatenate along the batch (templates merged)."""
        templates: tuple[tuple[str, float], ...] = ()
        parts = []
        for p in items:
            templates, remap = _merge_templates(templates, p.templates)
            t = p.template
            t = torch.where(t >= 0, remap.to(t.device)[t.clamp_min(0)], t) if len(p.templates) else t
            parts.append(replace(p, template=t))
        return MisalignParams(
            **{k: torch.cat([getattr(p, k) for p in parts]) for k in parts[0].tensors()}, templates=templates
        )


def _merge_templates(
    a: tuple[tuple[str, float], ...], b: tuple[tuple[str, float], ...]
) -> tuple[tuple[tuple[str, float], ...], Tensor]:
    merged = list(a)
    remap = []
    for t in b:
        if t not in merged:
            merged.append(t)
        remap.append(merged.index(t))
    return tuple(merged), torch.as_tensor(remap if remap else [0], dtype=torch.int64)


def _post_affine(params: MisalignParams, h: int, w: int, dtype: torch.dtype) -> Tensor:
    """``(B, 2, 3)`` rotation/zoom/shift about the crop centre (kornia's affine parametrisation)."""
    from kornia.geometry.transform import get_affine_matrix2d

    b = len(params)
    dev = params.angle.device
    centre = torch.tensor([(w - 1) / 2.0, (h - 1) / 2.0], dtype=dtype, device=dev).expand(b, 2)
    translations = params.shift.to(dtype) * torch.tensor([w, h], dtype=dtype, device=dev)
    scale = params.scale.to(dtype)[:, None].expand(b, 2)
    m = get_affine_matrix2d(translations, centre, scale, params.angle.to(dtype))
    return m[:, :2, :]


def misalign_matrix(
    landmarks: Tensor, geometry: Geometry, params: MisalignParams, source_from_canvas: Tensor | None = None
) -> Tensor:
    """``(B, 2, 3)`` matrices mapping source (or canvas) pixels to the misaligned crop of ``geometry``.

    Deterministic: the same inputs and parameters always give the same matrices.

    Args:
        landmarks: ``(B, 5, 2)`` source-image landmarks.
        geometry: the crop the model expects.
        params: perturbation parameters (:meth:`MisalignParams.identity` gives the clean crop).
        source_from_canvas: ``(B, 2, 3)`` if the pixels are on a canvas.
    """
    dtype = torch.float64
    lm = landmarks.to(dtype) + params.jitter.to(landmarks.device, dtype)
    m = crop_matrix(lm, geometry)
    if bool(params.box.any()):
        mb = crop_matrix(lm, replace(geometry, template="box"))
        m = torch.where(params.box.view(-1, 1, 1), mb, m)
    for k, (name, zoom) in enumerate(params.templates):
        sel = params.template == k
        if bool(sel.any()):
            mk = crop_matrix(lm, replace(geometry, template=name, zoom=geometry.zoom * zoom))
            m = torch.where(sel.view(-1, 1, 1), mk, m)
    h, w = geometry.hw
    m = compose(_post_affine(params, h, w, dtype).to(m.device), m)
    if source_from_canvas is not None:
        m = compose(m, source_from_canvas.to(dtype))
    return m


def misalign(
    images: Tensor,
    landmarks: Tensor,
    geometry: Geometry,
    params: MisalignParams,
    canvas_from_source: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Cut misaligned crops (functional form).

    Args:
        images: ``(B, C, H, W)`` canvases (or source images of one size when ``canvas_from_source`` is None).
        landmarks: ``(B, 5, 2)`` source-image landmarks.
        geometry: the crop the model expects.
        params: perturbation parameters.
        canvas_from_source: ``(B, 2, 3)`` canvas transforms of the faces.

    Returns:
        ``(crops, crop_landmarks)``: float crops in ``[0, 1]`` and the TRUE landmarks mapped into them (where the
        facial points really are in each crop - useful to check and to visualise a perturbation).
    """
    src_from_canvas = None if canvas_from_source is None else invert(canvas_from_source.to(torch.float64))
    m = misalign_matrix(landmarks, geometry, params, src_from_canvas)
    crops = warp(images, m.to(torch.float32), geometry.hw)
    m_src = m if src_from_canvas is None else compose(m, canvas_from_source.to(torch.float64))
    return crops, apply_affine(m_src, landmarks.to(torch.float64)).to(torch.float32)


def _seed_for(seed: int, index: int) -> int:
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class Misalignment(nn.Module):
    """Base of misalignment modules: sample parameters, then apply them with :func:`misalign`.

    Args:
        p: probability that a sample is perturbed at all (others stay aligned as the model expects).
    """

    def __init__(self, p: float = 1.0) -> None:
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"misalignment probability p must be in [0, 1], got {p}")
        self.p = p

    def _sample(self, landmarks: Tensor, generator: torch.Generator | None) -> MisalignParams:
        raise NotImplementedError

    def sample(
        self, landmarks: Tensor, generator: torch.Generator | None = None, same_on_batch: bool = False
    ) -> MisalignParams:
        """Random parameters for ``(B, 5, 2)`` source landmarks.

        Args:
            landmarks: source-image landmarks (some perturbations scale with the face, e.g. IOD-relative jitter).
            generator: torch generator (on the CPU) for reproducible draws.
            same_on_batch: draw one parameter set and use it for every sample.
        """
        b = landmarks.shape[0]
        lm = landmarks[:1] if same_on_batch else landmarks
        params = self._sample(lm.detach().float().cpu(), generator)
        if self.p < 1.0:
            keep = torch.rand(len(params), generator=generator) < self.p
            params = params.select(keep, MisalignParams.identity(len(params)))
        if same_on_batch:
            params = MisalignParams(
                **{k: v.expand(b, *v.shape[1:]).clone() for k, v in params.tensors().items()},
                templates=params.templates,
            )
        return params.to(landmarks.device)

    def sample_for_indices(self, landmarks: Tensor, indices: Tensor | Sequence[int], seed: int = 0) -> MisalignParams:
        """Deterministic parameters: sample ``i`` depends only on ``(seed, indices[i])`` and its landmarks.

        Evaluation uses this so that a face gets the same perturbation whatever batch, order or process it is
        scored in.
        """
        idx = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]
        parts = []
        for row, i in enumerate(idx):
            g = torch.Generator().manual_seed(_seed_for(seed, i))
            parts.append(self.sample(landmarks[row : row + 1].cpu(), generator=g))
        if not parts:
            return MisalignParams.identity(0, device=landmarks.device)
        return MisalignParams.cat(parts).to(landmarks.device)

    def forward(
        self,
        images: Tensor,
        landmarks: Tensor,
        geometry: Geometry,
        canvas_from_source: Tensor | None = None,
        params: MisalignParams | None = None,
        generator: torch.Generator | None = None,
        same_on_batch: bool = False,
    ) -> Tensor:
        """Sample (unless ``params`` is given) and apply; the parameters used are kept in ``self.last_params``."""
        if params is None:
            params = self.sample(landmarks, generator, same_on_batch)
        self.last_params = params
        crops, _ = misalign(images, landmarks, geometry, params, canvas_from_source)
        return crops

    def extra_repr(self) -> str:
        return f"p={self.p}"


class NoMisalign(Misalignment):
    """Identity: faces are cut exactly as the model expects (the ``none`` preset and the clean view)."""

    def _sample(self, landmarks: Tensor, generator: torch.Generator | None) -> MisalignParams:
        return MisalignParams.identity(landmarks.shape[0])


def _uniform(n: Any, low: float, high: float, generator: torch.Generator | None) -> Tensor:
    shape = (n,) if isinstance(n, int) else tuple(n)
    return low + (high - low) * torch.rand(shape, generator=generator)


class LandmarkJitter(Misalignment):
    """AI-KD's perturbation: ``U[-p, p]`` on every landmark coordinate, then re-fit the similarity.

    Args:
        pixels: ``p`` in source-image pixels (the paper uses 3).
        iod_fraction: if given, ``p = iod_fraction * inter-ocular distance`` of each face instead, which means
            the same on small and large images.
        p: probability of perturbing a sample.
    """

    def __init__(self, pixels: float = 3.0, iod_fraction: float | None = None, p: float = 1.0) -> None:
        super().__init__(p)
        if pixels < 0 or (iod_fraction is not None and iod_fraction < 0):
            raise ValueError("jitter amplitude must be >= 0")
        self.pixels = float(pixels)
        self.iod_fraction = iod_fraction

    def amplitude(self, landmarks: Tensor) -> Tensor:
        """Per-sample ``p`` in source pixels, ``(B,)``."""
        if self.iod_fraction is not None:
            return self.iod_fraction * inter_ocular(landmarks.float())
        return torch.full((landmarks.shape[0],), self.pixels)

    def _sample(self, landmarks: Tensor, generator: torch.Generator | None) -> MisalignParams:
        b = landmarks.shape[0]
        params = MisalignParams.identity(b)
        amp = self.amplitude(landmarks)
        params.jitter = _uniform((b, 5, 2), -1.0, 1.0, generator) * amp.view(b, 1, 1)
        return params

    def extra_repr(self) -> str:
        unit = f"iod_fraction={self.iod_fraction}" if self.iod_fraction is not None else f"pixels={self.pixels}"
        return f"{unit}, p={self.p}"


class RandomAffine(Misalignment):
    """Rotation, zoom and shift of the aligned crop.

    Args:
        degrees: maximum absolute rotation (uniform in ``[-degrees, degrees]``).
        scale: ``(min, max)`` zoom factor range (uniform).
        translate: maximum absolute shift as a fraction of the crop size, per axis.
        p: probability of perturbing a sample.
    """

    def __init__(
        self, degrees: float = 10.0, scale: Sequence[float] = (0.9, 1.1), translate: float = 0.05, p: float = 1.0
    ) -> None:
        super().__init__(p)
        if degrees < 0 or translate < 0 or len(scale) != 2 or not 0 < scale[0] <= scale[1]:
            raise ValueError(f"bad RandomAffine ranges: degrees={degrees}, scale={scale}, translate={translate}")
        self.degrees = float(degrees)
        self.scale_range = (float(scale[0]), float(scale[1]))
        self.translate = float(translate)

    def _sample(self, landmarks: Tensor, generator: torch.Generator | None) -> MisalignParams:
        b = landmarks.shape[0]
        params = MisalignParams.identity(b)
        params.angle = _uniform(b, -self.degrees, self.degrees, generator)
        params.scale = _uniform(b, *self.scale_range, generator)
        params.shift = _uniform((b, 2), -self.translate, self.translate, generator)
        return params

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}, scale={self.scale_range}, translate={self.translate}, p={self.p}"


class BoxCrop(Misalignment):
    """Cut the landmarks' bounding box (no rotation, scale from the box), optionally with a random zoom.

    Args:
        scale: ``(min, max)`` extra zoom range (``(1, 1)`` = the box framing only).
        p: probability of perturbing a sample.
    """

    def __init__(self, scale: Sequence[float] = (1.0, 1.0), p: float = 1.0) -> None:
        super().__init__(p)
        self.scale_range = (float(scale[0]), float(scale[1]))

    def _sample(self, landmarks: Tensor, generator: torch.Generator | None) -> MisalignParams:
        b = landmarks.shape[0]
        params = MisalignParams.identity(b)
        params.box = torch.ones(b, dtype=torch.bool)
        if self.scale_range != (1.0, 1.0):
            params.scale = _uniform(b, *self.scale_range, generator)
        return params


class DetectorShift(Misalignment):
    """Landmarks from another detector: all five points moved together, plus a little per point.

    Detectors disagree systematically, not point by point at random: YuNet's five points sit about 0.05
    inter-ocular distances (IOD) up-left of MTCNN's on CFP, with a smaller spread between points. Landmark jitter
    (independent per point) does not model that shared shift; this does. Each face gets the common offset
    ``offset + radius * r * (cos t, sin t)`` (``r, t`` uniform in ``[0, 1]`` and ``[0, 2 pi)``: another detector
    in any direction, up to ``radius``) and every point ``U[-point_spread, point_spread]`` more, all in IOD units.

    Args:
        offset: mean ``(dx, dy)`` shift in IOD (e.g. ``[-0.035, -0.035]``: YuNet relative to MTCNN).
        radius: largest extra common shift, in IOD, in a random direction.
        point_spread: per-point uniform jitter amplitude, in IOD.
        p: probability of perturbing a sample.
    """

    def __init__(
        self, offset: Sequence[float] = (0.0, 0.0), radius: float = 0.05, point_spread: float = 0.02, p: float = 1.0
    ) -> None:
        super().__init__(p)
        if radius < 0 or point_spread < 0:
            raise ValueError(f"DetectorShift radius and point_spread must be >= 0, got {radius}, {point_spread}")
        if len(offset) != 2:
            raise ValueError(f"DetectorShift offset must be (dx, dy), got {offset!r}")
        self.offset = (float(offset[0]), float(offset[1]))
        self.radius = float(radius)
        self.point_spread = float(point_spread)

    def _sample(self, landmarks: Tensor, generator: torch.Generator | None) -> MisalignParams:
        b = landmarks.shape[0]
        params = MisalignParams.identity(b)
        iod = inter_ocular(landmarks.float()).view(b, 1, 1)
        r = _uniform(b, 0.0, self.radius, generator)
        t = _uniform(b, 0.0, 2 * math.pi, generator)
        common = torch.tensor(self.offset).view(1, 2) + torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
        points = _uniform((b, 5, 2), -1.0, 1.0, generator) * self.point_spread
        params.jitter = (common.view(b, 1, 2) + points) * iod
        return params

    def extra_repr(self) -> str:
        return f"offset={self.offset}, radius={self.radius}, point_spread={self.point_spread}, p={self.p}"


class TemplateSwitch(Misalignment):
    """Align to another template (or template scale) than the model was trained with.

    Args:
        templates: choices, each ``{"template": name, "zoom": factor}`` or a ``(name, zoom)`` pair; one is drawn
            uniformly per sample. The default mixes the SphereFace 96x112 template stretched to the model's
            size with a looser and a tighter ArcFace crop.
        p: probability of perturbing a sample.
    """

    def __init__(self, templates: Sequence[Any] | None = None, p: float = 1.0) -> None:
        super().__init__(p)
        if templates is None:
            templates = [("sphereface", 1.0), ("arcface", 0.85), ("arcface", 1.15)]
        parsed = []
        for t in templates:
            if isinstance(t, dict) or hasattr(t, "get"):
                parsed.append((str(t.get("template", "arcface")), float(t.get("zoom", 1.0))))
            else:
                name, zoom = t
                parsed.append((str(name), float(zoom)))
        for name, _ in parsed:
            Geometry(template=name)  # validates the name
        if not parsed:
            raise ValueError("TemplateSwitch needs at least one template")
        self.choices = tuple(parsed)

    def _sample(self, landmarks: Tensor, generator: torch.Generator | None) -> MisalignParams:
        b = landmarks.shape[0]
        params = MisalignParams.identity(b)
        params.templates = self.choices
        params.template = torch.randint(0, len(self.choices), (b,), generator=generator)
        return params

    def extra_repr(self) -> str:
        return f"choices={self.choices}, p={self.p}"


class Compose(Misalignment):
    """Apply all components to every sample (jitter adds, rotations add, zooms multiply, shifts add).

    Args:
        components: the misalignments to combine.
        p: probability of perturbing a sample.
    """

    def __init__(self, components: Sequence[Misalignment], p: float = 1.0) -> None:
        super().__init__(p)
        self.components = nn.ModuleList(components)

    def _sample(self, landmarks: Tensor, generator: torch.Generator | None) -> MisalignParams:
        out = MisalignParams.identity(landmarks.shape[0])
        for comp in self.components:
            q = comp.sample(landmarks, generator)
            templates, remap = _merge_templates(out.templates, q.templates)
            q_template = torch.where(q.template >= 0, remap[q.template.clamp_min(0)], q.template)
            out = MisalignParams(
                jitter=out.jitter + q.jitter,
                angle=out.angle + q.angle,
                scale=out.scale * q.scale,
                shift=out.shift + q.shift,
                box=out.box | q.box,
                template=torch.where(q_template >= 0, q_template, out.template),
                templates=templates,
            )
        return out


class OneOf(Misalignment):
    """Pick one component per sample (e.g. the ``mixed`` preset).

    Args:
        components: the candidates.
        weights: relative probabilities (default uniform).
        p: probability of perturbing a sample.
    """

    def __init__(
        self, components: Sequence[Misalignment], weights: Sequence[float] | None = None, p: float = 1.0
    ) -> None:
        super().__init__(p)
        if not components:
            raise ValueError("OneOf needs at least one component")
        self.components = nn.ModuleList(components)
        w = torch.ones(len(components)) if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)
        if w.shape != (len(components),) or (w < 0).any() or w.sum() <= 0:
            raise ValueError(f"OneOf weights must be {len(components)} non-negative numbers, got {weights}")
        self.register_buffer("weights", w / w.sum(), persistent=False)

    def _sample(self, landmarks: Tensor, generator: torch.Generator | None) -> MisalignParams:
        b = landmarks.shape[0]
        choice = torch.multinomial(self.weights.cpu(), b, replacement=True, generator=generator)
        out = MisalignParams.identity(b)
        for k, comp in enumerate(self.components):
            q = comp.sample(landmarks, generator)
            out = q.select(choice == k, out)
        return out
