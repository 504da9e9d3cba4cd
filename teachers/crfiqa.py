"""CR-FIQA (Boutros et al., CVPR 2023): quality = a regression head on the FR embedding, trained to predict
the sample's certainty ratio CCS / (NNCCS + 1 + eps) under an angular-margin softmax.

Two ways to get one:

* train it here (its objective is :class:`aikd.training.objectives.CRFIQAObjective`): any registered backbone (frozen,
  partly or fully trainable) + a ``Linear + BatchNorm`` projection + the ``qs`` head;
* load an official CR-FIQA checkpoint (``checkpoint=<step>backbone.pth``, ``arch=iresnet50|iresnet100``): the
  iResNet with its ``qs`` head, no projection.
"""

from __future__ import annotations

from typing import Any

from aikd.models.teacher import EmbeddingTeacher, register_teacher
from aikd.training.objectives import CRFIQAObjective


@register_teacher("crfiqa")
class CRFIQATeacher(EmbeddingTeacher):
    """CR-FIQA teacher.

    Args:
        backbone, backbone_weights, backbone_kwargs, projection_dim, trainable_backbone, quality_hidden: see
            :class:`aikd.models.teacher.EmbeddingTeacher`.
        checkpoint: an official CR-FIQA backbone checkpoint (overrides ``backbone``/``projection_dim``).
        arch: its architecture, ``"iresnet50"`` or ``"iresnet100"`` (``None``: inferred from the file).
    """

    objective = CRFIQAObjective

    def __init__(
        self,
        backbone: str = "facenet",
        backbone_weights: str | None = "default",
        backbone_kwargs: dict[str, Any] | None = None,
        projection_dim: int | None = 512,
        trainable_backbone: str = "none",
        checkpoint: str | None = None,
        arch: str | None = None,
        quality_hidden: int | None = None,
    ) -> None:
        if checkpoint is not None:
            from aikd.models.backbones.checkpoints import load_crfiqa

            net, head = load_crfiqa(checkpoint, arch)
            arch = str(getattr(net, "arch", None) or arch)
            super().__init__(arch, backbone_weights=None, projection_dim=None, trainable_backbone="none")
            self.adopt_backbone(net, head)  # the loaded network, with the checkpoint's preprocessing preset
        else:
            super().__init__(
                backbone,
                backbone_weights,
                backbone_kwargs,
                projection_dim,
                trainable_backbone,
                quality_hidden=quality_hidden,
            )
        self.record_config(**self.config, checkpoint=checkpoint, arch=arch)
