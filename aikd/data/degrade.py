"""Photometric degradations of training faces: a realistic spread of quality for distillation (``conf/degrade``).

A student trained only on clean, well-lit, sharp faces never sees the faces a quality score exists for: blurred,
down-scaled, noisy, JPEG-compressed or partly occluded ones. :class:`Degradation` degrades a share of the training
faces with an albumentations pipeline (``conf/degrade/realistic.yaml``), and the teacher then scores the degraded,
properly aligned face, so the student learns what the teacher says about low-quality faces too.

Where it acts: on the loose aligned *canvas* of a training face (:class:`~aikd.data.dataset.AlignedFaces`), before
the teacher's aligned crop and the student's misaligned crop are both cut from it on the device. Teacher and
student therefore see the same degraded face; only the crop differs. Only the distillation training loader
degrades (:meth:`~aikd.data.datamodule.FaceDataModule.train_dataloader`); validation, evaluation, teacher training
and the teacher-score cache see clean faces. Since cached teacher scores are scores of clean faces, a degrading run
needs ``stage.distill.teacher_mode=online`` (start-up validation refuses the cache).

Cached teacher scores: with ``variants=V`` each face has only ``V`` degraded versions (epoch ``e`` uses version
``e mod V``), so the teacher's scores of all of them can be computed once, before training, and stored in a cache
keyed by the degradation (:class:`~aikd.training.cache.DegradedTeacherScores`); ``stage.distill.teacher_mode=cache``
then works with degraded faces, at the cost of ``V x p`` teacher passes per face instead of one per face and epoch.
With ``variants=None`` (the default) every epoch draws afresh and only the online teacher can score the faces.

Reproducibility: each face's degradation is a pure function of ``(seed, epoch, row)`` (the row of the face in the
data index; the epoch comes with the index from the training sampler,
:class:`~aikd.data.datamodule.EpochShuffleSampler` with ``tag_epoch=True``). It does not depend on the number of
loader workers, on which worker loads the face, on the batch order or on DDP ranks, and a run resumed mid-epoch
degrades the remaining faces exactly as the uninterrupted run would have. A face is degraded differently in every
epoch.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

__all__ = ["Degradation", "seed_transforms"]


def _walk(transform: Any) -> Iterator[Any]:
    """Every node of an albumentations pipeline, parents before their children."""
    yield transform
    for child in getattr(transform, "transforms", None) or []:
        yield from _walk(child)


def seed_transforms(transform: Any, seed: np.random.SeedSequence) -> None:
    """Give every node of an albumentations pipeline its own random state drawn from ``seed``.

    ``Compose.set_random_seed`` hands the *same* seed to every child, which makes their random draws identical:
    each transform's "apply with probability p" test would then read the same first uniform number, so the
    transforms of one pipeline would fire all together or not at all. Seeding each node from its own child of a
    ``SeedSequence`` keeps them independent. Parents are seeded first (a ``Compose`` propagates its seed down), so
    each child's own seed is the one that stays.
    """
    nodes = [t for t in _walk(transform) if hasattr(t, "set_random_seed")]
    for node, child in zip(nodes, seed.spawn(len(nodes))):
        node.set_random_seed(int(child.generate_state(1, np.uint32)[0]))


class Degradation:
    """Degrade a share ``p`` of the faces with ``transform``, reproducibly per ``(seed, epoch, row)``.

    Args:
        transform: an albumentations-style callable ``transform(image=HWC uint8) -> {"image": HWC uint8}``,
            photometric only (the crop geometry is decided later, from the landmarks); ``None``: no degradation.
            Its nodes are reseeded for every face (see :func:`seed_transforms`), so their own seeds do not matter.
        p: probability that a face is degraded at all (the rest stay bit-identical clean faces); inside the
            pipeline each transform has its own probability, so degraded faces get different mixes.
        seed: base seed (the run's ``seed``).
        variants: number of distinct degraded versions of each face (epoch ``e`` draws version ``e mod variants``),
            which makes the teacher's scores cacheable; ``None``: a new draw every epoch (online teacher only).

    Call it as ``degradation(image, row, epoch)`` on an ``H x W x 3`` uint8 canvas; it returns a new array of the
    same shape and dtype, or ``image`` itself when the face is not degraded.
    """

    def __init__(
        self,
        transform: Callable[..., dict[str, Any]] | None = None,
        p: float = 0.5,
        seed: int = 0,
        variants: int | None = None,
    ) -> None:
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"degrade.p must be in [0, 1] (the share of training faces degraded), got {p}")
        if variants is not None and int(variants) < 1:
            raise ValueError(
                f"degrade.variants must be a positive number of degraded versions per face (or null for a new draw "
                f"every epoch), got {variants}"
            )
        self.transform = transform
        self.p = float(p)
        self.seed = int(seed)
        self.variants = None if variants is None else int(variants)

    @property
    def active(self) -> bool:
        """Whether any face can change (``p > 0`` and a pipeline to apply)."""
        return self.p > 0 and self.transform is not None

    def variant(self, epoch: int) -> int:
        """The version of the faces that ``epoch`` sees (``epoch mod variants``; the epoch itself without variants)."""
        return int(epoch) % self.variants if self.variants else int(epoch)

    def _draws(self, row: int, epoch: int) -> tuple[bool, np.random.SeedSequence]:
        seq = np.random.SeedSequence([self.seed & 0xFFFFFFFF, self.variant(epoch), int(row)])
        draw, pipeline = seq.spawn(2)
        return bool(np.random.default_rng(draw).random() < self.p), pipeline

    def applies(self, row: int, epoch: int = 0) -> bool:
        """Whether face ``row`` is degraded in ``epoch`` (otherwise it stays the clean face, bit for bit)."""
        return self.active and self._draws(row, epoch)[0]

    def fingerprint(self) -> str:
        """Hash of what decides the degraded faces (pipeline, ``p``, seed, variants): the key of score caches."""
        try:
            import albumentations as A

            pipeline: Any = A.to_dict(self.transform) if self.transform is not None else None
        except Exception:  # not an albumentations pipeline: its repr is the best description there is
            pipeline = repr(self.transform)
        spec = {"pipeline": pipeline, "p": self.p, "seed": self.seed, "variants": self.variants}
        return hashlib.sha256(json.dumps(spec, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def apply(self, image: np.ndarray, row: int, epoch: int = 0) -> tuple[np.ndarray, bool]:
        """The canvas as degraded for face ``row`` in ``epoch``, and whether it was degraded (the draw of
        :meth:`applies`, made once: the loader hands it on so the score cache need not draw it again). What the
        data loader calls; ``__call__`` is the same without the flag. A subclass that changes what happens to the
        faces overrides this."""
        if not self.active:
            return image, False
        degraded, pipeline = self._draws(row, epoch)
        if not degraded:
            return image, False
        seed_transforms(self.transform, pipeline)
        out = self.transform(image=image)["image"]
        if out.shape != image.shape or out.dtype != image.dtype:  # a geometric or float transform slipped in
            raise ValueError(
                f"degrade: the pipeline changed the canvas from {image.shape} {image.dtype} to {out.shape} "
                f"{out.dtype}; use photometric transforms that keep size and uint8 (geometry belongs to conf/misalign)"
            )
        return np.ascontiguousarray(out), True

    def __call__(self, image: np.ndarray, row: int, epoch: int = 0) -> np.ndarray:
        return self.apply(image, row, epoch)[0]

    def __repr__(self) -> str:
        return (
            f"Degradation(p={self.p}, seed={self.seed}, variants={self.variants}, "
            f"transform={type(self.transform).__name__})"
        )
