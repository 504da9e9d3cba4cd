"""Hydra helpers: locating the config tree, loading a group's option outside the defaults list, resolvers.

Stages sometimes need several options of one group at once (evaluation runs every ``misalign`` preset; the
alignment preview shows them all). :func:`load_option` reads them from the same config tree the run was
composed from, so a user's own preset file in ``conf/misalign/`` is picked up like the built-in ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

__all__ = ["conf_dir", "project_root", "list_options", "load_option", "register_resolvers", "to_plain"]


def to_plain(x: Any) -> Any:
    """``x`` with every OmegaConf container in it (at any depth) turned into plain dicts and lists.

    Why: Hydra's ``instantiate`` hands dict arguments over as ``DictConfig``; anything that ends up in a checkpoint
    (Lightning hyper-parameters, teacher configs) must be plain, or ``torch.load(weights_only=True)`` refuses the
    file and a run cannot resume.
    """
    if isinstance(x, (DictConfig, ListConfig)):
        return OmegaConf.to_container(x, resolve=True)
    if isinstance(x, dict):
        return {k: to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_plain(v) for v in x)
    return x


def conf_dir() -> Path:
    """The directory holding the config groups, as an absolute path.

    In order: the running Hydra app's primary config source; ``$PROJECT_ROOT/conf`` (``train.py`` sets it to the
    checkout); ``aikd/conf`` inside an installed (non-editable) package; ``conf/`` beside the ``aikd`` package in a
    checkout or editable install. Always absolute, because Hydra reads a relative ``config_path`` relative to the
    calling module, not the working directory (``aikd evaluate`` run from the repository root once looked for a
    module ``aikd.conf``).
    """
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            for src in HydraConfig.get().runtime.config_sources:
                if src.provider == "main" and src.schema == "file":
                    return Path(src.path).resolve()
    except (ImportError, ValueError):  # pragma: no cover - hydra always installed
        pass
    package = Path(__file__).resolve().parent
    candidates = [package / "conf", package.parent / "conf"]
    if os.environ.get("PROJECT_ROOT"):
        candidates.insert(0, Path(os.environ["PROJECT_ROOT"]).expanduser() / "conf")
    for c in candidates:
        if (c / "train.yaml").is_file():
            return c.resolve()
    raise FileNotFoundError(
        f"cannot find aikd's config directory (looked for train.yaml in {[str(c) for c in candidates]}): reinstall "
        "aikd (pip install aikd, or pip install -e . in a checkout), or set PROJECT_ROOT to the checkout"
    )


def project_root() -> Path | None:
    """The checkout holding ``conf/`` and ``train.py``, or ``None`` for an installed package (runs then write their
    ``logs/`` under the working directory)."""
    root = conf_dir().parent
    return root if (root / "train.py").is_file() else None


def list_options(group: str) -> list[str]:
    """Option names of a config group (file stems in ``conf/<group>/``)."""
    d = conf_dir() / group
    if not d.is_dir():
        raise FileNotFoundError(f"no config group '{group}' in {conf_dir()}")
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_option(group: str, name: str) -> DictConfig:
    """Load ``conf/<group>/<name>.yaml`` (with its own ``defaults`` list resolved within the group)."""
    path = conf_dir() / group / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no option '{name}' in config group '{group}' ({path}); known: {list_options(group)}")
    cfg = OmegaConf.load(path)
    defaults = cfg.pop("defaults", None) if isinstance(cfg, DictConfig) else None
    if defaults:
        base = OmegaConf.create()
        for d in defaults:
            if isinstance(d, str) and d != "_self_":
                base = OmegaConf.merge(base, load_option(group, d))
        cfg = OmegaConf.merge(base, cfg)
    return cfg


def _wandb_offline() -> bool:
    """wandb runs offline (no account needed) unless ``WANDB_MODE`` asks for something else: ``online``/``run``
    stream to the server, ``disabled`` turns wandb off; both are then left to wandb, which reads the variable."""
    return os.environ.get("WANDB_MODE", "offline").lower() not in ("online", "run", "disabled")


def _sweep_job() -> Any:
    """Hydra's ``hydra.job`` node when running as a multirun (sweep) job, else ``None``."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return HydraConfig.get()
    except (ImportError, ValueError):  # pragma: no cover - hydra always installed
        pass
    return None


def _wandb_group(teacher: str | None = None) -> str:
    """wandb group: the teacher's name, plus the sweep (its directory's name) for multirun jobs, so that a sweep's
    jobs group together and single runs group by teacher."""
    group = str(teacher or "teacher")
    hc = _sweep_job()
    if hc is not None:
        group += "-sweep-" + Path(str(hc.runtime.output_dir)).parent.name
    return group


def _wandb_name(task: str | None = None) -> str:
    """wandb run name: the task name, plus the job number and overrides for multirun jobs (wandb's limit: 128)."""
    name = str(task or "aikd")
    hc = _sweep_job()
    if hc is not None:
        name += f"-{hc.job.num}" + (f"-{hc.job.override_dirname}" if hc.job.override_dirname else "")
    return name[:128]


def _run_name() -> str:
    """Default ``task_name``: ``<data>-<teacher>`` from the run's config-group choices (the demo:
    ``synthetic-demo``), so runs on other data or teachers do not land under the demo's name; ``train`` where
    no Hydra app is running (e.g. while a sweeper composes its own settings)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            choices = HydraConfig.get().runtime.choices
            return f"{choices.get('data') or 'data'}-{choices.get('teacher') or 'noteacher'}"
    except (ImportError, ValueError):  # pragma: no cover - hydra always installed
        pass
    return "train"


def register_resolvers() -> None:
    """Register aikd's OmegaConf resolvers (idempotent)."""
    for name, fn in (
        ("aikd_wandb_offline", _wandb_offline),
        ("aikd_wandb_group", _wandb_group),
        ("aikd_wandb_name", _wandb_name),
        ("aikd_run_name", _run_name),
    ):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)


register_resolvers()
