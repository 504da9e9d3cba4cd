"""Lightning DataModule streaming aligned canvases from disk.

The DataModule only produces canvases (plus landmarks and the canvas transform). Cutting each model's crop
and misaligning it happens in the LightningModule's ``on_after_batch_transfer``, on the device, because that
is where the models' input geometries are known and where it is cheap.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from aikd.data.dataset import AlignedFaces, collate_faces
from aikd.data.index import FaceIndex, concat_indices
from aikd.data.sources import FaceSource
from aikd.geometry.align import Canvas

log = logging.getLogger(__name__)

__all__ = ["FaceDataModule", "EpochShuffleSampler", "DistributedEpochShuffleSampler", "usable_cpus", "resolve_workers"]


def usable_cpus() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one (containers, ``taskset``, SLURM
    restrict it), else ``os.cpu_count()``. This is what PyTorch's loader compares ``num_workers`` against."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no sched_getaffinity
        return max(1, os.cpu_count() or 1)


def resolve_workers(num_workers: int | str) -> int:
    """Loader worker count for ``data.num_workers``: ``"auto"`` is the usable cores, a number is capped at them.

    More workers than cores only adds processes competing for the same cores (and PyTorch warns about it once
    per loader), so a config written for a bigger machine (``num_workers: 8`` on 2 cores) is capped, with an INFO
    line saying so.
    """
    cores = usable_cpus()
    if isinstance(num_workers, str) and num_workers.strip().lower() == "auto":
        return cores
    try:
        workers = int(num_workers)
    except (TypeError, ValueError):
        raise ValueError(f"data.num_workers must be a number or 'auto', got {num_workers!r}") from None
    if workers < 0:
        raise ValueError(f"data.num_workers must be >= 0 or 'auto', got {workers}")
    if workers > cores:
        log.info("data.num_workers=%d capped at %d: the CPU cores this process can use", workers, cores)
        return cores
    return workers


class EpochShuffleSampler(Sampler[int]):
    """Random order that is a pure function of ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every epoch, and the stateful loader fast-forwards within an
    epoch on resume, so a resumed run visits exactly the samples the uninterrupted one would have.

    With ``tag_epoch=True`` it yields ``(epoch, position)`` pairs instead of positions: the epoch then travels with
    each index to whichever loader worker reads the face (:class:`~aikd.data.dataset.AlignedFaces` accepts both),
    so per-face random draws made there (:mod:`aikd.data.degrade`) can depend on the epoch without any state
    shared between processes.
    """

    def __init__(self, n: int, seed: int = 0, tag_epoch: bool = False) -> None:
        self.n = int(n)
        self.seed = int(seed)
        self.epoch = 0
        self.tag_epoch = bool(tag_epoch)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.n, generator=g).tolist()
        return iter([(self.epoch, i) for i in order] if self.tag_epoch else order)


class DistributedEpochShuffleSampler(DistributedSampler):
    """:class:`EpochShuffleSampler`'s order strided over DDP ranks: rank ``r`` of ``R`` takes positions
    ``r, r + R, ...``.

    With a per-process batch of ``B / R`` the ranks' k-th batches together are the single-process run's k-th batch
    of ``B`` faces, so a DDP run sees the same global batches as one process (Lightning's own wrapper would
    reshuffle the order with its own seed). Being a ``DistributedSampler``, Lightning leaves it in place. As
    ``DistributedSampler`` does, the order is padded with its first positions to a multiple of ``R``.
    """

    def __init__(self, n: int, seed: int, num_replicas: int, rank: int, tag_epoch: bool = False) -> None:
        super().__init__(range(int(n)), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.base = EpochShuffleSampler(n, seed, tag_epoch=tag_epoch)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self.base.set_epoch(epoch)

    def __iter__(self) -> Iterator[int]:
        order = list(self.base)
        while len(order) < self.total_size:
            order += order[: self.total_size - len(order)]
        return iter(order[self.rank : self.total_size : self.num_replicas])


class FaceDataModule(pl.LightningDataModule):
    """Train/val/test face sources as streaming loaders of canvases.

    Args:
        train: source of training faces (identity labels needed for teacher training).
        val: optional validation source (e.g. held-out identities).
        test: optional test source (evaluation); defaults to ``val``.
        canvas: the loose canvas faces are aligned onto.
        batch_size: training batch size (per process under DDP: the global batch is ``batch_size x devices``).
        eval_batch_size: batch size for validation/test/prediction (default: ``batch_size``).
        num_workers: loader worker processes (``0`` loads in the main process); ``"auto"`` = the usable CPU
            cores. More than there are usable cores is capped at that (see :func:`resolve_workers`).
        augment: optional albumentations transform (photometric only) for training canvases.
        degrade: optional :class:`~aikd.data.degrade.Degradation` (``conf/degrade``): photometric degradations of
            the distillation training canvases only (:meth:`train_dataloader`; teacher training, validation and
            evaluation see clean faces), reproducible per ``(seed, epoch, row)``.
        strict: raise on the first bad sample instead of skipping and counting it.
        missing_landmarks: ``"skip"``, ``"error"`` or ``"centre"`` (see :class:`AlignedFaces`).
        pin_memory: pin host memory (useful on GPU).
        seed: seed of the training shuffle (its own generator: the order does not depend on what else drew
            random numbers, and it is restored on resume).
        extra_train: more sources whose faces join the training split only (concatenated after ``train``, see
            :func:`aikd.data.index.concat_indices`), e.g. faces that widen the quality range the student sees but
            are no benchmark (``data=cfp_celeba``); validation and test stay ``val``/``test`` alone.
    """

    def __init__(
        self,
        train: FaceSource,
        val: FaceSource | None = None,
        test: FaceSource | None = None,
        canvas: Canvas | None = None,
        batch_size: int = 64,
        eval_batch_size: int | None = None,
        num_workers: int | str = 2,
        augment: Any | None = None,
        strict: bool = False,
        missing_landmarks: str = "skip",
        pin_memory: bool = False,
        seed: int = 0,
        extra_train: Sequence[FaceSource] | None = None,
        degrade: Any | None = None,
    ) -> None:
        super().__init__()
        self.sources = {"train": train, "val": val, "test": test if test is not None else val}
        self.extra_train = list(extra_train or [])
        self.canvas = canvas or Canvas()
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers = resolve_workers(num_workers)
        self.augment = augment
        self.degrade = degrade
        self.strict = strict
        self.missing_landmarks = missing_landmarks
        self.pin_memory = pin_memory
        self.seed = int(seed)
        self.indices: dict[str, FaceIndex] = {}

    def prepare_data(self) -> None:
        for source in {id(s): s for s in [*self.sources.values(), *self.extra_train] if s is not None}.values():
            source.prepare()

    def index(self, split: str, extra: bool = True) -> FaceIndex:
        """The :class:`FaceIndex` of ``split`` (``train``, ``val`` or ``test``), loaded on first use.

        ``extra=False`` gives the training split without :attr:`extra_train`: teachers train on the primary data
        only (unless their recipe says ``fit.extra_train: true``), because extra faces such as CelebA's, with one
        to eight images per identity, widen what the student sees but make poor classes for a margin head.
        """
        if split == "train" and self.extra_train and extra:
            if "train" not in self.indices:  # the primary split (loaded once) followed by the extra sources
                primary = self.index("train", extra=False)
                self.indices["train"] = concat_indices([primary, *(s.load() for s in self.extra_train)])
                log.info("train data with data.extra_train: %s", self.indices["train"].describe())
            return self.indices["train"]
        key = "train:primary" if split == "train" and self.extra_train else split
        if key not in self.indices:
            source = self.sources.get(split)
            if source is None:
                raise ValueError(f"no '{split}' source configured (set data.{split})")
            self.indices[key] = source.load()
            log.info("%s data: %s", key, self.indices[key].describe())
        return self.indices[key]

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self.index("train")
        if stage in (None, "fit", "validate") and self.sources["val"] is not None:
            self.index("val")
        if stage in (None, "test") and self.sources["test"] is not None:
            self.index("test")

    def dataset(self, split: str, augment: bool = False, degrade: bool = False, extra: bool = True) -> AlignedFaces:
        """The faces of ``split``; ``augment``: with :attr:`augment`; ``degrade``: with :attr:`degrade`; ``extra``:
        with :attr:`extra_train` (see :meth:`index`)."""
        return AlignedFaces(
            self.index(split, extra=extra),
            self.canvas,
            transform=self.augment if augment else None,
            strict=self.strict,
            missing_landmarks=self.missing_landmarks,
            degrade=self.degrade if degrade and self.degrades else None,
        )

    @property
    def degrades(self) -> bool:
        """Whether distillation training faces are degraded (a :attr:`degrade` that can change a face)."""
        return self.degrade is not None and bool(getattr(self.degrade, "active", True))

    def loader(
        self,
        dataset: AlignedFaces,
        batch_size: int,
        shuffle: bool = False,
        drop_last: bool = False,
        replicas: tuple[int, int] | None = None,
        tag_epoch: bool = False,
    ) -> DataLoader:
        """A DataLoader with aikd's collate (bad samples skipped and counted) and worker settings.

        It is torchdata's ``StatefulDataLoader``: Lightning stores its position (and the shuffling state) in
        checkpoints, so a run resumed mid-epoch sees exactly the batches the uninterrupted run would have seen.
        ``replicas=(world size, rank)`` of a DDP fit shards the shuffled order
        (:class:`DistributedEpochShuffleSampler`). ``tag_epoch`` (with ``shuffle``): indices carry the epoch
        (see :class:`EpochShuffleSampler`), for per-epoch degradations.
        """
        from torchdata.stateful_dataloader import StatefulDataLoader

        sampler: Sampler[int] | None = None
        if shuffle and replicas is not None and replicas[0] > 1:  # (world size, global rank) of a DDP fit
            sampler = DistributedEpochShuffleSampler(len(dataset), self.seed, replicas[0], replicas[1], tag_epoch)
        elif shuffle:
            sampler = EpochShuffleSampler(len(dataset), self.seed, tag_epoch=tag_epoch)
        return StatefulDataLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            drop_last=drop_last and len(dataset) >= batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=self.pin_memory,
            collate_fn=collate_faces,
        )

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer  # the fit this loader is for; under DDP shard its order (see the sampler)
        replicas = (trainer.world_size, trainer.global_rank) if trainer is not None else None
        degrade = self.degrades  # distillation only: teacher training builds its own loader, on clean faces
        return self.loader(
            self.dataset("train", augment=True, degrade=degrade),
            self.batch_size,
            shuffle=True,
            drop_last=True,
            replicas=replicas,
            tag_epoch=degrade,
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.sources["val"] is None:
            return []
        return self.loader(self.dataset("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader | list:
        if self.sources["test"] is None:
            return []
        return self.loader(self.dataset("test"), self.eval_batch_size)
