"""Teacher training: every objective learns on separable features, bad setups fail clearly, and obtain_teacher
trains a teacher once, caches it and reloads it."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
import torch
from conftest import write_folder_dataset

from aikd.align import Canvas, Geometry
from aikd.data import FaceDataModule, FolderSource
from aikd.modules import OBJECTIVES, TeacherTrainingModule
from aikd.teacher import TEACHERS, EmbeddingTeacher, create_teacher
from aikd.teacher_fit import TeacherSpec, obtain_teacher

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

#: The teacher plug-in trained by each objective (same names).
_TEACHER_OF = {"crfiqa": "crfiqa", "ri": "ri", "magface": "magface", "adaface": "adaface"}


def _unfrozen(name: str, seed: int = 0) -> EmbeddingTeacher:
    torch.manual_seed(seed)
    cls = TEACHERS.get(name)
    return cls(**cls.example_kwargs)


def _separable_batch(dim: int, identities: int = 4, per_identity: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """Backbone-feature batch of ``identities`` well separated clusters."""
    g = torch.Generator().manual_seed(seed)
    centres = 3.0 * torch.randn(identities, dim, generator=g)
    labels = torch.arange(identities).repeat_interleave(per_identity)
    features = centres[labels] + 0.5 * torch.randn(len(labels), dim, generator=g)
    return {"features": features, "identity": labels}


def test_every_objective_is_covered() -> None:
    assert set(_TEACHER_OF) == set(OBJECTIVES)


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objective_reduces_its_loss_on_separable_features(objective: str) -> None:
    teacher = _unfrozen(_TEACHER_OF[objective])
    dim = int(teacher.backbone.embedding_dim)
    batch = _separable_batch(dim)
    ui = torch.randn(16, dim, generator=torch.Generator().manual_seed(1)) if objective == "ri" else None
    module = TeacherTrainingModule(
        teacher, num_classes=4, objective=objective, ui_features=ui, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2)
    )
    opt = module.configure_optimizers()
    before = {k: v.detach().clone() for k, v in teacher.projection.state_dict().items()}
    module.train()
    losses = []
    for step in range(30):
        loss = module.training_step(batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, f"{objective}: loss did not fall: {losses}"
    assert any(not torch.equal(before[k], v) for k, v in teacher.projection.state_dict().items())
    teacher.freeze()
    with torch.no_grad():
        out = teacher.head(batch["features"])
    assert out.quality.shape == (32,) and torch.isfinite(out.quality).all()
    assert out.embedding.shape == (32, teacher.embedding_dim) and torch.isfinite(out.embedding).all()
    if objective in ("magface", "adaface"):
        torch.testing.assert_close(out.quality, out.embedding.norm(dim=1))


def test_training_setups_that_cannot_work_fail_clearly() -> None:
    with pytest.raises(ValueError, match="ui_features"):
        TeacherTrainingModule(_unfrozen("ri"), num_classes=4, objective="ri")
    with pytest.raises(ValueError, match="frozen"):
        TeacherTrainingModule(_unfrozen("crfiqa").freeze(), num_classes=4, objective="crfiqa")
    with pytest.raises(ValueError, match="quality head"):
        TeacherTrainingModule(_unfrozen("magface"), num_classes=4, objective="crfiqa")
    with pytest.raises(ValueError, match="objective must be one of"):
        TeacherTrainingModule(_unfrozen("crfiqa"), num_classes=4, objective="softmax")


def test_obtain_teacher_trains_once_caches_and_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aikd.teacher_fit

    root = write_folder_dataset(tmp_path / "faces", identities=3, per_identity=4, size=96)
    dm = FaceDataModule(train=FolderSource(str(root)), canvas=Canvas(size=96, face=Geometry(size=64)), num_workers=0)
    fit = {"objective": "crfiqa", "head": {"name": "arcface", "s": 16.0, "m": 0.2}, "epochs": 2, "batch_size": 8}
    spec = TeacherSpec(name="crfiqa", build=dict(TEACHERS.get("crfiqa").example_kwargs), fit=fit, calibration="ecdf")
    cache = tmp_path / "cache"
    trainer_kwargs = {"accelerator": "cpu"}

    first = obtain_teacher(spec, dm, tmp_path / "run1", cache, trainer_kwargs, seed=0)
    assert first.frozen and first.calibration.kind == "ecdf" and first.calibration.n_reference == 12
    saved = list((cache / "teachers").glob("crfiqa-*.safetensors"))
    assert len(saved) == 1 and (tmp_path / "run1" / "teacher.json").is_file()
    with open(tmp_path / "run1" / "teacher" / "metrics.csv") as f:
        epochs = {row["epoch"] for row in csv.DictReader(f) if row.get("teacher/loss")}
    assert epochs == {"0", "1"}  # two epochs trained
    untrained = create_teacher("crfiqa", **spec.build)
    assert untrained.fingerprint != first.fingerprint

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached teacher should have been reused")

    monkeypatch.setattr(aikd.teacher_fit, "train_teacher", no_training)
    second = obtain_teacher(spec, dm, tmp_path / "run2", cache, trainer_kwargs, seed=0)
    assert second.fingerprint == first.fingerprint
    assert second.calibration.to_dict() == first.calibration.to_dict()
    faces = torch.rand(5, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(second.score(faces), first.score(faces))
    cal = second.score_0_100(faces)
    assert ((cal >= 0) & (cal <= 100)).all()
    # another recipe is another teacher: it would train (and here hits the patched trainer)
    other = TeacherSpec(name="crfiqa", build=spec.build, fit={**fit, "epochs": 3})
    with pytest.raises(AssertionError, match="reused"):
        obtain_teacher(other, dm, tmp_path / "run3", cache, trainer_kwargs, seed=0)


def test_teacher_training_shows_progress_and_names_its_epochs_key(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A teacher trains for teacher.fit.epochs (not trainer.max_epochs): the log says so, a progress bar shows the
    epoch and the loss, and the log keeps each epoch's mean loss and the final one."""
    root = write_folder_dataset(tmp_path / "faces", identities=3, per_identity=4, size=96)
    dm = FaceDataModule(train=FolderSource(str(root)), canvas=Canvas(size=96, face=Geometry(size=64)), num_workers=0)
    fit = {"objective": "crfiqa", "head": {"name": "arcface", "s": 16.0, "m": 0.2}, "epochs": 2, "batch_size": 8}
    spec = TeacherSpec(name="crfiqa", build=dict(TEACHERS.get("crfiqa").example_kwargs), fit=fit)
    with caplog.at_level(logging.INFO, logger="aikd"):
        obtain_teacher(spec, dm, tmp_path / "run", tmp_path / "cache", {"accelerator": "cpu"}, seed=0)
    messages = [r.getMessage() for r in caplog.records]
    assert any("teacher crfiqa: training 2 epochs (teacher.fit.epochs) on 12 images" in m for m in messages), messages
    assert any("teacher crfiqa: epoch 1/2, mean loss" in m for m in messages), messages
    assert any("teacher crfiqa: epoch 2/2, mean loss" in m for m in messages), messages
    assert any("teacher crfiqa: 2 epochs trained, final epoch loss" in m for m in messages), messages
    bar = capsys.readouterr().out  # Lightning's tqdm bar writes to stdout
    assert "teacher crfiqa epoch 2/2" in bar and "teacher/loss=" in bar, bar[-2000:]
