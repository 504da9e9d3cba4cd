"""Sweeps: the summary tables of a multirun (aikd.app.sweep), and `python train.py -m ...` end to end."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from aikd.app.sweep import collect_jobs, write_summary

ROOT = Path(__file__).resolve().parent.parent

# Tiny demo overrides: 8 generated identities x 4 images, 1 epoch of teacher training and of distillation.
TINY = [
    "data.train.n_identities=8",
    "data.train.images_per_identity=4",
    "data.train.identities=[0,5]",
    "data.val.identities=[6,7]",
    "data.num_workers=0",
    "trainer.max_epochs=1",
    "teacher.fit.epochs=1",
]


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict[str, float] | None, status: str | None = None):
    d = sweep / f"{num}_{','.join(overrides)}"
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(overrides), d / ".hydra" / "overrides.yaml")
    OmegaConf.save(OmegaConf.create({"hydra": {"job": {"num": num}}}), d / ".hydra" / "hydra.yaml")
    if metrics is not None:
        results = {
            "metrics": metrics,
            "timings_s": {"distill": 1.5, "evaluate": 0.5},
            "config": {"optimized_metric": "val/spearman_misaligned"},
        }
        (d / "results.json").write_text(json.dumps(results))
    if status is not None:
        (d / "job_status.json").write_text(json.dumps({"status": status, "error": "ValueError: boom"}))
    return d


def test_summary_tables_from_job_directories(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    pauc = "start_err=0.10/pauc0.2"
    _job(
        sweep,
        1,
        ["misalign=affine", "trainer.max_epochs=1"],
        {"val/spearman_misaligned": 0.5, f"student/aligned/{pauc}": 0.3, f"student/jitter3/{pauc}": 0.4},
    )
    _job(
        sweep,
        0,
        ["misalign=jitter3", "trainer.max_epochs=1"],
        {"val/spearman_misaligned": 0.7, f"student/aligned/{pauc}": 0.2, f"student/jitter3/{pauc}": 0.25},
    )
    _job(sweep, 2, ["misalign=mixed", "trainer.max_epochs=1"], None, status="FAILED")

    jobs = collect_jobs(sweep)
    assert [j.num for j in jobs] == [0, 1, 2]
    assert [j.status for j in jobs] == ["ok", "ok", "failed"]
    assert jobs[0].wall_s == 2.0 and jobs[2].error == "ValueError: boom"

    paths = write_summary(sweep, direction="maximize")
    with open(paths["csv"], newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["misalign"] for r in rows] == ["jitter3", "affine", "mixed"]
    assert float(rows[1][f"student/jitter3/{pauc}"]) == 0.4 and rows[2]["val/spearman_misaligned"] == ""
    md = paths["markdown"].read_text()
    assert "Common overrides: `trainer.max_epochs=1`" in md  # constant overrides are not columns
    assert "| job | status | misalign | val/spearman_misaligned |" in md
    assert "Best (maximize `val/spearman_misaligned`): job 0 (0.7)" in md
    assert f"## Normalised pAUC ({pauc}; lower is better)" in md
    assert "| 1 | affine | student | 0.3 | 0.4 |" in md  # rows job x method, columns conditions in reported order
    assert "job 2" in md and "ValueError: boom" in md

    assert "Best (minimize" in write_summary(sweep, direction="minimize")["markdown"].read_text()
    assert "job 1 (0.5)" in paths["markdown"].read_text()


def test_collect_jobs_needs_an_existing_directory(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_jobs(tmp_path / "nope")


def test_multirun_end_to_end_with_shared_cache_and_summary(tmp_path: Path) -> None:
    """`python train.py -m misalign=jitter3,affine ...`: two job directories named by their overrides, one teacher
    and one teacher-score entry per split shared by both jobs, and the summary in the sweep directory."""
    env = {**os.environ, "AIKD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "-m",
        "misalign=jitter3,affine",
        *TINY,
        "stages=[prepare,teacher,distill,evaluate]",
        "evaluation.conditions=[none,jitter3]",
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    sweep = tmp_path / "sweep"
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "results.json").is_file())
    assert (
        len(jobs) == 2 and jobs[0].startswith("0_") and "misalign=jitter3" in jobs[0] and "misalign=affine" in jobs[1]
    )
    # shared: one trained teacher, one score entry per split (train, val), computed by the first job only
    assert len(list((tmp_path / "cache" / "teachers").glob("*.safetensors"))) == 1
    assert len(list((tmp_path / "cache" / "teacher_scores").iterdir())) == 2
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["misalign"] for r in rows] == ["jitter3", "affine"] and all(r["status"] == "ok" for r in rows)
    assert all(r["val/spearman_misaligned"] != "" for r in rows)
    assert any(k.startswith("student/jitter3/") for k in rows[0])
    md = (sweep / "summary.md").read_text()
    assert "| job | status | misalign |" in md and "## Normalised pAUC" in md


def test_optuna_search_end_to_end(tmp_path: Path) -> None:
    """`hparams_search=optuna` with 2 trials: the metric reaches the sweeper, which writes its best parameters."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e .[sweep]")
    env = {**os.environ, "AIKD_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}
    cmd = [
        sys.executable,
        str(ROOT / "train.py"),
        "hparams_search=optuna",
        "hydra.sweeper.n_trials=2",
        *TINY,
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = OmegaConf.load(tmp_path / "sweep" / "optimization_results.yaml")
    assert set(best.best_params) == {"model.optimizer.lr", "model.embedding_weight", "misalign"}
    with open(tmp_path / "sweep" / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert max(float(r["val/spearman_misaligned"]) for r in rows) == pytest.approx(float(best.best_value))
