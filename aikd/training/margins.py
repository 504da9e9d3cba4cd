"""Margin-softmax heads: ArcFace, CosFace, AdaFace and MagFace over the training identities (pure torch).

The heads are ``nn.Module`` s holding the class-centre matrix ``W`` (``num_classes x dim``), normalised at use.
They share one interface, ``head(embeddings, labels) -> HeadOutput(logits, cos, extra_loss)``, so a training module
writes ``F.cross_entropy(out.logits, labels) + out.extra_loss`` whatever the head. ``cos`` are the *plain* cosines
(no margin, no scale): CR-FIQA and RI build their targets from them (:mod:`aikd.training.fiqa_targets`). Heads are
plug-ins of :data:`MARGIN_HEADS` (``"arcface"``, ``"cosface"``, ``"adaface"``, ``"magface"``), built with
:func:`create_margin_head`.

Margin arithmetic runs in float32 with autocast disabled: ``acos`` and ``sqrt(1 - cos^2)`` near ``|cos| = 1``
are exactly where half precision breaks, and a scale of 64 magnifies any error in the logits.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

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
