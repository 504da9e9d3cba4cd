"""Teacher training: every trainable teacher's objective learns on separable features, bad setups fail clearly,
a trainable teacher written in one file trains through train_teacher, and obtain_teacher trains a teacher once,
caches it and reloads it."""

from __future__ import annotations

import csv
import functools
import importlib
import logging
import sys
from pathlib import Path

import pytest
import torch
from conftest import write_folder_dataset

from aikd.data import FaceDataModule, FolderSource
from aikd.geometry.align import Canvas, Geometry
from aikd.models.teacher import TEACHERS, EmbeddingTeacher, create_teacher, list_teachers
from aikd.training import TeacherTrainingModule
from aikd.training.objectives import OBJECTIVES, CRFIQAObjective
from aikd.training.teacher_fit import TeacherSpec, obtain_teacher, train_teacher

pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")


def _trainable() -> list[str]:
    """Registered teachers that declare a training objective (the registry decides, not a list here)."""
    return [n for n in list_teachers() if getattr(TEACHERS.get(n), "objective", None) is not None]


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


def test_bundled_trainable_teachers_and_generic_objectives() -> None:
    assert {"crfiqa", "magface", "adaface", "ri"} <= set(_trainable())
    assert {"crfiqa", "magface", "adaface", "ri"} <= set(OBJECTIVES)  # ri: registered by teachers/ri.py
    assert {n: TEACHERS.get(n).objective.name for n in ("crfiqa", "magface", "adaface", "ri")} == {
        "crfiqa": "crfiqa",
        "magface": "magface",
        "adaface": "adaface",
        "ri": "ri",
    }


@pytest.mark.parametrize("name", _trainable())
def test_objective_reduces_its_loss_on_separable_features(name: str) -> None:
    teacher = _unfrozen(name)
    dim = int(teacher.backbone.embedding_dim)
    batch = _separable_batch(dim)
    objective = teacher.objective()
    objective.prepare_example(teacher, torch.Generator().manual_seed(1))  # e.g. RI's UI features, without data
    module = TeacherTrainingModule(
        teacher, num_classes=4, objective=objective, optimizer=lambda p: torch.optim.Adam(p, lr=1e-2)
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
    assert sum(losses[-3:]) / 3 < 0.7 * sum(losses[:3]) / 3, f"{name}: loss did not fall: {losses}"
    assert any(not torch.equal(before[k], v) for k, v in teacher.projection.state_dict().items())
    teacher.freeze()
    with torch.no_grad():
        out = teacher.head(batch["features"])
    assert out.quality.shape == (32,) and torch.isfinite(out.quality).all()
    assert out.embedding.shape == (32, teacher.embedding_dim) and torch.isfinite(out.embedding).all()
    if name in ("magface", "adaface"):
        torch.testing.assert_close(out.quality, out.embedding.norm(dim=1))


def test_training_setups_that_cannot_work_fail_clearly() -> None:
    with pytest.raises(ValueError, match="ui_features"):
        TeacherTrainingModule(_unfrozen("ri"), num_classes=4)  # RI's objective was never prepared
    with pytest.raises(ValueError, match="frozen"):
        TeacherTrainingModule(_unfrozen("crfiqa").freeze(), num_classes=4)
    with pytest.raises(ValueError, match="quality head"):
        TeacherTrainingModule(_unfrozen("magface"), num_classes=4, objective=CRFIQAObjective())
    with pytest.raises(KeyError, match="unknown objective 'softmax'"):
        TeacherSpec(name="crfiqa", fit={"objective": "softmax"}).objective()
    with pytest.raises(ValueError, match=r"fit keys \['ui_size'\] are not options of objective 'crfiqa'"):
        TeacherSpec(name="crfiqa", fit={"lam": 1.0, "ui_size": 8, "epochs": 2}).objective()
    with pytest.raises(TypeError, match="teacher 'onnx' declares no training objective"):
        TeacherSpec(name="onnx", fit={"epochs": 2}).objective()
    # a generic objective by name, for a teacher whose own is another one
    assert type(TeacherSpec(name="ri", fit={"objective": "crfiqa"}).objective()) is CRFIQAObjective


@pytest.mark.parametrize("name", _trainable())
def test_every_trainable_teacher_trains_through_train_teacher(name: str, tmp_path: Path) -> None:
    """The real path, objective setup included (RI draws and embeds its unrecognisable faces): one epoch each."""
    root = write_folder_dataset(tmp_path / "faces", identities=3, per_identity=4, size=96)
    dm = FaceDataModule(train=FolderSource(str(root)), canvas=Canvas(size=96, face=Geometry(size=64)), num_workers=0)
    fit = {"head": {"name": "cosface", "s": 16.0, "m": 0.1}, "epochs": 1, "batch_size": 12}
    spec = TeacherSpec(name=name, build=dict(TEACHERS.get(name).example_kwargs), fit=fit)
    teacher = train_teacher(spec, dm, tmp_path / "run", tmp_path / "cache", {"accelerator": "cpu"}, seed=0)
    assert teacher.frozen and teacher.name == name and teacher.calibration.kind == "ecdf"
    h, w = teacher.input_spec.size
    assert torch.isfinite(teacher.score(torch.rand(2, 3, h, w))).all()


def test_the_objective_enters_the_cache_key_whether_named_or_declared() -> None:
    """Recipes that still say ``objective: <the teacher's own>`` find the teachers cached by recipes that do not."""
    fit = {"head": {"name": "arcface"}, "epochs": 2}
    declared = TeacherSpec(name="ri", fit=fit).fit_key("data", 0)
    assert declared == TeacherSpec(name="ri", fit={**fit, "objective": "ri"}).fit_key("data", 0)
    assert declared != TeacherSpec(name="ri", fit={**fit, "objective": "crfiqa"}).fit_key("data", 0)


#: A trainable teacher as a user writes it: one file with the model and its own objective, which needs a setup
#: from the training data (as RI's unrecognisable faces do) - importing aikd, changing nothing in it.
ONE_FILE_TEACHER = '''
"""A toy trainable teacher: the quality head learns the cosine of a face to its own class centre."""

import torch.nn.functional as F

from aikd.training.objectives import FitContext, TeacherObjective
from aikd.models.teacher import EmbeddingTeacher, register_teacher

PREPARED: list[int] = []  # what prepare() saw, for the test


class OwnClassCosine(TeacherObjective):
    """CE + weight * MSE(quality head, cosine to the own class centre)."""

    needs_quality_head = True

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = weight

    def prepare(self, teacher: EmbeddingTeacher, context: FitContext) -> None:
        PREPARED.append(len(context.index))

    def forward(self, teacher, embedding, head, labels):
        ce = F.cross_entropy(head.logits, labels)
        target = head.cos.detach().gather(1, labels[:, None]).squeeze(1)
        regression = F.mse_loss(teacher.quality_from_embedding(embedding), target)
        return {"loss": ce + self.weight * regression, "ce": ce, "quality_loss": regression}


@register_teacher("one_file_for_tests")
class OneFileTeacher(EmbeddingTeacher):
    objective = OwnClassCosine
'''


def test_a_trainable_teacher_in_one_file_trains_through_train_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(TEACHERS, "_entries", dict(TEACHERS._entries))  # the registry as it was, afterwards
    (tmp_path / "one_file_teacher.py").write_text(ONE_FILE_TEACHER)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        plugin = importlib.import_module("one_file_teacher")
        assert TEACHERS.get("one_file_for_tests").name == "one_file_for_tests"  # the decorator named it
        root = write_folder_dataset(tmp_path / "faces", identities=3, per_identity=4, size=96)
        dm = FaceDataModule(
            train=FolderSource(str(root)), canvas=Canvas(size=96, face=Geometry(size=64)), num_workers=0
        )
        fit = {"head": {"name": "cosface", "s": 16.0, "m": 0.1}, "weight": 2.0, "epochs": 4, "batch_size": 12,
               "optimizer": functools.partial(torch.optim.Adam, lr=1e-2)}  # fmt: skip
        spec = TeacherSpec(name="one_file_for_tests", build=dict(EmbeddingTeacher.example_kwargs), fit=fit)
        teacher = train_teacher(spec, dm, tmp_path / "run", tmp_path / "cache", {"accelerator": "cpu"}, seed=0)
    finally:
        sys.modules.pop("one_file_teacher", None)
    assert plugin.PREPARED == [12]  # its own setup ran once, on the training split
    assert type(teacher).__name__ == "OneFileTeacher" and teacher.frozen and teacher.calibration.kind == "ecdf"
    with open(tmp_path / "run" / "teacher" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    epoch_losses = [float(r["teacher/epoch_loss"]) for r in rows if r.get("teacher/epoch_loss")]
    assert len(epoch_losses) == 4 and epoch_losses[-1] < epoch_losses[0], epoch_losses
    assert any(r.get("teacher/quality_loss") for r in rows)  # the objective's own parts are logged


def test_obtain_teacher_trains_once_caches_and_reloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import aikd.training.teacher_fit

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

    monkeypatch.setattr(aikd.training.teacher_fit, "train_teacher", no_training)
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
