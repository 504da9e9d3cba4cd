"""Runs started in the same second never share an output directory (:mod:`aikd.app.rundir`)."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from aikd.app.rundir import ClaimRunDir, claim_dir

REPO = Path(__file__).resolve().parent.parent


def test_claim_dir_takes_the_next_free_name_and_never_shares(tmp_path: Path) -> None:
    wanted = tmp_path / "runs" / "2026-12-03_16-45-25"
    assert claim_dir(wanted) == wanted and wanted.is_dir()
    assert claim_dir(wanted) == tmp_path / "runs" / "2026-12-03_16-45-25_2"
    with ThreadPoolExecutor(8) as pool:  # eight runs of the same second at once: eight directories
        claimed = list(pool.map(claim_dir, [wanted] * 8))
    assert len(set(claimed)) == 8 and all(p.is_dir() for p in claimed)
    assert sorted(p.name for p in claimed) == sorted(f"2026-12-03_16-45-25_{n}" for n in range(3, 11))


@pytest.mark.parametrize("mode", ["run", "sweep"])
def test_callback_moves_a_taken_directory_and_keeps_a_chosen_one(compose_cfg, tmp_path: Path, mode: str) -> None:
    cfg = compose_cfg(f"paths.log_dir={tmp_path}")
    assert any(cb._target_ == "aikd.app.rundir.ClaimRunDir" for cb in cfg.hydra.callbacks.values())
    wanted = Path(str(OmegaConf.select(cfg, f"hydra.{mode}.dir")))
    assert wanted.parent.parent == tmp_path / cfg.task_name
    wanted.mkdir(parents=True)  # another run of the same second holds it
    start = ClaimRunDir().on_run_start if mode == "run" else ClaimRunDir().on_multirun_start
    start(config=cfg)
    moved = Path(str(OmegaConf.select(cfg, f"hydra.{mode}.dir")))
    assert moved == wanted.with_name(wanted.name + "_2") and moved.is_dir()
    # a multirun's jobs recompose their configs from hydra.overrides.hydra: it names the claimed directory
    assert cfg.hydra.overrides.hydra[-1] == f"hydra.{mode}.dir='{moved}'"

    chosen = tmp_path / "resume-here"
    chosen.mkdir()
    cfg = compose_cfg(f"hydra.{mode}.dir={chosen}")
    start(config=cfg)  # named by the user (a resumed run): used as given, even though it exists
    assert Path(str(OmegaConf.select(cfg, f"hydra.{mode}.dir"))) == chosen


def test_a_run_whose_second_is_taken_writes_next_to_it(tmp_path: Path) -> None:
    """As a user runs it: every directory of the next half minute is taken, so train.py must write to `<time>_2`
    and leave the others untouched (the run then refuses its bad batch size at start-up, which keeps it short)."""
    runs = tmp_path / "logs" / "clash" / "runs"
    now = datetime.now()
    taken = [runs / (now + timedelta(seconds=s)).strftime("%Y-%m-%d_%H-%M-%S") for s in range(-1, 40)]
    for d in taken:
        d.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), f"paths.log_dir={tmp_path / 'logs'}", "task_name=clash",
         "data.batch_size=0"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode != 0 and "data.batch_size=0: must be a positive whole number" in proc.stderr
    assert all(not any(d.iterdir()) for d in taken)  # nothing written into another run's directory
    written = [d for d in runs.iterdir() if d.name.endswith("_2")]
    assert len(written) == 1 and (written[0] / ".hydra" / "config.yaml").is_file()
    assert f"this run writes to {written[0]}" in proc.stderr + proc.stdout
