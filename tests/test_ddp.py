"""DDP on CPU processes (gloo, ddp_spawn): the sharded teacher-score precompute fills the same cache as one
process, and 2-process distillation with the same global batch trains the same student.

Each test launches worker processes (a few seconds each on a small machine); throughput figures are in
``benchmarks/ddp_cpu.py``.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from conftest import write_folder_dataset
from torch import nn

from aikd.data import FaceDataModule, FolderSource
from aikd.geometry.align import Canvas, Geometry
from aikd.geometry.preprocess import InputSpec
from aikd.models.student import Student
from aikd.models.teacher import TEACHERS, create_teacher
from aikd.training import DistillModule
from aikd.training.cache import open_teacher_score_cache, teacher_score_cache
from aikd.training.distributed import distributed_teacher_score_caches, trainer_world_size

CANVAS = Canvas(size=96, face=Geometry(size=64))
DDP_CPU = {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"}


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images: identities 0-2 train (18), identity 3 validates (6, even: no padding in DDP validation)."""
    return write_folder_dataset(tmp_path_factory.mktemp("ddp") / "faces", identities=4, per_identity=6, size=96)


def _teacher() -> Any:
    torch.manual_seed(0)
    return create_teacher("crfiqa", **TEACHERS.get("crfiqa").example_kwargs)


def test_world_size_from_trainer_config() -> None:
    assert trainer_world_size(DDP_CPU) == 2
    assert trainer_world_size({"accelerator": "cpu", "devices": 1}) == 1


def test_two_process_precompute_equals_single_process(faces: Path, tmp_path: Path) -> None:
    """Shared-memmap writes (one node); the shard-and-merge path is checked by the next test."""
    teacher = _teacher()
    indices = {"train": FolderSource(str(faces), identities=(0, 2)).load(), "val": FolderSource(str(faces)).load()}
    single = {
        k: teacher_score_cache(teacher, v, CANVAS, tmp_path / "one", batch_size=5, progress=False)
        for k, v in indices.items()
    }
    # Start from a partly filled entry (an interrupted fill): the distributed fill completes it.
    part = open_teacher_score_cache(teacher, indices["train"], CANVAS, tmp_path / "two")
    keep = np.arange(0, len(indices["train"]), 3)
    part.write(
        keep, quality=single["train"].arrays["quality"][keep], embedding=single["train"].arrays["embedding"][keep]
    )
    part.flush()

    two = distributed_teacher_score_caches(
        teacher, indices, CANVAS, tmp_path / "two", DDP_CPU, batch_size=5, mode="memmap"
    )
    for split in indices:
        a, b = single[split], two[split]
        assert b.directory.name == a.directory.name, "same cache key as the single-process path"
        assert b.complete and a.complete
        np.testing.assert_allclose(b.arrays["quality"], a.arrays["quality"], rtol=0, atol=1e-6)
        # embeddings are stored as float16: allow one unit in the last place
        np.testing.assert_allclose(
            b.arrays["embedding"].astype(np.float32), a.arrays["embedding"].astype(np.float32), rtol=1e-3, atol=1e-4
        )


class RankTeacher(nn.Module):
    """A stand-in teacher whose 'quality' is the rank of the process that scored the row (+1), to see who did what."""

    name = "rank"
    fingerprint = "rank-teacher"
    embedding_dim = None
    input_spec = InputSpec(geometry=Geometry(size=32))

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()), requires_grad=False)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name}

    def forward(self, crops: torch.Tensor) -> Any:
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else -1
        q = torch.full((len(crops),), float(rank + 1)) * self.scale
        return type("Out", (), {"quality": q, "embedding": None})()


def test_rows_are_sharded_over_both_processes(faces: Path, tmp_path: Path) -> None:
    index = FolderSource(str(faces)).load()
    caches = distributed_teacher_score_caches(
        RankTeacher(), {"all": index}, CANVAS, tmp_path, DDP_CPU, batch_size=4, mode="shards"
    )
    q = caches["all"].arrays["quality"]
    assert caches["all"].complete
    assert sorted(set(q.tolist())) == [1.0, 2.0], "both ranks scored rows, and only they did"
    assert abs(int((q == 1.0).sum()) - int((q == 2.0).sum())) <= 4, "about half of the rows each"
    assert not (caches["all"].directory / ".shards").exists(), "shards are merged and removed"


def _distill_module(teacher: Any, caches: dict[str, Any]) -> DistillModule:
    # What differs by design between 1 process x 6 faces and 2 processes x 3 is removed: batch statistics (a
    # LayerNorm ViT, and the BatchNorm of the embedding layer replaced; trainer=ddp on GPUs syncs BatchNorm) and the
    # random misalignment (drawn per rank). What remains - sharding, gradient averaging, metric gathering - must give
    # the single-process result.
    torch.manual_seed(1)
    student = Student(
        "timm/test_vit", backbone_kwargs={"input_size": 64, "embedding_dim": 32}, embedding_dim=32, hidden=32
    )
    for name, m in list(student.named_modules()):
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            parent, _, child = name.rpartition(".")
            setattr(student.get_submodule(parent), child, nn.Identity())
    module = DistillModule(
        student, optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9), student_config=student.config
    )
    return module.attach_teacher(teacher, caches)


def _fit(faces: Path, teacher: Any, caches: dict[str, Any], tmp: Path, batch_size: int, **trainer: Any) -> Any:
    dm = FaceDataModule(
        train=FolderSource(str(faces), identities=(0, 2)),
        val=FolderSource(str(faces), identities=(3, 3)),
        canvas=CANVAS,
        batch_size=batch_size,
        num_workers=0,
    )
    module = _distill_module(teacher, caches)
    t = pl.Trainer(
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
        default_root_dir=str(tmp),
        **trainer,
    )
    t.fit(module, datamodule=dm)
    return module, {k: float(v) for k, v in t.callback_metrics.items() if k.startswith("val/")}


def test_two_process_distillation_matches_one_process_with_same_global_batch(faces: Path, tmp_path: Path) -> None:
    teacher = _teacher()
    caches = {
        "train": teacher_score_cache(teacher, FolderSource(str(faces), identities=(0, 2)).load(), CANVAS, tmp_path),
        "val": teacher_score_cache(teacher, FolderSource(str(faces), identities=(3, 3)).load(), CANVAS, tmp_path),
    }
    one, m1 = _fit(faces, teacher, caches, tmp_path / "one", batch_size=6, accelerator="cpu", devices=1)
    two, m2 = _fit(faces, teacher, caches, tmp_path / "two", batch_size=3, **DDP_CPU)
    assert set(m1) == set(m2) >= {"val/loss", "val/spearman_clean", "val/spearman_misaligned"}
    for k in m1:
        assert m2[k] == pytest.approx(m1[k], abs=1e-5), k
    start = _distill_module(teacher, caches).student.state_dict()
    trained = one.student.state_dict()
    assert any(not torch.equal(trained[k], start[k]) for k in start), "the student trained"
    for k, v in two.student.state_dict().items():
        torch.testing.assert_close(v, trained[k], atol=1e-6, rtol=1e-5, msg=lambda m, k=k: f"{k}: {m}")


def test_pipeline_under_trainer_ddp_cpu(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """`trainer=ddp_cpu` end to end: teacher scores precomputed on 2 processes, distillation on 2 processes."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    import aikd.config  # noqa: F401  (resolvers)
    from aikd.app.pipeline import run

    GlobalHydra.instance().clear()
    conf = Path(__file__).resolve().parent.parent / "conf"
    overrides = [
        "trainer=ddp_cpu",
        "stages=[prepare,teacher,distill]",
        "data.train.n_identities=8",
        "data.train.images_per_identity=4",
        "data.train.identities=[0,5]",
        "data.val.identities=[6,7]",
        "data.num_workers=0",
        "data.batch_size=6",
        "teacher.fit.epochs=1",
        "trainer.max_epochs=1",
        "logger=csv",
        f"paths.output_dir={tmp_path / 'out'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    with caplog.at_level(logging.INFO, logger="aikd.training.distributed"):
        results = run(cfg)
    assert any("on 2 processes" in r.getMessage() for r in caplog.records), "the DDP precompute ran"
    # 24 training faces, 2 processes x 6 per batch: 2 steps, taken in the spawned workers and reported here
    assert results["distill"]["global_step"] == 2
    metrics = results["distill"]["metrics"]
    assert {"val/loss", "val/spearman_clean", "val/spearman_misaligned"} <= set(metrics)
    assert all(np.isfinite(v) for v in metrics.values())
    entries = list((tmp_path / "cache" / "teacher_scores").iterdir())
    assert len(entries) == 2 and all(np.load(e / "done.npy").all() for e in entries), "train and val entries filled"
