"""Losses for teacher training and distillation: margin-softmax heads, CR-FIQA, RI and AI-KD terms (pure torch).

What lives here and why:

* **Margin-softmax heads** (:class:`ArcFaceHead`, :class:`CosFaceHead`, :class:`AdaFaceHead`,
  :class:`MagFaceHead`): ``nn.Module`` s holding the class-centre matrix ``W`` (``num_classes x dim``), normalised
  at use. They share one interface, ``head(embeddings, labels) -> HeadOutput(logits, cos, extra_loss)``, so a
  training module writes ``F.cross_entropy(out.logits, labels) + out.extra_loss`` whatever the head. ``cos`` are
  the *plain* cosines (no margin, no scale): CR-FIQA and RI build their targets from them. Heads are plug-ins of
  :data:`MARGIN_HEADS` (``"arcface"``, ``"cosface"``, ``"adaface"``, ``"magface"``), built with
  :func:`create_margin_head`.
* **CR-FIQA** (Boutros et al., CVPR 2023): :func:`certainty_ratio` (the regression target) and
  :func:`crfiqa_loss` (CE + lambda * SmoothL1).
* **Recognizability Index** (Chai et al., CVPR 2023): :func:`ui_centre`, :func:`recognizability_index`,
  :func:`index_diversion_loss` and :func:`ri_loss`. No official code exists; the forms chosen are documented on
  each function.
* **Teacher objectives**: :class:`TeacherObjective`, what a trainable teacher declares as its
  ``Teacher.objective`` (its loss per batch and any setup it needs), and the generic ones any teacher can use,
  registered in :data:`OBJECTIVES`: :class:`CRFIQAObjective` (``"crfiqa"``), :class:`MagFaceObjective`
  (``"magface"``), :class:`AdaFaceObjective` (``"adaface"``). Teacher-specific objectives live in the teacher's
  own file (``teachers/ri.py``).
* **Distillation** (AI-KD): :func:`distillation_loss`.
* :func:`magface_ofiq_score`: the OFIQ (ISO/IEC 29794-5) mapping of a MagFace norm to 0..100.

Margin arithmetic runs in float32 with autocast disabled: ``acos`` and ``sqrt(1 - cos^2)`` near ``|cos| = 1``
are exactly where half precision breaks, and a scale of 64 magnifies any error in the logits.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aikd.models.calibration import OFIQ_MAGFACE_CENTRE, OFIQ_MAGFACE_SCALE
from aikd.models.registry import Registry

__all__ = [
    "HeadOutput",
    "MarginHead",
    "ArcFaceHead",
    "CosFaceHead",
    "AdaFaceHead",
    "MagFaceHead",
    "MARGIN_HEADS",
    "create_margin_head",
    "arc_margin_target",
    "magface_margin",
    "magface_regulariser",
    "certainty_ratio",
    "crfiqa_loss",
    "ui_centre",
    "recognizability_index",
    "index_diversion_loss",
    "ri_loss",
    "FitContext",
    "TeacherObjective",
    "OBJECTIVES",
    "register_objective",
    "CRFIQAObjective",
    "NormObjective",
    "MagFaceObjective",
    "AdaFaceObjective",
    "distillation_loss",
    "magface_ofiq_score",
]

# sin(theta) = sqrt(1 - cos^2) has an infinite derivative at |cos| = 1, where a single sample lying exactly on
# its class centre would turn the whole step into NaN. Flooring 1 - cos^2 here keeps values exact to ~1e-6 (a
# cosine clamp would shift the logit by s * sqrt(2 * eps) * sin(m) near theta = 0) and gives such a sample a
# zero gradient through the floor instead of an infinite one.
_SIN2_FLOOR = 1e-12


class HeadOutput(NamedTuple):
    """What every margin head returns.

    Attributes:
        logits: ``(B, C)`` scaled logits with the margin applied at each sample's label; feed to cross-entropy.
        cos: ``(B, C)`` plain cosines between normalised embeddings and normalised class centres (no margin,
            no scale, clamped to ``[-1, 1]``), still attached to the graph.
        extra_loss: scalar to add to the cross-entropy (MagFace's weighted regulariser; ``0`` for the others).
    """

    logits: Tensor
    cos: Tensor
    extra_loss: Tensor


MARGIN_HEADS: Registry[nn.Module] = Registry("margin head")


def create_margin_head(name: str, dim: int, num_classes: int, **kwargs: Any) -> MarginHead:
    """Build a registered margin head by name (``"arcface"``, ``"cosface"``, ``"adaface"``, ``"magface"``)."""
    return MARGIN_HEADS.create(name, dim=dim, num_classes=num_classes, **kwargs)


def _check_labels(labels: Tensor, batch: int, num_classes: int, what: str) -> None:
    if labels.ndim != 1 or labels.shape[0] != batch:
        raise ValueError(f"labels must be (B,) with B={batch} to match {what}, got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        raise ValueError(f"labels must be an integer tensor of class indices, got {labels.dtype}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes - 1}] ({num_classes} classes in {what}); "
            f"got range [{int(labels.min())}, {int(labels.max())}]"
        )


def _check_cos_labels(cos: Tensor, labels: Tensor, what: str = "cos") -> None:
    if cos.ndim != 2:
        raise ValueError(f"{what} must be (B, C), got shape {tuple(cos.shape)}")
    if cos.shape[1] < 2:
        raise ValueError(f"{what} needs at least 2 classes to have a nearest negative class, got C={cos.shape[1]}")
    _check_labels(labels, cos.shape[0], cos.shape[1], what)


def arc_margin_target(cos_target: Tensor, margin: float | Tensor, easy_margin: bool = False) -> Tensor:
    """``cos(theta + m)`` for target-class cosines, with the ``theta + m > pi`` guard of the reference code.

    Plain ``cos(theta + m)`` stops decreasing once ``theta + m`` passes ``pi``: for ``theta > pi - m`` the target
    logit would *rise* again as the sample moves away from its class centre, rewarding the wrong direction.
    Two guards are in use in the reference implementations; both are offered:

    * ``easy_margin=False`` (insightface ``arcface_torch``, our ArcFace default): where
      ``cos(theta) <= cos(pi - m)`` use ``cos(theta) - m * sin(m)`` instead (``sin(pi - m) * m`` in their code),
      a shifted continuation that keeps the target logit monotonically decreasing in ``theta`` (with a small
      downward step at ``theta = pi - m``).
    * ``easy_margin=True`` (MagFace's released ``MagLinear`` default): apply the margin only where
      ``cos(theta) > 0`` and keep the plain cosine elsewhere. Not monotone: at ``theta = pi / 2`` the target
      logit jumps *up* by ``sin(m)`` as the margin is dropped, so samples far from their centre get no margin.

    (CR-FIQA's released head applies ``cos(acos(x) + m)`` without any guard; with ``m = 0.5`` the affected
    region ``theta > 2.64 rad`` is essentially never reached in practice, so the guard does not change its
    behaviour there.)

    Args:
        cos_target: ``(B,)`` cosines to the target class centre.
        margin: additive angular margin ``m`` in radians, a float or a ``(B,)`` tensor (MagFace).
        easy_margin: which guard to use (see above).
    """
    m = torch.as_tensor(margin, dtype=cos_target.dtype, device=cos_target.device)
    c = cos_target.clamp(-1.0, 1.0)
    sin_theta = torch.sqrt((1.0 - c * c).clamp_min(_SIN2_FLOOR))
    cos_theta_m = c * torch.cos(m) - sin_theta * torch.sin(m)
    if easy_margin:
        return torch.where(cos_target > 0, cos_theta_m, cos_target)
    threshold = torch.cos(math.pi - m)
    return torch.where(cos_target > threshold, cos_theta_m, cos_target - torch.sin(m) * m)


class MarginHead(nn.Module):
    """Base class: a normalised class-centre matrix and the shared bookkeeping.

    Subclasses implement :meth:`margin_logits`. ``W`` rows are initialised as random *unit* vectors (as AdaFace
    and MagFace do): rows are normalised at use anyway, and unit norm makes the effective step size on the
    centre directions independent of ``dim`` (a tiny-norm init, e.g. ``N(0, 0.01)``, turns every SGD step into
    a huge rotation).

    Args:
        dim: embedding dimension.
        num_classes: number of training identities (>= 2).
        s: logit scale.
    """

    def __init__(self, dim: int, num_classes: int, s: float = 64.0) -> None:
        super().__init__()
        if dim < 1 or num_classes < 2:
            raise ValueError(f"a margin head needs dim >= 1 and num_classes >= 2, got dim={dim}, {num_classes=}")
        if not s > 0:
            raise ValueError(f"scale s must be > 0, got {s}")
        self.dim = int(dim)
        self.num_classes = int(num_classes)
        self.s = float(s)
        self.weight = nn.Parameter(F.normalize(torch.randn(num_classes, dim), dim=1))

    def cosine(self, embeddings: Tensor) -> Tensor:
        """``(B, C)`` cosines between the (normalised) embeddings and the normalised class centres."""
        w = F.normalize(self.weight.float(), dim=1)
        return (F.normalize(embeddings.float(), dim=1) @ w.t()).clamp(-1.0, 1.0)

    def _check(self, embeddings: Tensor, labels: Tensor) -> None:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(
                f"{type(self).__name__} expects embeddings of shape (B, {self.dim}), got {tuple(embeddings.shape)}"
            )
        _check_labels(labels, embeddings.shape[0], self.num_classes, type(self).__name__)

    def margin_logits(self, embeddings: Tensor, cos: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """Return ``(logits, extra_loss)`` from float32 ``embeddings`` and plain ``cos``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def forward(self, embeddings: Tensor, labels: Tensor) -> HeadOutput:
        """Margin logits, plain cosines and the extra loss for a batch of un-normalised embeddings."""
        self._check(embeddings, labels)
        labels = labels.long()
        with torch.autocast(device_type=embeddings.device.type, enabled=False):
            emb = embeddings.float()
            cos = self.cosine(emb)
            logits, extra = self.margin_logits(emb, cos, labels)
        return HeadOutput(logits, cos, extra)

    @staticmethod
    def _with_target(cos: Tensor, labels: Tensor, target: Tensor) -> Tensor:
        """``cos`` with each row's label entry replaced by ``target`` (differentiable, no in-place writes)."""
        one_hot = F.one_hot(labels, cos.shape[1]).bool()
        return torch.where(one_hot, target.unsqueeze(1), cos)

    @staticmethod
    def _target(cos: Tensor, labels: Tensor) -> Tensor:
        return cos.gather(1, labels.unsqueeze(1)).squeeze(1)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_classes={self.num_classes}, s={self.s}"


@MARGIN_HEADS.register("arcface")
class ArcFaceHead(MarginHead):
    """ArcFace (Deng et al., CVPR 2019): target logit ``s * cos(theta + m)``, others ``s * cos(theta)``.

    The ``theta + m > pi`` case follows insightface's ``arcface_torch`` by default; see
    :func:`arc_margin_target` (``easy_margin=True`` switches to MagFace's guard). CR-FIQA trains under this
    head with ``s=64, m=0.5``.
    """

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.5, easy_margin: bool = False):
        super().__init__(dim, num_classes, s)
        self.m = float(m)
        self.easy_margin = bool(easy_margin)

    def margin_logits(self, embeddings: Tensor, cos: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        target = arc_margin_target(self._target(cos, labels), self.m, self.easy_margin)
        return self.s * self._with_target(cos, labels, target), cos.new_zeros(())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, easy_margin={self.easy_margin}"


@MARGIN_HEADS.register("cosface")
class CosFaceHead(MarginHead):
    """CosFace (Wang et al., CVPR 2018): target logit ``s * (cos(theta) - m)``; no angle arithmetic, no pi issue."""

    def __init__(self, dim: int, num_classes: int, s: float = 64.0, m: float = 0.35):
        super().__init__(dim, num_classes, s)
        self.m = float(m)

    def margin_logits(self, embeddings: Tensor, cos: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        target = self._target(cos, labels) - self.m
        return self.s * self._with_target(cos, labels, target), cos.new_zeros(())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}"


@MARGIN_HEADS.register("adaface")
class AdaFaceHead(MarginHead):
    """AdaFace (Kim et al., CVPR 2022): a margin that adapts to the feature norm, a proxy of image quality.

    With the norm ``n = ||f||`` (clipped to ``[0.001, 100]`` and detached: the norm steers the margin but is
    not optimised through it) and EMA batch statistics ``mu, sigma``::

        z       = clip((n - mu) / (sigma + 1e-3) * h, -1, 1)
        g_angle = -m * z          # angular margin, added to theta
        g_add   =  m * z + m      # additive margin, subtracted from the cosine
        target  = s * (cos(clip(theta + g_angle, 1e-3, pi - 1e-3)) - g_add)

    so low-norm (hard) samples (``z = -1``) get an ArcFace-like margin ``m`` on the angle, high-norm ones
    (``z = +1``) a negative angular margin plus a CosFace margin ``2m``, and ``z = 0`` is CosFace with ``m``.
    As in the reference code all cosines are clamped to ``[-1 + 1e-3, 1 - 1e-3]`` before the logits and
    ``theta + g_angle`` is clipped to ``[1e-3, pi - 1e-3]``; that clip is AdaFace's answer to
    ``theta + m > pi``.

    Statistics: buffers ``batch_mean`` (init 20) and ``batch_std`` (init 100) are updated *before* computing
    ``z`` of the current batch, ``stat <- t_alpha * batch_stat + (1 - t_alpha) * stat``, as in the reference.
    Unlike the reference they are updated only in training mode (like BatchNorm, so evaluation never shifts
    them), and the std is not updated from a batch of one (its sample std is undefined).

    Args:
        dim, num_classes, s: see :class:`MarginHead`.
        m: margin. h: concentration of ``z`` (``h = 0.333`` puts ~68% of samples in ``[-0.333, 0.333]``).
        t_alpha: EMA momentum of the norm statistics.
    """

    _EPS = 1e-3

    def __init__(
        self, dim: int, num_classes: int, m: float = 0.4, h: float = 0.333, s: float = 64.0, t_alpha: float = 0.01
    ):
        super().__init__(dim, num_classes, s)
        if not 0.0 <= t_alpha <= 1.0:
            raise ValueError(f"t_alpha must be in [0, 1], got {t_alpha}")
        self.m, self.h, self.t_alpha = float(m), float(h), float(t_alpha)
        self.register_buffer("batch_mean", torch.tensor(20.0))
        self.register_buffer("batch_std", torch.tensor(100.0))

    @torch.no_grad()
    def update_statistics(self, norms: Tensor) -> None:
        """EMA update of ``batch_mean`` / ``batch_std`` from a batch of (clipped) norms."""
        norms = norms.detach().float().clamp(0.001, 100.0)
        a = self.t_alpha
        self.batch_mean.mul_(1.0 - a).add_(a * norms.mean())
        if norms.numel() > 1:
            self.batch_std.mul_(1.0 - a).add_(a * norms.std())

    def margin_scaler(self, norms: Tensor) -> Tensor:
        """``z = clip((n - mu) / (sigma + 1e-3) * h, -1, 1)`` with the *current* statistics (no update)."""
        n = norms.detach().float().clamp(0.001, 100.0)
        return ((n - self.batch_mean) / (self.batch_std + self._EPS) * self.h).clamp(-1.0, 1.0)

    def margins(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(g_angle, g_add) = (-m z, m z + m)`` for margin scalers ``z``."""
        return -self.m * z, self.m * z + self.m

    def margin_logits(self, embeddings: Tensor, cos: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        norms = embeddings.norm(dim=1)
        if self.training:
            self.update_statistics(norms)
        g_angle, g_add = self.margins(self.margin_scaler(norms))
        cos_c = cos.clamp(-1.0 + self._EPS, 1.0 - self._EPS)
        theta = torch.acos(self._target(cos_c, labels))
        theta_m = (theta + g_angle).clamp(self._EPS, math.pi - self._EPS)
        target = torch.cos(theta_m) - g_add
        return self.s * self._with_target(cos_c, labels, target), cos.new_zeros(())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, m={self.m}, h={self.h}, t_alpha={self.t_alpha}"


def magface_margin(a: Tensor, l_a: float = 10.0, u_a: float = 110.0, l_m: float = 0.45, u_m: float = 0.8) -> Tensor:
    """MagFace's magnitude-aware margin ``m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m`` (no clamping here)."""
    return (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m


def magface_regulariser(a: Tensor, u_a: float = 110.0) -> Tensor:
    """MagFace's magnitude regulariser ``g(a) = a / u_a^2 + 1 / a``, elementwise.

    Convex on ``a > 0`` with ``g'(a) = 1 / u_a^2 - 1 / a^2``, so its minimum is at ``a = u_a``: it rewards
    large norms up to ``u_a`` and is what makes the norm usable as a quality score.
    """
    return a / (u_a * u_a) + 1.0 / a


@MARGIN_HEADS.register("magface")
class MagFaceHead(MarginHead):
    """MagFace (Meng et al., CVPR 2021): an ArcFace margin that grows with the feature norm, plus a regulariser.

    With ``a = clamp(||f||, l_a, u_a)`` the target logit is ``s * cos(theta + m(a))`` where ``m(a)`` runs
    linearly from ``l_m`` at ``l_a`` to ``u_m`` at ``u_a`` (:func:`magface_margin`), and ``extra_loss =
    lambda_g * mean(g(a))`` (:func:`magface_regulariser`), so ``CE + extra_loss`` is the MagFace objective. As
    in the released code the norm keeps its gradient (the margin and ``g`` both act on it) and ``g`` is
    evaluated on the *clamped* norm, so it exerts no pull outside ``[l_a, u_a]``. The ``theta + m > pi`` guard
    defaults to MagFace's ``easy_margin=True`` (see :func:`arc_margin_target`).
    """

    def __init__(
        self,
        dim: int,
        num_classes: int,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
        easy_margin: bool = True,
    ):
        super().__init__(dim, num_classes, s)
        if not 0 < l_a < u_a:
            raise ValueError(f"MagFace needs 0 < l_a < u_a, got l_a={l_a}, u_a={u_a}")
        self.l_a, self.u_a, self.l_m, self.u_m = float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)
        self.easy_margin = bool(easy_margin)

    def margin(self, a: Tensor) -> Tensor:
        """``m(a)`` for already clamped norms ``a``."""
        return magface_margin(a, self.l_a, self.u_a, self.l_m, self.u_m)

    def margin_logits(self, embeddings: Tensor, cos: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        a = embeddings.norm(dim=1).clamp(self.l_a, self.u_a)
        target = arc_margin_target(self._target(cos, labels), self.margin(a), self.easy_margin)
        extra = self.lambda_g * magface_regulariser(a, self.u_a).mean()
        return self.s * self._with_target(cos, labels, target), extra

    def extra_repr(self) -> str:
        return (
            f"{super().extra_repr()}, l_a={self.l_a}, u_a={self.u_a}, l_m={self.l_m}, u_m={self.u_m}, "
            f"lambda_g={self.lambda_g}, easy_margin={self.easy_margin}"
        )


# --------------------------------------------------------------------------------------------------- CR-FIQA
def _ccs_nnccs(cos: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Class-centre similarity ``cos[i, y_i]`` and the nearest negative one ``max_{j != y_i} cos[i, j]``."""
    ccs = cos.gather(1, labels.long().unsqueeze(1)).squeeze(1)
    positive = F.one_hot(labels.long(), cos.shape[1]).bool()
    nnccs = cos.masked_fill(positive, float("-inf")).amax(dim=1)
    return ccs, nnccs


@torch.no_grad()
def certainty_ratio(cos: Tensor, labels: Tensor, variant: str = "paper", eps: float = 1e-9) -> Tensor:
    """CR-FIQA's certainty ratio, the regression target of the quality head; detached, computed without grad.

    ``CCS_i = cos[i, y_i]`` (similarity to the own class centre), ``NNCCS_i = max_{j != y_i} cos[i, j]``
    (nearest negative class centre); ``cos`` must be the *plain* cosines (``HeadOutput.cos``), not margin
    logits.

    * ``"paper"`` (default, CVPR 2023 Eq.): ``CR = CCS / (NNCCS + 1 + eps)``. As ``NNCCS >= -1`` the
      denominator lies in ``[eps, 2 + eps]``: always positive, no guard needed.
    * ``"code"`` (the released ``train_cr_fiqa.py``): ``CR = CCS / NNCCS``. The "+1+eps" is missing there, so
      the ratio explodes or flips sign when ``NNCCS`` nears or drops below 0 (rare with ~10k identities,
      common with few classes). The released code sets the positive entry to ``-1e-12`` before the max, so its
      ``NNCCS`` is floored at ``-1e-12`` and a sample whose negatives are all negative gets ``CCS / -1e-12``.
      We guard with ``NNCCS.clamp_min(eps)`` instead: the target stays finite and keeps the sign of ``CCS``
      (it is ``CCS / eps``, i.e. huge, in that case - prefer ``"paper"`` unless reproducing the release).

    Args:
        cos: ``(B, C)`` plain cosines, ``C >= 2``.
        labels: ``(B,)`` class indices.
        variant: ``"paper"`` or ``"code"``.
        eps: see above.

    Returns:
        ``(B,)`` targets, ``requires_grad=False``.
    """
    _check_cos_labels(cos, labels)
    ccs, nnccs = _ccs_nnccs(cos.detach().float(), labels)
    if variant == "paper":
        return ccs / (nnccs + 1.0 + eps)
    if variant == "code":
        return ccs / nnccs.clamp_min(eps)
    raise ValueError(f"certainty_ratio variant must be 'paper' or 'code', got {variant!r}")


def _flat_pred(pred: Tensor, n: int, name: str) -> Tensor:
    if pred.numel() != n or (pred.ndim == 2 and pred.shape[1] != 1) or pred.ndim > 2:
        raise ValueError(f"{name} must be (B,) or (B, 1) with B={n}, got shape {tuple(pred.shape)}")
    return pred.reshape(n).float()


def crfiqa_loss(
    logits: Tensor,
    cos: Tensor,
    labels: Tensor,
    quality_pred: Tensor,
    lam: float = 10.0,
    beta: float = 0.5,
    variant: str = "paper",
) -> dict[str, Tensor]:
    """CR-FIQA objective: ``CE(logits, labels) + lam * SmoothL1_beta(CR, quality_pred)``.

    The target CR comes from :func:`certainty_ratio` on the plain cosines and is detached: the quality term
    trains the quality head (and the backbone through it) but never pulls the class centres or the cosines
    toward a prediction.

    Args:
        logits: ``(B, C)`` margin logits (``HeadOutput.logits``).
        cos: ``(B, C)`` plain cosines (``HeadOutput.cos``).
        labels: ``(B,)`` class indices.
        quality_pred: ``(B,)`` or ``(B, 1)`` quality-head output.
        lam: weight of the quality term (10 in the paper). beta: SmoothL1 transition point (0.5).
        variant: CR formula, see :func:`certainty_ratio`.

    Returns:
        ``dict(loss, ce, quality, target)``; ``target`` is the detached ``(B,)`` CR.
    """
    target = certainty_ratio(cos, labels, variant=variant)
    pred = _flat_pred(quality_pred, labels.shape[0], "quality_pred")
    ce = F.cross_entropy(logits.float(), labels.long())
    quality = F.smooth_l1_loss(pred, target, beta=beta)
    return {"loss": ce + lam * quality, "ce": ce, "quality": quality, "target": target}


# ------------------------------------------------------------------------------------- Recognizability Index
@torch.no_grad()
def ui_centre(embeddings: Tensor) -> Tensor:
    """Centre of the unrecognisable-identity (UI) cluster: the normalised mean of normalised embeddings.

    Each embedding is normalised *before* averaging: RI works in cosine geometry, and raw norms differ by image
    quality, so an un-normalised mean would be dominated by the few highest-norm images.

    Args:
        embeddings: ``(N, D)`` embeddings of images the FR model cannot recognise (heavily degraded faces).

    Returns:
        ``(D,)`` unit vector (detached).
    """
    if embeddings.ndim != 2 or embeddings.shape[0] == 0:
        raise ValueError(f"ui_centre needs a non-empty (N, D) batch of UI embeddings, got {tuple(embeddings.shape)}")
    mean = F.normalize(embeddings.detach().float(), dim=1).mean(dim=0)
    if not float(mean.norm()) > 1e-6:
        raise ValueError("the UI embeddings cancel out (their normalised mean is ~0); no centre direction exists")
    return F.normalize(mean, dim=0)


def _ui_distance(embeddings: Tensor, centre: Tensor) -> Tensor:
    """``1 - cos(x_i, c_UI)`` per sample, differentiable in ``embeddings`` (the centre is treated as constant)."""
    if centre.ndim != 1 or embeddings.ndim != 2 or embeddings.shape[1] != centre.shape[0]:
        raise ValueError(
            f"embeddings (B, D) and ui_centre (D,) must agree, got {tuple(embeddings.shape)} and {tuple(centre.shape)}"
        )
    c = F.normalize(centre.detach().float(), dim=0)
    return 1.0 - F.normalize(embeddings.float(), dim=1) @ c


@torch.no_grad()
def recognizability_index(
    emb: Tensor, ui_centre: Tensor, cos: Tensor | None = None, labels: Tensor | None = None, eps: float = 1e-9
) -> Tensor:
    """Recognizability Index (Chai et al., CVPR 2023), as a detached regression target.

    The paper's RI rises with the distance of an embedding from the UI centre and with its margin between the
    positive class prototype and the nearest negative one. Without official code we use the documented form::

        RI_i = (1 - cos(x_i, c_UI)) * CCS_i / (NNCCS_i + 1 + eps)    # with class cosines and labels
        RI_i = (1 - cos(x_i, c_UI))                                   # label-free

    i.e. the UI distance (in ``[0, 2]``) times CR-FIQA's certainty ratio (paper form, always a positive
    denominator). The label-free form serves images without identity labels (e.g. scoring new data).

    Args:
        emb: ``(B, D)`` embeddings. ui_centre: ``(D,)`` from :func:`ui_centre`.
        cos: optional ``(B, C)`` plain class cosines; labels: optional ``(B,)`` - give both or neither.
        eps: see above.

    Returns:
        ``(B,)`` RI, ``requires_grad=False``.
    """
    distance = _ui_distance(emb.detach(), ui_centre)
    if (cos is None) != (labels is None):
        raise ValueError("recognizability_index needs both cos and labels for the labelled form, or neither")
    if cos is None:
        return distance
    if cos.shape[0] != emb.shape[0]:
        raise ValueError(f"cos has {cos.shape[0]} rows but emb has {emb.shape[0]}")
    return distance * certainty_ratio(cos, labels, variant="paper", eps=eps)


def index_diversion_loss(
    pred_ri: Tensor,
    embeddings: Tensor,
    ui_centre: Tensor,
    margin: float = 0.5,
    hard_threshold: float | None = None,
) -> Tensor:
    """Index-diversion hinge: push hard-to-recognise embeddings away from the UI centre until far enough.

    The paper (Chai et al., CVPR 2023) describes the index diversion loss as pushing "the hard-to-recognize face
    embedding with low RI away from unrecognizable faces cluster to boost the RI"; its exact equation is not
    restated here, so this is our documented form::

        hard_i  = pred_ri_i < tau                  (tau = hard_threshold, default: batch mean of pred_ri)
        d_i     = 1 - cos(x_i, c_UI)               (differentiable in x_i; c_UI constant)
        L_ID    = (1 / B) * sum_i hard_i * max(0, margin - d_i)

    Choices and why:

    * The hinge acts on the **embedding's distance to the UI centre**, not on ``pred_ri`` itself: a hinge on
      the prediction would only bias the RI regressor against its own target, whereas the paper's aim is to
      move the embedding (and so raise the true RI). Samples already at cosine distance ``>= margin`` cost
      nothing, so easy samples and sufficiently diverted hard ones are left alone.
    * **Hard** samples are selected by the *predicted* RI (detached; selection is not differentiable), the
      quality the model itself assigns; the default threshold is the batch mean, scale-free for both the
      labelled and the label-free RI.
    * ``margin = 0.5`` asks hard samples to reach ``cos(x, c_UI) <= 0.5`` (60 degrees); the UI centre lies
      near the mean embedding direction, so requiring orthogonality (``margin = 1``) would be excessive.
    * Averaged over the whole batch (non-hard samples contribute 0), so the term's scale does not jump with
      the number of hard samples in a batch.

    Args:
        pred_ri: ``(B,)`` or ``(B, 1)`` predicted RI. embeddings: ``(B, D)``. ui_centre: ``(D,)``.
        margin: required cosine distance from the UI centre. hard_threshold: ``tau`` (``None``: batch mean).

    Returns:
        Scalar loss.
    """
    pred = _flat_pred(pred_ri, embeddings.shape[0], "pred_ri").detach()
    tau = pred.mean() if hard_threshold is None else torch.as_tensor(hard_threshold, dtype=pred.dtype)
    hard = (pred < tau).float()
    hinge = F.relu(margin - _ui_distance(embeddings, ui_centre))
    return (hard * hinge).mean()


def ri_loss(
    pred_ri: Tensor,
    target_ri: Tensor,
    embeddings: Tensor,
    ui_centre: Tensor,
    beta: float = 0.75,
    diversion_weight: float = 1.0,
    margin: float = 0.5,
    hard_threshold: float | None = None,
) -> dict[str, Tensor]:
    """RI teacher objective: ``SmoothL1_beta(pred_ri, RI) + diversion_weight * L_ID``.

    Args:
        pred_ri: ``(B,)`` or ``(B, 1)`` RI-head output. target_ri: ``(B,)`` from :func:`recognizability_index`
            (detached here in any case). embeddings: ``(B, D)`` backbone embeddings (get the diversion
            gradient). ui_centre: ``(D,)``.
        beta: SmoothL1 transition point (0.75). diversion_weight, margin, hard_threshold: see
            :func:`index_diversion_loss`.

    Returns:
        ``dict(loss, regression, diversion)``.
    """
    n = embeddings.shape[0]
    pred = _flat_pred(pred_ri, n, "pred_ri")
    target = _flat_pred(target_ri, n, "target_ri").detach()
    regression = F.smooth_l1_loss(pred, target, beta=beta)
    diversion = index_diversion_loss(pred, embeddings, ui_centre, margin=margin, hard_threshold=hard_threshold)
    return {"loss": regression + diversion_weight * diversion, "regression": regression, "diversion": diversion}


# ------------------------------------------------------------------------------------- teacher objectives
class FitContext(NamedTuple):
    """What :meth:`TeacherObjective.prepare` may read before training starts.

    Attributes:
        index: the training split (an :class:`aikd.data.index.FaceIndex`).
        canvas: the canvas geometry its images are read on (an :class:`aikd.geometry.align.Canvas`).
        seed: the run's seed (for reproducible draws such as RI's degraded faces).
        device: where features may be computed (``"cpu"``, ``"cuda"``...).
    """

    index: Any
    canvas: Any
    seed: int
    device: str


class TeacherObjective(nn.Module):
    """A teacher's training objective: its loss on a batch, plus any setup it needs from the training data.

    A trainable teacher names its objective in one place, the class attribute
    :attr:`aikd.models.teacher.Teacher.objective`, so a new trainable teacher is one file: its model and, if none of the
    generic objectives below fits, its own subclass of this class (``teachers/ri.py`` is the example: RI needs
    embeddings of unrecognisable faces, which its :meth:`prepare` computes). The training module
    (:class:`aikd.training.TeacherTrainingModule`) owns what every objective shares - the margin-softmax head over
    the training identities, the optimiser, logging - and calls :meth:`forward` once per batch.

    The constructor arguments are the objective's *options*: the keys of a teacher config's ``fit`` section besides
    the training loop's own (:data:`aikd.training.teacher_fit.FIT_KEYS`) are passed to it by :meth:`from_options`, so a
    misspelt option fails instead of being ignored. Objectives are ``nn.Module`` s so that state they prepare
    (tensors registered as buffers) moves to the training device with the module.

    Class attributes:
        name: what logs, hyper-parameters and the teacher cache key call it; set by :func:`register_objective`
            (an unregistered objective is called by its class name).
        default_head: margin head used when the config's ``fit.head`` names none.
        needs_quality_head: the objective trains the teacher's quality head (CR-FIQA, RI).
    """

    name: ClassVar[str] = "objective"
    default_head: ClassVar[str] = "arcface"
    needs_quality_head: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:  # a subclass never reports its parent's name
            cls.name = cls.__name__

    @classmethod
    def option_names(cls) -> list[str]:
        """The options (constructor arguments) this objective accepts."""
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]  # without self
        return [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    @classmethod
    def from_options(cls, options: Mapping[str, Any] | None = None) -> TeacherObjective:
        """Build from a config's options, naming any key the objective does not accept."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(cls.option_names()))
        if unknown:
            raise ValueError(
                f"fit keys {unknown} are not options of objective '{cls.name}' (its options: "
                f"{', '.join(cls.option_names()) or 'none'})"
            )
        return cls(**options)

    def hparams(self) -> dict[str, Any]:
        """The options as built (recorded with the training run's hyper-parameters)."""
        return {k: getattr(self, k) for k in self.option_names() if hasattr(self, k)}

    def check(self, teacher: Any) -> None:
        """Raise ``ValueError`` if this objective cannot train ``teacher`` as it stands (before any step runs)."""
        if self.needs_quality_head and getattr(teacher, "quality_head", None) is None:
            raise ValueError(f"objective '{self.name}' needs a teacher with a quality head")

    def prepare(self, teacher: Any, context: FitContext) -> None:
        """Setup from the training data before the first step (default: none needed)."""

    def prepare_example(self, teacher: Any, generator: torch.Generator) -> None:
        """What the registry-wide tests use instead of :meth:`prepare`: small random state, no data (default:
        none needed)."""

    def forward(self, teacher: Any, embedding: Tensor, head: HeadOutput, labels: Tensor) -> dict[str, Tensor]:
        """The loss on one batch.

        Args:
            teacher: the (unfrozen) :class:`aikd.models.teacher.EmbeddingTeacher` being trained.
            embedding: ``(B, D)`` its embeddings of the batch (with gradients).
            head: the margin head's output for them.
            labels: ``(B,)`` identity labels.

        Returns:
            ``{"loss": scalar, **parts}``; the other entries are logged as ``teacher/<key>``.
        """
        raise NotImplementedError


OBJECTIVES: Registry[TeacherObjective] = Registry("objective", on_miss=lambda: _load_teacher_plugins())


def _load_teacher_plugins() -> None:
    # teacher files may register their own objectives; loading them is the teacher registry's business
    from aikd.models.teacher import list_teachers

    list_teachers()


def register_objective(name: str, **kwargs: Any) -> Callable[[type[TeacherObjective]], type[TeacherObjective]]:
    """Decorator registering an objective class under ``name``, which also becomes its :attr:`~TeacherObjective.name`
    (a config can then select it for any teacher with ``fit.objective: <name>``)."""

    def deco(cls: type[TeacherObjective]) -> type[TeacherObjective]:
        OBJECTIVES.register(name, **kwargs)(cls)
        cls.name = name
        return cls

    return deco


@register_objective("crfiqa")
class CRFIQAObjective(TeacherObjective):
    """CR-FIQA: ``CE(margin logits) + lam * SmoothL1_beta(CR target, quality head)`` (:func:`crfiqa_loss`).

    Args:
        lam: weight of the quality regression (10 in the paper).
        beta: SmoothL1 transition (``None``: 0.5, the paper's).
        cr_variant: ``"paper"`` (CCS / (NNCCS + 1 + eps)) or ``"code"`` (CCS / NNCCS, the released code).
    """

    needs_quality_head = True

    def __init__(self, lam: float = 10.0, beta: float | None = None, cr_variant: str = "paper") -> None:
        super().__init__()
        self.lam = float(lam)
        self.beta = 0.5 if beta is None else float(beta)
        self.cr_variant = cr_variant

    def forward(self, teacher: Any, embedding: Tensor, head: HeadOutput, labels: Tensor) -> dict[str, Tensor]:
        q = teacher.quality_from_embedding(embedding)
        parts = crfiqa_loss(head.logits, head.cos, labels, q, lam=self.lam, beta=self.beta, variant=self.cr_variant)
        return {
            "loss": parts["loss"],
            "ce": parts["ce"],
            "quality_loss": parts["quality"],
            "cr_target": parts["target"].mean(),
        }


class NormObjective(TeacherObjective):
    """Norm teachers (MagFace, AdaFace): ``CE(margin logits) + head.extra_loss`` under a norm-aware margin head,
    which teaches the embedding a norm that rises with recognisability; the quality is that norm."""

    def forward(self, teacher: Any, embedding: Tensor, head: HeadOutput, labels: Tensor) -> dict[str, Tensor]:
        ce = F.cross_entropy(head.logits, labels)
        return {"loss": ce + head.extra_loss, "ce": ce, "extra": head.extra_loss, "norm": embedding.norm(dim=-1).mean()}


@register_objective("magface")
class MagFaceObjective(NormObjective):
    """MagFace: the MagFace head's magnitude-dependent margin plus its regulariser (:class:`MagFaceHead`)."""

    default_head = "magface"


@register_objective("adaface")
class AdaFaceObjective(NormObjective):
    """AdaFace: the norm-adaptive margin of :class:`AdaFaceHead`."""

    default_head = "adaface"


# ------------------------------------------------------------------------------------------- distillation
def distillation_loss(
    q_student: Tensor,
    q_teacher: Tensor,
    e_student: Tensor | None = None,
    e_teacher: Tensor | None = None,
    beta: float = 0.5,
    embedding_weight: float = 1.0,
) -> dict[str, Tensor]:
    """AI-KD objective: ``SmoothL1_beta(q_s, q_t) + w * mean(1 - cos(e_s, e_t))``.

    Teacher tensors are detached here, so even a teacher that was not frozen properly receives no gradient
    (the released AI-KD code shared weights between teacher and student; this makes that class of bug
    harmless for the loss). The embedding term is used only when both embeddings are given and ``w > 0``
    (a teacher without ``embed()`` simply passes ``None``); otherwise it is reported as 0.

    Args:
        q_student: ``(B,)`` or ``(B, 1)`` student quality on the misaligned view.
        q_teacher: ``(B,)`` or ``(B, 1)`` teacher quality on the aligned view.
        e_student, e_teacher: optional ``(B, D)`` embeddings (same ``D``).
        beta: SmoothL1 transition point (0.5). embedding_weight: ``w``.

    Returns:
        ``dict(loss, quality, embedding)``.
    """
    n = q_student.shape[0]
    qs = _flat_pred(q_student, n, "q_student")
    qt = _flat_pred(q_teacher, n, "q_teacher").detach()
    quality = F.smooth_l1_loss(qs, qt, beta=beta)
    if e_student is not None and e_teacher is not None and embedding_weight > 0:
        if e_student.shape != e_teacher.shape or e_student.ndim != 2 or e_student.shape[0] != n:
            raise ValueError(
                f"e_student and e_teacher must both be (B={n}, D), got {tuple(e_student.shape)} and "
                f"{tuple(e_teacher.shape)}"
            )
        embedding = (1.0 - F.cosine_similarity(e_student.float(), e_teacher.detach().float(), dim=1)).mean()
        return {"loss": quality + embedding_weight * embedding, "quality": quality, "embedding": embedding}
    return {"loss": quality, "quality": quality, "embedding": quality.new_zeros(())}


# --------------------------------------------------------------------------------------------------- OFIQ
def magface_ofiq_score(norm: float | np.ndarray | Tensor) -> float | np.ndarray | Tensor:
    """OFIQ's (ISO/IEC 29794-5 reference implementation) MagFace mapping to 0..100.

    ``Q = round(clip(100 * sigmoid((x - centre) / scale), 0, 100))`` with OFIQ's centre and scale
    (:data:`aikd.models.calibration.OFIQ_MAGFACE_CENTRE`, :data:`~aikd.models.calibration.OFIQ_MAGFACE_SCALE`).
    Rounding is half
    away from zero (C/C++ ``std::round``; for these non-negative values ``floor(v + 0.5)``), not Python's/torch's
    half-to-even.
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
