"""The teacher contract: a frozen FIQA method that scores properly aligned faces.

A teacher takes canonical faces (float ``(B, 3, H, W)`` RGB in ``[0, 1]`` cut with ``teacher.input_spec.geometry``)
and returns one raw quality score per face (higher = better) and, optionally, an embedding used for the
embedding-consistency term of the distillation loss. Teachers are:

* **frozen** - parameters never require gradients and the module stays in eval mode even after ``.train()``
  (the released AI-KD code accidentally trained its teacher through shared weights; aikd makes that
  impossible);
* **fingerprinted** - :attr:`Teacher.fingerprint` hashes the weights and the configuration, so teacher-score
  caches are reused exactly when nothing changed;
* **calibrated** - ``teacher.calibration`` maps raw scores to 0..100.

Plug-ins live in the top-level ``teachers/`` package (one file each) and register with
:func:`register_teacher`, which is also where a teacher's name is written (it sets the class's ``name``); third-party
packages can register through the ``aikd.teachers`` entry-point group. ``aikd`` never imports ``teachers`` at
import time: the registry loads plug-ins on first lookup. A teacher trained here declares its training objective in
the same file (:attr:`Teacher.objective`, a :class:`aikd.training.objectives.TeacherObjective`), so a trainable
teacher is one file plus its ``conf/teacher`` option.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from aikd.geometry.preprocess import InputSpec
from aikd.io import atomic_path
from aikd.models.calibration import Calibration
from aikd.models.registry import Registry

if TYPE_CHECKING:  # annotations only: the contract (floor 4) never imports training (floor 5) at run time
    from aikd.training.objectives import TeacherObjective

log = logging.getLogger(__name__)

__all__ = [
    "Teacher",
    "EmbeddingTeacher",
    "module_fingerprint",
    "TeacherOutput",
    "TEACHERS",
    "register_teacher",
    "create_teacher",
    "list_teachers",
    "save_teacher",
    "load_teacher",
]


class TeacherOutput(NamedTuple):
    """Raw quality ``(B,)`` and optional embedding ``(B, D)``."""

    quality: Tensor
    embedding: Tensor | None


class Teacher(nn.Module):
    """Base class of frozen FIQA teachers.

    Subclasses set :attr:`input_spec` and :attr:`embedding_dim` (``None`` when they have no embedding), call
    :meth:`record_config` with their JSON-able constructor arguments (what :func:`load_teacher` needs to rebuild
    them), and implement :meth:`predict` on canonical faces. Their :attr:`name` comes from
    :func:`register_teacher`; it is the registry key, saved with the teacher and part of its fingerprint.
    """

    name: str = "teacher"
    #: The objective that trains this teacher (:func:`aikd.training.teacher_fit.train_teacher`): a generic one from
    #: :mod:`aikd.training.objectives` or the teacher file's own :class:`~aikd.training.objectives.TeacherObjective`
    #: subclass; ``None``: the teacher is not trained here (official weights, ONNX files, ensembles).
    objective: ClassVar[type[TeacherObjective] | None] = None
    input_spec: InputSpec = InputSpec()
    embedding_dim: int | None = None
    #: Small, download-free constructor arguments: the registry-wide tests build every teacher with these.
    example_kwargs: ClassVar[dict[str, Any]] = {}
    #: Constructor arguments that point at weight files; a saved teacher restores weights itself, so
    #: :func:`load_teacher` sets these to ``None`` when rebuilding.
    weight_args: ClassVar[tuple[str, ...]] = ("weights", "backbone_weights", "checkpoint")

    def __init__(self) -> None:
        super().__init__()
        self.calibration = Calibration()
        self.config: dict[str, Any] = {}
        self._fingerprint: str | None = None
        self._frozen = False

    @classmethod
    def example_kwargs_for_tests(cls, tmp_dir: Path) -> dict[str, Any]:
        """Constructor arguments the registry-wide tests build this teacher with.

        The default is :attr:`example_kwargs`. Teachers that need a file to exist (e.g. an ONNX model) override
        this and write a small one into ``tmp_dir``, so every registered teacher is testable without downloads.
        """
        return dict(cls.example_kwargs)

    # -- contract -------------------------------------------------------------------------------------------
    def predict(self, faces: Tensor) -> TeacherOutput:  # pragma: no cover - abstract
        """Canonical faces -> raw quality (and embedding). Implemented by each teacher."""
        raise NotImplementedError

    def forward(self, faces: Tensor) -> TeacherOutput:
        """Frozen inference (no gradients, eval mode); an unfrozen teacher (being trained) runs normally."""
        if not self._frozen:
            return self.predict(faces)
        if self.training:
            super().train(False)
        with torch.no_grad():
            out = self.predict(faces)
        q = out.quality.reshape(-1).float()
        e = None if out.embedding is None else out.embedding.float()
        return TeacherOutput(q, e)

    def score(self, faces: Tensor) -> Tensor:
        """Raw quality ``(B,)``, higher = better."""
        return self(faces).quality

    def score_0_100(self, faces: Tensor) -> Tensor:
        """Calibrated quality in ``[0, 100]``."""
        return self.calibration(self.score(faces))

    def embed(self, faces: Tensor) -> Tensor:
        """Embedding ``(B, D)``; raises ``NotImplementedError`` for teachers without one."""
        out = self(faces)
        if out.embedding is None:
            raise NotImplementedError(f"teacher '{self.name}' has no embedding")
        return out.embedding

    # -- frozen ---------------------------------------------------------------------------------------------
    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> Teacher:
        """Stop gradients and switch to eval mode for good (done by :func:`create_teacher`).

        Teacher-training modules work on an unfrozen instance; every teacher handed to distillation,
        evaluation or export is frozen.
        """
        for p in self.parameters():
            p.requires_grad_(False)
        self._frozen = True
        super().train(False)
        return self

    def train(self, mode: bool = True) -> Teacher:
        """A frozen teacher stays in eval mode: BatchNorm statistics and dropout must not change what it says."""
        return super().train(False if self._frozen else mode)

    # -- identity -------------------------------------------------------------------------------------------
    def record_config(self, **config: Any) -> None:
        """Remember constructor arguments (JSON-able) for saving, loading and fingerprints."""
        json.dumps(config)  # fail early on non-serialisable config
        self.config = dict(config)
        self._fingerprint = None

    @property
    def fingerprint(self) -> str:
        """SHA-256 (hex, 16 chars) of the teacher's name, config, input spec and every weight."""
        if self._fingerprint is None:
            config = {k: v for k, v in self.config.items() if k not in self.weight_args}  # weights are hashed
            ident = {"name": self.name, "config": config, "input": self.input_spec.to_dict()}
            self._fingerprint = module_fingerprint(self, ident)
        return self._fingerprint

    def invalidate_fingerprint(self) -> None:
        """Call after changing weights in place."""
        self._fingerprint = None

    def describe(self) -> dict[str, Any]:
        """Metadata for exports and reports."""
        return {
            "name": self.name,
            "fingerprint": self.fingerprint,
            "config": self.config,
            "input_spec": self.input_spec.to_dict(),
            "embedding_dim": self.embedding_dim,
            "calibration": self.calibration.to_dict(),
        }


def module_fingerprint(module: nn.Module, ident: Any = None) -> str:
    """SHA-256 (hex, 16 chars) of ``ident`` (JSON-able) and every tensor of ``module.state_dict()``."""
    h = hashlib.sha256()
    h.update(json.dumps(ident, sort_keys=True, default=str).encode())
    for key, value in sorted(module.state_dict().items()):
        h.update(key.encode())
        t = value.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def quality_regressor(dim: int, hidden: int | None = None) -> nn.Module:
    """The quality head on a ``dim``-d embedding: ``Linear(dim, 1)``, or a one-hidden-layer MLP of width ``hidden``.

    Raises:
        ValueError: ``hidden`` is not a positive integer.
    """
    if hidden is None:
        return nn.Linear(dim, 1)
    if isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1:
        raise ValueError(f"quality_hidden must be a positive integer or null, got {hidden!r}")
    return nn.Sequential(
        nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.PReLU(), nn.Dropout(0.2), nn.Linear(hidden, 1)
    )


class EmbeddingTeacher(Teacher):
    """Common structure of FR-based teachers: backbone -> optional projection -> embedding -> quality.

    ``CR-FIQA`` and ``RI`` put a regression head on the embedding; MagFace/AdaFace-style teachers read quality off
    the embedding's norm. The backbone can stay frozen while the projection and heads train (the CPU recipe:
    backbone features are then computed once and cached), or train partly or fully.

    Args:
        backbone: registered backbone name (see :func:`aikd.models.backbones.list_backbones`).
        backbone_weights: weights for it (``"default"``, a path, or ``None``).
        backbone_kwargs: extra factory arguments.
        projection_dim: size of a ``Linear + BatchNorm1d`` projection trained on top of the backbone (``None``: the
            backbone's embedding is the teacher's embedding, as in official CR-FIQA/MagFace checkpoints).
        trainable_backbone: ``"none"`` / ``"head"`` (frozen), ``"all"`` or ``"last:K"`` (last K parameter tensors)
            when trained (:func:`aikd.models.backbones.parse_trainable`, shared with the student's ``trainable``).
        quality_head: add a regression head on the embedding (CR-FIQA's ``qs``).
        quality_hidden: ``None`` (default): that head is ``Linear(embedding, 1)``, as in CR-FIQA, where the backbone
            trains with it and learns to put the certainty ratio into the embedding. With a frozen backbone the
            embedding was never taught that, and a linear read-out of it stays near chance (measured on SFace and
            CFP: normalised pAUC 0.83 against 0.63 for ``quality_hidden: 256``); a width here makes the head
            ``Linear -> BatchNorm1d -> PReLU -> Dropout(0.2) -> Linear``.
    """

    example_kwargs: ClassVar[dict[str, Any]] = {
        "backbone": "timm/mobilenetv3_small_050",
        "backbone_weights": None,
        "backbone_kwargs": {"input_size": 64, "embedding_dim": 64},
        "projection_dim": 32,
    }

    def __init__(
        self,
        backbone: str = "facenet",
        backbone_weights: str | None = "default",
        backbone_kwargs: dict[str, Any] | None = None,
        projection_dim: int | None = 512,
        trainable_backbone: str = "none",
        quality_head: bool = True,
        quality_hidden: int | None = None,
    ) -> None:
        super().__init__()
        from aikd.models.backbones import create_backbone

        self.backbone = create_backbone(backbone, weights=backbone_weights, **dict(backbone_kwargs or {}))
        self.input_spec = self.backbone.input_spec
        d = int(self.backbone.embedding_dim)
        if projection_dim:
            self.projection: nn.Module = nn.Sequential(nn.Linear(d, projection_dim), nn.BatchNorm1d(projection_dim))
            self.embedding_dim = int(projection_dim)
        else:
            self.projection = nn.Identity()
            self.embedding_dim = d
        self.quality_head = quality_regressor(self.embedding_dim, quality_hidden) if quality_head else None
        self.trainable_backbone = trainable_backbone
        self._set_backbone_trainable(trainable_backbone)
        self.record_config(
            backbone=backbone,
            backbone_weights=backbone_weights,
            backbone_kwargs=dict(backbone_kwargs or {}),
            projection_dim=projection_dim,
            trainable_backbone=trainable_backbone,
            quality_head=quality_head,
            quality_hidden=quality_hidden,
        )

    def _set_backbone_trainable(self, mode: str) -> None:
        from aikd.models.backbones import set_trainable

        set_trainable(self.backbone, mode)

    def adopt_backbone(self, net: nn.Module, quality_head: nn.Module | None = None) -> None:
        """Use an already loaded network (an official checkpoint) as the backbone: its input spec comes with it,
        and it stays frozen like any teacher backbone."""
        self.backbone = net
        self.input_spec = net.input_spec
        if quality_head is not None:
            self.quality_head = quality_head
        self._set_backbone_trainable(self.trainable_backbone)

    @property
    def backbone_frozen(self) -> bool:
        from aikd.models.backbones import parse_trainable

        # "head" and "last:0" freeze it as "none" does; its features can then be computed once and cached
        return parse_trainable(self.trainable_backbone) == 0

    def backbone_fingerprint(self) -> str:
        """Fingerprint of the backbone alone (keys the cache of its features)."""
        ident = {"backbone": self.config.get("backbone"), "input": self.input_spec.to_dict()}
        return module_fingerprint(self.backbone, ident)

    def features(self, faces: Tensor) -> Tensor:
        """Backbone embeddings of canonical faces (no gradients into a frozen backbone)."""
        if self.backbone_frozen:
            self.backbone.eval()
            with torch.no_grad():
                return self.backbone(faces)
        return self.backbone(faces)

    def embedding_from_features(self, features: Tensor) -> Tensor:
        return self.projection(features)

    def quality_from_embedding(self, embedding: Tensor) -> Tensor:
        """Quality from the embedding: the regression head by default; norm-based teachers override this."""
        if self.quality_head is None:
            raise RuntimeError(f"teacher '{self.name}' has no quality head")
        return self.quality_head(embedding).squeeze(-1)

    def head(self, features: Tensor) -> TeacherOutput:
        """Everything after the backbone (what trains on cached features)."""
        e = self.embedding_from_features(features)
        return TeacherOutput(self.quality_from_embedding(e), e)

    def predict(self, faces: Tensor) -> TeacherOutput:
        return self.head(self.features(faces))


def _load_plugins() -> None:
    """Import the bundled ``teachers`` package and any ``aikd.teachers`` entry points (on first lookup)."""
    try:
        importlib.import_module("teachers")
    except ModuleNotFoundError as err:
        if err.name != "teachers":
            raise
        log.warning("the bundled 'teachers' package is not importable; only user-registered teachers are available")
    from importlib.metadata import entry_points

    for ep in entry_points(group="aikd.teachers"):
        ep.load()


TEACHERS: Registry[Teacher] = Registry("teacher", on_miss=_load_plugins)


def register_teacher(name: str | None = None, **kwargs: Any) -> Any:
    """Decorator registering a teacher class or factory under ``name``, the one place a teacher's name is written.

    For a class, the key becomes its :attr:`Teacher.name` (saved with the teacher, part of its fingerprint), so the
    class does not repeat it. Without ``name`` the class's own ``name`` attribute (or its ``__name__``) is the key.

    Raises:
        ValueError: the name is taken (see :meth:`aikd.models.registry.Registry.register`), or the class sets a
        different
            ``name`` of its own (saved teachers would then not load back under the key).
    """

    def deco(obj: Any) -> Any:
        own = obj.__dict__.get("name") if isinstance(obj, type) else None
        key = name or own or obj.__name__
        if own is not None and own != key:
            raise ValueError(f"{obj.__name__}.name is '{own}' but it is registered as '{key}'; drop the attribute")
        TEACHERS.register(key, **kwargs)(obj)
        if isinstance(obj, type):
            obj.name = key
        return obj

    return deco


def list_teachers() -> list[str]:
    """Names of registered teachers (bundled plug-ins included)."""
    return TEACHERS.list()


def create_teacher(
    name: str, weights: str | Path | None = None, calibration: dict | None = None, **kwargs: Any
) -> Teacher:
    """Build a registered teacher, load its weights if given, and freeze it.

    Args:
        name: registry key (see :func:`list_teachers`).
        weights: a teacher file written by :func:`save_teacher` (restores config, weights and calibration; the
            remaining ``kwargs`` must then be empty or agree), or ``None``.
        calibration: optional calibration dict overriding the stored one.
        **kwargs: the teacher's constructor arguments.
    """
    if weights is not None:
        teacher = load_teacher(weights, expected_name=name)
    else:
        teacher = TEACHERS.get(name)(**kwargs)
    if calibration is not None:
        teacher.calibration = Calibration.from_dict(dict(calibration))
    return teacher.freeze()


def save_teacher(teacher: Teacher, path: str | Path) -> Path:
    """Write a teacher (weights + name, config, input spec, calibration) as one safetensors file, atomically."""
    from safetensors.torch import save_file

    meta = {
        "format": "aikd-teacher-v1",
        "name": teacher.name,
        "config": json.dumps(teacher.config),
        "calibration": json.dumps(teacher.calibration.to_dict()),
        "input_spec": json.dumps(teacher.input_spec.to_dict()),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in teacher.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)
    return Path(path)


def load_teacher(path: str | Path, expected_name: str | None = None) -> Teacher:
    """Rebuild a teacher saved with :func:`save_teacher` (strict weight loading, safe format), frozen."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"teacher file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(f"{path}: not a safetensors teacher file ({err})") from err
    if meta.get("format") != "aikd-teacher-v1":
        raise ValueError(
            f"{path}: not an aikd teacher file (metadata format={meta.get('format')!r}); save it with save_teacher"
        )
    name = meta["name"]
    if expected_name is not None and expected_name != name:
        raise ValueError(f"{path} holds teacher '{name}', but the config asks for '{expected_name}'")
    import inspect

    factory = TEACHERS.get(name)
    config = json.loads(meta["config"])
    accepted = inspect.signature(factory).parameters
    weight_args = getattr(factory, "weight_args", Teacher.weight_args)
    config = {k: (None if k in weight_args else v) for k, v in config.items() if k in accepted}
    teacher = factory(**config)
    spec = InputSpec.from_dict(json.loads(meta["input_spec"]))
    teacher.input_spec = spec
    if hasattr(teacher, "backbone"):
        teacher.backbone.input_spec = spec
    state = load_file(str(path))
    missing, unexpected = teacher.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit teacher '{name}' (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    teacher.calibration = Calibration.from_dict(json.loads(meta.get("calibration", "{}")))
    teacher.invalidate_fingerprint()
    return teacher.freeze()  # a saved teacher is a finished one: eval mode (its heads may hold BatchNorm, Dropout)
