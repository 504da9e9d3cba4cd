"""The AI-KD distillation loss: the student's quality on a misaligned view regresses the teacher's (pure torch).

Teacher training lives elsewhere: margin-softmax heads in :mod:`aikd.training.margins`, the CR-FIQA and RI targets
and losses in :mod:`aikd.training.fiqa_targets`, teacher objectives in :mod:`aikd.training.objectives`.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from aikd.training.fiqa_targets import _flat_pred

__all__ = ["distillation_loss"]


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
