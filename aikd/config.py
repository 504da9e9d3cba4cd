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

__all__ = [
    "conf_dir",
    "project_root",
    "list_options",
    "load_option",
    "stage_settings",
    "register_resolvers",
    "to_plain",
]


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
    """Option names of a config group (file stems in ``conf/<group>/``; files in its sub-folders, such as the
    shared bases in ``conf/data/base/``, are not options)."""
    d = conf_dir() / group
    if not d.is_dir():
        raise FileNotFoundError(f"no config group '{group}' in {conf_dir()}")
    return sorted(p.stem for p in d.glob("*.yaml"))


def load_option(group: str, name: str) -> DictConfig:
    """Load ``conf/<group>/<name>.yaml`` with its own ``defaults`` list resolved as Hydra does within a group.

    Understood entries (what the project's options use): ``_self_`` (where the option's own content merges; last
    when absent), another option of the group (``- cfp``), a file in a sub-folder of the group, which is how
    options share a base without the base becoming an option (``- base/datamodule@_here_``), and a sub-group
    choice (``- optimizer: adamw``). A package after ``@`` places the loaded content: ``_here_`` at the option's
    root, anything else under that dotted key; without one a sub-folder's file lands under the sub-folder's name.

    Args:
        group: the config group, a folder under ``conf/`` (``data``, or ``data/base`` for a sub-folder).
        name: the option's file stem.

    Returns:
        The option's content, ``defaults`` merged in.

    Raises:
        FileNotFoundError: no such option (the message lists the group's options).
        ValueError: a ``defaults`` entry of a form this loader does not handle (e.g. a ``_global_`` package).
    """
    path = conf_dir() / group / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no option '{name}' in config group '{group}' ({path}); known: {list_options(group)}")
    own = OmegaConf.load(path)
    defaults = own.pop("defaults", None) if isinstance(own, DictConfig) else None
    if not defaults:
        return own
    entries = list(defaults)
    if "_self_" not in entries:
        entries.append("_self_")
    out = OmegaConf.create()
    for entry in entries:
        if entry == "_self_":
            out = OmegaConf.merge(out, own)
            continue
        loaded = _load_default(group, entry, path)
        if loaded is not None:
            out = OmegaConf.merge(out, loaded)
    return out


def _load_default(group: str, entry: Any, source: Path) -> DictConfig | None:
    """One ``defaults`` entry of an option in ``group``, placed at its package (``None``: nothing chosen)."""
    if isinstance(entry, str):
        target, _, package = entry.partition("@")
        sub, _, option = target.strip().rpartition("/")
        sub_group = _join_group(group, sub)
        default_package = sub.strip("/").replace("/", ".") if sub and not sub.startswith("/") else ""
    elif isinstance(entry, DictConfig) and len(entry) == 1:
        ((key, option),) = entry.items()
        if option is None:
            return None
        key = str(key).removeprefix("optional ").strip()
        if key.startswith("override "):
            raise ValueError(f"{source}: '{key}' entries belong in experiment files (global package), not in options")
        sub, _, package = key.partition("@")
        sub_group = _join_group(group, sub)
        default_package = "" if sub.startswith("/") else sub.replace("/", ".")
        option = str(option)
    else:
        raise ValueError(f"{source}: defaults entry {entry!r} is not understood (expected a name or 'group: option')")
    package = package.strip() or default_package
    if package.startswith("_global_"):
        raise ValueError(f"{source}: defaults entry {entry!r}: a _global_ package cannot be loaded as a group option")
    content = load_option(sub_group, option)
    if package in ("", "_here_"):
        return content
    placed = OmegaConf.create()
    OmegaConf.update(placed, package, content, force_add=True)
    return placed


def _join_group(group: str, sub: str) -> str:
    """The group holding ``sub`` (a folder relative to ``group``, or absolute below ``conf/`` with a leading ``/``)."""
    if sub.startswith("/"):
        return sub.strip("/")
    return f"{group}/{sub}" if sub else group


def stage_settings(cfg: DictConfig, name: str) -> DictConfig:
    """The settings of one pipeline stage, ``cfg.stage.<name>`` (empty where the config has none)."""
    node = (cfg.get("stage") or {}).get(name)
    return node if isinstance(node, DictConfig) else OmegaConf.create()


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
