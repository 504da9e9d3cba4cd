"""Sweep summaries: every job's overrides and metrics in one table in the sweep directory.

A Hydra multirun (``python train.py -m misalign=jitter3,affine``, or ``hparams_search=optuna``) writes one
output directory per job; each holds ``results.json`` (written by :func:`aikd.app.pipeline.run`) and Hydra's
``.hydra/overrides.yaml``. Comparing jobs means opening them one by one, so :class:`SweepSummary` - a Hydra
callback registered in ``conf/hydra/default.yaml`` - gathers them into

* ``summary.csv``: one row per job: job number, status, every override and every metric (wide, for pandas);
* ``summary.md``: the overrides that differ between jobs with the validation metrics, then the normalised pAUC
  of every quality method under every evaluation condition (rows job x method, columns conditions).

The callback rescans the sweep directory rather than collecting job returns, because launchers that run jobs
elsewhere (submitit on SLURM, joblib workers) only hand back return values, and a sweep that stops on a failed
job still leaves the tables of the jobs that finished (they are refreshed after every job).
"""

from __future__ import annotations

import csv
import fnmatch
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from aikd.io import atomic_path, write_json, write_text

log = logging.getLogger(__name__)

__all__ = ["JobRecord", "collect_jobs", "write_summary", "SweepSummary"]

#: Per-job file this callback writes with the job's Hydra status (a failed job has no ``results.json``).
STATUS_FILE = "job_status.json"


@dataclass
class JobRecord:
    """One sweep job as found on disk.

    Attributes:
        job_dir: the job's output directory.
        num: Hydra's job number (``hydra.job.num``), ``None`` when unknown.
        overrides: the job's command-line overrides, ``key -> value`` as typed.
        metrics: ``results.json``'s ``metrics`` (validation metrics, evaluation pAUC...).
        status: ``ok`` (results written), the Hydra status of a job without results (``failed``...), or
            ``no results`` (still running, killed, or stopped before writing them).
        error: the exception message of a failed job.
        wall_s: total of the stage timings.
        optimized_metric: the job's ``optimized_metric`` setting.
    """

    job_dir: Path
    num: int | None
    overrides: dict[str, str]
    metrics: dict[str, float]
    status: str
    error: str | None = None
    wall_s: float | None = None
    optimized_metric: str | None = None


def _job_number(job_dir: Path) -> int | None:
    path = job_dir / ".hydra" / "hydra.yaml"
    if not path.is_file():
        return None
    try:
        num = OmegaConf.load(path).hydra.job.get("num")
    except Exception:  # noqa: BLE001 - a damaged hydra.yaml must not stop the summary of the other jobs
        return None
    return int(num) if num is not None else None


def _read_job(job_dir: Path) -> JobRecord:
    overrides: dict[str, str] = {}
    ov_path = job_dir / ".hydra" / "overrides.yaml"
    for item in OmegaConf.to_container(OmegaConf.load(ov_path)) or []:
        key, sep, value = str(item).partition("=")
        overrides[key.lstrip("+~")] = value if sep else ""
    metrics: dict[str, float] = {}
    status, error, wall, opt = "no results", None, None, None
    results = job_dir / "results.json"
    if results.is_file():
        try:
            data = json.loads(results.read_text())
        except json.JSONDecodeError as err:
            status, error = "unreadable results", f"{results}: {err}"
        else:
            status = "ok"
            metrics = {k: float(v) for k, v in (data.get("metrics") or {}).items() if isinstance(v, (int, float))}
            timings = data.get("timings_s") or {}
            wall = round(sum(float(v) for v in timings.values()), 2) if timings else None
            opt = (data.get("config") or {}).get("optimized_metric")
    else:
        st = job_dir / STATUS_FILE
        if st.is_file():
            info = json.loads(st.read_text())
            status, error = str(info.get("status", status)).lower(), info.get("error")
    return JobRecord(job_dir, _job_number(job_dir), overrides, metrics, status, error, wall, opt)


def collect_jobs(sweep_dir: str | Path) -> list[JobRecord]:
    """Every job below ``sweep_dir`` (a directory holding ``.hydra/overrides.yaml``), ordered by job number."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    jobs = [_read_job(p.parent.parent) for p in sorted(sweep_dir.rglob(".hydra/overrides.yaml"))]
    return sorted(jobs, key=lambda j: (j.num is None, j.num if j.num is not None else 0, str(j.job_dir)))


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return _fmt(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _split_pauc(key: str) -> tuple[str, str, str] | None:
    """``method/condition/operating_point/pauc<limit>`` -> ``(method, condition, "<op>/pauc<limit>")``."""
    parts = key.split("/")
    if len(parts) < 4 or not parts[-1].startswith("pauc"):
        return None
    return "/".join(parts[:-3]), parts[-3], "/".join(parts[-2:])


def _best(jobs: Sequence[JobRecord], metric: str | None, direction: str | None) -> JobRecord | None:
    if not metric or direction not in ("maximize", "minimize"):
        return None
    scored = [j for j in jobs if metric in j.metrics and not math.isnan(j.metrics[metric])]
    if not scored:
        return None
    pick = max if direction == "maximize" else min
    return pick(scored, key=lambda j: j.metrics[metric])


def write_summary(
    sweep_dir: str | Path,
    jobs: Sequence[JobRecord] | None = None,
    filename: str = "summary",
    markdown_metrics: Sequence[str] = ("val/*",),
    pauc_at: str | None = None,
    direction: str | None = None,
) -> dict[str, Path]:
    """Write ``<filename>.csv`` and ``<filename>.md`` into ``sweep_dir``; returns their paths.

    Args:
        sweep_dir: the multirun's sweep directory.
        jobs: the jobs (default: :func:`collect_jobs` of ``sweep_dir``).
        filename: file stem of both tables.
        markdown_metrics: glob patterns of the metrics in the Markdown jobs table (the CSV has all of them).
        pauc_at: ``"<operating point>/pauc<limit>"`` of the Markdown pAUC table, e.g. ``"fmr=1e-3/pauc0.3"``;
            ``None`` takes the first one the jobs report.
        direction: ``maximize`` / ``minimize`` the jobs' ``optimized_metric``; names the best job when given.
    """
    sweep_dir = Path(sweep_dir)
    jobs = list(collect_jobs(sweep_dir) if jobs is None else jobs)
    override_keys = sorted({k for j in jobs for k in j.overrides})
    varying = [k for k in override_keys if len({j.overrides.get(k) for j in jobs}) > 1]
    common = {k: jobs[0].overrides.get(k) for k in override_keys if k not in varying} if jobs else {}
    metric_keys = sorted({k for j in jobs for k in j.metrics}, key=lambda k: (_split_pauc(k) is not None, k))

    csv_path = sweep_dir / f"{filename}.csv"
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["job", "dir", "status", "wall_s", *override_keys, *metric_keys])
        for j in jobs:
            w.writerow(
                [
                    j.num,
                    j.job_dir.relative_to(sweep_dir).as_posix(),
                    j.status,
                    j.wall_s,
                    *(j.overrides.get(k, "") for k in override_keys),
                    *(repr(j.metrics[k]) if k in j.metrics else "" for k in metric_keys),
                ]
            )

    md_metrics = [k for k in metric_keys if any(fnmatch.fnmatchcase(k, p) for p in markdown_metrics)]
    opt = next((j.optimized_metric for j in jobs if j.optimized_metric), None)
    best = _best(jobs, opt, direction)
    n_ok = sum(j.status == "ok" for j in jobs)
    lines = [f"# Sweep summary: {sweep_dir}", "", f"{len(jobs)} job(s), {n_ok} with results."]
    if common:
        lines += ["", "Common overrides: " + ", ".join(f"`{k}={v}`" for k, v in common.items())]
    if best is not None:
        lines += ["", f"Best ({direction} `{opt}`): job {best.num} ({_fmt(best.metrics[opt])}), `{best.job_dir.name}`"]
    header = ["job", "status", *varying, *md_metrics]
    rows = [
        [j.num, j.status, *(j.overrides.get(k, "") for k in varying), *(j.metrics.get(k) for k in md_metrics)]
        for j in jobs
    ]
    lines += ["", "## Jobs", "", _md_table(header, rows)]
    failed = [j for j in jobs if j.error]
    if failed:
        lines += ["", "## Errors", ""] + [f"- job {j.num} (`{j.job_dir.name}`): {j.error}" for j in failed]

    # In the jobs' own order (the config's methods, conditions and first operating point), not alphabetical.
    pauc = [v for j in jobs for k in j.metrics if (v := _split_pauc(k)) is not None]
    at = pauc_at or (pauc[0][2] if pauc else None)
    if at is not None:
        conditions: list[str] = []
        methods: list[str] = []
        for v in pauc:
            if v[2] == at:
                methods += [v[0]] if v[0] not in methods else []
                conditions += [v[1]] if v[1] not in conditions else []
        prows = []
        for j in jobs:
            for m in methods:
                vals = [j.metrics.get(f"{m}/{c}/{at}") for c in conditions]
                if any(v is not None for v in vals):
                    prows.append([j.num, *(j.overrides.get(k, "") for k in varying), m, *vals])
        if prows:
            lines += [
                "",
                f"## Normalised pAUC ({at}; lower is better)",
                "",
                _md_table(["job", *varying, "method", *conditions], prows),
            ]
    md_path = write_text(sweep_dir / f"{filename}.md", "\n".join(lines) + "\n")
    return {"csv": csv_path, "markdown": md_path}


def _sweep_dir(config: DictConfig) -> Path | None:
    try:
        return Path(str(config.hydra.sweep.dir))
    except Exception:  # noqa: BLE001 - the summary is a convenience; never let it fail a sweep
        return None


class SweepSummary(Callback):
    """Hydra callback writing the sweep tables (see the module docstring); a no-op outside multiruns.

    Args:
        filename: file stem of ``<sweep dir>/<filename>.csv`` and ``.md``.
        markdown_metrics: glob patterns of the metrics shown in the Markdown jobs table.
        pauc_at: operating point and limit of the Markdown pAUC table (``None``: the first reported).
    """

    def __init__(
        self, filename: str = "summary", markdown_metrics: Sequence[str] = ("val/*",), pauc_at: str | None = None
    ) -> None:
        self.filename = filename
        self.markdown_metrics = list(markdown_metrics)
        self.pauc_at = pauc_at

    def _write(self, config: DictConfig) -> dict[str, Path] | None:
        sweep_dir = _sweep_dir(config)
        if sweep_dir is None or not sweep_dir.is_dir():
            return None
        direction = OmegaConf.select(config, "hydra.sweeper.direction", default=None)
        if direction is not None and not isinstance(direction, str):
            direction = getattr(direction, "name", None) or str(direction)
        try:
            return write_summary(sweep_dir, None, self.filename, self.markdown_metrics, self.pauc_at, direction)
        except Exception as err:  # noqa: BLE001 - see _sweep_dir
            log.warning("sweep summary not written (%s: %s)", type(err).__name__, err)
            return None

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        from hydra.types import RunMode

        if OmegaConf.select(config, "hydra.mode") != RunMode.MULTIRUN:
            return
        out = OmegaConf.select(config, "hydra.runtime.output_dir")
        if out and Path(out).is_dir():
            status = getattr(getattr(job_return, "status", None), "name", "UNKNOWN")
            value = getattr(job_return, "_return_value", None)
            error = f"{type(value).__name__}: {value}" if isinstance(value, BaseException) else None
            write_json(Path(out) / STATUS_FILE, {"status": status, "error": error})
        self._write(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        paths = self._write(config)
        if paths:
            log.info("sweep summary: %s, %s", paths["markdown"], paths["csv"])
