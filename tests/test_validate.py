"""Start-up validation of a run's config, teacher-dependent defaults, override hints, held-out identity splits."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import write_folder_dataset
from omegaconf import DictConfig

import aikd.config  # noqa: F401  (resolvers)
from aikd.app.validate import ConfigError, check_attributes, did_you_mean, override_hints, validate_run
from aikd.data.index import DataError
from aikd.data.sources import FolderSource, holdout_identities
from aikd.models.teacher import TEACHERS, Teacher, TeacherOutput

CONF = Path(__file__).resolve().parent.parent / "conf"
STAGES = ["prepare", "preview", "teacher", "distill", "evaluate", "export"]


def test_default_run_is_valid_and_named_after_data_and_teacher(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg()
    assert validate_run(cfg, STAGES) == []  # the demo's teacher has a backbone and an embedding: nothing adapted
    assert cfg.task_name == "synthetic-demo"
    assert list(cfg.evaluation.methods) == ["teacher", "student"]  # nothing demo-specific in the defaults
    assert compose_cfg("data=cfp", "teacher=crfiqa").task_name == "cfp-crfiqa"


def test_every_problem_is_listed_with_its_key(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    cfg = compose_cfg(
        "evaluation.conditions=[none,jiter3]",
        "evaluation.methods=[teacher,studnt,teacher:crfiq]",
        "evaluation.operating_points=['fmr=2','start_error=0.1']",
        "evaluation.comparator.name=facenett",
        "student=resnet18",
        "student.backbone=timm/resnet_18",
        f"resume={tmp_path / 'missing.ckpt'}",
        "stage.export.formats=[onnx,tflite]",
    )
    with pytest.raises(ConfigError) as info:
        validate_run(cfg, STAGES)
    text = str(info.value)
    for expected in (
        "unknown condition 'jiter3' (did you mean 'jitter3'",
        "unknown method 'studnt' (did you mean 'student'",
        "'teacher:crfiq' names no conf/teacher option (did you mean 'crfiqa'",
        "evaluation.operating_points: operating point 'fmr=2'",
        "evaluation.operating_points: operating point 'start_error=0.1' not understood",
        "unknown FR model 'facenett' (did you mean 'facenet'",
        "'timm/resnet_18' is not a timm model (did you mean 'resnet18'",
        "resume=",
        "stage.export.formats: unknown format 'tflite'",
    ):
        assert expected in text, (expected, text)
    assert len(info.value.problems) == 9


def test_loss_weights_are_checked(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("model.rank_weight=-1", "model.beta=0", "model.embedding_weight=-0.5")
    with pytest.raises(ConfigError) as info:
        validate_run(cfg, STAGES)
    text = str(info.value)
    assert "model.rank_weight=-1: a loss weight must be >= 0" in text
    assert "model.embedding_weight=-0.5: a loss weight must be >= 0" in text
    assert "model.beta=0: the SmoothL1 transition must be > 0" in text
    validate_run(compose_cfg("model.rank_weight=0.5", "model.clean_weight=1.0"), STAGES)  # accepted


def test_stage_and_data_problems(compose_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown stage 'evalute' \(did you mean 'evaluate'"):
        validate_run(compose_cfg("stages=[prepare,evalute]"), STAGES)
    for key in ("data", "evaluation"):  # refused at start-up, not when the first loader is built
        for bad in ("0", "-3", "2.5"):
            with pytest.raises(ConfigError, match=rf"{key}.batch_size={bad}: must be a positive whole number"):
                validate_run(compose_cfg(f"{key}.batch_size={bad}"), STAGES)
    with pytest.raises(ConfigError, match=r"data.root is required with data=folder"):
        validate_run(compose_cfg("data=folder"), STAGES)
    with pytest.raises(ConfigError, match=r"CFP not found there; set the AIKD_DATA"):
        validate_run(compose_cfg("data=cfp", f"paths.data_dir={tmp_path}"), STAGES)
    with pytest.raises(ConfigError, match=r"export stage exports the student the distill stage trains"):
        validate_run(compose_cfg("stages=[prepare,export]"), STAGES)
    with pytest.raises(ConfigError, match=r"'student' but the run trains none"):
        validate_run(compose_cfg("stages=[prepare,evaluate]"), STAGES)
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"no CUDA device: use trainer=cpu"):
            validate_run(compose_cfg("trainer=gpu"), STAGES)


class _PlainTeacher(Teacher):
    """A teacher with neither an FR backbone nor an embedding (like the README's example)."""

    name = "plain_for_tests"

    def __init__(self) -> None:
        super().__init__()
        self.record_config()

    def predict(self, faces: torch.Tensor) -> TeacherOutput:
        return TeacherOutput(faces.mean(dim=(1, 2, 3)), None)


def test_defaults_adapt_to_a_teacher_without_backbone_or_embedding(
    compose_cfg: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TEACHERS, "_entries", {**TEACHERS._entries, "plain_for_tests": _PlainTeacher})
    cfg = compose_cfg("teacher.name=plain_for_tests", "~teacher.fit", "~teacher.build")
    assert cfg.student.from_teacher and cfg.evaluation.comparator.name == "teacher"
    changes = validate_run(cfg, STAGES)
    assert len(changes) == 2 and "the student is student=mobilenetv3_small" in changes[0]
    assert cfg.student.backbone == "timm/mobilenetv3_small_100" and not cfg.student.from_teacher
    assert cfg.evaluation.comparator.name == "facenet" and cfg.evaluation.comparator.weights == "default"
    # without the evaluate stage the comparator is not touched, without distill the student is not
    cfg = compose_cfg("teacher.name=plain_for_tests", "~teacher.fit", "~teacher.build", "stages=[prepare,teacher]")
    assert validate_run(cfg, STAGES) == [] and cfg.student.from_teacher


def test_student_settings_are_checked(compose_cfg: Callable[..., DictConfig]) -> None:
    """``student.from_teacher`` and ``student.backbone`` must agree; the old sentinel values name the new form."""
    assert validate_run(compose_cfg("student=resnet18"), STAGES) == []
    for overrides, expected in (
        (["student.backbone=iresnet50"], "student.from_teacher=true copies the teacher's backbone, so"),
        (["student.backbone_weights=default"], "student.backbone_weights must be null (got 'default')"),
        (["student=resnet18", "student.backbone=null"], "student.backbone is null"),
        (["student=resnet18", "student.from_teacher=false", "student.backbone=teacher"], "use student=from_teacher"),
        (["student=resnet18", "student.backbone_weights=teacher"], "the old way of copying the teacher"),
        (["student=resnet18", "student.backbone=resnett18"], "unknown backbone 'resnett18'"),
    ):
        with pytest.raises(ConfigError, match=re.escape(expected)):
            validate_run(compose_cfg(*overrides), STAGES)


def test_moved_keys_set_anyway_are_refused(compose_cfg: Callable[..., DictConfig]) -> None:
    """Old keys added with ``+`` (or by an old experiment file) compose, but nothing reads them: refused, naming
    the new place."""
    with pytest.raises(ConfigError) as info:
        validate_run(compose_cfg("+teacher_mode=online", "+backbone=resnet18", "+export.formats=[onnx]"), STAGES)
    text = str(info.value)
    for expected in ("use stage.distill.teacher_mode instead", "use student instead", "use stage.export instead"):
        assert expected in text, text
    cfg = compose_cfg("data=cfp_augment", "stages=[prepare,distill]")
    with pytest.raises(ConfigError, match=r"set stage.distill.teacher_mode=online"):
        validate_run(cfg, STAGES)


def test_attribute_methods_need_the_attribute() -> None:
    check_attributes(["teacher", "attribute:-severity"], ["severity", "yaw"], "val")
    with pytest.raises(ConfigError, match=r"no attribute 'severty' \(did you mean 'severity'"):
        check_attributes(["attribute:-severty"], ["severity"], "val")


def test_override_hints() -> None:
    (hint,) = override_hints(["trainer.max_epoch=1"], CONF)
    assert "did you mean 'trainer.max_epochs'" in hint
    (hint,) = override_hints(["data=folder", "data.train.root=/x"], CONF)
    assert "did you mean 'data.root'" in hint
    assert override_hints(["trainer.max_epochs=1", "data=cfp"], CONF) == []
    assert override_hints(["student=resnet18", "stage.distill.teacher_mode=online"], CONF) == []


@pytest.mark.parametrize(
    "old, new",
    [
        ("backbone=mobilenetv3_small", "the group is now called `student`: student=mobilenetv3_small"),
        ("backbone.trainable=last:4", "the group is now called `student`: student.trainable=last:4"),
        ("backbone.backbone=teacher", "the group is now called `student`, and copies the teacher with student="),
        ("teacher_mode=online", "under `stage.distill`: stage.distill.teacher_mode=online"),
        ("export.formats=[onnx]", "under `stage.export`: stage.export.formats=[onnx]"),
        ("preview.n_faces=3", "under `stage.preview`: stage.preview.n_faces=3"),
    ],
)
def test_old_forms_get_the_new_ones(old: str, new: str) -> None:
    (hint,) = override_hints(["data=cfp", old], CONF)
    assert new in hint and f"'{old}'" in hint, hint
    # together with another mistake: both are explained
    hints = override_hints([old, "trainer.max_epoch=1"], CONF)
    assert any(new in h for h in hints), hints


def test_moved_keys_are_found_by_their_last_part() -> None:
    """The generic "did you mean" finds a key that moved under another parent by its last part."""
    from aikd.app.validate import MOVED

    saved = dict(MOVED)
    MOVED.clear()
    try:
        (hint,) = override_hints(["teacher_mode=online"], CONF)
    finally:
        MOVED.update(saved)
    assert "did you mean 'stage.distill.teacher_mode'" in hint
    assert did_you_mean("jiter3", ["jitter3", "affine"]) == " (did you mean 'jitter3'?)"
    assert did_you_mean("zzz", ["jitter3"]) == ""


def test_holdout_split_is_disjoint_deterministic_and_complete(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "faces", identities=10, per_identity=2)
    train = FolderSource(str(root), split="train", holdout=0.2, seed=3).load()
    val = FolderSource(str(root), split="val", holdout=0.2, seed=3).load()
    assert len(val.identity_names) == 2 and len(train.identity_names) == 8
    assert set(train.identity_names).isdisjoint(val.identity_names)
    assert set(train.identity_names) | set(val.identity_names) == {f"id_{i:02d}" for i in range(10)}
    again = FolderSource(str(root), split="val", holdout=0.2, seed=3).load()
    assert again.identity_names == val.identity_names and len(val) == 4
    named = FolderSource(str(root), split="val", holdout=["id_03", "id_07"]).load()
    assert named.identity_names == ["id_03", "id_07"]
    with pytest.raises(DataError, match="not in the dataset"):
        holdout_identities(["a", "b"], ["c"], 0, "x")
    with pytest.raises(DataError, match="both need at least one"):
        holdout_identities(["a", "b"], 0.1, 0, "x")
    with pytest.raises(ValueError, match="needs holdout"):
        FolderSource(str(root), split="val")


def test_folder_datamodule_second_folder(tmp_path: Path) -> None:
    from aikd.data import folder_datamodule

    a = write_folder_dataset(tmp_path / "a", identities=3, per_identity=2)
    b = write_folder_dataset(tmp_path / "b", identities=2, per_identity=2, seed=1)
    dm = folder_datamodule(str(a), val_root=str(b))
    assert dm.index("train").num_identities == 3 and dm.index("val").num_identities == 2
    one = folder_datamodule(str(a), holdout=None)
    assert one.sources["val"] is None
