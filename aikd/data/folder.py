"""Your own faces as a run's data: one folder (identities held out by a fraction or by name) or two folders.

``conf/data/folder.yaml`` instantiates :func:`folder_datamodule`, so the documented command stays short::

    python train.py data=folder data.root=/path/to/faces                       # 20% of identities held out
    python train.py data=folder data.root=/faces data.val_root=/other_faces    # a second folder for evaluation
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from aikd.data.sources import FolderSource

__all__ = ["folder_datamodule"]


def folder_datamodule(
    root: str,
    val_root: str | None = None,
    holdout: float | Sequence[str] | None = 0.2,
    landmarks: str | None = "landmarks.csv",
    val_landmarks: str | None = "landmarks.csv",
    detect_missing: bool = True,
    detector: str = "mtcnn",
    min_images_per_identity: int = 1,
    seed: int = 0,
    **datamodule_kwargs: Any,
) -> Any:
    """A :class:`~aikd.data.FaceDataModule` over ``root/<identity>/<image>`` (+ ``landmarks.csv``).

    Args:
        root: training faces (and, without ``val_root``, the held-out ones too).
        val_root: a second folder of held-out identities for validation and evaluation; ``holdout`` is then
            ignored and every identity of ``root`` trains.
        holdout: identities of ``root`` held out for validation/evaluation when there is no ``val_root``: a
            fraction (drawn with ``seed``) or a list of identity folder names. Held-out identities never train, so
            the reported figures are on identities the teacher and student have not seen.
        landmarks: landmarks CSV of ``root`` (relative to it, or absolute); ``None`` for none.
        val_landmarks: the same for ``val_root``.
        detect_missing: detect the 5 landmarks (cached) of images the CSV does not cover.
        detector: the face detector doing so, ``"mtcnn"`` (default) or ``"yunet"`` (faster, one network run per
            image); used for both folders.
        min_images_per_identity: drop identities with fewer images.
        seed: seed of the held-out draw.
        **datamodule_kwargs: the remaining :class:`~aikd.data.FaceDataModule` arguments (canvas, batch size...).
    """
    from aikd.data.datamodule import FaceDataModule

    common = {
        "detect_missing": detect_missing,
        "detector": detector,
        "min_images_per_identity": min_images_per_identity,
    }
    if val_root:
        train = FolderSource(root, landmarks=landmarks, **common)
        val = FolderSource(val_root, landmarks=val_landmarks, name="folder_val", **common)
    elif holdout:
        train = FolderSource(root, landmarks=landmarks, split="train", holdout=holdout, seed=seed, **common)
        val = FolderSource(root, landmarks=landmarks, split="val", holdout=holdout, seed=seed, **common)
    else:
        train, val = FolderSource(root, landmarks=landmarks, **common), None
    return FaceDataModule(train=train, val=val, seed=seed, **datamodule_kwargs)
