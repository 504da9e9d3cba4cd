"""AdaFace (Kim et al., CVPR 2022): quality = the L2 norm of the un-normalised face embedding.

AdaFace uses the feature norm as a proxy of image quality *inside* its loss: the margin adapts to the norm's
batch-normalised value ``z`` (see :class:`aikd.training.margins.AdaFaceHead`), which teaches the network a norm that
rises with recognisability. The teacher reads that norm off. Two ways to get one:

* train it here (its objective is :class:`aikd.training.objectives.AdaFaceObjective`): a registered backbone (frozen by
  default) + a ``Linear + BatchNorm`` projection trained under the AdaFace head;
* load an official AdaFace checkpoint (``checkpoint=<file>.ckpt``, ``arch=ir_50`` or ``ir_101``): the IR network
  without its margin head. AdaFace networks take **BGR** faces in ``[-1, 1]``; that is part of the IR backbone's
  :class:`~aikd.geometry.preprocess.InputSpec`, so callers still hand over canonical RGB faces and the flip happens
  inside.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from aikd.models.teacher import EmbeddingTeacher, register_teacher
from aikd.training.objectives import AdaFaceObjective


@register_teacher("adaface")
class AdaFaceTeacher(EmbeddingTeacher):
    """AdaFace-style norm teacher.

    Args:
        backbone, backbone_weights, backbone_kwargs, projection_dim, trainable_backbone: see
            :class:`aikd.models.teacher.EmbeddingTeacher` (used when training here).
        checkpoint: an official AdaFace checkpoint (Lightning ``.ckpt`` with ``model.*`` keys, or a bare IR state
            dict); overrides ``backbone`` and ``projection_dim``.
        arch: its architecture, ``"ir_18"``, ``"ir_50"`` or ``"ir_101"`` (``None`` infers it from the file).
    """

    objective = AdaFaceObjective
    example_kwargs: ClassVar[dict[str, Any]] = dict(EmbeddingTeacher.example_kwargs)

    def __init__(
        self,
        backbone: str = "facenet",
        backbone_weights: str | None = "default",
        backbone_kwargs: dict[str, Any] | None = None,
        projection_dim: int | None = 512,
        trainable_backbone: str = "none",
        checkpoint: str | None = None,
        arch: str | None = None,
    ) -> None:
        if checkpoint is not None:
            from aikd.models.backbones.checkpoints import load_adaface

            net = load_adaface(checkpoint, arch)
            arch = str(getattr(net, "arch", None) or arch)
            # The shell records the architecture, so a saved teacher rebuilds the network without the checkpoint
            # (the IR backbones always carry AdaFace's BGR input spec).
            super().__init__(arch, None, None, projection_dim=None, quality_head=False)
            self.adopt_backbone(net)
        else:
            super().__init__(backbone, backbone_weights, backbone_kwargs, projection_dim, trainable_backbone, False)
        self.record_config(**self.config, checkpoint=checkpoint, arch=arch)

    def quality_from_embedding(self, embedding: Tensor) -> Tensor:
        """AdaFace quality proxy: the L2 norm of the un-normalised embedding, ``(B,)``."""
        return embedding.norm(dim=-1)
