"""``aikd make-graded`` and ``aikd fidelity``: the degradation-fidelity set and its evaluation of a finished run.

``aikd make-graded --out DIR`` writes a copy of CFP's test identities with graded blur and down-scaling
(:mod:`aikd.data.graded`). ``aikd fidelity RUN_DIR --graded DIR`` scores both copies with the run's teacher, its
student and the run's other evaluation methods, with the run's comparator, through the pipeline's own builders
(:mod:`aikd.app.pipeline`) and evaluation runner (:func:`aikd.evaluation.runner.evaluate`), and writes the mean
rank per level, the teacher-student Spearman correlations and the pAUC on each copy
(:mod:`aikd.evaluation.fidelity`).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

__all__ = ["main_make_graded", "main_fidelity", "run_fidelity", "load_run_config", "FidelityError"]


class FidelityError(Exception):
    """A run or graded set that cannot be evaluated (the message names the path and the fix)."""


# ----------------------------------------------------------------------------------------------------------------
# aikd make-graded
# ----------------------------------------------------------------------------------------------------------------


def main_make_graded(argv: Sequence[str] | None = None) -> int:
    """``aikd make-graded --out DIR``: write the graded copy of CFP's test identities (blur and down-scaling).

    Exit code 0 on success (also when DIR already holds the same copy), 2 on bad arguments or data.
    """
    from aikd.data.graded import BLUR_SIGMAS, KINDS, RESOLUTIONS, GradedSpec, make_graded
    from aikd.data.index import DataError
    from aikd.io import data_root

    parser = argparse.ArgumentParser(
        prog="aikd make-graded",
        description="Copy CFP identities (default the test split 451-500) with graded synthetic blur and "
        "down-scaling of the source photos, strengths defined on the aligned 112 px crop; each face gets a level "
        "(the same in both copies) spread evenly with a fixed seed. Writes DIR/{blur,downscale}/cfp (CFP layout, "
        "landmarks and protocol restricted to those identities), DIR/manifest.csv and DIR/graded.json.",
    )
    parser.add_argument("--out", "-o", required=True, help="output folder")
    parser.add_argument(
        "--source", default=None, help="CFP root (folder holding Data/, Protocol/); default $AIKD_DATA/cfp"
    )
    parser.add_argument("--identities", type=int, nargs=2, default=[451, 500], metavar=("FIRST", "LAST"),
                        help="inclusive range of CFP identity numbers (default 451 500)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="seed of the level assignment (default 0)")
    parser.add_argument("--blur-sigmas", type=float, nargs="+", default=list(BLUR_SIGMAS),
                        help="blur sigma per level on the 112 px crop (default "
                        f"{' '.join(f'{s:g}' for s in BLUR_SIGMAS)})")  # fmt: skip
    parser.add_argument("--resolutions", type=float, nargs="+", default=list(RESOLUTIONS),
                        help="effective crop resolution per level (default "
                        f"{' '.join(f'{r:g}' for r in RESOLUTIONS)})")  # fmt: skip
    parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of degraded photos (default 95)")
    parser.add_argument("--overwrite", action="store_true", help="replace a copy made with other settings")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    if args.source is None:
        root = data_root()
        if root is None:
            print("aikd make-graded: no CFP source: pass --source <CFP root> or set AIKD_DATA to the folder holding "
                  "cfp/", file=sys.stderr)  # fmt: skip
            return 2
        args.source = str(root / "cfp")
    try:
        spec = GradedSpec(
            identities=list(args.identities), seed=args.seed, blur_sigmas=args.blur_sigmas,
            resolutions=args.resolutions, jpeg_quality=args.jpeg_quality,
        )  # fmt: skip
        t0 = time.perf_counter()
        doc = make_graded(args.source, args.out, spec, overwrite=args.overwrite, progress=not args.no_progress)
    except (ValueError, DataError, FileExistsError) as err:
        print(f"aikd make-graded: {err}", file=sys.stderr)
        return 2
    wall = time.perf_counter() - t0
    if doc.get("skipped"):
        print(f"{args.out}: already holds this graded copy (same settings); nothing written")
    print(f"graded set: {args.out} ({doc['n_images']} images of {len(doc['identities'])} identities x "
          f"{len(KINDS)} kinds, seed {spec.seed}; {wall:.1f} s)")  # fmt: skip
    print("level | blur sigma | resolution | images")
    for k in range(spec.n_levels):
        print(f"{k:5d} | {spec.blur_sigmas[k]:10g} | {spec.resolutions[k]:10g} | {doc['images_per_level'][str(k)]:6d}")
    if doc["n_without_landmarks"]:
        print(f"   -1 | (no landmarks: copied unchanged, left out of evaluations) | {doc['n_without_landmarks']:6d}")
    if any(doc["clamped"].values()):
        print(f"faces already below the requested resolution (left as they are): {doc['clamped']}")
    return 0


# ----------------------------------------------------------------------------------------------------------------
# aikd fidelity
# ----------------------------------------------------------------------------------------------------------------


def load_run_config(run_dir: Path) -> Any:
    """The config a finished run ran with: ``results.json``'s (after start-up adaptation), else the one Hydra saved
    (``.hydra/config.yaml``), adapted to the teacher the same way."""
    from omegaconf import OmegaConf

    from aikd.app.validate import adapt_to_teacher

    results = run_dir / "results.json"
    saved = run_dir / ".hydra" / "config.yaml"
    if results.is_file() and "config" in (doc := json.loads(results.read_text())):
        cfg = OmegaConf.create(doc["config"])
    elif saved.is_file():
        cfg = OmegaConf.load(saved)
    else:
        raise FidelityError(
            f"{run_dir}: not a run directory (no results.json or .hydra/config.yaml); pass the directory a run of "
            "`python train.py ...` wrote (logs/<task>/runs/<time>)"
        )
    OmegaConf.set_struct(cfg, False)
    cfg.stages = ["evaluate"]
    adapt_to_teacher(cfg)
    return cfg


def _student_file(run_dir: Path, given: str | None) -> Path:
    if given:
        path = Path(given).expanduser()
        if not path.is_file():
            raise FidelityError(f"--student {path}: no such file")
        return path
    for rel in ("export/student.safetensors", "checkpoints/last.ckpt"):
        if (run_dir / rel).is_file():
            return run_dir / rel
    raise FidelityError(
        f"{run_dir}: no student (neither export/student.safetensors nor checkpoints/last.ckpt): the run has not "
        f"finished distillation; finish it with `python train.py <its overrides> hydra.run.dir={run_dir}`, or pass "
        "--student <file>"
    )


def _load_teacher(cfg: Any, meta_file: Path) -> Any:
    """The run's trained teacher from the file its ``teacher.json`` names (built as configured when it names
    none: a teacher that was not trained, e.g. an embedding norm)."""
    from hydra.utils import instantiate

    from aikd.models.teacher import load_teacher

    if not meta_file.is_file():
        raise FidelityError(
            f"{meta_file} not found: the run has not finished its teacher stage; finish the run first "
            f"(`python train.py <its overrides> hydra.run.dir={meta_file.parent}`)"
        )
    meta = json.loads(meta_file.read_text())
    file = meta.get("file")
    if file:
        if not Path(file).is_file():
            raise FidelityError(
                f"{meta_file}: the teacher file {file} is gone (cache cleared?); rerun the run's teacher stage with "
                f"the same paths.cache_dir to rebuild it (`python train.py <its overrides> stages=[teacher] "
                f"hydra.run.dir={meta_file.parent}`)"
            )
        return load_teacher(file)
    spec = instantiate(cfg.teacher, _convert_="partial")
    if spec.fit:
        raise FidelityError(f"{meta_file} names no teacher file although teacher '{spec.name}' is trained here")
    teacher = spec.instantiate()  # ranks and pAUC do not depend on the (monotone) calibration: none is fitted
    teacher.freeze()
    return teacher


def _graded_datamodule(cfg: Any, root: Path) -> Any:
    """The run's data module with the graded copy ``root`` (a ``<kind>/cfp`` folder) as every split."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    val = cfg.data.get("val")
    if val is None or not str(val.get("_target_", "")).endswith("CFPSource"):
        raise FidelityError(
            f"the run evaluated {val.get('_target_') if val is not None else 'no data.val'}, not CFP: the graded set "
            "is a copy of CFP, so only runs on CFP data (data=cfp, cfp_celeba, ...) can be evaluated on it"
        )
    source = OmegaConf.to_container(val, resolve=True)
    source.update(root=str(root), identities=None)
    node = OmegaConf.to_container(cfg.data, resolve=True)
    node.update(train=source, val=source, test=None, extra_train=[], augment=None)
    dm = instantiate(OmegaConf.create(node), _convert_="partial")
    dm.prepare_data()
    return dm


def run_fidelity(
    run_dir: str | Path,
    graded: str | Path,
    out: str | Path | None = None,
    student: str | None = None,
    methods: Sequence[str] | None = None,
    reference: str | None = None,
    batch_size: int | None = None,
    progress: bool = True,
    bootstrap: int | None = None,
) -> dict[str, Any]:
    """Evaluate a finished run's methods on both copies of a graded set; write the fidelity report.

    Args:
        run_dir: the run's output directory (``teacher.json``, ``export/`` or ``checkpoints/``, its config).
        graded: the graded set (``aikd make-graded --out``).
        out: report folder (default ``run_dir/fidelity``): ``report.md``, ``fidelity.json``, ``fidelity.png``,
            ``scores.csv`` and, per kind, the evaluation runner's own report (``<kind>/report.md``, EDC plots).
        student: the student file (default the run's export, else its last checkpoint).
        methods: ``evaluation.methods`` to score (default the run's).
        reference: the method the others are compared with (default the run's teacher).
        batch_size: scoring batch size (default the run's ``evaluation.batch_size``).
        progress: progress bars.
        bootstrap: resamples of the paired bootstrap of every method's pAUC minus the reference's on each copy
            (default the run's ``evaluation.bootstrap``; 0 = off). One copy's pAUC difference of a few hundredths
            may be luck of the pairs; the interval says whether it is (:mod:`aikd.evaluation.bootstrap`).

    Returns:
        The content of ``fidelity.json`` plus ``"paths"``.
    """
    import numpy as np

    from aikd.app.pipeline import (
        RunContext,
        _cache_root,
        _device,
        build_comparator,
        build_methods,
        build_pairs,
        describe_method,
    )
    from aikd.data.graded import KINDS, check_graded, read_manifest
    from aikd.data.index import DataError
    from aikd.evaluation.fidelity import fidelity_figures, pauc_figures, write_fidelity_report
    from aikd.evaluation.runner import evaluate
    from aikd.geometry.misalign import NoMisalign
    from aikd.io import use_cache_root, write_text
    from aikd.serving.export import load_student

    run_dir = Path(run_dir).expanduser()
    graded = Path(graded).expanduser()
    if not run_dir.is_dir():
        raise FidelityError(f"run directory not found: {run_dir}; pass the directory a run of `python train.py` wrote")
    try:
        doc = check_graded(graded)
        manifest = read_manifest(graded)
    except DataError as err:
        raise FidelityError(str(err)) from err
    out = Path(out).expanduser() if out else run_dir / "fidelity"
    cfg = load_run_config(run_dir)
    student_file = _student_file(run_dir, student)
    cfg.paths.output_dir = str(out)
    if methods:
        cfg.evaluation.methods = list(methods)
    ecfg = cfg.evaluation
    n_boot = int(ecfg.get("bootstrap", 0) if bootstrap is None else bootstrap)
    if n_boot < 0:
        raise FidelityError(f"--bootstrap must be 0 (off) or a number of resamples, got {n_boot}")
    strengths = {k: doc["kinds"][k]["strengths"] for k in KINDS}
    with use_cache_root(_cache_root(cfg)):
        ctx = RunContext(cfg, out)
        ctx.components["teacher"] = _load_teacher(cfg, run_dir / "teacher.json")
        ctx.components["student"] = load_student(student_file)
        for name in [str(m) for m in ecfg.methods if str(m).startswith("teacher:")]:
            option = name.split(":", 1)[1]
            ctx.components[name] = _load_teacher(cfg, run_dir / "teachers" / option / "teacher.json")
        comparator = None
        quality: dict[str, dict[str, np.ndarray]] = {}
        levels: dict[str, np.ndarray] = {}
        paths_by_kind: dict[str, list[str]] = {}
        pauc: dict[str, Any] = {}
        boot: dict[str, Any] = {}
        fr: dict[str, Any] = {}
        described: dict[str, str] = {}
        ref = None
        for kind in KINDS:
            dm = _graded_datamodule(cfg, graded / kind / "cfp")
            ctx.components["datamodule"] = dm
            index = dm.index("val")
            if comparator is None:
                comparator = build_comparator(ctx)
            scored = build_methods(ctx, index, comparator)
            described = {m: describe_method(m, ctx) for m in scored}
            ref = reference or next((m for m in scored if m.startswith("teacher:")), None)
            if ref is None or ref not in scored:
                raise FidelityError(f"reference method {reference or 'teacher'} not among the scored methods "
                                    f"{list(scored)}; pass --reference <method>")  # fmt: skip
            log.info("fidelity: %s copy, %d faces, methods %s", kind, len(index), ", ".join(scored))
            res = evaluate(
                index, build_pairs(ctx, index), scored, comparator, {"aligned": NoMisalign()}, canvas=dm.canvas,
                operating_points=list(ecfg.operating_points), limits=list(ecfg.limits), seed=int(ecfg.seed),
                batch_size=int(batch_size or ecfg.batch_size), num_workers=int(ecfg.get("num_workers", 0)),
                device=_device(cfg), strict=bool(ecfg.strict), out_dir=out / kind, progress=progress,
                bootstrap=n_boot, comparisons=[(m, ref) for m in scored if m != ref],
                meta={"data": str(index.root), "graded_kind": kind, "comparator": ecfg.comparator.name,
                      "methods": described},
            )  # fmt: skip
            rel = [index.paths[int(r)] for r in res.table.rows]
            missing = [p for p in rel if p not in manifest[kind]]
            if missing:
                raise FidelityError(
                    f"{graded}/manifest.csv lacks {len(missing)} scored face(s) of {kind}, e.g. {missing[0]}; remake "
                    f"the set with aikd make-graded --out {graded} --overwrite"
                )
            levels[kind] = np.array([manifest[kind][p]["level"] for p in rel])
            quality[kind] = {m: q for m, q in res.table.quality["aligned"].items()}
            paths_by_kind[kind] = rel
            pauc[kind] = pauc_figures(res.results)
            if res.bootstrap is not None:
                boot[kind] = res.bootstrap
            fr[kind] = {k: res.fr[k] for k in ("eer", "fnmr_at_fmr") if k in res.fr}
    names = list(next(iter(quality.values())))
    figures = fidelity_figures(quality, levels, ref, strengths)
    meta = {
        "run": str(run_dir),
        "student": str(student_file),
        "graded set": f"{graded} (seed {doc['spec']['seed']}, identities {doc['spec']['identities']})",
        "comparator": str(ecfg.comparator.name),
        "faces scored": ", ".join(f"{k} {len(levels[k])}" for k in KINDS),
        "comparator EER": ", ".join(f"{k} {fr[k]['eer']:.3f}" for k in KINDS if "eer" in fr[k]),
        "methods": "; ".join(f"{m}: {d}" for m, d in described.items()),
    }
    paths = write_fidelity_report(out, figures, pauc, meta, bootstrap=boot or None)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["kind", "path", "level", *names])
    for kind in KINDS:
        for i, p in enumerate(paths_by_kind[kind]):
            writer.writerow([kind, p, int(levels[kind][i]), *(f"{quality[kind][m][i]:.6g}" for m in names)])
    paths["scores"] = write_text(out / "scores.csv", buf.getvalue())
    return {**json.loads(paths["json"].read_text()), "fr": fr, "paths": {k: str(v) for k, v in paths.items()}}


def main_fidelity(argv: Sequence[str] | None = None) -> int:
    """``aikd fidelity RUN_DIR --graded DIR``: does the run's student rank degraded faces as its teacher does?

    Exit code 0 on success, 2 when the run or the graded set is missing or incomplete.
    """
    from aikd.evaluation.bootstrap import comparison_label, format_interval
    from aikd.evaluation.fidelity import HEADLINE, bootstrap_by_kind

    parser = argparse.ArgumentParser(
        prog="aikd fidelity",
        description="Score both copies of a graded set (aikd make-graded) with a finished run's teacher, student and "
        "other evaluation methods, with the run's comparator; report the mean percentile rank of quality per level, "
        "the Spearman correlation of each method's per-level ranks with the teacher's (per kind and over all "
        "levels) and the normalised pAUC on each copy. Writes report.md, fidelity.json, fidelity.png, scores.csv.",
    )
    parser.add_argument("run_dir", help="the run's output directory (logs/<task>/runs/<time>)")
    parser.add_argument("--graded", required=True, help="the graded set (aikd make-graded --out DIR)")
    parser.add_argument("--out", "-o", default=None, help="report folder (default RUN_DIR/fidelity)")
    parser.add_argument("--student", default=None, help="student file (default RUN_DIR/export/student.safetensors)")
    parser.add_argument("--methods", default=None,
                        help="comma-separated evaluation methods (default the run's evaluation.methods)")  # fmt: skip
    parser.add_argument("--reference", default=None, help="method the others are compared with (default the teacher)")
    parser.add_argument("--batch-size", type=int, default=None, help="scoring batch size (default the run's)")
    parser.add_argument("--bootstrap", type=int, default=None, metavar="N",
                        help="paired-bootstrap resamples for the interval of each method's pAUC minus the reference's "
                        "on each copy (default the run's evaluation.bootstrap; 0 = off)")  # fmt: skip
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    t0 = time.perf_counter()
    try:
        res = run_fidelity(
            args.run_dir, args.graded, args.out, student=args.student, methods=methods, reference=args.reference,
            batch_size=args.batch_size, progress=not args.no_progress, bootstrap=args.bootstrap,
        )  # fmt: skip
    except FidelityError as err:
        print(f"aikd fidelity: {err}", file=sys.stderr)
        return 2
    op, lim = HEADLINE
    ref = res["reference"]
    kinds = res["kinds"]
    print(f"\ndegradation fidelity ({time.perf_counter() - t0:.0f} s); Spearman of per-level mean ranks with {ref}, "
          f"normalised pAUC@{lim} ({op})")  # fmt: skip
    print(f"{'method':<24}" + "".join(f"{'rho ' + k:>14}" for k in kinds) + f"{'rho all':>10}"
          + "".join(f"{'pAUC ' + k:>16}" for k in kinds))  # fmt: skip
    for m in res["methods"]:
        sp = res["spearman"][m]
        row = f"{m:<24}" + "".join(f"{_fmt(sp[k]):>14}" for k in kinds) + f"{_fmt(sp['all']):>10}"
        row += "".join(f"{_fmt(res['pauc_normalised'][k][m].get(op, {}).get(lim)):>16}" for k in kinds)
        print(row)
    boot = res.get("bootstrap")
    if boot:
        by_kind = bootstrap_by_kind(boot)
        print(f"\npAUC minus {ref}'s, with the {by_kind['level']:.0%} paired-bootstrap interval "
              f"({by_kind['n_boot']} resamples; negative = better than {ref})")  # fmt: skip
        for m in res["methods"]:
            if m != ref:
                cells = [by_kind["comparisons"][k].get(comparison_label(m, ref), {}) for k in kinds]
                cells = [format_interval(c.get("operating_points", {}).get(op, {}).get(lim)) for c in cells]
                print(f"  {m:<22}" + "".join(f"  {k} {c}" for k, c in zip(kinds, cells)))
    for kind in kinds:
        print(
            f"\nmean percentile rank per {kind} level ({', '.join(f'{s:g}' for s in res['levels'][kind]['strengths'])})"
        )
        for m in res["methods"]:
            print(f"  {m:<22}" + " ".join(f"{_fmt(v):>6}" for v in res["mean_rank"][kind][m]))
    print(f"\nreport: {res['paths']['markdown']}")
    return 0


def _fmt(x: Any) -> str:
    return "n/a" if x is None else f"{x:.3f}"
