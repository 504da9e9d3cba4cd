"""`logger=wandb` offline: a tiny pipeline run leaves one offline wandb run holding the EDC plots and the exported
student as a model artifact (no account, no network)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict

import aikd.config  # noqa: F401  (resolvers)

CONF = Path(__file__).resolve().parent.parent / "conf"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_offline_wandb_run_has_plots_and_model_artifact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from aikd.app.pipeline import run

    wandb_dir = tmp_path / "wandb-runs"
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    # wandb's own state (staged artifact files, caches, settings) stays in the test's directory too
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    overrides = [
        "logger=wandb",
        "stages=[prepare,teacher,distill,evaluate,export]",
        "data.train.n_identities=8",
        "data.train.images_per_identity=4",
        "data.train.identities=[0,5]",
        "data.val.identities=[6,7]",
        "data.num_workers=0",
        "teacher.fit.epochs=1",
        "trainer.max_epochs=1",
        "evaluation.conditions=[none,jitter3]",
        "stage.export.formats=[safetensors]",
        f"paths.output_dir={tmp_path / 'out'}",
        f"paths.cache_dir={tmp_path / 'cache'}",
    ]
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    GlobalHydra.instance().clear()
    # as under train.py: Hydra's runtime config is set (the run's name, <data>-<teacher>, is read from it)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    results = run(cfg)

    import wandb

    assert wandb.run is None, "the pipeline closes its run (the next sweep job must not log into it)"
    wandb.teardown()  # the wandb service writes the run's record file completely when it shuts down (or at exit)
    runs = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"training, evaluation and export log into one run, got {runs}"
    files = runs[0] / "files"
    plots = sorted(p.name for p in (files / "media" / "images" / "evaluation").rglob("*.png"))
    assert any(p.startswith("aligned") for p in plots) and any(p.startswith("jitter3") for p in plots), plots
    # the run's record names the artifact and the exported files ...
    record = next(runs[0].glob("run-*.wandb")).read_bytes()
    exported = {Path(p).name for p in results["export"]["files"].values()}
    assert b"synthetic-demo-student" in record  # <task_name>-student; the default run is <data>-<teacher>
    assert all(name.encode() in record for name in exported)
    assert cfg.teacher.name.encode() in record  # the group
    # ... and wandb staged their bytes for `wandb sync`
    staged = {_sha(p) for p in (tmp_path / "wandb-data").rglob("*") if p.is_file()}
    assert {_sha(Path(p)) for p in results["export"]["files"].values()} <= staged
