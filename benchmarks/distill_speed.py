"""Speed of a finished distillation run on the CPU: scoring (teacher vs student, PyTorch vs onnxruntime) and
training throughput with cached vs online teacher targets.

    python benchmarks/distill_speed.py --run logs/cfp_crfiqa_facenet/runs/<time>

Needs the run's ``teacher.json`` (its ``file``: the trained teacher) and ``export/`` (the student). Training
throughput is measured on the run's data config for ``--steps`` optimiser steps per mode (1 process, batch 64).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def _rate(fn, x: torch.Tensor, repeats: int) -> float:
    fn(x)  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn(x)
    return repeats * len(x) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True, help="output directory of a finished distillation run")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=12, help="training steps per mode (0 skips the training figures)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    from aikd.models.teacher import load_teacher
    from aikd.serving.export import load_student

    meta = json.loads((args.run / "teacher.json").read_text())
    teacher = load_teacher(meta["file"]).freeze()
    export_meta = json.loads((args.run / "export" / "student.json").read_text())
    student = load_student(args.run / "export" / export_meta["files"]["safetensors"])
    out: dict = {"batch": args.batch, "threads": args.threads}
    with torch.inference_mode():
        th, tw = teacher.input_spec.size
        sh, sw = student.input_spec.size
        out["teacher_img_s"] = _rate(teacher, torch.rand(args.batch, 3, th, tw), args.repeats)
        out["student_torch_img_s"] = _rate(student, torch.rand(args.batch, 3, sh, sw), args.repeats)
    if "onnx" in export_meta["files"]:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        sess = ort.InferenceSession(
            str(args.run / "export" / export_meta["files"]["onnx"]), opts, providers=["CPUExecutionProvider"]
        )
        x = torch.rand(args.batch, 3, sh, sw).numpy()
        out["student_onnx_img_s"] = _rate(lambda a: sess.run(None, {"faces": a}), x, args.repeats)  # type: ignore[arg-type]
    print(f"scoring, batch {args.batch}, {args.threads} threads (images/s):")
    for k in ("teacher_img_s", "student_torch_img_s", "student_onnx_img_s"):
        if k in out:
            print(f"  {k:22s} {out[k]:8.1f}")
    if args.steps:
        out.update(_training_throughput(args, teacher))
    (args.run / "speed.json").write_text(json.dumps(out, indent=2))
    return out


def _training_throughput(args: argparse.Namespace, teacher) -> dict:  # noqa: ANN001
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from aikd.io import cache_dir
    from aikd.training import DistillModule
    from aikd.training.cache import teacher_score_cache

    cfg = OmegaConf.load(args.run / ".hydra" / "config.yaml")
    dm = instantiate(cfg.data, _convert_="partial")
    dm.setup("fit")
    dm.sources["val"] = None
    res = {}
    for mode in ("cache", "online"):
        from aikd.app.pipeline import build_student_from_config

        student = build_student_from_config(cfg, teacher)
        module = DistillModule(
            student, misalign=instantiate(cfg.misalign), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-4)
        )
        caches = (
            {"train": teacher_score_cache(teacher, dm.index("train"), dm.canvas, cache_dir("teacher_scores"))}
            if mode == "cache"
            else {}
        )
        module.attach_teacher(teacher, caches)

        class Clock(pl.Callback):
            def __init__(self) -> None:
                self.t0 = None
                self.n = 0

            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
                if batch_idx == 2 and self.t0 is None:  # skip warm-up steps
                    self.t0 = time.perf_counter()

            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
                if self.t0 is not None:
                    self.n += len(batch["index"])

        clock = Clock()
        trainer = pl.Trainer(
            max_steps=args.steps + 2,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            callbacks=[clock],
        )
        trainer.fit(module, datamodule=dm)
        res[f"train_{mode}_img_s"] = clock.n / (time.perf_counter() - clock.t0)
        print(f"training throughput, teacher {mode:6s}: {res[f'train_{mode}_img_s']:.1f} images/s")
    return res


if __name__ == "__main__":
    main()
