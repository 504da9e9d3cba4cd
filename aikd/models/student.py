"""The student: an FR-style backbone with a quality head, trained to score misaligned faces like the teacher
scores aligned ones.

AI-KD's student returns ``(embedding, quality)``: the embedding (matched to the teacher's by a cosine term)
keeps the student's features identity-aware, which is what makes its quality estimate transfer; the quality
head is an MLP ``D -> hidden -> GELU -> 1`` on that embedding.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from torch import Tensor, nn

from aikd.config import to_plain
from aikd.geometry.align import Canvas
from aikd.geometry.preprocess import InputSpec
from aikd.models.backbones import FaceBackbone, create_backbone, set_trainable
from aikd.models.calibration import Calibration

__all__ = ["Student", "StudentOutput", "QualityExport", "build_student"]


class StudentOutput(NamedTuple):
    quality: Tensor
    embedding: Tensor


class Student(nn.Module):
    """Backbone + optional projection to the teacher's embedding size + MLP quality head.

    Args:
        backbone: a :class:`FaceBackbone` or a backbone name for :func:`aikd.models.backbones.create_backbone`.
        backbone_weights: weights for a named backbone (see the factory).
        backbone_kwargs: extra factory arguments (e.g. ``{"input_size": 112}`` for timm models).
        embedding_dim: size of the student's embedding; a linear projection is added when it differs from the
            backbone's (set it to the teacher's embedding size for the consistency loss). ``None`` keeps the
            backbone's.
        hidden: width of the quality head's hidden layer (AI-KD: 1024); ``0`` makes the head a single linear
            layer (like CR-FIQA's ``qs``), which can be initialised from a teacher's head.
        trainable: ``"all"``, ``"head"`` or ``"none"`` (backbone frozen) - AI-KD trains only the last layers of a
            pretrained FR backbone; with ``"last:K"`` the last K parameter tensors of the backbone stay trainable
            (:func:`aikd.models.backbones.parse_trainable`, shared with the teachers' ``trainable_backbone``).
        head: form of the hidden-layer quality head: ``"mlp"`` (``Linear -> GELU -> Linear``, AI-KD's) or
            ``"regressor"`` (the trained teachers' MLP, :func:`aikd.models.teacher.quality_regressor`), which an
            AI-KD student of such a teacher takes so that it can start from the teacher's head.
    """

    def __init__(
        self,
        backbone: FaceBackbone | str = "timm/resnet18",
        backbone_weights: str | None = None,
        backbone_kwargs: dict[str, Any] | None = None,
        embedding_dim: int | None = None,
        hidden: int = 1024,
        trainable: str = "all",
        head: str = "mlp",
    ) -> None:
        super().__init__()
        if head not in ("mlp", "regressor"):
            raise ValueError(f"student.head must be 'mlp' or 'regressor', got {head!r}")
        self.config: dict[str, Any] = {
            "backbone": backbone if isinstance(backbone, str) else None,
            "backbone_kwargs": to_plain(dict(backbone_kwargs or {})),
            "embedding_dim": embedding_dim,
            "hidden": hidden,
            "trainable": trainable,
            "head": head,
        }
        if isinstance(backbone, str):
            self.backbone_name = backbone
            backbone = create_backbone(backbone, weights=backbone_weights, **dict(backbone_kwargs or {}))
        else:
            self.backbone_name = type(backbone).__name__
        self.backbone = backbone
        d = int(backbone.embedding_dim)
        self.embedding_dim = int(embedding_dim or d)
        self.projection = nn.Identity() if self.embedding_dim == d else nn.Linear(d, self.embedding_dim)
        if hidden > 0 and head == "regressor":
            from aikd.models.teacher import quality_regressor

            self.quality_head: nn.Module = quality_regressor(self.embedding_dim, hidden)
        elif hidden > 0:
            self.quality_head = nn.Sequential(nn.Linear(self.embedding_dim, hidden), nn.GELU(), nn.Linear(hidden, 1))
        else:
            self.quality_head = nn.Linear(self.embedding_dim, 1)
        self.calibration = Calibration()
        #: The canvas its training faces were aligned onto (set by distillation, exported in the metadata):
        #: scoring repeats photo -> canvas -> crop with it, so a scored face gets the pixels of a trained one.
        self.canvas: Canvas | None = None
        self.set_trainable(trainable)

    @property
    def input_spec(self) -> InputSpec:
        return self.backbone.input_spec

    def set_trainable(self, trainable: str) -> None:
        """Choose which backbone parameters train (heads always train)."""
        set_trainable(self.backbone, trainable)
        self.trainable = trainable

    def forward(self, faces: Tensor) -> StudentOutput:
        """Canonical faces (cut with ``input_spec.geometry``) -> raw quality ``(B,)`` and embedding ``(B, D)``."""
        e = self.projection(self.backbone(faces))
        q = self.quality_head(e).squeeze(-1)
        return StudentOutput(q, e)


def build_student(config: dict[str, Any]) -> Student:
    """Rebuild a student (random weights) from its ``config`` (as stored in checkpoints and exports)."""
    cfg = dict(config)
    if not cfg.get("backbone"):
        raise ValueError("this student was built from a backbone object, not a name; it cannot be rebuilt from config")
    return Student(
        cfg["backbone"],
        None,
        cfg.get("backbone_kwargs"),
        cfg.get("embedding_dim"),
        cfg.get("hidden", 1024),
        cfg.get("trainable", "all"),
        cfg.get("head", "mlp"),
    )


class QualityExport(nn.Module):
    """What gets exported: canonical faces -> ``(quality_raw, quality_0_100)``.

    The input is the canonical face (RGB, ``[0, 1]``, cut with the student's geometry): every consumer of the
    exported model only has to align faces to the template named in the metadata.
    """

    def __init__(self, student: Student) -> None:
        super().__init__()
        self.student = student
        self.calibration = student.calibration

    def forward(self, faces: Tensor) -> tuple[Tensor, Tensor]:
        q = self.student(faces).quality
        return q, self.calibration(q)
