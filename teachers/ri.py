"""Recognizability Index, RI (Chai et al., CVPR 2023): a regression head trained to predict how far a face's
embedding lies from the cluster of unrecognisable faces, weighted by how clearly it belongs to its own identity.

No official code or weights exist, so the teacher is trained here, and this file holds all of it: the model
(:class:`RITeacher`: a registered backbone, frozen by default, + a ``Linear + BatchNorm`` projection + a
``Linear(embedding, 1)`` RI head) and its objective (:class:`RIObjective`, under an ArcFace head over the training
identities), which ``aikd.training.teacher_fit.train_teacher`` runs like any other. The forms used (documented in
:mod:`aikd.training.fiqa_targets`):

* **UI centre** (:func:`aikd.training.fiqa_targets.ui_centre`): the normalised mean of the normalised embeddings of
  training faces degraded beyond recognition (``aikd.data.unrecognisable.make_unrecognisable``; ``fit.ui_size`` of them,
  512 by default; :meth:`RIObjective.prepare` computes their backbone features once). It is recomputed through the
  current projection at every step, since the projection is what trains.
* **RI target** (:func:`aikd.training.fiqa_targets.recognizability_index`), detached:
  ``RI_i = (1 - cos(x_i, c_UI)) * CCS_i / (NNCCS_i + 1 + eps)`` - the distance from the UI centre times CR-FIQA's
  certainty ratio (paper form) from the ArcFace class cosines.
* **Loss** (:func:`aikd.training.fiqa_targets.ri_loss`): ``CE(ArcFace logits) + lam * SmoothL1_0.75(RI head, RI target)
  + w * L_ID``, where the index-diversion hinge ``L_ID`` pushes the embeddings of samples with a below-average
  predicted RI to cosine distance >= ``ri_margin`` (0.5) from the UI centre
  (:func:`aikd.training.fiqa_targets.index_diversion_loss`).

At inference the quality is the RI head's raw output (higher = more recognisable); it needs no labels.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from aikd.models.teacher import EmbeddingTeacher, register_teacher
from aikd.training.fiqa_targets import recognizability_index, ri_loss, ui_centre
from aikd.training.margins import HeadOutput
from aikd.training.objectives import FitContext, TeacherObjective, register_objective


def unrecognisable_features(
    teacher: EmbeddingTeacher, index: Any, canvas: Any, n: int, seed: int, device: str
) -> Tensor:
    """Backbone features of ``n`` training faces degraded beyond recognition (RI's unrecognisable identities).

    The faces are drawn at random (``seed``) among those with landmarks - the rows the training data reads - and
    cut with the teacher's own geometry, so the UI cluster lives where the training embeddings do.
    """
    from aikd.data.dataset import face_loader
    from aikd.data.unrecognisable import make_unrecognisable
    from aikd.geometry.align import crop

    usable = np.flatnonzero(index.has_landmarks)
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(usable), size=min(n, len(usable)), replace=False)
    gen = torch.Generator().manual_seed(seed)
    feats = []
    teacher.backbone.to(device).eval()
    with torch.no_grad():
        for batch in face_loader(index, canvas, usable[pick], batch_size=64):
            if len(batch["index"]) == 0:
                continue
            img = batch["image"].to(device).float() / 255.0
            lm, mat = batch["landmarks"].to(device), batch["canvas_from_source"].to(device)
            crops = crop(img, lm, teacher.input_spec.geometry, mat)
            feats.append(teacher.backbone(make_unrecognisable(crops, gen)).cpu())
    return torch.cat(feats)


@register_objective("ri")
class RIObjective(TeacherObjective):
    """RI's objective: ``CE + lam * SmoothL1_beta(RI head, RI target) + ri_diversion_weight * L_ID``.

    Args:
        lam: weight of the RI regression (CR-FIQA's lambda; RI targets are on the CR scale).
        beta: SmoothL1 transition of the regression (``None``: 0.75).
        ui_size: training faces degraded beyond recognition that form the UI cluster.
        ri_diversion_weight: weight of the index-diversion hinge.
        ri_margin: cosine distance from the UI centre the hinge asks hard samples to reach.
    """

    needs_quality_head = True

    def __init__(
        self,
        lam: float = 10.0,
        beta: float | None = None,
        ui_size: int = 512,
        ri_diversion_weight: float = 1.0,
        ri_margin: float = 0.5,
    ) -> None:
        super().__init__()
        self.lam = float(lam)
        self.beta = 0.75 if beta is None else float(beta)
        self.ui_size = int(ui_size)
        self.ri_diversion_weight = float(ri_diversion_weight)
        self.ri_margin = float(ri_margin)
        # backbone features of the UI faces; a buffer, so it follows the training module to its device
        self.register_buffer("ui_features", torch.zeros(0), persistent=False)

    def check(self, teacher: Any) -> None:
        super().check(teacher)
        if self.ui_features.numel() == 0:
            raise ValueError("objective 'ri' needs ui_features (embeddings of unrecognisable faces): call prepare()")

    def prepare(self, teacher: Any, context: FitContext) -> None:
        self.ui_features = unrecognisable_features(
            teacher, context.index, context.canvas, self.ui_size, context.seed, context.device
        )

    def prepare_example(self, teacher: Any, generator: torch.Generator) -> None:
        self.ui_features = torch.randn(16, int(teacher.backbone.embedding_dim), generator=generator)

    def forward(self, teacher: Any, embedding: Tensor, head: HeadOutput, labels: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():  # a constant target; eval mode so UI faces do not move BatchNorm statistics
            was_training = teacher.projection.training
            teacher.projection.eval()
            centre = ui_centre(teacher.embedding_from_features(self.ui_features))
            teacher.projection.train(was_training)
        target = recognizability_index(embedding, centre, head.cos, labels)
        q = teacher.quality_from_embedding(embedding)
        parts = ri_loss(
            q,
            target,
            embedding,
            centre,
            beta=self.beta,
            diversion_weight=self.ri_diversion_weight,
            margin=self.ri_margin,
        )
        ce = F.cross_entropy(head.logits, labels)
        loss = ce + self.lam * parts["regression"] + parts["diversion"] * self.ri_diversion_weight
        return {
            "loss": loss,
            "ce": ce,
            "quality_loss": parts["regression"],
            "diversion": parts["diversion"],
            "ri_target": target.mean(),
        }


@register_teacher("ri")
class RITeacher(EmbeddingTeacher):
    """Recognizability Index teacher: backbone -> projection -> embedding -> RI regression head.

    Args:
        backbone, backbone_weights, backbone_kwargs, projection_dim, trainable_backbone: see
            :class:`aikd.models.teacher.EmbeddingTeacher`.
    """

    objective = RIObjective
    example_kwargs: ClassVar[dict[str, Any]] = dict(EmbeddingTeacher.example_kwargs)

    def __init__(
        self,
        backbone: str = "facenet",
        backbone_weights: str | None = "default",
        backbone_kwargs: dict[str, Any] | None = None,
        projection_dim: int | None = 512,
        trainable_backbone: str = "none",
    ) -> None:
        super().__init__(backbone, backbone_weights, backbone_kwargs, projection_dim, trainable_backbone, True)
