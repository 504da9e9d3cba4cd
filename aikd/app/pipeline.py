"""The run pipeline: build components from the Hydra config and run the configured stages.

This is the only module that calls ``hydra.utils.instantiate`` on the run config. ``train.py`` hands it the
composed config; tests call :func:`run` with a config composed by ``hydra.compose``.

Stages (``cfg.stages``), in order:

* ``prepare`` - generate/verify the data, read the indices, report problems;
* ``preview`` - write ``alignment_preview.png``: faces aligned and under every misalignment preset;
* ``teacher`` - load, or train once (cached by recipe and data), the frozen and calibrated teacher;
* ``distill`` - train the student on misaligned views toward the teacher's scores of aligned views;
* ``evaluate`` - EDC/pAUC of the teacher, the student and reference qualities under every condition;
* ``export`` - ONNX / torch.export / safetensors of the student with metadata (ONNX parity-checked).

A stage's settings are ``cfg.stage.<name>`` (``stage.preview``, ``stage.distill``, ``stage.export``); the teacher
stage is configured by ``cfg.teacher`` and the evaluate stage by ``cfg.evaluation``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from aikd.io import write_json

log = logging.getLogger("aikd")

__all__ = ["RunContext", "STAGES", "stage", "run", "build_datamodule"]


@dataclass
class RunContext:
    """What stages share: the config, the output directory, built components and results."""

    cfg: DictConfig
    output_dir: Path
    components: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] = field(default_factory=dict)

    def get(self, name: str, build: Callable[[], Any]) -> Any:
        """Build a component once and reuse it across stages."""
        if name not in self.components:
            self.components[name] = build()
        return self.components[name]


STAGES: dict[str, Callable[[RunContext], None]] = {}
#: Stages that only write reports or files: run once (global rank 0) when every rank runs the script (DDP).
RANK_ZERO_STAGES = ("preview", "evaluate", "export")


def stage(name: str) -> Callable[[Callable[[RunContext], None]], Callable[[RunContext], None]]:
    """Register a pipeline stage under ``name``."""

    def deco(fn: Callable[[RunContext], None]) -> Callable[[RunContext], None]:
        STAGES[name] = fn
        return fn

    return deco


def build_datamodule(ctx: RunContext) -> Any:
    from hydra.utils import instantiate

    def build() -> Any:
        # conf/degrade: photometric degradations of the distillation training faces (the datamodule applies them
        # to its training loader only); `degrade: null` (degrade=none) leaves every face clean.
        node = ctx.cfg.get("degrade")
        extra = {} if node is None else {"degrade": instantiate(node, _convert_="all")}
        dm = instantiate(ctx.cfg.data, _convert_="partial", **extra)
        dm.prepare_data()
        return dm

    return ctx.get("datamodule", build)


@stage("prepare")
def _prepare(ctx: RunContext) -> None:
    dm = build_datamodule(ctx)
    summary = {}
    for split in ("train", "val"):
        if dm.sources.get(split) is None:
            continue
        index = dm.index(split)
        summary[split] = {
            "images": len(index),
            "identities": index.num_identities,
            "without_landmarks": int((~index.has_landmarks).sum()),
            "issues": len(index.issues),
        }
        log.info("%s: %s", split, index.describe())
        for msg in index.issues[:5]:
            log.warning("  %s", msg)
    ctx.results["data"] = summary


@stage("preview")
def _preview(ctx: RunContext) -> None:
    from hydra.utils import instantiate

    from aikd.config import list_options, load_option, stage_settings
    from aikd.data.dataset import read_image
    from aikd.evaluation.preview import alignment_preview, save_figure

    dm = build_datamodule(ctx)
    index = dm.index("val" if dm.sources.get("val") is not None else "train")
    pcfg = stage_settings(ctx.cfg, "preview")
    n = int(pcfg.get("n_faces", 6))
    names = list(pcfg.get("presets") or list_options("misalign"))
    presets = {name: instantiate(load_option("misalign", name)) for name in names if name != "none"}
    usable = np.flatnonzero(index.has_landmarks)
    pick = usable[np.linspace(0, len(usable) - 1, num=min(n, len(usable))).astype(int)]
    images = [read_image(str(index.path(i))) for i in pick]
    fig = alignment_preview(
        images,
        [index.landmarks[i] for i in pick],
        presets,
        titles=[index.paths[i] for i in pick],
        seed=int(ctx.cfg.get("seed", 0)),
    )
    path = save_figure(fig, ctx.output_dir / "alignment_preview.png")
    ctx.results["preview"] = str(path)
    log.info("alignment preview: %s", path)


def _trainer_kwargs(cfg: DictConfig) -> dict[str, Any]:
    t = OmegaConf.to_container(cfg.trainer, resolve=True) if "trainer" in cfg else {}
    return {k: v for k, v in t.items() if k in ("accelerator", "deterministic", "precision")}


def _cache_root(cfg: DictConfig) -> Path:
    root = Path(cfg.paths.cache_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def build_teacher(ctx: RunContext) -> Any:
    """The run's frozen teacher (see :func:`aikd.training.teacher_fit.obtain_teacher`)."""
    from hydra.utils import instantiate

    from aikd.training.teacher_fit import obtain_teacher

    def build() -> Any:
        if ctx.cfg.get("teacher") is None:
            raise ValueError("no teacher configured: add teacher=<name> (see conf/teacher)")
        spec = instantiate(ctx.cfg.teacher, _convert_="partial")
        return obtain_teacher(
            spec,
            build_datamodule(ctx),
            ctx.output_dir,
            _cache_root(ctx.cfg),
            _trainer_kwargs(ctx.cfg),
            ctx.cfg.get("seed"),
        )

    return ctx.get("teacher", build)


def build_extra_teacher(ctx: RunContext, option: str) -> Any:
    """A teacher from ``conf/teacher/<option>.yaml`` besides the run's own (e.g. to evaluate several at once)."""
    from hydra.utils import instantiate

    from aikd.config import load_option
    from aikd.training.teacher_fit import obtain_teacher

    def build() -> Any:
        spec = instantiate(load_option("teacher", option), _convert_="partial")
        out = ctx.output_dir / "teachers" / option
        out.mkdir(parents=True, exist_ok=True)
        teacher = obtain_teacher(
            spec, build_datamodule(ctx), out, _cache_root(ctx.cfg), _trainer_kwargs(ctx.cfg), ctx.cfg.get("seed")
        )
        ctx.results.setdefault("teachers", {})[option] = _teacher_summary(teacher, out)
        return teacher

    return ctx.get(f"teacher:{option}", build)


def _teacher_summary(teacher: Any, output_dir: Path) -> dict[str, Any]:
    import json

    info = {"name": teacher.name, "fingerprint": teacher.fingerprint, "calibration": teacher.calibration.kind}
    meta = output_dir / "teacher.json"
    if meta.is_file():
        info["train_wall_s"] = json.loads(meta.read_text()).get("train_wall_s")
    return info


@stage("teacher")
def _teacher(ctx: RunContext) -> None:
    teacher = build_teacher(ctx)
    ctx.results["teacher"] = {
        "name": teacher.name,
        "fingerprint": teacher.fingerprint,
        "calibration": teacher.calibration.kind,
    }


def _device(cfg: DictConfig) -> str:
    """The device of the run's passes outside the Trainer (teacher scores, evaluation): ``trainer.accelerator``'s."""
    from aikd.devices import resolve_device

    return resolve_device(cfg.trainer.get("accelerator", "auto") if "trainer" in cfg else "cpu")


def _resume_path(cfg: DictConfig, output_dir: Path) -> str | None:
    resume = cfg.get("resume", "auto")
    if resume in (None, False, "none", "null"):
        return None
    if resume == "auto":
        last = output_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    if not Path(str(resume)).is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint")
    return str(resume)


def build_trainer(ctx: RunContext, **overrides: Any) -> Any:
    """The Lightning Trainer from ``cfg.trainer``, ``cfg.callbacks`` and ``cfg.logger``."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate

    callbacks = [instantiate(c) for c in (ctx.cfg.get("callbacks") or {}).values() if c is not None and "_target_" in c]
    loggers = [instantiate(c) for c in (ctx.cfg.get("logger") or {}).values() if c is not None and "_target_" in c]
    if not loggers:
        # Lightning refuses a LearningRateMonitor without a logger; with `logger=none` there is nothing to log to.
        dropped = [c for c in callbacks if isinstance(c, pl.callbacks.LearningRateMonitor)]
        if dropped:
            log.info("logger=none: the learning-rate monitor callback is left out (it needs a logger)")
            callbacks = [c for c in callbacks if c not in dropped]
    return instantiate(ctx.cfg.trainer, callbacks=callbacks, logger=loggers or False, **overrides)


def build_student_from_config(cfg: DictConfig, teacher: Any) -> Any:
    """Instantiate ``cfg.student`` (a :class:`~aikd.models.student.Student`) for distillation from ``teacher``.

    ``student.from_teacher: true`` (``student=from_teacher``, AI-KD's recipe) gives the student the teacher's
    backbone, architecture and weights (``student.backbone`` stays null), and starts its projection and quality
    head from the teacher's where the shapes match; ``false`` builds ``student.backbone`` with
    ``student.backbone_weights``. ``student.embedding_dim: null`` takes the teacher's embedding size.

    Args:
        cfg: the run config.
        teacher: the frozen teacher.

    Returns:
        The student, ready to train.

    Raises:
        ValueError: ``from_teacher`` with a teacher that has no named backbone, or whose backbone does not load.
    """
    from hydra.utils import instantiate

    spec = OmegaConf.to_container(cfg.student, resolve=True)
    from_teacher = bool(spec.pop("from_teacher", False))  # aikd's switch, not a Student argument
    kwargs: dict[str, Any] = {}
    if spec.get("embedding_dim") is None and teacher.embedding_dim is not None:
        kwargs["embedding_dim"] = teacher.embedding_dim
    if from_teacher:
        if "backbone" not in teacher.config:
            raise ValueError(f"student.from_teacher=true, but teacher '{teacher.name}' has no named backbone to copy")
        kwargs["backbone"] = teacher.config["backbone"]
        kwargs["backbone_kwargs"] = dict(teacher.config.get("backbone_kwargs") or {})
        kwargs["backbone_weights"] = None
        if teacher.config.get("quality_hidden"):  # an MLP teacher head: the student takes its form, to copy it
            kwargs.update(hidden=int(teacher.config["quality_hidden"]), head="regressor")
    student = instantiate(spec, **kwargs)
    if from_teacher:
        try:
            student.backbone.load_state_dict(teacher.backbone.state_dict())
        except (RuntimeError, AttributeError) as err:
            raise ValueError(
                f"student.from_teacher=true: the student backbone does not match the teacher's ({err})"
            ) from err
        for p in student.backbone.parameters():
            p.requires_grad_(True)
        student.set_trainable(student.trainable)
        student.backbone.input_spec = teacher.input_spec
        _copy_teacher_heads(student, teacher)
    return student


def _copy_teacher_heads(student: Any, teacher: Any) -> None:
    """Start the student's embedding projection and quality head from the teacher's where they have the same
    shapes (a linear student head, ``hidden=0``, or the teacher's MLP form, which an AI-KD student of a teacher with
    ``quality_hidden`` takes; and a teacher without projection): the student then begins by reproducing the teacher
    exactly and only has to learn to keep doing so on misaligned faces."""
    copied = []
    for name in ("quality_head", "projection"):
        mine, theirs = getattr(student, name, None), getattr(teacher, name, None)
        if theirs is None or type(mine) is not type(theirs) or not any(True for _ in theirs.parameters()):
            continue
        try:
            mine.load_state_dict(theirs.state_dict())
            copied.append(name)
        except RuntimeError:  # other shapes: keep the fresh initialisation
            continue
    if copied:
        log.info("student initialised from the teacher: backbone, %s", ", ".join(copied))


@stage("distill")
def _distill(ctx: RunContext) -> None:
    from hydra.utils import instantiate

    from aikd.config import stage_settings
    from aikd.training.cache import degraded_teacher_scores, teacher_score_cache

    cfg = ctx.cfg
    dm = build_datamodule(ctx)
    teacher = build_teacher(ctx)
    student = build_student_from_config(cfg, teacher)
    module = instantiate(cfg.model, student=student, misalign=instantiate(cfg.misalign), student_config=student.config)
    mode = str(stage_settings(cfg, "distill").get("teacher_mode", "cache"))
    caches: dict[str, Any] = {}
    if mode == "cache":
        if dm.augment is not None:
            raise ValueError(
                "data.augment changes pixels, so cached teacher scores would be wrong: set "
                "stage.distill.teacher_mode=online (or data.augment=null)"
            )
        degrades = bool(getattr(dm, "degrades", False))
        if degrades and not getattr(dm.degrade, "variants", None):
            raise ValueError(
                "degrade degrades the training faces with a new draw every epoch, which cached teacher scores cannot "
                "follow: set degrade.variants (e.g. 4 degraded versions per face, scored once) or "
                "stage.distill.teacher_mode=online (or degrade=none)"
            )
        root = _cache_root(cfg) / "teacher_scores"
        dev = _device(cfg)
        # DDP (trainer devices x nodes > 1, e.g. trainer=ddp_cpu or trainer=ddp): the teacher pass is sharded over the
        # trainer's processes with Lightning's predict loop (aikd/training/distributed.py), filling the same cache
        # entries with the same values; one process: the loop below, unchanged.
        from aikd.training.distributed import distributed_teacher_score_caches, trainer_world_size

        if trainer_world_size(cfg.trainer) > 1:
            if degrades:
                raise ValueError(
                    "degrade with cached teacher scores runs on one process: use stage.distill.teacher_mode=online "
                    "for a DDP fit with degraded faces (or a single-device trainer)"
                )
            splits = {s: dm.index(s) for s in ("train", "val") if dm.sources.get(s) is not None}
            caches = distributed_teacher_score_caches(
                teacher, splits, dm.canvas, root, cfg.trainer, int(cfg.data.batch_size), int(dm.num_workers)
            )
        else:
            for split in ("train", "val"):
                if dm.sources.get(split) is not None:
                    caches[split] = teacher_score_cache(
                        teacher, dm.index(split), dm.canvas, root, batch_size=int(cfg.data.batch_size), device=dev
                    )
            if degrades:  # the training faces' degraded versions, scored once (degrade.variants of each)
                caches["train"] = degraded_teacher_scores(
                    teacher,
                    dm.index("train"),
                    dm.canvas,
                    root,
                    dm.degrade,
                    caches["train"],
                    batch_size=int(cfg.data.batch_size),
                    device=dev,
                )
    elif mode != "online":
        raise ValueError(f"stage.distill.teacher_mode must be 'cache' or 'online', got {mode!r}")
    module.attach_teacher(teacher, caches)
    trainer = build_trainer(ctx)
    ckpt = _resume_path(cfg, ctx.output_dir)
    if ckpt:
        log.info("resuming from %s", ckpt)
    trainer.fit(module, datamodule=dm, ckpt_path=ckpt)
    student = module.student.eval()
    ctx.components["student"] = student
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
    ctx.results["distill"] = {"metrics": metrics, "global_step": _global_step(trainer), "teacher_mode": mode}
    degraded = getattr(caches.get("train"), "degraded", None)
    if degraded is not None:  # cached scores of degraded faces: how many versions and faces the teacher scored
        ctx.results["distill"]["degraded_scores"] = {
            "variants": int(dm.degrade.variants),
            "faces_scored": int(degraded.done.sum()),
            "cache": str(degraded.directory),
        }
    ctx.results.setdefault("metrics", {}).update(metrics)


def _global_step(trainer: Any) -> int:
    """Optimiser steps taken. Under ``ddp_spawn`` the steps happen in the workers and this process's trainer keeps
    0; the last checkpoint the workers wrote has the count."""
    import torch

    step = int(trainer.global_step)
    ckpt = trainer.checkpoint_callback
    if step > 0 or ckpt is None or not getattr(ckpt, "dirpath", None):
        return step
    last = Path(ckpt.dirpath) / "last.ckpt"
    if last.is_file():
        # mmap: only the step count is read, not the weights
        step = int(torch.load(last, map_location="cpu", weights_only=True, mmap=True).get("global_step", 0))
    return step


@stage("export")
def _export(ctx: RunContext) -> None:
    from aikd.config import stage_settings
    from aikd.serving.export import export_student

    if "student" not in ctx.components:
        raise ValueError("the export stage needs a student: run the distill stage first (or use `aikd export`)")
    ecfg = stage_settings(ctx.cfg, "export")
    out = export_student(
        ctx.components["student"],
        ctx.output_dir / "export",
        formats=list(ecfg.get("formats", ["onnx", "torch_export", "safetensors"])),
        teacher=ctx.components.get("teacher"),
        dynamo=ecfg.get("dynamo"),
    )
    ctx.results["export"] = out
    log.info("exported student: %s", ", ".join(out["files"].values()))
    _log_export(ctx, out)


def condition_label(name: str) -> str:
    """Report label of an evaluation condition (``none`` reads as ``aligned``, ``yunet`` as ``detector=yunet``)."""
    from aikd.evaluation.detector import detector_condition_label, is_detector_condition

    if name == "none":
        return "aligned"
    return detector_condition_label(name) if is_detector_condition(name) else name


def build_condition(ctx: RunContext, name: str, index: Any) -> Any:
    """An entry of ``evaluation.conditions``: a ``conf/misalign`` preset, or a detector's name (``yunet``): the
    quality methods' inputs cut from that detector's landmarks on the evaluated photos (detected once, cached;
    :mod:`aikd.evaluation.detector`)."""
    from hydra.utils import instantiate

    from aikd.config import load_option
    from aikd.evaluation.detector import detector_condition, is_detector_condition

    if is_detector_condition(name):
        return detector_condition(index, name)
    return instantiate(load_option("misalign", name))


def build_pairs(ctx: RunContext, index: Any) -> Any:
    """The evaluation protocol's pair list over ``index``."""
    from aikd.data.pairs import PairList, all_pairs, read_lfw_pairs

    ecfg = ctx.cfg.evaluation
    protocol = str(ecfg.get("protocol", "all_pairs"))
    if protocol == "all_pairs":
        return all_pairs(index, nonmated=ecfg.get("nonmated"), seed=int(ecfg.get("seed", 0)))
    if protocol in ("cfp_ff", "cfp_fp"):
        from aikd.data.cfp import read_cfp_pairs

        root = Path(index.root).parent
        return read_cfp_pairs(root, index, protocol[-2:].upper())
    if protocol == "lfw":
        pa, pb, mated, fold = read_lfw_pairs(ecfg.pairs_file, ecfg.get("image_pattern", "{name}/{name}_{num:04d}.jpg"))
        return PairList.from_paths(index, pa, pb, mated, fold, name="LFW", source=ecfg.pairs_file)
    raise ValueError(f"evaluation.protocol must be all_pairs, cfp_ff, cfp_fp or lfw, got {protocol!r}")


def build_comparator(ctx: RunContext) -> Any:
    """The FR model giving comparison scores: a registered backbone, or the teacher's embedding."""
    ccfg = ctx.cfg.evaluation.comparator
    if ccfg.name == "teacher":
        teacher = build_teacher(ctx)
        if teacher.embedding_dim is None:
            raise ValueError(f"evaluation.comparator=teacher, but teacher '{teacher.name}' has no embedding")
        return _TeacherEmbedding(teacher)
    from aikd.models.backbones import create_backbone

    return create_backbone(ccfg.name, weights=ccfg.get("weights"), **dict(ccfg.get("kwargs") or {})).eval()


def build_extra_comparators(ctx: RunContext) -> dict[str, Any]:
    """``evaluation.extra_comparators``: further FR backbones whose comparison scores the report also uses (name ->
    backbone). An entry is a backbone name (with its default weights: ``facenet``, ``sface``) or ``{name: ...,
    weights: ..., kwargs: ...}``."""
    from aikd.models.backbones import create_backbone

    out: dict[str, Any] = {}
    for entry in ctx.cfg.evaluation.get("extra_comparators") or []:
        if isinstance(entry, str):  # the backbone's own default weights (create_backbone's default is random)
            out[entry] = create_backbone(entry, weights="default").eval()
        else:
            spec = OmegaConf.to_container(entry, resolve=True)
            name = str(spec["name"])
            out[name] = create_backbone(name, weights=spec.get("weights"), **dict(spec.get("kwargs") or {})).eval()
    return out


class _TeacherEmbedding:
    """Adapter: a teacher's embedding as the FR comparator (e.g. on synthetic identities)."""

    def __init__(self, teacher: Any) -> None:
        self.teacher = teacher
        self.input_spec = teacher.input_spec

    def __call__(self, faces: Any) -> Any:
        return self.teacher(faces).embedding

    def to(self, device: Any) -> _TeacherEmbedding:
        self.teacher.to(device)
        return self

    def eval(self) -> _TeacherEmbedding:
        return self


def build_methods(ctx: RunContext, index: Any, comparator: Any) -> dict[str, Any]:
    """Quality methods named in ``evaluation.methods``.

    ``teacher``, ``teacher:<option>`` (another ``conf/teacher`` option, trained or loaded like the run's teacher),
    ``student``, ``fr_norm`` (norm of the comparator's embedding), ``attribute:<name>=<value>``
    (1 where the index attribute equals the value, e.g. ``attribute:pose=frontal``) and ``attribute:<name>`` /
    ``attribute:-<name>`` (a numeric attribute, or its negation, e.g. ``attribute:-severity`` for generated faces).
    """
    from aikd.evaluation.runner import AttributeQuality, EmbeddingNormQuality, ModelQuality

    methods: dict[str, Any] = {}
    for name in evaluation_method_names(ctx):
        if name == "teacher":
            t = build_teacher(ctx)
            methods[f"teacher:{t.name}"] = ModelQuality(t)
        elif name.startswith("teacher:"):
            option = name.split(":", 1)[1]
            methods[name] = ModelQuality(build_extra_teacher(ctx, option))
        elif name == "student":
            student = ctx.components.get("student")
            path = ctx.cfg.evaluation.get("student")
            if student is None and path:
                from aikd.serving.export import load_student

                student = ctx.components["student"] = load_student(path)
            if student is None:
                raise ValueError(
                    "evaluation.methods has 'student' but no student: add the distill stage, or set "
                    "evaluation.student=<student .safetensors or distillation .ckpt>"
                )
            methods["student"] = ModelQuality(student)
        elif name == "fr_norm":
            if isinstance(comparator, _TeacherEmbedding):
                raise ValueError("fr_norm needs a backbone comparator (evaluation.comparator.name=<backbone>)")
            methods["fr_norm"] = EmbeddingNormQuality(comparator)
        elif name.startswith("attribute:"):
            key, _, value = name.split(":", 1)[1].partition("=")
            sign = -1.0 if key.startswith("-") else 1.0
            key = key.lstrip("-")
            if key not in index.attributes:
                raise KeyError(f"evaluation.methods: dataset has no attribute '{key}' (has {sorted(index.attributes)})")
            vals = index.attributes[key]
            methods[name] = AttributeQuality((vals.astype(str) == value) if value else sign * vals.astype(float))
        else:
            raise ValueError(
                f"unknown evaluation method {name!r}: use teacher, student, fr_norm or attribute:<key>=<value>"
            )
    return methods


def evaluation_method_names(ctx: RunContext) -> list[str]:
    """``evaluation.methods`` plus, with ``evaluation.references: auto``, the reference qualities the evaluated
    data records (generated faces: their degradation severity), so that the demo's oracle row belongs to the data
    and not to every run's config."""
    ecfg = ctx.cfg.evaluation
    names = [str(m) for m in ecfg.methods]
    if str(ecfg.get("references", "auto")) == "auto":
        source = build_datamodule(ctx).sources.get(str(ecfg.split))
        names += [m for m in getattr(source, "reference_methods", ()) if m not in names]
    return names


def describe_method(name: str, ctx: RunContext) -> str:
    """One line saying what an evaluation row is (for the report)."""
    if name.startswith("teacher:"):
        return f"the frozen teacher ({name.split(':', 1)[1]}) scoring the face as given to it"
    if name == "student":
        return "the distilled student (trained on misaligned views to reproduce the teacher's aligned scores)"
    if name == "fr_norm":
        return f"norm of the comparator's ({ctx.cfg.evaluation.comparator.name}) embedding, before normalisation"
    if name.startswith("attribute:"):
        key, _, value = name.split(":", 1)[1].partition("=")
        if value:
            return f"a label, not a model: 1 where the data's attribute {key.lstrip('-')} is {value}, else 0"
        sign = "minus " if key.startswith("-") else ""
        return (
            f"a reference, not a model: {sign}the data's recorded attribute '{key.lstrip('-')}' per image (for "
            "generated faces, the degradation the generator applied: an oracle-like lower reference)"
        )
    return name


@stage("evaluate")
def _evaluate(ctx: RunContext) -> None:
    from aikd.evaluation.detector import DetectorLandmarks
    from aikd.evaluation.runner import evaluate

    ecfg = ctx.cfg.evaluation
    dm = build_datamodule(ctx)
    index = dm.index(ecfg.split)
    pairs = build_pairs(ctx, index)
    comparator = build_comparator(ctx)
    extra_comparators = build_extra_comparators(ctx)
    methods = build_methods(ctx, index, comparator)
    conditions = {condition_label(str(n)): build_condition(ctx, str(n), index) for n in ecfg.conditions}
    # detector conditions: how the detector did on the evaluated faces (those of the pairs with landmarks)
    rows = np.unique(pairs.images())
    rows = rows[index.has_landmarks[rows]]
    detectors = {k: c for k, c in conditions.items() if isinstance(c, DetectorLandmarks)}
    notes = {k: c.describe(rows, index.landmarks) for k, c in detectors.items()}
    detector_summary = {k: c.summary(rows, index.landmarks) for k, c in detectors.items()}
    out = ctx.output_dir / "evaluation"
    res = evaluate(
        index,
        pairs,
        methods,
        comparator,
        conditions,
        canvas=dm.canvas,
        operating_points=list(ecfg.operating_points),
        limits=list(ecfg.limits),
        seed=int(ecfg.seed),
        batch_size=int(ecfg.batch_size),
        num_workers=int(ecfg.get("num_workers", 0)),
        device=_device(ctx.cfg),
        strict=bool(ecfg.strict),
        bootstrap=int(ecfg.get("bootstrap", 0)),
        out_dir=out,
        meta={
            "data": str(index.root),
            "split": ecfg.split,
            "comparator": ecfg.comparator.name,
            "methods": {name: describe_method(name, ctx) for name in methods},
            **({"condition_notes": notes, "detector_conditions": detector_summary} if detectors else {}),
        },
        extra_comparators=extra_comparators,
    )
    summary = _pauc_summary(res.results)
    from aikd.evaluation.report import text_table

    limit = float(list(ecfg.limits)[0])
    table = f"comparison scores: {ecfg.comparator.name}; faces: {index.root} ({ecfg.split})\n" + text_table(
        res.results, limit=limit
    )
    for name, extra in res.extra_comparators.items():
        table += f"\n\ncomparison scores: {name} (extra comparator)\n" + text_table(extra["results"], limit=limit)
    for label, s in detector_summary.items():
        table += f"\n{label}: no face found on {s['n_fallback']} of {s['n_images']} faces ({s['fallback']})"
    ctx.components["evaluation_table"] = table
    ctx.results["evaluation"] = {
        "dir": str(out),
        "pauc_normalised": summary,
        "fr": {k: res.fr[k] for k in ("eer", "fnmr_at_fmr")},
    }
    if res.bootstrap is not None:  # student - teacher (and - references) with intervals: read by `aikd compare-runs`
        ctx.results["evaluation"]["bootstrap"] = res.bootstrap
    if detectors:
        ctx.results["evaluation"]["detector_conditions"] = detector_summary
    if res.extra_comparators:  # reported beside the primary figures, not in `metrics` (those stay the primary's)
        ctx.results["evaluation"]["extra_comparators"] = {
            name: {
                "pauc_normalised": _pauc_summary(x["results"]),
                "fr": {k: x["fr"][k] for k in ("eer", "fnmr_at_fmr")},
            }
            for name, x in res.extra_comparators.items()
        }
    ctx.results.setdefault("metrics", {}).update(summary)
    _log_evaluation(ctx, res)
    log.info("evaluation report: %s", res.paths.get("markdown"))


def _pauc_summary(results: dict[str, Any]) -> dict[str, Any]:
    """``{"<method>/<condition>/<operating point>/pauc<limit>": normalised pAUC}`` of one evaluation's results."""
    summary: dict[str, Any] = {}
    for cond, per_method in results.items():
        for method, r in per_method.items():
            for op, v in r["operating_points"].items():
                for lim, p in v["pauc"].items():
                    summary[f"{method}/{cond}/{op}/pauc{lim}"] = p["normalised"]
    return summary


def _wandb_run(ctx: RunContext) -> Any:
    """The wandb run of this pipeline run, or ``None`` when no wandb logger is configured.

    It is the WandbLogger's run when the distill stage ran in this process (Lightning makes it ``wandb.run``);
    otherwise (evaluation-only stages, or DDP-spawn, whose rank-0 worker held the logger's run) a run is started
    with the logger's settings (project, group, tags, offline mode, directory).
    """
    wcfg = (ctx.cfg.get("logger") or {}).get("wandb")
    if wcfg is None:
        return None
    import wandb

    if wandb.run is None:
        kw = OmegaConf.to_container(wcfg, resolve=True)
        wandb.init(
            dir=str(kw.get("save_dir") or ctx.output_dir),
            project=kw.get("project"),
            entity=kw.get("entity"),
            group=kw.get("group"),
            name=kw.get("name"),
            tags=list(kw.get("tags") or []),
            job_type=kw.get("job_type"),
            mode="offline" if kw.get("offline", True) else None,
        )
    return wandb.run


def _finish_wandb(ctx: RunContext) -> None:
    # Close this pipeline run's wandb run: sweep jobs of the basic/joblib launchers share a process, and the next
    # job's WandbLogger would otherwise log into this run.
    if "wandb" in (ctx.cfg.get("logger") or {}):
        import wandb

        if wandb.run is not None:
            wandb.run.finish()


def _log_evaluation(ctx: RunContext, res: Any) -> None:
    """Send EDC plots and the pAUC table to wandb when a wandb logger is configured."""
    run = _wandb_run(ctx)
    if run is None:
        return
    import wandb

    images = {k: wandb.Image(str(v)) for k, v in res.paths.items() if str(v).endswith(".png")}
    run.log({"evaluation/" + k: v for k, v in {**images, **ctx.results["evaluation"]["pauc_normalised"]}.items()})


def _log_export(ctx: RunContext, out: dict[str, Any]) -> None:
    """The export directory as a wandb model artifact (``<task_name>-student``) when a wandb logger is configured."""
    import re

    run = _wandb_run(ctx)
    if run is None:
        return
    import wandb

    teacher = ctx.components.get("teacher")
    artifact = wandb.Artifact(
        re.sub(r"[^A-Za-z0-9_.-]", "_", f"{ctx.cfg.get('task_name', 'aikd')}-student"),
        type="model",
        description="aikd student (quality regressor distilled from a FIQA teacher), every exported format",
        metadata={
            "formats": sorted(out["files"]),
            "teacher": None if teacher is None else {"name": teacher.name, "fingerprint": teacher.fingerprint},
            "onnx_max_abs_diff": out.get("onnx_max_abs_diff"),
            "metrics": ctx.results.get("metrics", {}),
        },
    )
    artifact.add_dir(str(ctx.output_dir / "export"))
    run.log_artifact(artifact)
    log.info("wandb artifact %s logged (%d files)", artifact.name, len(out["files"]))


def peak_rss_mb() -> dict[str, float]:
    """Peak resident memory so far (MB) of this process and of its finished children (loader workers)."""
    import resource

    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"process": round(self_kb / 1024, 1), "largest_child": round(children_kb / 1024, 1)}


def run(cfg: DictConfig) -> dict[str, Any]:
    """Run ``cfg.stages`` and write ``results.json`` in the output directory; returns the results.

    Every cache the run writes or reads (teacher, features, teacher scores, landmarks, converted backbone weights,
    generated faces) lives under ``paths.cache_dir``: the teacher and its score caches get that root passed
    explicitly, and the whole run, validation included, is wrapped in :func:`aikd.io.use_cache_root` for the caches
    that configured objects reach on their own (landmark detection in a data source, a backbone converting its
    default weights). Without this, overriding ``paths.cache_dir`` would leave those under ``$AIKD_CACHE``.
    """
    from aikd.io import use_cache_root

    with use_cache_root(_cache_root(cfg)):
        return _run(cfg)


def _run(cfg: DictConfig) -> dict[str, Any]:
    import pytorch_lightning as pl

    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True)
    from aikd.app.validate import validate_run

    # Everything the stages will use is checked first: a mistake costs seconds, not a training run.
    adapted = validate_run(cfg, STAGES)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(cfg, output_dir)
    if adapted:
        ctx.results["config_adapted"] = adapted
    from pytorch_lightning.utilities.rank_zero import rank_zero_only

    rank = int(getattr(rank_zero_only, "rank", 0) or 0)
    try:
        for name in cfg.stages:
            if rank != 0 and name in RANK_ZERO_STAGES:
                # Under `ddp` every rank runs this script; reports and exports are written once, by rank 0.
                log.info("=== stage %s: skipped on rank %d", name, rank)
                continue
            if name not in ("prepare", "preview"):
                _check_data_once(ctx)
            t0 = time.perf_counter()
            log.info("=== stage %s", name)
            STAGES[name](ctx)
            ctx.results.setdefault("timings_s", {})[name] = round(time.perf_counter() - t0, 2)
            ctx.results.setdefault("peak_rss_mb", {})[name] = peak_rss_mb()
        ctx.results["config"] = OmegaConf.to_container(cfg, resolve=False)
        if rank == 0:
            write_json(output_dir / "results.json", ctx.results)
    finally:
        _finish_wandb(ctx)
    table = ctx.components.get("evaluation_table")
    if table and rank == 0:
        print(f"\n{table}\n", flush=True)  # the run's headline numbers, where the user is looking
    log.info("results: %s", output_dir)
    return ctx.results


def _check_data_once(ctx: RunContext) -> None:
    """Checks that need the data index (read in seconds), made once before the first stage that computes anything:
    ``attribute:<key>`` evaluation methods need the key in the evaluated split."""
    if ctx.components.get("data_checked") or "evaluate" not in ctx.cfg.stages:
        return
    from aikd.app.validate import check_attributes

    ecfg = ctx.cfg.evaluation
    index = build_datamodule(ctx).index(str(ecfg.split))
    check_attributes(evaluation_method_names(ctx), index.attributes, str(ecfg.split))
    ctx.components["data_checked"] = True
