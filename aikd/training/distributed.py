"""Teacher-score precomputation sharded over DDP processes (Lightning's predict loop).

On one process :func:`aikd.training.cache.teacher_score_cache` fills the cache in a plain loop. When distillation runs
on several processes (``trainer=ddp``, ``trainer=ddp_cpu``, SLURM tasks), the teacher pass over a large training set
(MS1MV2: 5.8 M faces) would otherwise run on one device while the others wait, so
:func:`distributed_teacher_score_caches` runs it as ``Trainer.predict`` with the run's own strategy and devices:

* Lightning shards the rows still to compute over the ranks (its unrepeated distributed sampler: every row once);
* each rank scores its rows with exactly the single-process computation (:func:`aikd.training.cache.teacher_scores` on
  :func:`aikd.training.cache.canvas_batch`; float32, whatever the trainer's precision, so a cache entry never depends on
  how it was filled); a frozen-backbone teacher's rows whose backbone features are already cached are scored
  before that, by its head alone (:func:`aikd.training.cache.fill_scores_from_features`), and never reach the ranks;
* :class:`RowCacheWriter` (a ``BasePredictionWriter``) stores them in the shared :class:`~aikd.training.cache.RowCache`:

  - ``"memmap"`` (one node): every rank writes its rows straight into the memory-mapped arrays. Rows are
    disjoint and the mapping is shared through the page cache, so there is nothing to merge;
  - ``"shards"`` (several nodes): memory maps are not coherent between machines on a network file system (a
    page written back by one node can overwrite rows another wrote), so each rank writes its rows to shard files
    and global rank 0 merges them into the arrays;

* a barrier at the end of the predict loop, after which every process reopens the entry and checks it.

Launch modes: with ``ddp_spawn`` (``trainer=ddp_cpu``; also what tests use) the calling process stays outside the
process group and gets control back when the workers are done; with ``ddp`` (``trainer=ddp`` on GPUs, SLURM) every
rank runs the pipeline and calls this function, and the first ``predict`` launches/joins the process group. The
rows to compute are decided before the group forms (no rank writes before every rank has joined), so all ranks
agree on them; an interrupted fill resumes from the ``done`` mask like the single-process one.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor

from aikd.data.index import FaceIndex
from aikd.geometry.align import Canvas
from aikd.training.cache import (
    RowCache,
    TeacherScoreCache,
    canvas_batch,
    features_root_for,
    fill_scores_from_features,
    head_only_scoring,
    open_feature_cache,
    open_teacher_score_cache,
    teacher_scores,
)

log = logging.getLogger(__name__)

__all__ = [
    "TeacherScorer",
    "RowCacheWriter",
    "trainer_world_size",
    "predict_trainer",
    "distributed_teacher_score_caches",
]

WRITE_MODES = ("auto", "memmap", "shards")

#: Trainer arguments the predict pass never takes from the run's trainer config: it has its own callbacks, no
#: logger or checkpoints, float32, and leaves BatchNorm layers alone (sync_batchnorm would replace the teacher's).
_PREDICT_OWN = {
    "_target_",
    "callbacks",
    "logger",
    "enable_checkpointing",
    "enable_model_summary",
    "sync_batchnorm",
    "precision",
}


class TeacherScorer(pl.LightningModule):
    """The frozen teacher as a predict-only LightningModule: ``predict_step`` returns the rows and their scores.

    The teacher is a submodule here only so that Lightning moves it to each rank's device; nothing is trained
    and no checkpoint is written.
    """

    def __init__(self, teacher: Any) -> None:
        super().__init__()
        self.teacher = teacher

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Tensor]:
        if len(batch["index"]) == 0:  # every sample of the batch was unreadable (skipped by the collate)
            return {"index": batch["index"]}
        values = teacher_scores(self.teacher, canvas_batch(batch, self.device))
        return {"index": batch["index"], **values}


class RowCacheWriter(BasePredictionWriter):
    """Stores ``predict_step`` outputs (``{"index": rows, field: values}``) in :class:`RowCache` entries.

    Args:
        caches: the entries to fill, one per predict dataloader (``dataloader_idx``); pickled by location into
            spawned workers, never copied.
        mode: ``"memmap"`` (write rows into the shared arrays) or ``"shards"`` (per-rank files merged by global
            rank 0); see the module docstring.
        flush_every_s: flush written rows to disk this often (an interrupted fill resumes from there).
        shard_rows: rows per shard file in ``"shards"`` mode (bounds each rank's memory).
    """

    def __init__(
        self,
        caches: RowCache | Sequence[RowCache],
        mode: str = "memmap",
        flush_every_s: float = 30.0,
        shard_rows: int = 65536,
    ) -> None:
        super().__init__(write_interval="batch")
        if mode not in ("memmap", "shards"):
            raise ValueError(f"RowCacheWriter mode must be 'memmap' or 'shards', got {mode!r}")
        self.caches = [caches] if isinstance(caches, RowCache) else list(caches)
        self.mode = mode
        self.flush_every_s = float(flush_every_s)
        self.shard_rows = int(shard_rows)
        self._buffers: dict[int, list[dict[str, np.ndarray]]] = {}
        self._n_shards = 0
        self._last_flush = time.monotonic()
        self.rows_written = 0

    @staticmethod
    def shard_dir(cache: RowCache) -> Path:
        """Where ranks put their shards of ``cache``: the same directory on every rank (ranks launched separately
        build their own writer). Shards left by an interrupted fill hold rows of this very entry (same teacher and
        data), so merging them too is correct."""
        return cache.directory / ".shards"

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        rows = prediction["index"]
        if len(rows) == 0:
            return
        values = {k: v for k, v in prediction.items() if k != "index"}
        self.rows_written += len(rows)
        if self.mode == "memmap":
            self.caches[dataloader_idx].write(rows, **values)
            if time.monotonic() - self._last_flush > self.flush_every_s:
                for cache in self.caches:
                    cache.flush()
                self._last_flush = time.monotonic()
            return
        item = {"index": rows.detach().cpu().numpy().astype(np.int64)}
        item.update({k: v.detach().float().cpu().numpy() for k, v in values.items()})
        buffer = self._buffers.setdefault(dataloader_idx, [])
        buffer.append(item)
        if sum(len(b["index"]) for b in buffer) >= self.shard_rows:
            self._write_shard(dataloader_idx, trainer.global_rank)

    def _write_shard(self, dataloader_idx: int, rank: int) -> None:
        from aikd.io import atomic_path

        buffer = self._buffers.pop(dataloader_idx, [])
        if not buffer:
            return
        directory = self.shard_dir(self.caches[dataloader_idx])
        directory.mkdir(parents=True, exist_ok=True)
        merged = {k: np.concatenate([b[k] for b in buffer]) for k in buffer[0]}
        path = directory / f"rank{rank:05d}-{self._n_shards:05d}.npz"
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, **merged)
        self._n_shards += 1

    def _merge_shards(self, cache: RowCache) -> int:
        directory = self.shard_dir(cache)
        n = 0
        for path in sorted(directory.glob("rank*.npz")):
            with np.load(path) as shard:
                values = {k: shard[k] for k in shard.files if k != "index"}
                cache.write(shard["index"], **values)
                n += len(shard["index"])
            path.unlink()
        cache.flush()
        with contextlib.suppress(OSError):
            directory.rmdir()
        return n

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Runs on every rank inside the process group: finish this rank's writes, wait for all ranks, merge.
        if self.mode == "memmap":
            for cache in self.caches:
                cache.flush()
            trainer.strategy.barrier("aikd_row_cache_written")
            return
        for idx in list(self._buffers):
            self._write_shard(idx, trainer.global_rank)
        trainer.strategy.barrier("aikd_row_cache_shards_written")
        if trainer.is_global_zero:
            for cache in self.caches:
                if self.shard_dir(cache).is_dir():
                    n = self._merge_shards(cache)
                    log.info("merged %d rows from the ranks' shards into %s", n, cache.directory)
        trainer.strategy.barrier("aikd_row_cache_merged")


def _trainer_kwargs(trainer_config: Mapping[str, Any]) -> dict[str, Any]:
    """Plain ``Trainer`` keyword arguments from a ``conf/trainer`` node or a dict (``_target_`` dropped)."""
    from omegaconf import DictConfig, OmegaConf

    cfg = (
        OmegaConf.to_container(trainer_config, resolve=True)
        if isinstance(trainer_config, DictConfig)
        else trainer_config
    )
    return {k: v for k, v in dict(cfg).items() if k not in _PREDICT_OWN}


def predict_trainer(trainer_config: Mapping[str, Any], callbacks: list[Any] | None = None) -> pl.Trainer:
    """A ``Trainer`` with the run's strategy, devices and nodes, set up for a float32 predict pass."""
    return pl.Trainer(
        **_trainer_kwargs(trainer_config),
        callbacks=list(callbacks or []),
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        precision="32-true",
        sync_batchnorm=False,
    )


def trainer_world_size(trainer_config: Mapping[str, Any]) -> int:
    """How many processes a trainer config runs on (``devices`` x ``num_nodes``, as Lightning resolves them:
    ``devices=-1`` / ``"auto"`` count the visible accelerators)."""
    return int(predict_trainer(trainer_config).world_size)


def _resolve_mode(mode: str, trainer_config: Mapping[str, Any]) -> str:
    if mode not in WRITE_MODES:
        raise ValueError(f"write mode must be one of {WRITE_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    return "shards" if int(_trainer_kwargs(trainer_config).get("num_nodes") or 1) > 1 else "memmap"


def distributed_teacher_score_caches(
    teacher: Any,
    indices: Mapping[str, FaceIndex],
    canvas: Canvas,
    root: str | Path,
    trainer_config: Mapping[str, Any],
    batch_size: int = 64,
    num_workers: int = 0,
    mode: str = "auto",
    callbacks: Sequence[Any] = (),
    features_root: str | Path | None = None,
    reuse_features: bool = True,
) -> dict[str, TeacherScoreCache]:
    """Open the teacher-score caches of ``teacher`` on several datasets (e.g. ``{"train": ..., "val": ...}``) and
    fill their missing rows on all DDP processes, in one predict pass (one process launch for all of them).

    Each entry (directory, key, contents) is the one :func:`aikd.training.cache.teacher_score_cache` would produce; only
    the computation is spread over the processes of ``trainer_config``.

    Args:
        teacher: the frozen teacher.
        indices: name -> faces.
        canvas: the canvas faces are aligned onto.
        root: the teacher-score cache root (``<paths.cache_dir>/teacher_scores``).
        trainer_config: the run's trainer settings (``cfg.trainer`` or a dict of ``Trainer`` arguments:
            ``accelerator``, ``devices``, ``strategy``, ``num_nodes``...).
        batch_size: images per batch and process.
        num_workers: loader worker processes per rank.
        mode: ``"auto"`` (``memmap`` on one node, ``shards`` on several), ``"memmap"`` or ``"shards"``.
        callbacks: extra Lightning callbacks for the predict pass (e.g. timing, as ``benchmarks/ddp_cpu.py``).
        features_root: the backbone-feature cache root (default: next to ``root``, see
            :func:`aikd.training.cache.features_root_for`).
        reuse_features: for a frozen-backbone teacher, score the rows whose backbone features are cached with its
            head alone (as :func:`aikd.training.cache.teacher_score_cache` does); ``False`` scores every row from
            images.

    Returns:
        name -> cache, reopened after the fill (so this process sees what the other ranks wrote).

    Raises:
        RuntimeError: rows that could be read were still missing after the fill.
    """
    from aikd.data.dataset import face_loader

    names = list(indices)
    caches: dict[str, TeacherScoreCache] = {}
    todo: dict[str, np.ndarray] = {}
    loaders = []
    head_only = reuse_features and head_only_scoring(teacher)
    for name in names:
        cache = open_teacher_score_cache(teacher, indices[name], canvas, root)
        caches[name] = cache
        if head_only:
            # Rows whose backbone features are already cached (e.g. by teacher training) need the head alone: done
            # here, on this process, in milliseconds; every rank computes the same values and then the same todo.
            # Features are not computed in the distributed pass: the rest is scored from images.
            froot = features_root_for(root) if features_root is None else features_root
            features = open_feature_cache(teacher, indices[name], canvas, froot, create=False)
            if features is not None:
                n = fill_scores_from_features(cache, teacher, features)
                log.info(
                    "teacher %s on %s: %d rows scored by the head on cached backbone features", teacher.name, name, n
                )
        loader = face_loader(indices[name], canvas, cache.todo(), batch_size=batch_size, num_workers=num_workers)
        rows = loader.dataset.rows  # rows with landmarks not cached yet
        if len(rows) == 0:
            continue
        todo[name] = rows
        loaders.append(loader)
    if not todo:
        return caches
    writer = RowCacheWriter([caches[n] for n in todo], mode=_resolve_mode(mode, trainer_config))
    trainer = predict_trainer(trainer_config, callbacks=[writer, *callbacks])
    for name, rows in todo.items():
        log.info(
            "teacher %s on %s: %d of %d rows to compute on %d processes (%s writes) in %s",
            teacher.name,
            name,
            len(rows),
            caches[name].n,
            trainer.world_size,
            writer.mode,
            caches[name].directory,
        )
    t0 = time.perf_counter()
    trainer.predict(TeacherScorer(teacher), dataloaders=loaders, return_predictions=False)
    # ddp: every rank gets here after the writer's barriers; ddp_spawn: the workers have exited. Reopen the entries
    # (fresh maps see every rank's rows, also on network file systems) and check them.
    for name, rows in todo.items():
        caches[name] = open_teacher_score_cache(teacher, indices[name], canvas, root)
        missing = len(caches[name].todo(rows))
        if missing == len(rows):
            raise RuntimeError(
                f"the distributed teacher pass wrote none of the {len(rows)} rows of {name} into "
                f"{caches[name].directory}; check the log of the worker processes"
            )
        if missing:
            log.warning(
                "teacher %s on %s: %d of %d rows were not computed (unreadable images are skipped, as in training)",
                teacher.name,
                name,
                missing,
                len(rows),
            )
    log.info(
        "teacher %s: %d rows in %.1f s on %d processes",
        teacher.name,
        sum(len(r) for r in todo.values()),
        time.perf_counter() - t0,
        trainer.world_size,
    )
    return caches
