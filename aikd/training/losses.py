"""The AI-KD distillation loss: the student's quality on a misaligned view regresses the teacher's (pure torch).

Teacher training lives elsewhere: margin-softmax heads in :mod:`aikd.training.margins`, the CR-FIQA and RI targets
and losses in :mod:`aikd.training.fiqa_targets`, teacher objectives in :mod:`aikd.training.objectives`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from aikd.training.fiqa_targets import _flat_pred

__all__ = ["distillation_loss", "pairwise_rank_loss"]


def pairwise_rank_loss(q_student: Tensor, q_teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """RankNet-style loss on every pair of the batch: the student should order each pair as the teacher does.

    Quality is used to *rank* faces (the EDC discards the lowest first), and a small student that cannot match the
    teacher's scale everywhere may still get the order right. Per pair ``(i, j)`` with teacher scores
    ``t_i != t_j``: ``softplus(-sign(t_i - t_j) * (s_i - s_j) / sd(s))``, weighted by ``|t_i - t_j|`` so pairs the
    teacher barely separates (where its own noise decides the order) count little. Student differences are taken
    in units of the batch's student standard deviation and the weights are normalised, so the term is unchanged by
    any positive rescaling of either side: it says nothing about scale (the regression term does that), and its
    gradients stay bounded however close together the teacher's scores lie (a teacher's units are arbitrary:
    CR-FIQA's ratio, a norm, ...).

    Args:
        q_student: ``(B,)`` or ``(B, 1)`` student quality.
        q_teacher: ``(B,)`` or ``(B, 1)`` teacher quality (detached here).
        eps: floor of the standard deviation and of the total pair weight.

    Returns:
        A scalar; 0 when no pair has distinct teacher scores (a batch of one, or all ties).
    """
    n = q_student.shape[0]
    s = _flat_pred(q_student, n, "q_student").float()
    t = _flat_pred(q_teacher, n, "q_teacher").detach().float()
    if n < 2:
        return s.sum() * 0.0
    dt = t[:, None] - t[None, :]
    ds = (s[:, None] - s[None, :]) / s.std().clamp_min(eps)
    upper = torch.triu(torch.ones(n, n, dtype=torch.bool, device=s.device), diagonal=1)
    weight = dt.abs() * upper
    total = weight.sum()
    if total <= eps * t.abs().max().clamp_min(1.0):
        return s.sum() * 0.0
    return (F.softplus(-torch.sign(dt) * ds) * weight).sum() / total


def distillation_loss(
    q_student: Tensor,
    q_teacher: Tensor,
    e_student: Tensor | None = None,
    e_teacher: Tensor | None = None,
    beta: float = 0.5,
    embedding_weight: float = 1.0,
    rank_weight: float = 0.0,
) -> dict[str, Tensor]:
    """AI-KD objective: ``SmoothL1_beta(q_s, q_t) + w * mean(1 - cos(e_s, e_t)) + r * rank(q_s, q_t)``.

    Teacher tensors are detached here, so even a teacher that was not frozen properly receives no gradient
    (the released AI-KD code shared weights between teacher and student; this makes that class of bug
    harmless for the loss). The embedding term is used only when both embeddings are given and ``w > 0``
    (a teacher without ``embed()`` simply passes ``None``); otherwise it is reported as 0.

    Args:
        q_student: ``(B,)`` or ``(B, 1)`` student quality on the misaligned view.
        q_teacher: ``(B,)`` or ``(B, 1)`` teacher quality on the aligned view.
        e_student, e_teacher: optional ``(B, D)`` embeddings (same ``D``).
        beta: SmoothL1 transition point (0.5). embedding_weight: ``w``.
        rank_weight: ``r``, weight of :func:`pairwise_rank_loss` over the batch (0 = off, AI-KD's loss).

    Returns:
        ``dict(loss, quality, embedding, rank)`` (a disabled term is reported as 0).
    """
    n = q_student.shape[0]
    qs = _flat_pred(q_student, n, "q_student")
    qt = _flat_pred(q_teacher, n, "q_teacher").detach()
    quality = F.smooth_l1_loss(qs, qt, beta=beta)
    loss = quality
    embedding = quality.new_zeros(())
    if e_student is not None and e_teacher is not None and embedding_weight > 0:
        if e_student.shape != e_teacher.shape or e_student.ndim != 2 or e_student.shape[0] != n:
            raise ValueError(
                f"e_student and e_teacher must both be (B={n}, D), got {tuple(e_student.shape)} and "
                f"{tuple(e_teacher.shape)}"
            )
        embedding = (1.0 - F.cosine_similarity(e_student.float(), e_teacher.detach().float(), dim=1)).mean()
        loss = loss + embedding_weight * embedding
    rank = quality.new_zeros(())
    if rank_weight > 0:
        rank = pairwise_rank_loss(qs, qt)
        loss = loss + rank_weight * rank
    return {"loss": loss, "quality": quality, "embedding": embedding, "rank": rank}
