"""``last.ckpt`` is the run's final student: the step training ended on, with the weights the run exports.

The distillation callbacks come from the real config (``callbacks=distill``: periodic checkpoints and EMA), with
the save interval shortened so that the tiny runs here end between two saves, as the demo does (360 steps, saves
every 50).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytorch_lightning as pl
import torch
from conftest import write_folder_dataset
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate

import aikd.config  # noqa: F401  (resolvers)
from aikd.data import FaceDataModule, FolderSource
from aikd.geometry.align import Canvas, Geometry
from aikd.geometry.misalign import LandmarkJitter
from aikd.models.student import Student
from aikd.models.teacher import TEACHERS, create_teacher
from aikd.serving.export import export_student, load_student
from aikd.training import DistillModule
from aikd.training.cache import teacher_score_cache
from aikd.training.callbacks import FinalStepCheckpoint, WarmupEMA

CONF = Path(__file__).resolve().parent.parent / "conf"
CANVAS = Canvas(size=96, face=Geometry(size=64))


def _distill_callbacks(out: Path, every_n_train_steps: int) -> list[Any]:
    """The checkpoint and EMA callbacks of ``conf/callbacks/distill.yaml`` (no progress bar, no LR monitor)."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "callbacks=distill",
                f"callbacks.model_checkpoint.every_n_train_steps={every_n_train_steps}",
                f"paths.output_dir={out}",
            ],
        )
    GlobalHydra.instance().clear()
    return [instantiate(cfg.callbacks.model_checkpoint), instantiate(cfg.callbacks.ema)]


def _module(root: Path, dm: FaceDataModule, cache: Path) -> DistillModule:
    torch.manual_seed(0)
    teacher = create_teacher("crfiqa", **TEACHERS.get("crfiqa").example_kwargs)
    torch.manual_seed(1)
    student = Student(
        "timm/mobilenetv3_small_050",
        backbone_kwargs={"input_size": 64, "embedding_dim": 48},
        embedding_dim=teacher.embedding_dim,
        hidden=32,
    )
    module = DistillModule(
        student,
        misalign=LandmarkJitter(3.0),
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        student_config=student.config,
    )
    caches = {
        s: teacher_score_cache(teacher, dm.index(s), CANVAS, cache, batch_size=8, progress=False)
        for s in ("train", "val")
    }
    return module.attach_teacher(teacher, caches)


@pytest.mark.parametrize(
    ("limit", "final_step"),
    [({"max_epochs": 2}, 6), ({"max_steps": 5}, 5)],
    ids=["ends-with-max-epochs", "ends-mid-epoch-with-max-steps"],
)
def test_last_checkpoint_is_the_final_student(tmp_path: Path, limit: dict[str, int], final_step: int) -> None:
    root = write_folder_dataset(tmp_path / "faces", identities=4, per_identity=6, size=96)
    dm = FaceDataModule(
        train=FolderSource(str(root), identities=(0, 2)),
        val=FolderSource(str(root), identities=(3, 3)),
        canvas=CANVAS,
        batch_size=6,  # 18 training faces: 3 steps per epoch
        num_workers=0,
    )
    dm.setup("fit")
    module = _module(root, dm, tmp_path / "cache")
    callbacks = _distill_callbacks(tmp_path / "out", every_n_train_steps=4)  # saves at step 4 only
    assert isinstance(callbacks[0], FinalStepCheckpoint) and isinstance(callbacks[1], WarmupEMA)
    trainer = pl.Trainer(
        accelerator="cpu",
        logger=False,
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        default_root_dir=str(tmp_path),
        **limit,
    )
    trainer.fit(module, datamodule=dm)
    assert trainer.global_step == final_step and final_step % 4 != 0

    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == trainer.global_step
    assert "current_model_state" in ckpt  # the raw weights to resume from are kept beside the averaged ones

    # After fit the module holds the EMA weights: what the pipeline exports. last.ckpt and the export agree with it.
    final = module.student.eval()
    faces = torch.rand(6, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    exported = export_student(final, tmp_path / "export", formats=("safetensors",))
    with torch.no_grad():
        want = final(faces).quality
        from_ckpt = load_student(last)(faces).quality
        from_export = load_student(exported["files"]["safetensors"])(faces).quality
    torch.testing.assert_close(from_ckpt, want, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(from_export, want, atol=1e-6, rtol=1e-6)


def test_checkpoint_state_key_is_the_stock_one(tmp_path: Path) -> None:
    """Checkpoints written with Lightning's ModelCheckpoint (before FinalStepCheckpoint) resume with their state."""
    kw = {"dirpath": str(tmp_path), "every_n_train_steps": 50, "save_last": True}
    assert FinalStepCheckpoint(**kw).state_key == pl.callbacks.ModelCheckpoint(**kw).state_key
