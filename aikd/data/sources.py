"""Dataset sources: cheap-to-build descriptions of where faces come from, loaded when Lightning asks.

A source is what a ``conf/data/*.yaml`` file instantiates. Building one does no I/O; ``prepare()`` does one-off
work that must happen once per machine (generating synthetic faces, detecting landmarks) and ``load()`` returns
the :class:`~aikd.data.index.FaceIndex`. This keeps ``hydra.utils.instantiate`` fast and lets Lightning run
``prepare()`` on one process only.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np

from aikd.data.index import DataError, FaceIndex, read_folder, select_identities
from aikd.faces.detect import DETECTORS

log = logging.getLogger(__name__)

__all__ = ["FaceSource", "FolderSource", "CFPSource", "SyntheticSource", "holdout_identities"]


@runtime_checkable
class FaceSource(Protocol):
    """Anything with ``prepare()`` and ``load() -> FaceIndex`` (and a ``name`` for logs and caches)."""

    name: str

    def prepare(self) -> None: ...

    def load(self) -> FaceIndex: ...


def _fill_landmarks(index: FaceIndex, detect: bool, detector: str = "mtcnn") -> FaceIndex:
    """Detect (cached) the landmarks ``index`` lacks with the detector named ``detector``, when ``detect``."""
    if not detect or index.has_landmarks.all():
        return index
    from aikd.data.landmarks import fill_missing_landmarks

    return fill_missing_landmarks(index, detector=detector)


def holdout_identities(names: Sequence[str], holdout: float | Sequence[str], seed: int, source: str) -> set[str]:
    """The identity names held out for validation/evaluation.

    Args:
        names: every identity name of the dataset.
        holdout: a fraction in ``(0, 1)`` of the identities, drawn at random with ``seed`` (the same names for the
            train and the val source of one run, whatever order the folders are listed in), or explicit names.
        seed: seed of the draw.
        source: dataset description for error messages.

    Raises:
        DataError: a fraction that leaves no identity on one side, or names that are not in the dataset.
    """
    names = sorted(names)
    if isinstance(holdout, (int, float)) and not isinstance(holdout, bool):
        frac = float(holdout)
        if not 0.0 < frac < 1.0:
            raise DataError(f"{source}: data.holdout={holdout} must be a fraction in (0, 1) or a list of identities")
        k = int(round(frac * len(names)))
        if k < 1 or k >= len(names):
            raise DataError(
                f"{source}: data.holdout={holdout} of {len(names)} identities leaves {k} held out and "
                f"{len(names) - k} for training; both need at least one (add identities or change data.holdout)"
            )
        order = np.random.default_rng(int(seed)).permutation(len(names))
        return {names[i] for i in order[:k]}
    wanted = {str(n) for n in holdout}
    unknown = sorted(wanted - set(names))
    if unknown:
        raise DataError(f"{source}: data.holdout names identities that are not in the dataset: {unknown[:10]}")
    if len(wanted) >= len(names):
        raise DataError(f"{source}: data.holdout holds out every identity; leave some for training")
    return wanted


@dataclass
class FolderSource:
    """A ``root/<identity>/<image>`` folder with an optional landmarks CSV (see :mod:`aikd.data.index`).

    Args:
        root: dataset root.
        landmarks: landmarks file relative to ``root`` (or absolute), ``None`` for none.
        detect_missing: run a face detector (cached) for images without landmarks.
        detector: which one, by name (``"mtcnn"`` or ``"yunet"``, :data:`aikd.faces.detect.DETECTORS`). Each keeps
            its own landmark cache; a dataset whose CSV came from one detector is best completed with the same one,
            since the two place points a few percent of the face apart.
        identities: optional inclusive ``(lo, hi)`` range of identity labels (sorted directory order).
        strict: raise on the first data problem.
        min_images_per_identity: drop identities with fewer images.
        split: ``"all"`` (every identity), or ``"train"`` / ``"val"``: the identities kept for training, or those
            held out by ``holdout``. One folder then serves both splits of a run with disjoint identities.
        holdout: with ``split`` train/val: a fraction of the identities, or a list of identity names.
        seed: seed of the held-out draw.
    """

    root: str
    landmarks: str | None = "landmarks.csv"
    detect_missing: bool = False
    detector: str = "mtcnn"
    identities: Sequence[int] | None = None
    strict: bool = False
    min_images_per_identity: int = 1
    name: str = "folder"
    split: str = "all"
    holdout: float | Sequence[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.split not in ("all", "train", "val"):
            raise ValueError(f"FolderSource.split must be all, train or val, got {self.split!r}")
        if self.split != "all" and self.holdout is None:
            raise ValueError(f"FolderSource(split={self.split!r}) needs holdout (a fraction or identity names)")
        if self.detector not in DETECTORS:  # fail when the config is built, not after reading the folder
            raise ValueError(f"FolderSource.detector must be one of {', '.join(DETECTORS)}, got {self.detector!r}")

    def prepare(self) -> None:
        if self.detect_missing:
            self.load()

    def load(self) -> FaceIndex:
        index = read_folder(self.root, self.landmarks, self.strict, self.min_images_per_identity)
        index = _fill_landmarks(index, self.detect_missing, self.detector)
        index = select_identities(index, self.identities, str(self.root))
        if self.split == "all":
            return index
        held = holdout_identities(index.identity_names, self.holdout, self.seed, str(self.root))
        is_held = np.isin(np.asarray(index.identity_names, dtype=object)[index.identity], sorted(held))
        return index.subset(is_held if self.split == "val" else ~is_held)


@dataclass
class CFPSource:
    """CFP in its official layout; see :func:`aikd.data.cfp.read_cfp` for the arguments."""

    root: str
    identities: Sequence[int] | None = (1, 450)
    poses: Sequence[str] = ("frontal", "profile")
    landmarks_file: str = "Data/landmarks_mtcnn.csv"
    check_fiducials: bool = True
    fiducial_tolerance: float = 0.35
    drop_flagged: bool = False
    strict: bool = False
    name: str = "cfp"

    def prepare(self) -> None:
        if not (Path(self.root).expanduser() / "Data" / "Images").is_dir():
            raise DataError(
                f"CFP not found at {self.root!r}: set paths.data_dir (or the AIKD_DATA environment variable) to the "
                "folder holding cfp/Data and cfp/Protocol"
            )

    def load(self) -> FaceIndex:
        from aikd.data.cfp import read_cfp

        index = read_cfp(
            self.root,
            identities=None if self.identities is None else tuple(self.identities),
            poses=tuple(self.poses),
            landmarks_file=self.landmarks_file,
            check_fiducials=self.check_fiducials,
            fiducial_tolerance=self.fiducial_tolerance,
            strict=self.strict,
        )
        if self.drop_flagged:
            index = index.subset(index.attributes["landmarks_ok"].astype(bool))
        return index


@dataclass
class SyntheticSource:
    """Procedurally generated faces (a stand-in for real faces; see :mod:`aikd.data.synthetic`).

    ``prepare()`` writes the dataset to ``root`` in the generic folder format (skipped when ``root`` already
    holds the same generator settings); ``load()`` reads it back like any folder dataset, so the demo exercises
    the real loader. Train and validation sources share ``root`` and split by ``identities``.
    """

    #: Reference qualities this data records, added to the evaluation with ``evaluation.references: auto``: the
    #: generator's degradation severity, negated (higher = better), an oracle-like lower reference.
    reference_methods: ClassVar[tuple[str, ...]] = ("attribute:-severity",)

    root: str
    n_identities: int = 40
    images_per_identity: int = 12
    seed: int = 0
    identities: Sequence[int] | None = None
    generator: dict[str, Any] = field(default_factory=dict)
    name: str = "synthetic"

    def _generator(self) -> Any:
        from aikd.data.synthetic.generator import SyntheticFaces

        return SyntheticFaces(
            n_identities=self.n_identities,
            images_per_identity=self.images_per_identity,
            seed=self.seed,
            **self.generator,
        )

    def prepare(self) -> None:
        # overwrite=True only ever replaces a dataset this generator wrote (stale settings or version).
        self._generator().write(self.root, overwrite=True)

    def load(self) -> FaceIndex:
        if not (Path(self.root) / "landmarks.csv").is_file():
            self.prepare()
        index = read_folder(self.root)
        _merge_meta(index, Path(self.root) / "meta.csv")
        return select_identities(index, self.identities, str(self.root))


def _merge_meta(index: FaceIndex, path: Path) -> None:
    """Add the generator's per-image record (pose, degradation levels, severity) as index attributes."""
    import csv

    if not path.is_file():
        return
    with open(path, newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    for col in ("yaw", "roll", "scale", "illumination", "blur", "noise", "downscale", "occlusion", "jpeg", "severity"):
        values = [rows.get(p, {}).get(col, "") for p in index.paths]
        if any(values):
            index.attributes[col] = np.asarray([float(v) if v not in ("", None) else np.nan for v in values])
