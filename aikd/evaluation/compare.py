"""Compare several runs of the same experiment (different seeds): mean and spread of the pAUC over runs.

One run's bootstrap interval (:mod:`aikd.evaluation.bootstrap`) covers the noise of the evaluation pairs, not the
randomness of training: two runs of one experiment can differ by a few hundredths of normalised pAUC. ``aikd
compare-runs RUN_DIR [RUN_DIR ...]`` reads each run's ``results.json`` and writes a Markdown table per operating
point: per method and condition the mean +- sample standard deviation over the runs, and per condition the mean
student-minus-teacher difference next to each run's own difference and bootstrap interval.

A run is given as its output directory (``results.json`` of the pipeline, whose ``evaluation`` entry holds the
normalised pAUCs and, with ``evaluation.bootstrap > 0``, the bootstrapped differences), or as an evaluation
directory / EDC report (``evaluation/results.json``, schema ``aikd.edc-report/1``), or as a multirun directory
(``python train.py -m experiment=... seed=1,2,3``), which stands for its finished jobs in job order.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aikd.evaluation.bootstrap import comparison_label, format_interval
from aikd.evaluation.edc import limit_key, parse_operating_point
from aikd.evaluation.report import SCHEMA

__all__ = [
    "RunFigures",
    "load_run",
    "expand_runs",
    "summarise_runs",
    "compare_runs_markdown",
    "compare_runs",
    "main_compare",
]


@dataclass
class RunFigures:
    """One run's figures, whichever file they came from.

    Attributes:
        source: the file read.
        pauc: ``pauc[(method, condition, operating point, limit key)]`` = normalised pAUC (NaN when undefined).
        bootstrap: the run's bootstrap section (``comparisons[condition][label][...]``), or ``None``.
    """

    source: Path
    pauc: dict[tuple[str, str, str, str], float] = field(default_factory=dict)
    bootstrap: Mapping[str, Any] | None = None

    @property
    def conditions(self) -> list[str]:
        return list(dict.fromkeys(k[1] for k in self.pauc))

    @property
    def methods(self) -> list[str]:
        return list(dict.fromkeys(k[0] for k in self.pauc))

    @property
    def operating_points(self) -> list[str]:
        return list(dict.fromkeys(k[2] for k in self.pauc))

    @property
    def limits(self) -> list[str]:
        return list(dict.fromkeys(k[3] for k in self.pauc))


def _number(value: Any) -> float:
    """A figure from JSON: ``null`` (undefined, written for NaN) and ``NaN`` both become NaN."""
    return math.nan if value is None else float(value)


def _fidelity_file(path: Path) -> Path:
    """``fidelity.json`` of a run directory (``RUN/fidelity/``), of a fidelity report folder, or the file itself."""
    if not path.is_dir():
        return path
    return path / "fidelity.json" if (path / "fidelity.json").is_file() else path / "fidelity" / "fidelity.json"


def _load_fidelity(doc: Mapping[str, Any], figures: RunFigures) -> RunFigures:
    """A fidelity report's pAUC per graded copy as the figures of a run whose conditions are the copies."""
    from aikd.evaluation.fidelity import bootstrap_by_kind

    for kind, methods in (doc.get("pauc_normalised") or {}).items():
        for method, ops in methods.items():
            for op, values in ops.items():
                for lim, value in values.items():
                    figures.pauc[(method, kind, op, lim)] = _number(value)
    if doc.get("bootstrap"):
        figures.bootstrap = bootstrap_by_kind(doc["bootstrap"])
    if not figures.pauc:
        raise ValueError(f"{figures.source} holds no pAUC figures; remake it with aikd fidelity")
    return figures


def load_run(path: str | Path, comparator: str | None = None, fidelity: bool = False) -> RunFigures:
    """Read one run's figures from its directory (or a ``results.json`` / EDC report / ``fidelity.json`` file).

    ``comparator``: the figures made with an extra comparator's comparison scores (``evaluation.extra_comparators``,
    e.g. ``facenet``) instead of the main one's; they carry no bootstrap intervals.
    ``fidelity``: the figures of the run's degradation-fidelity report (``RUN/fidelity/fidelity.json``, written by
    ``aikd fidelity``) instead of its evaluation: one condition per graded copy (``blur``, ``downscale``), with the
    report's bootstrap intervals. A file named ``fidelity.json`` is read that way without the flag.

    Raises:
        FileNotFoundError: no ``results.json`` (or ``fidelity.json``) there (named, with the command that makes it).
        ValueError: the file is not JSON, or holds no evaluation (named).
    """
    path = Path(path).expanduser()
    fidelity = fidelity or path.name == "fidelity.json"
    if fidelity:
        file = _fidelity_file(path)
        if not file.is_file():
            raise FileNotFoundError(
                f"{file}: no such file; make the run's fidelity report first: aikd fidelity {path} --graded "
                f"<aikd make-graded dir>"
            )
    else:
        file = path / "results.json" if path.is_dir() or path.suffix != ".json" else path
    if not file.is_file():
        raise FileNotFoundError(
            f"{file}: no such file; give the output directory of a run that ran the evaluate stage (it holds "
            f"results.json), or its evaluation/ directory"
        )
    try:
        doc = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{file} is not valid JSON ({exc}); was the run interrupted while writing it?") from exc
    if not isinstance(doc, dict):
        raise ValueError(f"{file}: expected a JSON object, got {type(doc).__name__}")
    figures = RunFigures(source=file)
    if fidelity:
        if comparator is not None:
            raise ValueError(f"{file}: a fidelity report has the figures of its run's comparator only; leave out "
                             "--comparator")  # fmt: skip
        return _load_fidelity(doc, figures)
    if comparator is not None:
        extra = (doc.get("evaluation") or {}).get("extra_comparators") or {}
        if comparator not in extra:
            raise ValueError(
                f"{file} holds no figures with comparator {comparator!r} (it has: {', '.join(extra) or 'none'}); "
                f"run with evaluation.extra_comparators=[{comparator}], or leave out --comparator"
            )
        doc = {"evaluation": {"pauc_normalised": extra[comparator].get("pauc_normalised")}}
    if doc.get("schema") == SCHEMA:  # an EDC report (evaluation/results.json)
        for condition, methods in (doc.get("results") or {}).items():
            for method, entry in methods.items():
                for op, values in entry.get("operating_points", {}).items():
                    for lim, p in values.get("pauc", {}).items():
                        figures.pauc[(method, condition, op, lim)] = _number(p.get("normalised"))
        figures.bootstrap = doc.get("bootstrap")
    else:  # the pipeline's results.json: evaluation.pauc_normalised["<method>/<condition>/<op>/pauc<limit>"]
        evaluation = doc.get("evaluation")
        if not isinstance(evaluation, dict) or not evaluation.get("pauc_normalised"):
            raise ValueError(
                f"{file} holds no evaluation results (no 'evaluation.pauc_normalised'): the run did not run the "
                f"evaluate stage, or did not finish it"
            )
        for key, value in evaluation["pauc_normalised"].items():
            parts = str(key).rsplit("/", 3)
            if len(parts) != 4 or not parts[3].startswith("pauc"):
                raise ValueError(
                    f"{file}: evaluation.pauc_normalised key {key!r} is not <method>/<condition>/<op>/pauc<limit>"
                )
            method, condition, op, lim = parts
            figures.pauc[(method, condition, op, lim[len("pauc") :])] = _number(value)
        figures.bootstrap = evaluation.get("bootstrap")
    if not figures.pauc:
        raise ValueError(f"{file} holds no pAUC figures")
    return figures


def _job_number(path: Path) -> tuple[int, str]:
    head = path.name.split("_", 1)[0]
    return (int(head), path.name) if head.isdigit() else (1 << 30, path.name)


def _is_sweep(path: Path) -> bool:
    """A Hydra multirun directory: no ``results.json`` of its own, but job directories (and Hydra's or aikd's sweep
    files: ``multirun.yaml``, ``summary.csv``)."""
    if not path.is_dir() or (path / "results.json").is_file():
        return False
    if (path / "multirun.yaml").is_file() or (path / "summary.csv").is_file():
        return True
    return any((p / "results.json").is_file() for p in path.iterdir() if p.is_dir())


def expand_runs(runs: Sequence[str | Path | RunFigures]) -> tuple[list[Path | RunFigures], list[Path]]:
    """Runs as given, with each multirun directory (a Hydra sweep: ``python train.py -m ... seed=1,2,3``, one
    directory per job) replaced by its jobs in job order.

    Returns:
        ``(runs, left_out)``: ``left_out`` are the sweep's job directories without ``results.json`` (a job that
        failed or has not finished), which are not compared; a plain run directory without it is an error later.

    Raises:
        ValueError: a sweep directory none of whose jobs has results (named).
    """
    out: list[Path | RunFigures] = []
    left_out: list[Path] = []
    for run in runs:
        if isinstance(run, RunFigures):
            out.append(run)
            continue
        path = Path(run).expanduser()
        if not _is_sweep(path):
            out.append(path)
            continue
        jobs = sorted((p for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_job_number)
        done = [p for p in jobs if (p / "results.json").is_file()]
        if not done:
            raise ValueError(
                f"{path} is a multirun directory but none of its {len(jobs)} job(s) has results.json: the jobs "
                f"failed or have not finished (see each job's log)"
            )
        out += done
        left_out += [p for p in jobs if p not in done]
    return out, left_out


def _mean_sd(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (ddof 1; NaN with fewer than two values) and count of the defined values."""
    v = np.asarray([x for x in values if not math.isnan(x)], dtype=np.float64)
    if v.size == 0:
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else math.nan, int(v.size)


def _same(runs: Sequence[RunFigures], what: str, get: Any) -> list[str]:
    first = get(runs[0])
    for run in runs[1:]:
        other = get(run)
        if set(other) != set(first):
            only_first = sorted(set(first) - set(other))
            only_other = sorted(set(other) - set(first))
            raise ValueError(
                f"the runs evaluated different {what}: {runs[0].source} has {first}, {run.source} has {other} "
                f"(only in the first: {only_first or 'none'}; only in the second: {only_other or 'none'}); compare "
                f"runs of the same experiment"
            )
    return first


def summarise_runs(
    runs: Sequence[str | Path | RunFigures],
    *,
    limit: float | None = None,
    operating_points: Sequence[str] | None = None,
    comparator: str | None = None,
    fidelity: bool = False,
) -> dict[str, Any]:
    """Mean and spread over runs of every method's normalised pAUC, and of the student-minus-teacher differences.

    Args:
        runs: run directories (or files, or already loaded :class:`RunFigures`); a multirun directory stands for
            its jobs (:func:`expand_runs`).
        limit: the pAUC limit to summarise (default: the first the runs report, e.g. 0.2).
        operating_points: which operating points (default: all the runs report).
        comparator: an extra comparator's figures instead of the main ones (:func:`load_run`).
        fidelity: the runs' degradation-fidelity figures (one condition per graded copy) instead of their
            evaluation's (:func:`load_run`).

    Returns:
        ``{"runs": [source, ...], "left_out": [job dir, ...], "limit": key, "conditions", "methods", "operating_points",
        "pauc": {op: {method: {condition: {"mean", "sd", "n", "values"}}}},
        "differences": {op: {"A - B": {condition: {"mean", "sd", "n", "values", "intervals"}}}}}``. The differences
        are the student against every method whose name starts with ``teacher:``: each run's difference (from its
        pAUCs) and, where the run was bootstrapped, its interval (``intervals``: one ``difference_summary`` or
        ``None`` per run).

    Raises:
        ValueError: no runs, or runs that evaluated different conditions, methods or operating points (the files
            are named), or a limit they do not report.
    """
    expanded, left_out = expand_runs(runs)
    loaded = [r if isinstance(r, RunFigures) else load_run(r, comparator, fidelity) for r in expanded]
    if not loaded:
        raise ValueError("no runs given: name at least one run directory")
    conditions = _same(loaded, "conditions", lambda r: r.conditions)
    methods = _same(loaded, "methods", lambda r: r.methods)
    ops = _same(loaded, "operating points", lambda r: r.operating_points)
    limits = _same(loaded, "pAUC limits", lambda r: r.limits)
    key = limits[0] if limit is None else limit_key(limit)
    if key not in limits:
        raise ValueError(f"pAUC limit {key} is not in the runs' results (they report {', '.join(limits)})")
    if operating_points:
        wanted = [parse_operating_point(op).label for op in operating_points]
        missing = [op for op in wanted if op not in ops]
        if missing:
            raise ValueError(f"operating point(s) {missing} not in the runs' results (they report {ops})")
        ops = wanted
    pauc: dict[str, Any] = {}
    for op in ops:
        pauc[op] = {}
        for m in methods:
            pauc[op][m] = {}
            for c in conditions:
                values = [r.pauc.get((m, c, op, key), math.nan) for r in loaded]
                mean, sd, n = _mean_sd(values)
                pauc[op][m][c] = {"mean": mean, "sd": sd, "n": n, "values": values}
    teachers = [m for m in methods if m.startswith("teacher:")]
    pairs = [("student", t) for t in teachers] if "student" in methods else []
    differences: dict[str, Any] = {}
    for op in ops:
        differences[op] = {}
        for a, b in pairs:
            label = comparison_label(a, b)
            differences[op][label] = {}
            for c in conditions:
                values = [r.pauc.get((a, c, op, key), math.nan) - r.pauc.get((b, c, op, key), math.nan) for r in loaded]
                mean, sd, n = _mean_sd(values)
                intervals = [
                    ((r.bootstrap or {}).get("comparisons") or {}).get(c, {}).get(label, {})
                    .get("operating_points", {}).get(op, {}).get(key)
                    for r in loaded
                ]  # fmt: skip
                differences[op][label][c] = {"mean": mean, "sd": sd, "n": n, "values": values, "intervals": intervals}
    return {
        "runs": [str(r.source) for r in loaded],
        "left_out": [str(p) for p in left_out],
        "comparator": comparator,
        "fidelity": fidelity or all(r.source.name == "fidelity.json" for r in loaded),
        "limit": key,
        "conditions": conditions,
        "methods": methods,
        "operating_points": ops,
        "pauc": pauc,
        "differences": differences,
    }


def _fmt(x: float, digits: int, sign: bool = False) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _mean_sd_cell(entry: Mapping[str, Any], n_runs: int, digits: int, sign: bool = False) -> str:
    if entry["n"] == 0:
        return "n/a"
    text = _fmt(entry["mean"], digits, sign)
    if entry["n"] > 1:
        text += f" ± {_fmt(entry['sd'], digits)}"
    return text + (f" ({entry['n']} of {n_runs} runs)" if entry["n"] < n_runs else "")


def _cell(name: str) -> str:
    return str(name).replace("|", r"\|")


def compare_runs_markdown(summary: Mapping[str, Any], digits: int = 3) -> str:
    """The Markdown tables of :func:`summarise_runs`."""
    runs = summary["runs"]
    n = len(runs)
    conditions = summary["conditions"]
    lim = float(summary["limit"])
    lines = [f"# {n} run(s) compared", ""]
    if summary.get("comparator"):
        lines += [f"Comparison scores of the extra comparator **{summary['comparator']}**.", ""]
    if summary.get("fidelity"):
        lines += ["Degradation fidelity reports (`aikd fidelity`): one column per graded copy.", ""]
    lines += [f"{i + 1}. `{src}`" for i, src in enumerate(runs)] + [""]
    left_out = summary.get("left_out") or []
    if left_out:
        lines += [f"Left out (sweep jobs without results.json: failed or unfinished): {len(left_out)}", ""]
        lines += [f"- `{p}`" for p in left_out] + [""]
    if summary.get("comparator"):
        na = "n/a: extra comparators' figures carry no bootstrap intervals"
    elif summary.get("fidelity"):
        na = "n/a: the report was made without intervals (`aikd fidelity --bootstrap 1000` adds them)"
    else:
        na = "n/a: the run was not bootstrapped, `evaluation.bootstrap=0`"
    for op in summary["operating_points"]:
        lines.append(f"## Normalised pAUC@{lim:.2f}, {parse_operating_point(op).description} (`{op}`)")
        lines.append("")
        lines.append(f"Mean ± sample standard deviation over the {n} run(s); lower is better, 1.0 = random discarding.")
        lines.append("")
        lines.append("| method | " + " | ".join(_cell(c) for c in conditions) + " |")
        lines.append("| --- | " + " | ".join("---:" for _ in conditions) + " |")
        for m, per_condition in summary["pauc"][op].items():
            cells = [_mean_sd_cell(per_condition[c], n, digits) for c in conditions]
            lines.append(f"| {_cell(m)} | " + " | ".join(cells) + " |")
        lines.append("")
        for label, per_condition in summary["differences"].get(op, {}).items():
            lines.append(
                f"**{label}** (negative = student better): mean ± sd over runs, then each run's difference with its "
                f"paired-bootstrap interval ({na})."
            )
            lines.append("")
            lines.append("| condition | mean ± sd | " + " | ".join(f"run {i + 1}" for i in range(n)) + " |")
            lines.append("| --- | ---: | " + " | ".join("---:" for _ in range(n)) + " |")
            for c in conditions:
                e = per_condition[c]
                runs_cells = [
                    format_interval(iv, digits) if iv else format_interval({"difference": v}, digits)
                    for v, iv in zip(e["values"], e["intervals"])
                ]
                lines.append(
                    f"| {_cell(c)} | {_mean_sd_cell(e, n, digits, sign=True)} | " + " | ".join(runs_cells) + " |"
                )
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def compare_runs(
    runs: Sequence[str | Path],
    *,
    limit: float | None = None,
    operating_points: Sequence[str] | None = None,
    out: str | Path | None = None,
    comparator: str | None = None,
    fidelity: bool = False,
) -> str:
    """Markdown comparison of several runs (:func:`summarise_runs`); also written to ``out`` when given."""
    summary = summarise_runs(
        runs, limit=limit, operating_points=operating_points, comparator=comparator, fidelity=fidelity
    )
    text = compare_runs_markdown(summary)
    if out is not None:
        from aikd.io import write_text

        write_text(Path(out).expanduser(), text)
    return text


def main_compare(argv: Sequence[str] | None = None) -> int:
    """``aikd compare-runs RUN_DIR [RUN_DIR ...]``: mean +- sd of the pAUC over runs of one experiment.

    Exit code 0 on success, 2 on bad arguments or unreadable/incompatible runs (the message names the file).
    """
    parser = argparse.ArgumentParser(
        prog="aikd compare-runs",
        description="Compare runs of the same experiment (e.g. different seeds): per method and condition the mean "
        "+- sd of the normalised pAUC over the runs, and the student-minus-teacher difference with each run's "
        "bootstrap interval. Prints Markdown.",
    )
    parser.add_argument(
        "runs", nargs="+", metavar="RUN_DIR",
        help="run output directories (holding results.json), or a multirun directory (its jobs: e.g. seed=1,2,3)",
    )  # fmt: skip
    parser.add_argument("--limit", type=float, default=None, help="pAUC limit (default: the first reported, 0.2)")
    parser.add_argument(
        "--operating-point", action="append", default=None, dest="operating_points",
        help="operating point to show, e.g. start_err=0.10 (repeatable; default: all)",
    )  # fmt: skip
    parser.add_argument("-o", "--out", default=None, help="also write the Markdown to this file")
    parser.add_argument(
        "--comparator", default=None,
        help="figures made with this extra comparator's scores (evaluation.extra_comparators, e.g. facenet)",
    )  # fmt: skip
    parser.add_argument(
        "--fidelity", action="store_true",
        help="the runs' degradation-fidelity reports (RUN_DIR/fidelity/fidelity.json, from aikd fidelity): pAUC on "
        "each graded copy instead of the evaluation's conditions",
    )  # fmt: skip
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0), bad arguments (2)
        return int(exc.code or 0)
    try:
        text = compare_runs(
            args.runs,
            limit=args.limit,
            operating_points=args.operating_points,
            out=args.out,
            comparator=args.comparator,
            fidelity=args.fidelity,
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"aikd compare-runs: {err}", file=sys.stderr)
        return 2
    print(text, end="")
    return 0
