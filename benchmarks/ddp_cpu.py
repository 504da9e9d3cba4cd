"""DDP on CPU processes: throughput of 1 vs 2 processes for the teacher-score precompute and for distillation,
and the validation metrics of both distillation runs (same global batch).

    OMP_NUM_THREADS=1 python benchmarks/ddp_cpu.py                        # 2048 training faces, 2 epochs
    OMP_NUM_THREADS=1 python benchmarks/ddp_cpu.py --n-train 512 --epochs 1

Each process uses ``--threads`` intra-op threads (default 1), so "2 processes" uses twice the cores of "1
process": this measures how the work scales over processes (what DDP adds), not a fixed core budget. Throughput
is measured inside the loops, from the second batch on, on every rank (images of all ranks / slowest rank's
time); the wall time also counts process start-up (ddp_spawn imports torch in each worker), which dominates on
small data. Faces are random smooth images with landmarks (the models are untrained: speed, not quality).

Distillation runs differ by design between 1 process (batch B) and 2 (B/2 each): BatchNorm statistics are per
process on CPU (no SyncBatchNorm without GPUs) and the misalignment is drawn per rank; tests/test_ddp.py removes
both and checks the two give the same student.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch


class LoopTimer(pl.Callback):
    """Times the predict or training loop on each rank from its second batch on; rank files go to ``out_dir``."""

    def __init__(self, out_dir: str, tag: str) -> None:
        self.out_dir = out_dir
        self.tag = tag
        self.t0: float | None = None
        self.images = 0

    def _start(self, batch: Any) -> None:
        if self.t0 is None:
            self.t0 = -1.0  # first batch: warm-up, not counted
        elif self.t0 < 0:
            self.t0 = time.perf_counter()

    def _end(self, batch: Any) -> None:
        if self.t0 is not None and self.t0 > 0:
            self.images += len(batch["index"])

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._start(batch)

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:  # noqa: ANN001
        self._end(batch)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
        self._start(batch)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
        self._end(batch)

    def _write(self, trainer: pl.Trainer) -> None:
        seconds = time.perf_counter() - self.t0 if self.t0 and self.t0 > 0 else float("nan")
        path = Path(self.out_dir) / f"{self.tag}-rank{trainer.global_rank}.json"
        path.write_text(json.dumps({"images": self.images, "seconds": seconds}))

    def on_predict_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._write(trainer)

    def on_train_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self._write(trainer)


def _rate(out_dir: Path, tag: str) -> float:
    ranks = [json.loads(p.read_text()) for p in sorted(out_dir.glob(f"{tag}-rank*.json"))]
    return sum(r["images"] for r in ranks) / max(r["seconds"] for r in ranks)


def _faces(root: Path, n: int, size: int = 112, seed: int = 0) -> Path:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from conftest import write_folder_dataset

    per_identity = 8
    return write_folder_dataset(
        root, identities=max(2, n // per_identity), per_identity=per_identity, seed=seed, size=size
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-train", type=int, default=2048, help="training faces (validation: 1/8 of it)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32, help="global batch (per process: batch / processes)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process")
    ap.add_argument("--workdir", default=None, help="where faces and caches go (default: a temporary directory)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    from aikd.data import FaceDataModule, FolderSource
    from aikd.geometry.align import Canvas, Geometry
    from aikd.geometry.misalign import LandmarkJitter
    from aikd.models.student import Student
    from aikd.models.teacher import TEACHERS, create_teacher
    from aikd.training import DistillModule
    from aikd.training.cache import teacher_score_cache
    from aikd.training.distributed import distributed_teacher_score_caches

    work = Path(args.workdir or tempfile.mkdtemp(prefix="aikd-ddp-bench-"))
    n_val_ids = max(2, args.n_train // 8 // 8)
    faces = _faces(work / "faces", args.n_train + 8 * n_val_ids)
    n_ids = len([p for p in faces.iterdir() if p.is_dir()])
    train_src = FolderSource(str(faces), identities=(0, n_ids - n_val_ids - 1))
    val_src = FolderSource(str(faces), identities=(n_ids - n_val_ids, n_ids - 1))
    canvas = Canvas(size=128, face=Geometry(size=64))
    indices = {"train": train_src.load(), "val": val_src.load()}
    n_images = sum(len(v) for v in indices.values())
    torch.manual_seed(0)
    teacher = create_teacher("crfiqa", **TEACHERS.get("crfiqa").example_kwargs)
    timing = work / "timing"
    timing.mkdir(exist_ok=True)
    print(f"# DDP on CPU: {n_images} faces ({len(indices['train'])} train), {args.threads} thread(s) per process")
    print(f"# teacher crfiqa (mobilenetv3_small_050 @64 px), canvas {canvas.size} px, work dir {work}\n")

    # -- teacher-score precompute -----------------------------------------------------------------------------
    t = time.perf_counter()
    one = {
        k: teacher_score_cache(teacher, v, canvas, work / "scores1", batch_size=args.batch, progress=False)
        for k, v in indices.items()
    }
    wall1 = time.perf_counter() - t
    # 1 process through the predict loop too (its in-loop rate; the wall time above is the plain loop's)
    distributed_teacher_score_caches(
        teacher,
        indices,
        canvas,
        work / "scores1p",
        {"accelerator": "cpu", "devices": 1},
        batch_size=args.batch,
        callbacks=[LoopTimer(str(timing), "pre1")],
    )
    t = time.perf_counter()
    two = distributed_teacher_score_caches(
        teacher,
        indices,
        canvas,
        work / "scores2",
        {"accelerator": "cpu", "devices": 2, "strategy": "ddp_spawn"},
        batch_size=args.batch,
        callbacks=[LoopTimer(str(timing), "pre2")],
    )
    wall2 = time.perf_counter() - t
    dq = max(float(np.abs(one[k].arrays["quality"] - two[k].arrays["quality"]).max()) for k in one)
    de = max(
        float(
            np.abs(one[k].arrays["embedding"].astype(np.float32) - two[k].arrays["embedding"].astype(np.float32)).max()
        )
        for k in one
    )
    print("## teacher-score precompute (train + val)")
    print("| processes | in-loop images/s | wall s (incl. start-up) |")
    print("|---|---|---|")
    print(f"| 1 | {_rate(timing, 'pre1'):.0f} | {wall1:.1f} (plain loop) |")
    print(f"| 2 | {_rate(timing, 'pre2'):.0f} | {wall2:.1f} |")
    print(f"\n2-process cache vs 1-process: max |quality diff| {dq:.2e}, max |embedding diff| {de:.2e} (float16)\n")

    # -- distillation ---------------------------------------------------------------------------------------
    def fit(processes: int) -> tuple[dict[str, float], float, float]:
        dm = FaceDataModule(
            train=train_src, val=val_src, canvas=canvas, batch_size=args.batch // processes, num_workers=0
        )
        torch.manual_seed(1)
        student = Student(
            "timm/mobilenetv3_small_050",
            backbone_kwargs={"input_size": 64, "embedding_dim": 64},
            embedding_dim=teacher.embedding_dim,
            hidden=64,
        )
        import functools

        module = DistillModule(
            student,
            misalign=LandmarkJitter(3.0),
            optimizer=functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
            student_config=student.config,
        )
        module.attach_teacher(teacher, one)
        ddp = {"devices": 2, "strategy": "ddp_spawn"} if processes == 2 else {"devices": 1}
        trainer = pl.Trainer(
            accelerator="cpu",
            max_epochs=args.epochs,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            default_root_dir=str(work / f"fit{processes}"),
            callbacks=[LoopTimer(str(timing), f"fit{processes}")],
            **ddp,
        )
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        wall = time.perf_counter() - t0
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        return metrics, _rate(timing, f"fit{processes}"), wall

    m1, r1, w1 = fit(1)
    m2, r2, w2 = fit(2)
    print(f"## distillation ({args.epochs} epochs, global batch {args.batch}, LandmarkJitter(3), SGD)")
    print("| processes | in-loop images/s | wall s (incl. start-up, validation) | " + " | ".join(sorted(m1)) + " |")
    print("|---|---|---|" + "---|" * len(m1))
    print(f"| 1 | {r1:.0f} | {w1:.1f} | " + " | ".join(f"{m1[k]:.4f}" for k in sorted(m1)) + " |")
    print(f"| 2 | {r2:.0f} | {w2:.1f} | " + " | ".join(f"{m2.get(k, float('nan')):.4f}" for k in sorted(m1)) + " |")
    print(
        f"\nspeed-up 2 vs 1 process: precompute x{_rate(timing, 'pre2') / _rate(timing, 'pre1'):.2f}, "
        f"distillation x{r2 / r1:.2f} (in-loop)"
    )


if __name__ == "__main__":
    main()
