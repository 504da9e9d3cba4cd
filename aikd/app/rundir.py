"""One output directory per run, even for runs started in the same second.

Hydra names a run's directory by the second it starts (``logs/<task>/runs/<time>``, ``conf/hydra/default.yaml``).
Two runs launched together - a shell loop with ``&``, two seeds side by side - get the *same* directory: both write
``.hydra/config.yaml``, checkpoints, ``results.json`` and the export into it, and the record of one run silently
describes the other. :class:`ClaimRunDir`, a Hydra callback registered in ``conf/hydra/default.yaml``, claims the
directory before Hydra writes anything: it creates it with an exclusive ``mkdir`` (atomic on local file systems), and
when another run holds it already, takes ``<time>_2``, ``<time>_3``... instead and logs which. The same holds for a
multirun's sweep directory.

A directory the user names (``hydra.run.dir=...``, as a resumed run does) is used as given: reusing it is the point.
"""

from __future__ import annotations

import logging
from itertools import count
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)

__all__ = ["ClaimRunDir", "claim_dir"]


def claim_dir(path: str | Path) -> Path:
    """Create ``path``, or the first free ``<path>_2``, ``<path>_3``... and return the one created.

    ``mkdir`` without ``exist_ok`` fails when the directory exists, also when another process created it a moment
    ago, so two processes never both claim the same directory.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for n in count(1):
        candidate = path if n == 1 else path.with_name(f"{path.name}_{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def _quoted(value: str) -> str:
    """A Hydra override value in single quotes (paths may hold characters the override grammar reserves)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ClaimRunDir(Callback):
    """Hydra callback: claim the run's (or the sweep's) directory so that concurrent runs never share one."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "run")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._claim(config, "sweep")

    @staticmethod
    def _claim(config: DictConfig, mode: str) -> None:
        key = f"hydra.{mode}.dir"
        chosen = [str(o) for o in OmegaConf.select(config, "hydra.overrides.hydra", default=[]) or []]
        if any(o.split("=", 1)[0].lstrip("+~") == key for o in chosen):
            return  # named by the user (e.g. to resume a run there): used as given
        wanted = Path(str(OmegaConf.select(config, key)))
        claimed = claim_dir(wanted)
        if claimed == wanted:
            return
        log.warning("%s is taken by another run started in the same second; this run writes to %s", wanted, claimed)
        with read_write(config.hydra), open_dict(config.hydra):
            config.hydra[mode].dir = str(claimed)
            # a multirun's jobs recompose their config from these overrides: they must name the claimed directory
            config.hydra.overrides.hydra.append(f"{key}={_quoted(str(claimed))}")
