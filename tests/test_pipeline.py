"""The pipeline as `python train.py` runs it, composed from the real config: a killed run resumes."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

import aikd.config  # noqa: F401  (resolvers)
from aikd.app.pipeline import run

CONF = Path(__file__).resolve().parent.parent / "conf"


def _cfg(tmp_path: Path, epochs: int, *extra: str):
    overrides = [
        "stages=[prepare,teacher,distill]",
        "data.train.n_identities=8",
        "data.train.images_per_identity=4",
        "data.train.identities=[0,5]",
        "data.val.identities=[6,7]",
        "data.num_workers=0",
        "data.batch_size=8",
        "teacher.fit.epochs=1",
        f"trainer.max_epochs={epochs}",
        f"paths.output_dir={tmp_path / 'out'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
        *extra,
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    GlobalHydra.instance().clear()
    return cfg


def test_rerun_in_the_same_directory_resumes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Hydra hands dict arguments over as DictConfig; none may reach the checkpoint, or the safe
    (`weights_only=True`) load that Lightning does on resume refuses the file."""
    first = run(_cfg(tmp_path, 1, "logger=csv"))
    steps = first["distill"]["global_step"]
    last = tmp_path / "out" / "checkpoints" / "last.ckpt"
    assert steps > 0 and last.is_file()
    ckpt = torch.load(last, map_location="cpu", weights_only=True)  # loadable safely
    assert ckpt["global_step"] == steps and not any(k.startswith("teacher") for k in ckpt["state_dict"])

    with caplog.at_level(logging.INFO, logger="aikd"):
        second = run(_cfg(tmp_path, 2, "logger=csv"))  # the same directory, one more epoch
    assert any("resuming from" in r.getMessage() for r in caplog.records)
    assert second["distill"]["global_step"] == 2 * steps  # continued, not restarted


def test_runs_without_a_logger(tmp_path: Path) -> None:
    """`logger=none` with the default callbacks (which include a learning-rate monitor, needing a logger)."""
    results = run(_cfg(tmp_path, 1, "logger=none", "+trainer.max_steps=2"))
    assert results["distill"]["global_step"] == 2
    assert not (tmp_path / "out" / "csv").exists()


def test_every_cache_of_a_run_lives_under_paths_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`paths.cache_dir` (A) is the one cache root of a run, even when `$AIKD_CACHE` (B) says otherwise: the teacher,
    its training-set scores (calibration), the distillation's teacher scores, the generated faces and anything a
    stage asks `aikd.io.cache_dir` for (landmarks, converted weights) land under A, nothing under B."""
    from aikd import io
    from aikd.app.pipeline import STAGES

    env_root = tmp_path / "B"
    monkeypatch.setenv("AIKD_CACHE", str(env_root))
    seen: dict[str, Path] = {}
    # a stand-in for the caches that configured objects reach on their own (landmark detection, weight conversion)
    monkeypatch.setitem(STAGES, "probe_cache", lambda ctx: seen.setdefault("probe", io.cache_dir("probe")))
    run(_cfg(tmp_path, 1, "logger=none", "+trainer.max_steps=1", "stages=[prepare,teacher,distill,probe_cache]"))

    run_root = tmp_path / "cache"  # A: paths.cache_dir in _cfg
    assert seen["probe"] == run_root / "probe"
    assert list((run_root / "teachers").glob("*.safetensors"))
    assert any((run_root / "teacher_scores").iterdir())
    assert any((run_root / "synthetic").iterdir())
    assert not env_root.exists() or not any(env_root.rglob("*")), sorted(env_root.rglob("*"))
    assert io.cache_root() == env_root  # the run's root ends with the run
