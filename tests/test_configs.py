"""The Hydra config tree composes: sweep settings, launcher presets (SLURM, joblib) and the Optuna search - composed
with Hydra's compose API (``return_hydra_config=True`` for the ``hydra`` node), never launched."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

import aikd.config  # noqa: F401  (resolvers)

CONF = Path(__file__).resolve().parent.parent / "conf"


@pytest.fixture
def compose_train() -> Iterator[Callable[..., DictConfig]]:
    def _compose(overrides: list[str] | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=list(overrides or []), return_hydra_config=True)

    yield _compose
    GlobalHydra.instance().clear()


def test_sweep_directories_and_summary_callback(compose_train: Callable[..., DictConfig]) -> None:
    cfg = compose_train()
    sweep = OmegaConf.to_container(cfg.hydra.sweep, resolve=False)
    assert sweep["subdir"] == "${hydra.job.num}_${hydra.job.override_dirname}"
    # path-valued keys would nest directories; the seed and epochs do not change what a job is
    excluded = set(cfg.hydra.job.config.override_dirname.exclude_keys)
    assert {"seed", "paths.data_dir", "paths.cache_dir", "paths.log_dir"} <= excluded
    cb = cfg.hydra.callbacks.sweep_summary
    assert cb._target_ == "aikd.app.sweep.SweepSummary"
    assert type(instantiate(cb)).__name__ == "SweepSummary"


@pytest.mark.parametrize("name", ["slurm", "submitit_slurm"])
def test_slurm_launcher_composes(compose_train: Callable[..., DictConfig], name: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install -e .[sweep]")
    cfg = compose_train(
        [f"hydra/launcher={name}", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4", "trainer=ddp"]
    )
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert get_class(launcher._target_).__name__ == "SlurmLauncher"  # the plugin is installed
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 4
    if name == "slurm":  # aikd's preset: one DDP task per GPU, a day's worth of defaults
        assert launcher.tasks_per_node == 4
        assert launcher.timeout_min == 720 and launcher.cpus_per_task == 8 and launcher.mem_gb == 64
        assert launcher.max_num_timeout > 0  # requeued jobs resume from last.ckpt
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm is True


@pytest.mark.parametrize("name", ["parallel", "joblib"])
def test_joblib_launcher_composes(compose_train: Callable[..., DictConfig], name: str) -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher", reason="pip install -e .[sweep]")
    cfg = compose_train([f"hydra/launcher={name}"])
    assert cfg.hydra.launcher._target_ == "hydra_plugins.hydra_joblib_launcher.joblib_launcher.JoblibLauncher"
    assert get_class(cfg.hydra.launcher._target_).__name__ == "JoblibLauncher"
    assert cfg.hydra.launcher.n_jobs == (2 if name == "parallel" else -1)


def test_optuna_search_composes(compose_train: Callable[..., DictConfig]) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e .[sweep]")
    from hydra_plugins.hydra_optuna_sweeper._impl import create_params_from_overrides
    from optuna.distributions import CategoricalDistribution, LogUniformDistribution, UniformDistribution
    from optuna.samplers import TPESampler

    from aikd.config import list_options

    cfg = compose_train(["hparams_search=optuna"])
    assert cfg.hydra.mode == RunMode.MULTIRUN
    assert cfg.optimized_metric == "val/spearman_misaligned" and "distill" in cfg.stages
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize"
    assert isinstance(instantiate(sweeper.sampler), TPESampler) and sweeper.sampler.seed == cfg.seed
    # the search space parses with the sweeper's own parser, and names keys and options that exist
    space, fixed = create_params_from_overrides([f"{k}={v}" for k, v in sweeper.params.items()])
    assert not fixed
    lr = space["model.optimizer.lr"]
    assert isinstance(lr, LogUniformDistribution) and (lr.low, lr.high) == (1e-4, 1e-2)
    assert isinstance(space["model.embedding_weight"], UniformDistribution)
    assert isinstance(space["misalign"], CategoricalDistribution)
    assert set(space["misalign"].choices) <= set(list_options("misalign"))
    for key in ("model.optimizer.lr", "model.embedding_weight"):
        assert OmegaConf.select(cfg, key) is not None, f"{key} is not a key of the composed config"


def test_optuna_trial_overrides_compose(compose_train: Callable[..., DictConfig]) -> None:
    """What a trial runs: the sampled values as overrides on top of the search preset."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install -e .[sweep]")
    cfg = compose_train(
        ["hparams_search=optuna", "model.optimizer.lr=0.0005", "model.embedding_weight=0.3", "misalign=affine"]
    )
    assert cfg.model.optimizer.lr == 0.0005 and cfg.model.embedding_weight == 0.3
    assert cfg.misalign._target_ == "aikd.geometry.misalign.RandomAffine"


def test_wandb_logger_preset(compose_train: Callable[..., DictConfig], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_DIR", raising=False)
    cfg = compose_train(["logger=wandb", "paths.output_dir=/tmp/out"])
    w = cfg.logger.wandb
    assert w.offline is True and w.save_dir == "/tmp/out"
    assert w.group == cfg.teacher.name and w.name == cfg.task_name  # not a sweep job: teacher / task
    assert list(w.tags) == list(cfg.tags)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_DIR", "/tmp/wandb")
    assert w.offline is False and w.save_dir == "/tmp/wandb"  # resolved when read: the environment is respected
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert w.offline is False  # left to wandb, which reads WANDB_MODE=disabled itself


@pytest.mark.parametrize(("option", "expected"), [("csv", {"CSVLogger"}), ("many", {"CSVLogger", "TensorBoardLogger"})])
def test_fallback_loggers_instantiate(
    compose_train: Callable[..., DictConfig], tmp_path: Path, option: str, expected: set[str]
) -> None:
    cfg = compose_train([f"logger={option}", f"paths.output_dir={tmp_path}"])
    loggers = [instantiate(c) for c in cfg.logger.values()]
    assert {type(lg).__name__ for lg in loggers} == expected
    assert all(str(lg.save_dir).startswith(str(tmp_path)) for lg in loggers)
