"""Streaming dataset of loose aligned canvases, and a collate function that tolerates bad samples.

Each item is read from disk when asked for (never cached in memory), aligned onto a :class:`~aikd.geometry.align.Canvas`
on the CPU with OpenCV, optionally passed through albumentations photometric augmentations, and returned as
``uint8`` (cheap to move to the device). Everything geometric after that - each model's crop, every
misalignment - happens on the batch, on the device, from the canvas and the ``canvas_from_source`` matrix.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, default_collate

from aikd.data.index import DataError, FaceIndex
from aikd.geometry.align import Canvas

log = logging.getLogger(__name__)

__all__ = ["AlignedFaces", "FaceRows", "collate_faces", "face_loader", "read_image", "centre_landmarks"]

MISSING_POLICIES = ("skip", "error", "centre")


def read_image(path: str) -> np.ndarray:
    """Read an image file as ``H x W x 3`` RGB uint8; raise :class:`DataError` naming the file if unreadable."""
    data = np.fromfile(path, dtype=np.uint8) if _exists(path) else None
    if data is None:
        from aikd.data.recordio import parse_record_path, read_record_image

        if parse_record_path(path) is not None:  # '<file>.rec@<offset>': a face inside a RecordIO file
            return read_record_image(path)
        raise DataError(f"image file not found: {path}")
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise DataError(f"cannot decode image (corrupt or unsupported format): {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _exists(path: str) -> bool:
    import os

    return os.path.isfile(path)


def centre_landmarks(height: int, width: int, canvas: Canvas) -> np.ndarray:
    """Landmarks that frame the whole image like the canvas' face crop: for datasets of pre-cropped faces."""
    fh, fw = canvas.face.hw
    from aikd.geometry.align import template_points

    pts = template_points(canvas.face)
    return (pts * np.array([width / fw, height / fh])).astype(np.float32)


class AlignedFaces(Dataset):
    """Faces of a :class:`FaceIndex` as loose aligned canvases.

    Args:
        index: the images, labels and landmarks.
        canvas: the canvas every face is aligned onto.
        transform: optional albumentations-style callable ``transform(image=HWC uint8) -> {"image": ...}`` run on
            the canvas (photometric augmentation; geometric ones belong to :mod:`aikd.geometry.misalign`).
        strict: raise on a bad sample instead of skipping it.
        missing_landmarks: what to do with images without landmarks: ``"skip"`` (count and skip), ``"error"``,
            or ``"centre"`` (assume a pre-cropped face filling the image).
        degrade: optional :class:`~aikd.data.degrade.Degradation` (``degrade(canvas, row, epoch)``) run on the
            canvas after ``transform``: photometric degradations for distillation, reproducible per
            ``(seed, epoch, row)``. The epoch comes with the index: ``dataset[(epoch, i)]`` (what an
            :class:`~aikd.data.datamodule.EpochShuffleSampler` with ``tag_epoch=True`` yields); ``dataset[i]`` is
            epoch 0.

    ``len(dataset)`` counts the usable rows; ``item["index"]`` is always the row in ``index`` (for caches).
    Items are dicts with ``image`` (``3 x S x S`` uint8), ``landmarks`` (``5 x 2`` float32, source pixels),
    ``canvas_from_source`` (``2 x 3`` float32), ``identity`` and ``index`` (int64), and with ``degrade`` the
    ``epoch`` (int64) it was degraded for and, for a :class:`~aikd.data.degrade.Degradation`, ``degraded`` (bool:
    whether the draw degraded it); a skipped item is ``None``.
    """

    def __init__(
        self,
        index: FaceIndex,
        canvas: Canvas,
        transform: Callable[..., dict[str, Any]] | None = None,
        strict: bool = False,
        missing_landmarks: str = "skip",
        degrade: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
    ) -> None:
        if missing_landmarks not in MISSING_POLICIES:
            raise ValueError(f"missing_landmarks must be one of {MISSING_POLICIES}, got {missing_landmarks!r}")
        self.index = index
        self.canvas = canvas
        self.transform = transform
        self.degrade = degrade
        self.strict = strict
        self.missing_landmarks = missing_landmarks
        self._warned: set[int] = set()
        has = index.has_landmarks
        if missing_landmarks == "skip" and not has.all():
            # Known up front: exclude once, with one summary line, rather than warn on every epoch.
            self.rows = np.flatnonzero(has)
            log.warning(
                "%d of %d images have no landmarks and are skipped (missing_landmarks='skip'; detect them with "
                "`aikd detect-landmarks` or use 'centre' for pre-cropped faces)",
                len(index) - len(self.rows),
                len(index),
            )
        else:
            self.rows = np.arange(len(index))
        self.n_excluded = len(index) - len(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def load(self, i: int, epoch: int = 0) -> dict[str, Any]:
        """Load item ``i`` (degraded as in ``epoch``, when degrading) or raise :class:`DataError` explaining why it
        cannot be used."""
        path = str(self.index.path(i))
        lm = self.index.landmarks[i]
        if not np.isfinite(lm).all() and self.missing_landmarks != "centre":
            raise DataError(f"{path}: no landmarks (add a row to the landmarks file or run landmark detection)")
        img = read_image(path)
        if not np.isfinite(lm).all():
            lm = centre_landmarks(img.shape[0], img.shape[1], self.canvas)
        # the one photo -> canvas step (aikd score's crop_photo repeats it, so scored crops equal these)
        out, m = self.canvas.cut(img, lm)
        if self.transform is not None:
            out = self.transform(image=out)["image"]
        degraded = None
        if self.degrade is not None:
            if hasattr(self.degrade, "apply"):  # a Degradation: also says whether this face was degraded
                out, degraded = self.degrade.apply(out, i, epoch)
            else:
                out = self.degrade(out, i, epoch)
        item = {
            "image": torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1))),
            "landmarks": torch.from_numpy(np.asarray(lm, dtype=np.float32)),
            "canvas_from_source": torch.from_numpy(m.astype(np.float32)),
            "identity": torch.tensor(int(self.index.identity[i]), dtype=torch.int64),
            "index": torch.tensor(i, dtype=torch.int64),
        }
        if self.degrade is not None:  # which degraded version this is: the key of degradation-keyed score caches
            item["epoch"] = torch.tensor(int(epoch), dtype=torch.int64)
        if degraded is not None:
            item["degraded"] = torch.tensor(degraded)
        return item

    def __getitem__(self, i: int | tuple[int, int]) -> dict[str, Any] | None:
        epoch = 0
        if isinstance(i, tuple):  # (epoch, position) from an epoch-tagging sampler
            epoch, i = i
        return self.get_row(int(self.rows[i]), int(epoch))

    def get_row(self, row: int, epoch: int = 0) -> dict[str, Any] | None:
        """Item of index row ``row`` (not a position in :attr:`rows`), or ``None`` for a skipped bad sample."""
        try:
            return self.load(row, epoch)
        except (DataError, cv2.error, ValueError) as err:
            if self.strict:
                raise DataError(f"sample {row}: {err}") from err
            if row not in self._warned:
                self._warned.add(row)
                log.warning("skipping sample %d: %s", row, err)
            return None


def collate_faces(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Collate items, dropping skipped (``None``) ones and counting them in ``batch["n_skipped"]``.

    A batch whose samples were all skipped has ``batch["image"]`` of length 0; training steps skip it.
    """
    good = [s for s in samples if s is not None]
    skipped = len(samples) - len(good)
    if good:
        batch = default_collate(good)
    else:
        batch = {
            "image": torch.zeros(0, 3, 1, 1, dtype=torch.uint8),
            "landmarks": torch.zeros(0, 5, 2),
            "canvas_from_source": torch.zeros(0, 2, 3),
            "identity": torch.zeros(0, dtype=torch.int64),
            "index": torch.zeros(0, dtype=torch.int64),
        }
    batch["n_skipped"] = torch.tensor(skipped, dtype=torch.int64)
    return batch


class FaceRows(Dataset):
    """Chosen rows of a :class:`FaceIndex`, in the order given, as :class:`AlignedFaces` items.

    Caches and evaluations work on rows of the index (the rows still to compute, the images of a pair list, a
    random draw), not on positions in the dataset; this keeps that translation in one place.

    Args:
        faces: the aligned faces to read from.
        rows: index rows (default: every usable row of ``faces``). Rows ``faces`` cannot use (no landmarks under
            ``missing_landmarks="skip"``) are left out and counted in :attr:`n_dropped`.
        epoch: the epoch the faces are loaded as (what ``faces.degrade`` draws from; no effect without it).

    Attributes:
        rows: ``(M,)`` int64, the index rows this dataset yields, in order.
        n_dropped: requested rows that were left out.
    """

    def __init__(self, faces: AlignedFaces, rows: np.ndarray | None = None, epoch: int = 0) -> None:
        self.faces = faces
        self.epoch = int(epoch)
        if rows is None:
            self.rows = np.asarray(faces.rows, dtype=np.int64)
            self.n_dropped = 0
        else:
            rows = np.asarray(rows, dtype=np.int64).reshape(-1)
            keep = np.isin(rows, faces.rows)
            self.rows = rows[keep]
            self.n_dropped = int((~keep).sum())

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any] | None:
        return self.faces.get_row(int(self.rows[i]), self.epoch)


def face_loader(
    index: FaceIndex,
    canvas: Canvas,
    rows: np.ndarray | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    degrade: Callable[[np.ndarray, int, int], np.ndarray] | None = None,
    epoch: int = 0,
) -> DataLoader:
    """Batches of ``rows`` of ``index`` aligned onto ``canvas``, in order: the loader behind every pass that scores
    or caches a set of faces (cache fills, the DDP teacher pass, evaluation, RI's unrecognisable identities).

    Batches are :func:`collate_faces` dicts (``uint8`` canvases, ``landmarks``, ``canvas_from_source``,
    ``identity``, ``index`` = the index rows); unreadable images are dropped from their batch and counted in
    ``n_skipped``. ``loader.dataset`` is the :class:`FaceRows` (its ``rows`` are what will be read, its
    ``n_dropped`` the requested rows without landmarks). ``degrade``: the faces degraded as in ``epoch`` (for
    degradation-keyed caches, :func:`aikd.training.cache.degraded_teacher_scores`).
    """
    dataset = FaceRows(AlignedFaces(index, canvas, degrade=degrade), rows, epoch=epoch)
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_faces)
