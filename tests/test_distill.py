"""Distillation mechanics: frozen teacher untouched and unsaved, cache = online targets, resume, export round trip."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from conftest import write_folder_dataset

from aikd.data import FaceDataModule, FolderSource
from aikd.geometry.align import Canvas, Geometry
from aikd.geometry.misalign import LandmarkJitter, MisalignParams, misalign
from aikd.models.student import Student
from aikd.models.teacher import TEACHERS, create_teacher
from aikd.serving.export import export_student, load_student, student_metadata
from aikd.training import DistillModule
from aikd.training.cache import teacher_score_cache

CANVAS = Canvas(size=96, face=Geometry(size=64))


def _teacher():
    torch.manual_seed(0)
    return create_teacher("crfiqa", **TEACHERS.get("crfiqa").example_kwargs)


def _student(embedding_dim: int = 32) -> Student:
    torch.manual_seed(1)
    return Student(
        "timm/mobilenetv3_small_050",
        backbone_kwargs={"input_size": 64, "embedding_dim": 48},
        embedding_dim=embedding_dim,
        hidden=32,
    )


@pytest.fixture
def datamodule(tmp_path: Path) -> FaceDataModule:
    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=6, size=96)
    dm = FaceDataModule(
        train=FolderSource(str(root), identities=(0, 2)),
        val=FolderSource(str(root), identities=(3, 3)),
        canvas=CANVAS,
        batch_size=6,
        num_workers=0,
    )
    dm.setup("fit")
    return dm


def _module(teacher, dm, cache_dir: Path | None, seed: int = 0, **kwargs) -> DistillModule:
    pl.seed_everything(seed)
    student = _student(teacher.embedding_dim)
    module = DistillModule(
        student,
        misalign=LandmarkJitter(3.0),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.01, momentum=0.9),
        student_config=student.config,
        **kwargs,
    )
    caches = None
    if cache_dir is not None:
        caches = {
            s: teacher_score_cache(teacher, dm.index(s), CANVAS, cache_dir, batch_size=8, progress=False)
            for s in ("train", "val")
        }
    return module.attach_teacher(teacher, caches)


def _trainer(tmp_path: Path, max_steps: int, **kw) -> pl.Trainer:
    return pl.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        default_root_dir=str(tmp_path),
        limit_val_batches=1,
        **kw,
    )


def test_teacher_unchanged_and_not_in_checkpoint(datamodule: FaceDataModule, tmp_path: Path) -> None:
    teacher = _teacher()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    module = _module(teacher, datamodule, tmp_path / "cache")
    student_before = {k: v.clone() for k, v in module.student.state_dict().items()}
    trainer = _trainer(tmp_path, 4)
    trainer.fit(module, datamodule=datamodule)
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), f"teacher tensor {k} changed"
    assert teacher.frozen and not teacher.training
    changed = [
        k
        for k, v in module.student.state_dict().items()
        if v.is_floating_point() and not torch.equal(v, student_before[k])
    ]
    assert changed, "the student did not train"
    ckpt_path = tmp_path / "s.ckpt"
    trainer.save_checkpoint(ckpt_path)
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["state_dict"] and all(k.startswith("student.") for k in ckpt["state_dict"])
    teacher_params = sum(p.numel() for p in teacher.parameters())
    assert (
        sum(v.numel() for v in ckpt["state_dict"].values())
        < sum(p.numel() for p in module.student.state_dict().values()) + teacher_params
    )
    assert "val/spearman_clean" in trainer.callback_metrics and "val/spearman_misaligned" in trainer.callback_metrics
    # the checkpoint rebuilds the student (safe load) with the teacher's calibration
    loaded = load_student(ckpt_path)
    x = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(loaded(x).quality, module.student.eval()(x).quality)
    # ... and with the canvas its faces were aligned onto, which its export records for `aikd score`
    assert loaded.canvas == CANVAS and student_metadata(loaded)["input"]["canvas"] == CANVAS.to_dict()


def test_cached_targets_equal_online_teacher(datamodule: FaceDataModule, tmp_path: Path) -> None:
    teacher = _teacher()
    index = datamodule.index("train")
    cache = teacher_score_cache(teacher, index, CANVAS, tmp_path / "cache", batch_size=5, progress=False)
    assert cache.complete
    batch = next(iter(datamodule.train_dataloader()))
    img = batch["image"].float() / 255
    crops, _ = misalign(
        img,
        batch["landmarks"],
        teacher.input_spec.geometry,
        MisalignParams.identity(len(img)),
        batch["canvas_from_source"],
    )
    online = teacher(crops)
    q, e = cache.lookup(batch["index"])
    torch.testing.assert_close(q, online.quality, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(e, online.embedding, atol=2e-2, rtol=2e-3)  # float16 storage
    # reopening finds it complete: nothing is recomputed
    again = teacher_score_cache(teacher, index, CANVAS, tmp_path / "cache", batch_size=5, progress=False)
    assert again.directory == cache.directory and again.complete


def test_online_mode_trains(datamodule: FaceDataModule, tmp_path: Path) -> None:
    module = _module(_teacher(), datamodule, None)
    trainer = _trainer(tmp_path, 2)
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 2 and torch.isfinite(trainer.callback_metrics["train/loss"])


def test_ranking_term_joins_the_training_loss(datamodule: FaceDataModule, tmp_path: Path) -> None:
    """``model.rank_weight``: the logged training loss is the quality, embedding and ranking terms together, and the
    weight travels in the checkpoint's hyperparameters."""
    module = _module(_teacher(), datamodule, tmp_path / "cache", rank_weight=2.0)
    trainer = _trainer(tmp_path, 1, log_every_n_steps=1)
    trainer.fit(module, datamodule=datamodule)
    m = trainer.logged_metrics
    rank = m["train/rank_loss"]
    assert 0.3 < rank < 3  # softplus of pair margins in units of sd: about 1 for an order unrelated to the teacher's
    expected = m["train/quality_loss"] + module.embedding_weight * m["train/embedding_loss"] + 2.0 * rank
    torch.testing.assert_close(m["train/loss"], expected, atol=1e-5, rtol=1e-5)
    assert module.hparams["rank_weight"] == 2.0


def test_resume_continues_an_interrupted_run(datamodule: FaceDataModule, tmp_path: Path) -> None:
    teacher = _teacher()
    cache = tmp_path / "cache"
    ckpt_dir = tmp_path / "ckpt"

    def cb() -> pl.callbacks.ModelCheckpoint:
        return pl.callbacks.ModelCheckpoint(dirpath=str(ckpt_dir), save_last=True, every_n_train_steps=1, save_top_k=0)

    first = _trainer(tmp_path, 2, callbacks=[cb()])
    first.fit(_module(teacher, datamodule, cache), datamodule=datamodule)  # "killed" after 2 steps
    assert (ckpt_dir / "last.ckpt").is_file()
    resumed = _module(teacher, datamodule, cache, seed=123)  # fresh weights: they must come from the checkpoint
    second = _trainer(tmp_path, 4, callbacks=[cb()])
    second.fit(resumed, datamodule=datamodule, ckpt_path=str(ckpt_dir / "last.ckpt"))
    assert second.global_step == 4
    straight = _module(teacher, datamodule, cache)
    full = _trainer(tmp_path / "full", 4)
    full.fit(straight, datamodule=datamodule)
    # same seed, CPU, deterministic: resuming lands on the uninterrupted run's weights
    for (k, a), b in zip(resumed.student.state_dict().items(), straight.student.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=k)


def test_embedding_size_mismatch_is_explained(datamodule: FaceDataModule) -> None:
    teacher = _teacher()
    student = _student(embedding_dim=teacher.embedding_dim + 1)
    with pytest.raises(ValueError, match="embedding_dim"):
        DistillModule(student).attach_teacher(teacher)
    with pytest.raises(ValueError, match="frozen"):
        cls = TEACHERS.get("crfiqa")
        DistillModule(_student()).attach_teacher(cls(**cls.example_kwargs))


def test_export_round_trip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("onnxruntime")
    teacher = _teacher()
    student = _student(teacher.embedding_dim).eval()
    student.calibration = teacher.calibration
    levels = {name: logging.getLogger(name).level for name in ("onnxscript", "onnx_ir")}
    with caplog.at_level(logging.INFO):
        out = export_student(
            student, tmp_path / "export", formats=("onnx", "torch_export", "safetensors"), teacher=teacher
        )
    assert out["onnx_max_abs_diff"] < 1e-4
    # the exporters' INFO chatter (dozens of optimisation-pass lines) is silenced, and their levels restored
    chatter = [r.getMessage() for r in caplog.records if r.name.split(".")[0] in levels and r.levelno < logging.WARNING]
    assert not chatter, chatter[:5]
    assert {name: logging.getLogger(name).level for name in levels} == levels
    x = torch.rand(5, 3, 64, 64)  # another batch size than the export example: the batch axis is dynamic
    with torch.no_grad():
        ref = student(x).quality
    import json

    import onnxruntime as ort

    meta = json.loads(Path(out["metadata"]).read_text())
    assert meta["input"]["alignment"]["template"] == "arcface" and meta["input"]["shape"] == ["batch", 3, 64, 64]
    assert meta["teacher"]["fingerprint"] == teacher.fingerprint
    sess = ort.InferenceSession(out["files"]["onnx"])
    raw, cal = sess.run(None, {"faces": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(raw), ref, atol=1e-4, rtol=1e-4)
    assert ((cal >= 0) & (cal <= 100)).all()
    ep = torch.export.load(out["files"]["torch_export"])
    torch.testing.assert_close(ep.module()(x)[0], ref, atol=1e-5, rtol=1e-5)
    back = load_student(out["files"]["safetensors"])
    torch.testing.assert_close(back(x).quality, ref)
    assert back.calibration.to_dict() == student.calibration.to_dict()


def test_student_from_teacher_starts_as_the_teacher(tmp_path: Path) -> None:
    """student.from_teacher=true and a linear head: before training the student IS the teacher."""
    from omegaconf import OmegaConf

    from aikd.app.pipeline import build_student_from_config

    cls = TEACHERS.get("crfiqa")
    teacher = create_teacher("crfiqa", **{**cls.example_kwargs, "projection_dim": None})
    cfg = OmegaConf.create(
        {
            "student": {
                "_target_": "aikd.models.student.Student",
                "from_teacher": True,
                "backbone": None,
                "backbone_weights": None,
                "backbone_kwargs": {},
                "embedding_dim": None,
                "hidden": 0,
                "trainable": "last:4",
            }
        }
    )
    student = build_student_from_config(cfg, teacher).eval()
    h, w = teacher.input_spec.size
    faces = torch.rand(4, 3, h, w)
    torch.testing.assert_close(student(faces).quality, teacher(faces).quality)
    torch.testing.assert_close(student(faces).embedding, teacher(faces).embedding)
    trainable = [p for p in student.backbone.parameters() if p.requires_grad]
    assert len(trainable) == 4 and all(p.requires_grad for p in student.quality_head.parameters())
    assert all(not p.requires_grad for p in teacher.parameters())  # copying never unfreezes the teacher
