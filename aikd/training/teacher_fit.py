"""Getting a ready teacher from its config: load it, or train it once and cache it.

A ``conf/teacher/<name>.yaml`` instantiates a :class:`TeacherSpec` (cheap: no model is built). The pipeline's
``teacher`` stage calls :func:`obtain_teacher`, which

1. loads ``weights`` (a teacher file written by :func:`aikd.models.teacher.save_teacher`) when given; else
2. with a ``fit`` recipe, looks for a teacher trained with the same recipe on the same training data in
   ``<cache>/teachers/`` and trains one (Lightning) if there is none - so sweeps over students and
   misalignments share one teacher; else
3. builds the teacher as configured (e.g. from official checkpoints, or parameter-free teachers).

Training is the same for every trainable teacher: :func:`train_teacher` builds the objective the teacher declares
(``Teacher.objective``; the ``fit`` keys besides :data:`FIT_KEYS` are its options), lets it prepare what it needs
from the training data (:meth:`aikd.training.objectives.TeacherObjective.prepare`, e.g. RI's unrecognisable faces) and
fits :class:`aikd.training.TeacherTrainingModule`. Nothing here names a teacher or an objective.

Teachers without a calibration get one fitted on their training-set scores (empirical CDF, 0..100).
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aikd.config import to_plain
from aikd.data.index import FaceIndex
from aikd.devices import resolve_device
from aikd.geometry.align import Canvas
from aikd.models.calibration import Calibration
from aikd.models.teacher import TEACHERS, EmbeddingTeacher, Teacher, load_teacher, save_teacher
from aikd.training.cache import feature_cache  # backbone features, keyed by the backbone alone
from aikd.training.objectives import OBJECTIVES, FitContext, TeacherObjective

log = logging.getLogger(__name__)

__all__ = ["TeacherSpec", "obtain_teacher", "train_teacher", "training_index", "FIT_KEYS"]

#: ``fit`` keys of the training loop itself; every other key is an option of the teacher's objective.
FIT_KEYS = ("objective", "head", "epochs", "batch_size", "optimizer", "scheduler", "num_workers", "extra_train")


@dataclass
class TeacherSpec:
    """What a teacher config says.

    Attributes:
        name: registered teacher name.
        build: constructor arguments of the teacher.
        weights: a saved teacher file (skips ``fit``), or ``None``.
        fit: training recipe (see :func:`train_teacher`), or ``None`` for teachers used as built. The
            ``conf/teacher`` options share its common part (``conf/teacher/base/fit.yaml``).
        calibration: ``"ecdf"``, ``"logistic"`` or ``None`` (keep the teacher's own).
    """

    name: str
    build: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None
    fit: dict[str, Any] | None = None
    calibration: str | None = "ecdf"

    def __post_init__(self) -> None:
        self.build = dict(to_plain(self.build) or {})
        self.fit = None if self.fit is None else dict(self.fit)

    def fit_key(self, data_fingerprint: str, seed: int | None) -> str:
        """Cache key of a teacher trained with this recipe on this data.

        The objective's name enters the key whether the recipe names it or the teacher declares it, so a teacher
        trained by a recipe that still says ``objective: <name>`` is found again by one that leaves it out.
        """
        recipe = {k: (repr(v) if callable(v) else to_plain(v)) for k, v in (self.fit or {}).items()}
        if recipe.get("objective") is None:
            own = getattr(TEACHERS.get(self.name), "objective", None)
            if own is not None:
                recipe["objective"] = own.name
        blob = json.dumps(
            {"name": self.name, "build": self.build, "fit": recipe, "data": data_fingerprint, "seed": seed},
            sort_keys=True,
            default=str,
        )
        return f"{self.name}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"

    def instantiate(self, **overrides: Any) -> Teacher:
        """Build the (unfrozen) teacher."""
        return TEACHERS.get(self.name)(**{**self.build, **overrides})

    def objective_class(self) -> type[TeacherObjective]:
        """The objective ``fit`` trains with: the teacher's own (``Teacher.objective``), or the registered one
        ``fit.objective`` names (any teacher can be trained with a generic objective of
        :mod:`aikd.training.objectives`).

        Raises:
            TypeError: the recipe names no objective and the teacher declares none (it is not trainable here).
            KeyError: ``fit.objective`` is not a registered objective.
        """
        own = getattr(TEACHERS.get(self.name), "objective", None)
        name = (self.fit or {}).get("objective")
        if name is None or (own is not None and own.name == name):
            if own is None:
                raise TypeError(
                    f"teacher '{self.name}' declares no training objective (Teacher.objective), so it cannot be "
                    f"trained here; give teacher.weights, or fit.objective (one of {', '.join(OBJECTIVES.list())})"
                )
            return own
        return OBJECTIVES.get(str(name))

    def objective(self) -> TeacherObjective:
        """The objective built with the recipe's options (the ``fit`` keys besides :data:`FIT_KEYS`)."""
        options = {k: to_plain(v) for k, v in (self.fit or {}).items() if k not in FIT_KEYS}
        return self.objective_class().from_options(options)


def _calibrate(teacher: Teacher, raw: np.ndarray, kind: str | None) -> None:
    if kind and teacher.calibration.kind == "identity":
        teacher.calibration = Calibration.fit(raw, kind=kind)
        log.info("teacher %s: %s calibration fitted on %d training scores", teacher.name, kind, len(raw))


def _training_scores(
    teacher: Teacher,
    index: FaceIndex,
    canvas: Canvas,
    features: Any | None,
    device: str,
    batch_size: int,
    cache_root: Path,
) -> np.ndarray:
    # cache_root is the run's (paths.cache_dir), the one the teacher itself is cached under: a teacher's caches
    # never split between two roots.
    if features is not None and isinstance(teacher, EmbeddingTeacher):
        from aikd.training.cache import teacher_scores_from_features

        rows = np.flatnonzero(features.done)
        (f,) = features.read(rows, "features")
        return torch.cat(
            [
                teacher_scores_from_features(teacher, f[i : i + 4096].to(device))["quality"].cpu()
                for i in range(0, len(f), 4096)
            ]
        ).numpy()
    from aikd.training.cache import teacher_score_cache

    cache = teacher_score_cache(
        teacher, index, canvas, cache_root / "teacher_scores", batch_size=batch_size, device=device
    )
    return np.asarray(cache.arrays["quality"])[cache.done]


def training_index(spec: TeacherSpec, datamodule: Any) -> FaceIndex:
    """The faces a teacher trains on: the datamodule's training split, without ``data.extra_train`` unless the
    recipe says ``fit.extra_train: true`` (extra sources are there to widen what the student sees; the teacher's
    classes and its calibration stay those of the primary data, so adding student faces does not change it)."""
    if not (spec.fit or {}).get("extra_train", False):
        return datamodule.index("train", extra=False)
    return datamodule.index("train")


def train_teacher(
    spec: TeacherSpec,
    datamodule: Any,
    output_dir: Path,
    cache_root: Path,
    trainer_kwargs: dict[str, Any] | None = None,
    seed: int | None = 0,
) -> Teacher:
    """Train ``spec`` on the datamodule's training split with its ``fit`` recipe; return the unfrozen teacher.

    ``fit`` keys: ``head`` (margin head settings; its ``name`` defaults to the objective's), ``epochs``,
    ``batch_size``, ``optimizer`` / ``scheduler`` (partials), ``num_workers``, optionally ``objective`` (a
    registered objective's name, instead of the teacher's own); the other keys are the objective's options (e.g.
    ``lam``, ``beta``, ``cr_variant`` for CR-FIQA; ``ui_size``, ``ri_margin``... for RI), checked by name.
    """
    import pytorch_lightning as pl
    from torch.utils.data import DataLoader, TensorDataset

    from aikd.training.callbacks import TeacherProgressBar
    from aikd.training.teacher_training import TeacherTrainingModule

    fit = dict(spec.fit or {})
    index = training_index(spec, datamodule)
    canvas = datamodule.canvas
    trainer_kwargs = dict(trainer_kwargs or {})
    device = resolve_device(trainer_kwargs.get("accelerator"))
    teacher = spec.instantiate()
    if not isinstance(teacher, EmbeddingTeacher):
        raise TypeError(
            f"teacher '{spec.name}' cannot be trained here (not an EmbeddingTeacher); give teacher.weights instead"
        )
    objective = spec.objective()  # before any feature is computed: a bad option fails fast
    batch_size = int(fit.get("batch_size", 128))
    features = None
    cached: dict[str, torch.Tensor] = {}
    if teacher.backbone_frozen:
        features = feature_cache(
            teacher,
            index,
            canvas,
            cache_root / "features",
            batch_size=64,
            device=device,
            num_workers=int(fit.get("num_workers", 0)),
        )
        rows = np.flatnonzero(features.done)
        (f,) = features.read(rows, "features")
        cached = {"features": f, "labels": torch.as_tensor(index.identity[rows])}
        dataset = TensorDataset(f, cached["labels"])
        loader = DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=True,
            drop_last=len(dataset) > batch_size,
            collate_fn=lambda items: {
                "features": torch.stack([x[0] for x in items]),
                "identity": torch.stack([x[1] for x in items]),
            },
        )
    else:
        faces = datamodule.dataset("train", augment=True, extra=bool(fit.get("extra_train", False)))
        loader = datamodule.loader(faces, batch_size, shuffle=True, drop_last=True)
    context = FitContext(index=index, canvas=canvas, seed=int(seed or 0), device=device, **cached)
    objective.prepare(teacher, context)
    module = TeacherTrainingModule(
        teacher,
        num_classes=index.num_identities,
        objective=objective,
        head=to_plain(fit.get("head")),
        optimizer=fit.get("optimizer"),
        scheduler=fit.get("scheduler"),
    )
    log_dir = output_dir / "teacher"
    epochs = int(fit.get("epochs", 10))
    trainer = pl.Trainer(
        max_epochs=epochs,
        default_root_dir=str(log_dir),
        logger=pl.loggers.CSVLogger(str(log_dir), name="", version=""),
        callbacks=[TeacherProgressBar(spec.name)],
        enable_progress_bar=True,
        enable_checkpointing=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, len(loader))),
        accelerator=trainer_kwargs.get("accelerator", "auto"),
        devices=1,
        deterministic=trainer_kwargs.get("deterministic", False),
        precision=trainer_kwargs.get("precision", "32-true"),
    )
    if seed is not None:
        pl.seed_everything(int(seed), workers=True)
    trainer.fit(module, train_dataloaders=loader)
    if module.epoch_losses:
        log.info(
            "teacher %s: %d epochs trained, final epoch loss %.4f (first %.4f)",
            spec.name,
            len(module.epoch_losses),
            module.epoch_losses[-1],
            module.epoch_losses[0],
        )
    teacher.freeze()
    scores = _training_scores(teacher, index, canvas, features, device, 64, cache_root)
    _calibrate(teacher, scores, spec.calibration)
    return teacher


def obtain_teacher(
    spec: TeacherSpec,
    datamodule: Any,
    output_dir: Path,
    cache_root: Path,
    trainer_kwargs: dict[str, Any] | None = None,
    seed: int | None = 0,
) -> Teacher:
    """A frozen, calibrated teacher for ``spec`` (loaded, found in the cache, trained, or built)."""
    import time

    train_wall_s = None
    trained_on = None  # the faces a trained teacher learnt from (teacher.json), so a run says what its teacher saw
    source = spec.weights
    if spec.weights:
        teacher = load_teacher(spec.weights, expected_name=spec.name)
        log.info("teacher %s loaded from %s", spec.name, spec.weights)
    elif spec.fit:
        from aikd.training.cache import dataset_fingerprint

        index = training_index(spec, datamodule)
        trained_on = {"images": len(index), "identities": int(index.num_identities), "root": str(index.root)}
        path = cache_root / "teachers" / f"{spec.fit_key(dataset_fingerprint(index), seed)}.safetensors"
        source = str(path)
        if path.is_file():
            teacher = load_teacher(path, expected_name=spec.name)
            log.info("teacher %s: reusing the one trained earlier with the same recipe and data (%s)", spec.name, path)
        else:
            # The teacher's length is its own recipe's (teacher.fit.epochs), not trainer.max_epochs (distillation's).
            log.info(
                "teacher %s: training %s epochs (teacher.fit.epochs) on %s",
                spec.name,
                (spec.fit or {}).get("epochs", 10),
                index.describe(),
            )
            t0 = time.perf_counter()
            teacher = train_teacher(spec, datamodule, output_dir, cache_root, trainer_kwargs, seed)
            train_wall_s = round(time.perf_counter() - t0, 1)
            log.info("teacher %s trained in %.0f s (features, fit and calibration)", spec.name, train_wall_s)
            save_teacher(teacher, path)
            log.info("teacher %s saved to %s", spec.name, path)
    else:
        teacher = spec.instantiate()
        if teacher.calibration.kind == "identity" and spec.calibration:
            teacher.freeze()
            device = resolve_device((trainer_kwargs or {}).get("accelerator"))
            scores = _training_scores(
                teacher, training_index(spec, datamodule), datamodule.canvas, None, device, 64, cache_root
            )
            _calibrate(teacher, scores, spec.calibration)
    teacher.freeze()
    from aikd.io import write_json

    write_json(
        output_dir / "teacher.json",
        {**teacher.describe(), "file": source, "train_wall_s": train_wall_s, "trained_on": trained_on},
    )
    return teacher
