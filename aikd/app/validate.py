"""Check a whole run's configuration at start-up, before any data is generated, cached or trained on.

A mistake in ``evaluation.methods`` or a misspelt condition used to surface when the evaluate stage started, after
minutes of teacher training and distillation. :func:`validate_run` reads the composed config once, adapts the
defaults that depend on what the chosen teacher offers (see :func:`adapt_to_teacher`), and raises one
:class:`ConfigError` listing every problem, each naming the config key and the fix.

:func:`override_hints` explains a failed Hydra composition (``trainer.max_epoch=1`` -> "did you mean
``trainer.max_epochs``?"; ``backbone=resnet18`` -> the group is now called ``student``: ``student=resnet18``);
``train.py`` and ``aikd evaluate`` print it when Hydra refuses the command line.
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from aikd.config import stage_settings
from aikd.devices import DeviceError, resolve_device

log = logging.getLogger("aikd")

__all__ = ["ConfigError", "validate_run", "adapt_to_teacher", "override_hints", "did_you_mean", "check_attributes"]

#: Quality methods ``evaluation.methods`` understands (besides ``teacher:<option>`` and ``attribute:...``).
METHODS = ("teacher", "student", "fr_norm")
PROTOCOLS = ("all_pairs", "cfp_ff", "cfp_fp", "lfw")
#: The student that replaces ``student=from_teacher`` when the teacher has no FR backbone to copy.
FALLBACK_STUDENT = "mobilenetv3_small"
#: Config groups and keys that moved: old first part of an override's key -> (new place, why). Overrides and config
#: files still using the old ones get the new form named (:func:`override_hints`, :func:`validate_run`).
MOVED = {
    "backbone": ("student", "the group is now called `student`"),
    "teacher_mode": ("stage.distill.teacher_mode", "the distill stage's settings are under `stage.distill`"),
    "preview": ("stage.preview", "the preview stage's settings are under `stage.preview`"),
    "export": ("stage.export", "the export stage's settings are under `stage.export`"),
}


class ConfigError(ValueError):
    """The run's configuration cannot work; the message lists every problem with its key and fix."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__(
            "the configuration cannot run (nothing was computed):\n" + "\n".join(f"  - {p}" for p in self.problems)
        )


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``choices``, or ``""``."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=n, cutoff=0.6)
    if not close:
        return ""
    return " (did you mean " + " or ".join(f"'{c}'" for c in close) + "?)"


def _teacher_class(name: str) -> type | None:
    from aikd.models.teacher import TEACHERS

    return TEACHERS.get(name) if name in TEACHERS else None


def _teacher_offers(cfg: DictConfig) -> tuple[bool, bool]:
    """(has a named FR backbone to copy, has an embedding) for the configured teacher, without building heavy ones.

    FR-based teachers (:class:`~aikd.models.teacher.EmbeddingTeacher`) always have both. Other teachers are cheap to
    build (parameter-free, or one ONNX file), so they are built once here to ask.
    """
    from hydra.utils import instantiate

    from aikd.models.teacher import EmbeddingTeacher

    cls = _teacher_class(str(cfg.teacher.name))
    if cls is None:
        return True, True  # reported as an unknown teacher elsewhere
    if issubclass(cls, EmbeddingTeacher):
        return True, True
    try:
        teacher = instantiate(cfg.teacher, _convert_="partial").instantiate()
    except Exception:  # noqa: BLE001 - a teacher that cannot be built is reported when the teacher stage builds it
        return "backbone" in (cfg.teacher.get("build") or {}), True
    return "backbone" in teacher.config, teacher.embedding_dim is not None


def adapt_to_teacher(cfg: DictConfig) -> list[str]:
    """Adapt the defaults that assume an FR teacher to what the configured teacher offers; return what changed.

    * ``student=from_teacher`` (the student copies the teacher's FR backbone, AI-KD's recipe) with a teacher
      that has no named backbone: the student becomes ``student=mobilenetv3_small`` (a small timm network
      trained from scratch).
    * ``evaluation.comparator.name=teacher`` (comparison scores from the teacher's embedding) with a teacher
      without an embedding: comparison scores come from ``evaluation.comparator.fallback`` (an FR backbone).

    The changed config is what runs and what ``results.json`` records.
    """
    if cfg.get("teacher") is None or _teacher_class(str(cfg.teacher.get("name"))) is None:
        return []
    stages = set(cfg.get("stages") or [])
    student = cfg.get("student")
    wants_copy = "distill" in stages and student is not None and bool(student.get("from_teacher", False))
    ecfg = cfg.get("evaluation")
    wants_comparator = "evaluate" in stages and ecfg is not None and ecfg.comparator.get("name") == "teacher"
    if not wants_copy and not wants_comparator:
        return []
    has_backbone, has_embedding = _teacher_offers(cfg)
    changes = []
    with open_dict(cfg):
        if wants_copy and not has_backbone:
            from aikd.config import load_option

            cfg.student = load_option("student", FALLBACK_STUDENT)
            changes.append(
                f"teacher '{cfg.teacher.name}' has no FR backbone to copy (student=from_teacher): the student is "
                f"student={FALLBACK_STUDENT} ({cfg.student.backbone}, from scratch); choose another with "
                "student=<option>"
            )
        if wants_comparator and not has_embedding:
            fallback = ecfg.comparator.get("fallback") or "facenet"
            ecfg.comparator.name = fallback
            ecfg.comparator.weights = ecfg.comparator.get("fallback_weights", "default")
            changes.append(
                f"teacher '{cfg.teacher.name}' has no embedding (evaluation.comparator.name=teacher): comparison "
                f"scores come from the FR backbone '{fallback}' (evaluation.comparator.fallback)"
            )
    for c in changes:
        log.info("config adapted: %s", c)
    return changes


def _check_evaluation(cfg: DictConfig, problems: list[str]) -> None:
    from aikd.config import list_options
    from aikd.evaluation.detector import DETECTOR_CONDITIONS
    from aikd.models.backbones import list_backbones

    ecfg = cfg.evaluation
    stages = list(cfg.stages)
    presets = list_options("misalign")
    _check_batch_size(ecfg, "evaluation", 64, problems)
    for c in ecfg.get("conditions") or []:
        if str(c) not in presets and str(c) not in DETECTOR_CONDITIONS:
            problems.append(
                f"evaluation.conditions: unknown condition '{c}'{did_you_mean(c, [*presets, *DETECTOR_CONDITIONS])}; "
                f"conditions are conf/misalign options ({', '.join(presets)}) or a face detector, whose landmarks "
                f"cut the quality methods' inputs ({', '.join(DETECTOR_CONDITIONS)})"
            )
    from aikd.evaluation.edc import parse_operating_point

    for op in ecfg.get("operating_points") or []:
        try:
            parse_operating_point(str(op))
        except ValueError as err:  # the parser's message says which forms are understood
            problems.append(f"evaluation.operating_points: {err}")
    for lim in ecfg.get("limits") or []:
        if not 0.0 < float(lim) <= 1.0:
            problems.append(f"evaluation.limits: {lim} must be a discard fraction in (0, 1]")
    n_boot = ecfg.get("bootstrap", 0)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
        problems.append(
            f"evaluation.bootstrap must be a whole number of bootstrap resamples >= 0 (e.g. 1000; 0 = off), got "
            f"{n_boot!r}"
        )
    if str(ecfg.get("protocol", "all_pairs")) not in PROTOCOLS:
        problems.append(f"evaluation.protocol must be one of {', '.join(PROTOCOLS)}, got '{ecfg.protocol}'")
    elif ecfg.protocol == "lfw" and not (ecfg.get("pairs_file") and Path(str(ecfg.pairs_file)).is_file()):
        problems.append(f"evaluation.pairs_file={ecfg.get('pairs_file')}: protocol=lfw needs an existing pairs.txt")
    if str(ecfg.get("split", "val")) not in ("train", "val", "test"):
        problems.append(f"evaluation.split must be train, val or test, got '{ecfg.split}'")
    comparator = str(ecfg.comparator.get("name"))
    backbones = list_backbones()
    if comparator != "teacher" and comparator not in backbones and not comparator.startswith("timm/"):
        problems.append(
            f"evaluation.comparator.name: unknown FR model '{comparator}'{did_you_mean(comparator, backbones)}; use "
            f"'teacher' (the teacher's embedding) or a backbone: {', '.join(backbones)}"
        )
    _check_extra_comparators(ecfg, comparator, backbones, problems)
    teachers = list_options("teacher")
    for m in ecfg.get("methods") or []:
        m = str(m)
        if m in METHODS:
            if m == "teacher" and cfg.get("teacher") is None:
                problems.append("evaluation.methods has 'teacher' but no teacher is configured: add teacher=<option>")
            if m == "student" and "distill" not in stages and not ecfg.get("student"):
                problems.append(
                    "evaluation.methods has 'student' but the run trains none: add the distill stage, or set "
                    "evaluation.student=<student .safetensors or distillation .ckpt>"
                )
            if m == "fr_norm" and comparator == "teacher":
                problems.append(
                    "evaluation.methods: fr_norm needs an FR backbone comparator (evaluation.comparator.name)"
                )
        elif m.startswith("teacher:"):
            option = m.split(":", 1)[1]
            if option not in teachers:
                problems.append(
                    f"evaluation.methods: '{m}' names no conf/teacher option{did_you_mean(option, teachers)}; "
                    f"options: {', '.join(teachers)}"
                )
        elif m.startswith("attribute:"):
            if not m.split(":", 1)[1].lstrip("-").partition("=")[0]:
                problems.append(f"evaluation.methods: '{m}' needs a key: attribute:<key>, attribute:-<key> or "
                                "attribute:<key>=<value>")  # fmt: skip
        else:
            problems.append(
                f"evaluation.methods: unknown method '{m}'{did_you_mean(m, METHODS)}; use teacher, teacher:<option>, "
                "student, fr_norm or attribute:[-]<key>[=<value>]"
            )
    student = ecfg.get("student")
    if student and not Path(str(student)).expanduser().is_file():
        problems.append(f"evaluation.student={student}: no such file (a student .safetensors or a distillation .ckpt)")


def _check_extra_comparators(ecfg: DictConfig, primary: str, backbones: Sequence[str], problems: list[str]) -> None:
    """``evaluation.extra_comparators``: a list of FR backbone names (their default weights) or ``{name, weights}``."""
    import inspect

    from aikd.models.backbones.base import BACKBONES

    extras = ecfg.get("extra_comparators")
    if extras is None:
        return
    if not OmegaConf.is_list(extras):
        problems.append(
            f"evaluation.extra_comparators must be a list of FR backbone names (e.g. [facenet]), got {extras!r}"
        )
        return
    seen: set[str] = set()
    for i, entry in enumerate(extras):
        key = f"evaluation.extra_comparators[{i}]"
        named = isinstance(entry, str)
        name = entry if named else (entry.get("name") if OmegaConf.is_dict(entry) else None)
        if name is None:
            problems.append(f"{key}: give a backbone name (e.g. facenet) or {{name: <backbone>, weights: <file>}}")
            continue
        name = str(name)
        if name not in backbones or name == "timm":
            problems.append(
                f"{key}: unknown FR backbone '{name}'{did_you_mean(name, backbones)}; backbones: {', '.join(backbones)}"
            )
            continue
        if name in seen or name == primary:
            why = "the primary comparator (evaluation.comparator.name)" if name == primary else "listed twice"
            problems.append(f"{key}: '{name}' is {why}; each extra comparator is another FR model")
        seen.add(name)
        if named:
            param = inspect.signature(BACKBONES.get(name)).parameters.get("weights")
            if param is None or param.default is None:
                problems.append(
                    f"{key}: backbone '{name}' has no default weights (its comparison scores would come from random "
                    f"weights): give them, {{name: {name}, weights: <checkpoint>}}, or use facenet or sface"
                )


def _check_batch_size(node: DictConfig | None, key: str, example: int, problems: list[str]) -> None:
    """``<key>.batch_size`` is a positive whole number: a bad one would otherwise surface only when the first
    loader is built, after the teacher stage has run."""
    value = None if node is None else node.get("batch_size")
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        problems.append(f"{key}.batch_size={value}: must be a positive whole number of faces per batch (e.g. "
                        f"{key}.batch_size={example})")  # fmt: skip


def _check_data(cfg: DictConfig, problems: list[str]) -> None:
    data = cfg.get("data")
    if data is None:
        problems.append("no data configured: choose data=<option> (synthetic, cfp, folder, ...)")
        return
    _check_batch_size(data, "data", 64, problems)
    target = str(data.get("_target_", ""))
    if target.endswith("folder_datamodule"):
        if OmegaConf.is_missing(data, "root"):
            problems.append("data.root is required with data=folder: python train.py data=folder data.root=/your/faces")
        elif not Path(str(data.root)).expanduser().is_dir():
            problems.append(
                f"data.root={data.root}: no such folder (expected <identity>/<image> folders)"
                + _data_dir_hint(cfg, Path(str(data.root)))
            )
        if data.get("val_root") and not Path(str(data.val_root)).expanduser().is_dir():
            problems.append(f"data.val_root={data.val_root}: no such folder")
        return
    nodes = [(f"data.{split}", data.get(split)) for split in ("train", "val", "test")]
    nodes += [(f"data.extra_train[{i}]", node) for i, node in enumerate(data.get("extra_train") or [])]
    for key, node in nodes:
        if node is None or "root" not in node:
            continue
        kind = str(node.get("_target_", ""))
        if kind.endswith("SyntheticSource"):
            continue  # generated on first use
        root = Path(str(node.root)).expanduser()
        if kind.endswith("CFPSource") and not (root / "Data" / "Images").is_dir():
            problems.append(
                f"{key}.root={root}: CFP not found there; set the AIKD_DATA environment variable (or "
                "paths.data_dir) to the folder holding cfp/Data and cfp/Protocol"
            )
        elif not kind.endswith("CFPSource") and not root.exists():
            problems.append(f"{key}.root={root}: no such file or folder" + _data_dir_hint(cfg, root))
    if data.get("augment") is not None and str(stage_settings(cfg, "distill").get("teacher_mode", "cache")) == "cache":
        problems.append(
            "data.augment changes pixels, so cached teacher scores would be wrong: set "
            "stage.distill.teacher_mode=online (or data.augment=null)"
        )


def _data_dir_hint(cfg: DictConfig, root: Path) -> str:
    """How to fix a missing data set that a data option places under ``paths.data_dir`` (``$AIKD_DATA``), e.g.
    ``data=celeba10k``: the usual cause is an unset or wrong environment variable, not a wrong option."""
    try:
        data_dir = Path(str(cfg.paths.data_dir)).expanduser().resolve()
        part = root.expanduser().resolve().relative_to(data_dir).parts[0]
    except Exception:  # no paths group, an unresolvable value, or a root elsewhere: nothing to add
        return ""
    return f"; set the AIKD_DATA environment variable (or paths.data_dir) to the folder holding {part}/"


def _degrade_choice() -> str:
    """The ``degrade`` option a run was composed with (for messages), or ``<option>`` outside a Hydra run."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            return str(HydraConfig.get().runtime.choices.get("degrade") or "<option>")
    except ValueError:  # pragma: no cover - a half-initialised Hydra config
        pass
    return "<option>"


def _check_degrade(cfg: DictConfig, problems: list[str]) -> None:
    """``degrade`` (conf/degrade): the pipeline must build, and degraded training faces need their own teacher scores.

    The ordinary teacher-score cache holds the teacher's scores of the *clean* faces, so with degraded faces the
    student would learn clean-face scores for degraded faces: exactly the opposite of the point. Cached scores
    work only with ``degrade.variants`` (a fixed number of degraded versions per face, all scored once, on one
    process); otherwise the online teacher must score every degraded face.
    """
    node = cfg.get("degrade")
    if node is None:
        return
    from hydra.utils import instantiate

    choice = _degrade_choice()
    try:
        degradation = instantiate(node, _convert_="all")
    except Exception as err:  # noqa: BLE001 - any construction error of the pipeline is a config problem
        problems.append(f"degrade={choice}: the degradation pipeline cannot be built ({err})")
        return
    mode = str(stage_settings(cfg, "distill").get("teacher_mode", "cache"))
    if not getattr(degradation, "active", True) or mode != "cache":
        return
    if not getattr(degradation, "variants", None):
        problems.append(
            f"degrade={choice} degrades the training faces with a new draw every epoch, but "
            "stage.distill.teacher_mode=cache gives cached scores: set degrade.variants=4 (four degraded versions "
            "of each face, scored once by the teacher and cached), or stage.distill.teacher_mode=online (the teacher "
            "scores each degraded face), or degrade=none"
        )
        return
    from aikd.training.distributed import trainer_world_size

    try:
        world = trainer_world_size(cfg.trainer)
    except Exception:  # noqa: BLE001 - an unusable trainer config is reported by the trainer's own check
        return
    if world > 1:
        problems.append(
            f"degrade={choice} with degrade.variants and cached teacher scores runs on one process, but the trainer "
            "has several: use stage.distill.teacher_mode=online with a DDP trainer (or a single-device trainer)"
        )


def _check_teacher(cfg: DictConfig, problems: list[str]) -> None:
    from aikd.models.teacher import list_teachers

    stages = set(cfg.stages)
    methods = [str(m) for m in ((cfg.get("evaluation") or {}).get("methods") or [])]
    needed = bool(stages & {"teacher", "distill"}) or ("evaluate" in stages and "teacher" in methods)
    if cfg.get("teacher") is None:
        if needed:
            problems.append("no teacher configured: add teacher=<option> (see conf/teacher, or `aikd list`)")
        return
    name = str(cfg.teacher.get("name"))
    known = list_teachers()
    if name not in known:
        problems.append(
            f"teacher.name: '{name}' is not a registered teacher{did_you_mean(name, known)}; registered: "
            f"{', '.join(known)} (a new teacher registers with @register_teacher in the teachers/ package)"
        )
    weights = cfg.teacher.get("weights")
    if weights and not OmegaConf.is_missing(cfg.teacher, "weights") and not Path(str(weights)).expanduser().is_file():
        problems.append(f"teacher.weights={weights}: no such teacher file")
    fit, build = cfg.teacher.get("fit") or {}, cfg.teacher.get("build") or {}
    if not isinstance(fit.get("extra_train", False), bool):
        problems.append(
            f"teacher.fit.extra_train={fit.get('extra_train')!r} must be true (the teacher also trains on "
            "data.extra_train) or false (the default: the primary training split only)"
        )
    if fit.get("extra_train") is True and str(fit.get("cr_centres", "head")) == "leave_one_out":
        # Leave-one-out centres need a second face of the identity; CelebA-like extra data has many single faces,
        # and finding that out after its features are cached wastes the longest step of the run.
        for i, node in enumerate((cfg.get("data") or {}).get("extra_train") or []):
            if not isinstance(node, DictConfig):
                continue
            folder = str(node.get("_target_", "")).endswith("FolderSource")  # its default keeps single faces
            least = node.get("min_images_per_identity", 1 if folder else None)
            if least is not None and int(least) < 2:
                problems.append(
                    f"teacher.fit.extra_train=true with teacher.fit.cr_centres=leave_one_out needs two faces per "
                    f"identity, but data.extra_train[{i}].min_images_per_identity={least}: set it to 2 or more "
                    f"(data.extra_train.{i}.min_images_per_identity=3), or teacher.fit.extra_train=false"
                )
    if str(fit.get("cr_centres", "head")) == "leave_one_out" and not weights:
        from aikd.models.backbones import parse_trainable

        trainable = str(build.get("trainable_backbone", "none"))
        try:
            frozen = parse_trainable(trainable) == 0
        except ValueError:  # not a valid setting at all: the teacher build reports it
            frozen = False
        if build.get("projection_dim") or not frozen:
            problems.append(
                f"teacher.fit.cr_centres=leave_one_out takes its class centres from the frozen backbone's embeddings, "
                f"but teacher.build.projection_dim={build.get('projection_dim')} and "
                f"teacher.build.trainable_backbone={trainable}: set teacher.build.projection_dim=null and "
                "teacher.build.trainable_backbone=none, or fit.cr_centres=head"
            )


def _check_student(cfg: DictConfig, problems: list[str]) -> None:
    from aikd.models.backbones import list_backbones

    if "distill" not in set(cfg.stages):
        return
    student = cfg.get("student")
    if student is None:
        problems.append("the distill stage needs a student: student=<option> (see conf/student)")
        return
    name, weights = student.get("backbone"), student.get("backbone_weights")
    if "teacher" in (name, weights):
        problems.append(
            "student.backbone=teacher / student.backbone_weights=teacher is the old way of copying the teacher: use "
            "student=from_teacher (student.from_teacher=true with student.backbone=null)"
        )
        return
    if student.get("from_teacher", False):
        if name is not None:
            problems.append(
                f"student.from_teacher=true copies the teacher's backbone, so student.backbone must be null (got "
                f"'{name}'); to train '{name}' instead, set student.from_teacher=false (or choose student=<option>)"
            )
        elif weights is not None:
            problems.append(
                f"student.from_teacher=true copies the teacher's weights, so student.backbone_weights must be null "
                f"(got '{weights}')"
            )
        return
    if name is None:
        problems.append(
            "student.backbone is null: name the student's backbone (student.backbone=<name> or timm/<model>), or "
            "copy the teacher's with student=from_teacher"
        )
        return
    name = str(name)
    known = list_backbones()
    if name.startswith("timm/"):
        import timm

        model = name.split("/", 1)[1]
        if not timm.is_model(model):
            problems.append(f"student.backbone: '{name}' is not a timm model{did_you_mean(model, timm.list_models())}")
    elif name not in known:
        problems.append(
            f"student.backbone: unknown backbone '{name}'{did_you_mean(name, known)}; use one of "
            f"{', '.join(known)} or timm/<model> (or student=from_teacher to copy the teacher's)"
        )


def _check_moved(cfg: DictConfig, problems: list[str]) -> None:
    """Keys that moved, still set the old way (an old experiment file, or ``+teacher_mode=...``): nothing reads
    them any more, so a run would silently ignore them."""
    for old, (new, why) in MOVED.items():
        if old in cfg:
            problems.append(f"'{old}' is not read any more ({why}): use {new} instead")


def _check_loss_weights(cfg: DictConfig, problems: list[str]) -> None:
    """``model.beta`` must be positive and the loss weights non-negative (a negative weight maximises its term)."""
    model = cfg.get("model")
    if model is None:
        return
    beta = model.get("beta")
    if beta is not None and not float(beta) > 0:
        problems.append(f"model.beta={beta}: the SmoothL1 transition must be > 0 (AI-KD uses 0.5)")
    for key in ("embedding_weight", "clean_weight", "rank_weight"):
        value = model.get(key)
        if value is not None and float(value) < 0:
            problems.append(f"model.{key}={value}: a loss weight must be >= 0 (0 turns the term off)")


def validate_run(cfg: DictConfig, stages: Iterable[str]) -> list[str]:
    """Adapt teacher-dependent defaults, then check everything the configured stages will use.

    Args:
        cfg: the composed run config (changed in place by :func:`adapt_to_teacher`).
        stages: the names of the pipeline's registered stages.

    Returns:
        The adaptations made (also logged).

    Raises:
        ConfigError: every problem found, each with its key and fix.
    """
    known_stages = list(stages)
    problems: list[str] = []
    for s in cfg.get("stages") or []:
        if s not in known_stages:
            problems.append(f"stages: unknown stage '{s}'{did_you_mean(s, known_stages)}; stages: {known_stages}")
    if problems:
        raise ConfigError(problems)
    run_stages = set(cfg.stages)
    _check_moved(cfg, problems)
    mode = str(stage_settings(cfg, "distill").get("teacher_mode", "cache"))
    if mode not in ("cache", "online"):
        problems.append(f"stage.distill.teacher_mode must be 'cache' or 'online', got '{mode}'")
    if "export" in run_stages and "distill" not in run_stages:
        problems.append("the export stage exports the student the distill stage trains: add distill to stages, or "
                        "export a saved student with `aikd export <file> --out <dir>`")  # fmt: skip
    resume = cfg.get("resume", "auto")
    if resume not in (None, False, "auto", "none", "null") and not Path(str(resume)).expanduser().is_file():
        problems.append(f"resume={resume}: no such checkpoint (use resume=auto, null, or a .ckpt path)")
    accelerator = (cfg.get("trainer") or {}).get("accelerator", "cpu")
    try:
        resolve_device(accelerator)  # the rule the teacher and evaluation passes follow (aikd.devices)
    except DeviceError as err:
        problems.append(f"trainer.accelerator={accelerator}: {err}")
    _check_data(cfg, problems)
    if "distill" in run_stages:
        _check_degrade(cfg, problems)
        _check_loss_weights(cfg, problems)
    n_before = len(problems)
    _check_teacher(cfg, problems)
    # Adapting needs a known teacher; the other checks go on either way, so one run lists every problem.
    changes = adapt_to_teacher(cfg) if len(problems) == n_before else []
    _check_student(cfg, problems)
    if "evaluate" in run_stages and cfg.get("evaluation") is not None:
        _check_evaluation(cfg, problems)
    if "export" in run_stages:
        from aikd.serving.export import FORMATS

        for f in stage_settings(cfg, "export").get("formats") or []:
            if f not in FORMATS:
                problems.append(
                    f"stage.export.formats: unknown format '{f}'{did_you_mean(f, FORMATS)}; formats: {FORMATS}"
                )
    try:
        from hydra.utils import instantiate

        if "distill" in run_stages and cfg.get("misalign") is not None:
            instantiate(cfg.misalign)
    except Exception as err:  # noqa: BLE001 - any construction error of the preset is a config problem
        problems.append(f"misalign: the preset cannot be built ({err})")
    if problems:
        raise ConfigError(problems)
    return changes


def check_attributes(methods: Sequence[str], attributes: Iterable[str], split: str) -> None:
    """``attribute:<key>`` methods need the key in the evaluated data (known once the data index is read)."""
    have = sorted(attributes)
    problems = []
    for m in methods:
        if str(m).startswith("attribute:"):
            key = str(m).split(":", 1)[1].lstrip("-").partition("=")[0]
            if key not in have:
                problems.append(
                    f"evaluation.methods: '{m}': the {split} data has no attribute '{key}'{did_you_mean(key, have)} "
                    f"(it has: {', '.join(have) or 'none'})"
                )
    if problems:
        raise ConfigError(problems)


def _flat_keys(node: Any, prefix: str = "") -> list[str]:
    out = []
    if isinstance(node, DictConfig):
        for k in node:
            path = f"{prefix}{k}"
            out.append(path)
            try:
                child = node._get_node(k)
            except Exception:  # noqa: BLE001
                continue
            if isinstance(child, DictConfig):
                out += _flat_keys(child, path + ".")
    return out


def _moved_hint(override: str) -> str | None:
    """The new form of an override that uses a moved group or key (see :data:`MOVED`), or ``None``."""
    key, _, value = override.partition("=")
    bare = key.lstrip("+~")
    head, dot, rest = bare.partition(".")
    if head not in MOVED:
        return None
    new, why = MOVED[head]
    if head == "backbone" and value == "teacher":  # the old sentinel of copying the teacher
        return f"'{override}': {why}, and copies the teacher with student=from_teacher (student.from_teacher=true)"
    return f"'{override}': {why}: {key[: len(key) - len(bare)]}{new}{dot}{rest}={value}"


def override_hints(overrides: Sequence[str], config_dir: str | Path, config_name: str = "train") -> list[str]:
    """Explain why Hydra refused ``overrides``: the new form of moved groups and keys, "did you mean" for keys
    that are not in the config.

    Composes the config with the same overrides (outside any running app). Overrides using a group or key that
    moved (:data:`MOVED`: ``backbone=resnet18`` -> ``student=resnet18``, ``teacher_mode=online`` ->
    ``stage.distill.teacher_mode=online``) get their new form. For another key that is not in the config, the
    closest existing keys under its nearest existing parent are suggested: those with the same last part (a key
    that moved), else the closest spellings of the dotted path, else of its last part. Returns no hints when the
    overrides compose.

    Args:
        overrides: the command line's overrides (other arguments are skipped).
        config_dir: the config tree (``conf/``).
        config_name: the primary config.

    Returns:
        One line per hint.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    task = [o for o in overrides if not o.startswith("-") and "=" in o and not o.lstrip("+~").startswith("hydra.")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(Path(config_dir).resolve()), version_base="1.3"):
            try:
                compose(config_name, overrides=task)
                return []
            except Exception as err:  # noqa: BLE001 - Hydra's composition errors vary in type
                message = str(err)
            moved = [h for h in (_moved_hint(o) for o in task) if h]
            m = re.search(r"Could not override '([^']+)'", message)
            if not m:
                return moved
            head = m.group(1).split(".")[0]
            if head in MOVED:  # refused in a config file (an experiment's defaults) when no override names it
                new, why = MOVED[head]
                return moved or [f"'{head}' in a config file (an experiment's `override /{head}: ...`?): {why}: {new}"]
            bad = m.group(1)
            current = [o for o in task if not _moved_hint(o)]
            groups = [o for o in current if "." not in o.split("=", 1)[0] and not o.startswith(("+", "~"))]
            try:
                base = compose(config_name, overrides=groups)
            except Exception:  # noqa: BLE001
                base = compose(config_name)
    finally:
        GlobalHydra.instance().clear()
    keys = _flat_keys(base)
    parts = bad.split(".")
    parent = ""
    for i in range(len(parts) - 1, 0, -1):
        candidate = ".".join(parts[:i])
        if candidate in keys:
            parent = candidate
            break
    under = [k for k in keys if k.startswith(parent + ".")] if parent else keys
    # A key with the same last part first (a key that moved under another parent), then close spellings.
    leaf = parts[-1]
    close = [k for k in under if k.rsplit(".", 1)[-1] == leaf][:3]
    close = close or difflib.get_close_matches(bad, under, n=3, cutoff=0.75)
    close = close or difflib.get_close_matches(leaf, under, n=3, cutoff=0.75)
    if not close:
        return [
            *moved,
            f"'{bad}' is not a key of this configuration; `python train.py --cfg job` prints the composed config",
        ]
    suggestion = " or ".join(f"'{c}'" for c in close)
    return [*moved, f"'{bad}' is not a key of this configuration: did you mean {suggestion}?"]
