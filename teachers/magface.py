"""MagFace (Meng et al., CVPR 2021): quality = the L2 norm of the un-normalised face embedding.

MagFace trains the FR model with a margin that grows with the feature magnitude plus a regulariser that rewards
large magnitudes, so that the magnitude ends up tracking how recognisable a face is. The norm of a network
*not* trained this way says little about quality (FaceNet's pre-normalisation norm is nearly uncorrelated with
mated similarity, see docs/methods.md section 3.2), hence two ways to get a MagFace teacher:

* train it here (its objective is :class:`aikd.training.objectives.MagFaceObjective`): a registered backbone (frozen by
  default) + a ``Linear + BatchNorm`` projection trained under the MagFace head; the projection's output norm is
  the quality;
* load an official MagFace checkpoint (``checkpoint=<file>.pth``, ``arch=iresnet100``): the iResNet with the
  ``magface`` preset (BGR input in ``[0, 1]``, BatchNorm eps ``2e-5``), no projection.

No quality head: :meth:`MagFaceTeacher.quality_from_embedding` is the norm, so a teacher trained on cached
backbone features scores them exactly as it scores faces.
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from aikd.models.calibration import OFIQ_MAGFACE_CENTRE, OFIQ_MAGFACE_SCALE, Calibration
from aikd.models.teacher import EmbeddingTeacher, register_teacher
from aikd.training.objectives import MagFaceObjective

#: OFIQ's (ISO/IEC 29794-5 reference implementation) MagFace mapping ``100 * sigmoid((norm - centre) / scale)``.
OFIQ_CALIBRATION = Calibration(kind="logistic", centre=OFIQ_MAGFACE_CENTRE, scale=OFIQ_MAGFACE_SCALE)


@register_teacher("magface")
class MagFaceTeacher(EmbeddingTeacher):
    """MagFace-style norm teacher.

    Args:
        backbone, backbone_weights, backbone_kwargs, projection_dim, trainable_backbone: see
            :class:`aikd.models.teacher.EmbeddingTeacher` (used when training here).
        checkpoint: an official MagFace checkpoint (``{'state_dict': {'module.features.*': ...}}``); overrides
            ``backbone`` and ``projection_dim`` (the released iResNet's own embedding is the teacher's).
        arch: its architecture (``"iresnet100"`` for the released model; ``None`` infers it from the file's block
            counts).
        ofiq_calibration: use OFIQ's MagFace mapping (:data:`OFIQ_CALIBRATION`) as the calibration.
            It only makes sense for norms on the released model's scale (about 15-35); a teacher trained here
            has norms on its own scale and should keep the fitted (ECDF) calibration. OFIQ also rounds to an
            integer and clips to ``[0, 100]``; aikd's calibration is the *unrounded* logistic (continuous, so it
            can be distilled and ranked without ties). :func:`aikd.models.calibration.magface_ofiq_score` gives OFIQ's
            exact integer values.
    """

    objective = MagFaceObjective
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
        ofiq_calibration: bool = False,
    ) -> None:
        if checkpoint is not None:
            from aikd.models.backbones.checkpoints import load_magface

            net = load_magface(checkpoint, arch)
            arch = str(getattr(net, "arch", None) or arch)
            # The shell records what a saved teacher needs to rebuild this network without the checkpoint: the
            # architecture and the MagFace preset (its BatchNorm eps and BGR input differ from ArcFace's).
            super().__init__(arch, None, {"preset": "magface"}, projection_dim=None, quality_head=False)
            self.adopt_backbone(net)
        else:
            super().__init__(backbone, backbone_weights, backbone_kwargs, projection_dim, trainable_backbone, False)
        if ofiq_calibration:
            self.calibration = Calibration.from_dict(OFIQ_CALIBRATION.to_dict())
        self.record_config(**self.config, checkpoint=checkpoint, arch=arch, ofiq_calibration=bool(ofiq_calibration))

    def quality_from_embedding(self, embedding: Tensor) -> Tensor:
        """MagFace quality: the L2 norm of the un-normalised embedding, ``(B,)``."""
        return embedding.norm(dim=-1)
