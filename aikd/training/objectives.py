"""Teacher objectives: what a trainable teacher declares as its ``Teacher.objective``, and their registry.

:class:`TeacherObjective` is a teacher's loss per batch plus any setup it needs from the training data. The generic
ones any teacher can use are registered in :data:`OBJECTIVES`: :class:`CRFIQAObjective` (``"crfiqa"``),
:class:`MagFaceObjective` (``"magface"``), :class:`AdaFaceObjective` (``"adaface"``). Teacher-specific objectives
live in the teacher's own file (``teachers/ri.py``) and register with :func:`register_objective`. The registry lives
here, in training, so that the teacher contract (:mod:`aikd.models.teacher`) never imports training code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aikd.models.registry import Registry
from aikd.training.fiqa_targets import crfiqa_loss
from aikd.training.margins import HeadOutput

__all__ = [
    "FitContext",
    "TeacherObjective",
    "OBJECTIVES",
    "register_objective",
    "CRFIQAObjective",
    "NormObjective",
    "MagFaceObjective",
    "AdaFaceObjective",
]


class FitContext(NamedTuple):
    """What :meth:`TeacherObjective.prepare` may read before training starts.

    Attributes:
        index: the training split (an :class:`aikd.data.index.FaceIndex`).
        canvas: the canvas geometry its images are read on (an :class:`aikd.geometry.align.Canvas`).
        seed: the run's seed (for reproducible draws such as RI's degraded faces).
        device: where features may be computed (``"cpu"``, ``"cuda"``...).
        features: the frozen backbone's features of the training faces, when the teacher trains on cached features
            (``None`` when the backbone trains); rows follow ``labels``.
        labels: ``(N,)`` identity labels of those rows.
    """

    index: Any
    canvas: Any
    seed: int
    device: str
    features: Tensor | None = None
    labels: Tensor | None = None


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
        cr_centres: where the class centres of CCS and NNCCS come from.

            * ``"head"`` (the paper's): the margin head's class weights, learnt with the backbone. Right when the
              backbone trains on many images per identity.
            * ``"leave_one_out"``: the normalised mean of the *frozen* backbone's normalised embeddings of the
              identity's other training faces (NNCCS: the full means of the other identities). For a frozen,
              pretrained FR network and a small training set: head weights fitted on the same few faces memorise
              them, so every training face looks certain and the target carries no quality (measured on SFace and
              CFP 001-400: normalised pAUC 0.77 on identities 401-450 with ``"head"``, 0.61-0.63 with this).
              Needs a frozen backbone without projection (the embedding must be the cached feature).
    """

    needs_quality_head = True

    def __init__(
        self, lam: float = 10.0, beta: float | None = None, cr_variant: str = "paper", cr_centres: str = "head"
    ) -> None:
        super().__init__()
        if cr_centres not in ("head", "leave_one_out"):
            raise ValueError(f"fit.cr_centres must be 'head' or 'leave_one_out', got {cr_centres!r}")
        self.lam = float(lam)
        self.beta = 0.5 if beta is None else float(beta)
        self.cr_variant = cr_variant
        self.cr_centres = cr_centres
        self.register_buffer("class_sums", torch.zeros(0), persistent=False)

    def check(self, teacher: Any) -> None:
        super().check(teacher)
        self._check_frozen_embedding(teacher)

    def _check_frozen_embedding(self, teacher: Any) -> None:
        if self.cr_centres == "leave_one_out" and not (
            teacher.backbone_frozen and isinstance(getattr(teacher, "projection", None), nn.Identity)
        ):
            raise ValueError(
                "fit.cr_centres=leave_one_out needs a frozen backbone and no projection "
                "(set teacher.build.trainable_backbone=none and teacher.build.projection_dim=null)"
            )

    def prepare(self, teacher: Any, context: FitContext) -> None:
        if self.cr_centres != "leave_one_out":
            return
        self._check_frozen_embedding(teacher)
        if context.features is None or context.labels is None:
            raise ValueError("fit.cr_centres=leave_one_out needs the cached backbone features of the training faces")
        self.set_centres(context.features, context.labels)

    def prepare_example(self, teacher: Any, generator: torch.Generator) -> None:
        if self.cr_centres == "leave_one_out":
            n = int(teacher.embedding_dim)
            self.set_centres(torch.randn(8, n, generator=generator), torch.arange(8) % 4)

    @torch.no_grad()
    def set_centres(self, features: Tensor, labels: Tensor) -> None:
        """Per-identity sums of the normalised ``features``; each identity needs two faces to leave one out."""
        e = F.normalize(features.float(), dim=1)
        labels = labels.long()
        counts = torch.bincount(labels)
        if bool((counts[counts > 0] < 2).any()):
            raise ValueError("fit.cr_centres=leave_one_out: every training identity needs at least 2 faces")
        self.class_sums = torch.zeros(int(labels.max()) + 1, e.shape[1]).index_add_(0, labels, e)

    @torch.no_grad()
    def leave_one_out_cos(self, embedding: Tensor, labels: Tensor) -> Tensor:
        """``(B, C)`` cosines to the class centres, the own one without the face itself."""
        e = F.normalize(embedding.detach().float(), dim=1)
        centres = F.normalize(self.class_sums, dim=1)
        cos = e @ centres.T
        own = self.class_sums[labels.long()] - e
        cos[torch.arange(len(e)), labels.long()] = (e * F.normalize(own, dim=1)).sum(1)
        return cos

    def forward(self, teacher: Any, embedding: Tensor, head: HeadOutput, labels: Tensor) -> dict[str, Tensor]:
        q = teacher.quality_from_embedding(embedding)
        cos = head.cos if self.cr_centres == "head" else self.leave_one_out_cos(embedding, labels)
        parts = crfiqa_loss(head.logits, cos, labels, q, lam=self.lam, beta=self.beta, variant=self.cr_variant)
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
    """MagFace: the MagFace head's magnitude-dependent margin plus its regulariser
    (:class:`~aikd.training.margins.MagFaceHead`)."""

    default_head = "magface"


@register_objective("adaface")
class AdaFaceObjective(NormObjective):
    """AdaFace: the norm-adaptive margin of :class:`~aikd.training.margins.AdaFaceHead`."""

    default_head = "adaface"
