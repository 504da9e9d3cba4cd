"""The face index: which images a dataset has, their identities and 5-point landmarks - never the pixels.

A :class:`FaceIndex` is a few compact arrays (paths, integer identity labels, ``(N, 5, 2)`` landmarks with
NaN for "unknown", and optional per-image attributes), so it scales to millions of faces while images
stay on disk and are streamed by :class:`aikd.data.dataset.AlignedFaces`.

The generic on-disk format (what :func:`read_folder` reads and the synthetic generator writes)::

    root/<identity>/<image>      .jpg .jpeg .png .bmp .webp (any depth below <identity> is allowed)
    root/landmarks.csv           path,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y,
                                 mouth_left_x,mouth_left_y,mouth_right_x,mouth_right_y[,more columns]

``path`` is relative to ``root`` with ``/`` separators. Points are image-left eye, image-right eye, nose tip,
image-left and image-right mouth corner (ArcFace template order). Empty landmark fields, or images without a
row, mean "no landmarks yet" (a detector can fill them in, see :mod:`aikd.data.landmarks`). Extra columns are kept
as attributes.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from aikd.io import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "LANDMARK_COLUMNS",
    "IMAGE_EXTENSIONS",
    "DataError",
    "FaceIndex",
    "read_landmarks_csv",
    "write_landmarks_csv",
    "read_folder",
    "select_identities",
    "concat_indices",
]

LANDMARK_COLUMNS: tuple[str, ...] = (
    "left_eye_x",
    "left_eye_y",
    "right_eye_x",
    "right_eye_y",
    "nose_x",
    "nose_y",
    "mouth_left_x",
    "mouth_left_y",
    "mouth_right_x",
    "mouth_right_y",
)
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class DataError(ValueError):
    """A problem with a dataset on disk; the message names the file (and line) and what to do."""


@dataclass
class FaceIndex:
    """Images of a face dataset with identity labels and landmarks (no pixels).

    Attributes:
        root: directory the ``paths`` are relative to.
        paths: relative image paths.
        identity: ``(N,)`` int64 labels, indices into ``identity_names``.
        identity_names: the identity of each label (directory names for folder datasets).
        landmarks: ``(N, 5, 2)`` float32 source-pixel landmarks; rows of NaN are unknown.
        attributes: extra per-image arrays (e.g. ``pose`` for CFP, degradation levels for synthetic data).
        issues: human-readable problems found while reading (skipped rows, missing files...).
    """

    root: Path
    paths: list[str]
    identity: np.ndarray
    identity_names: list[str]
    landmarks: np.ndarray
    attributes: dict[str, np.ndarray] = field(default_factory=dict)
    issues: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        n = len(self.paths)
        self.identity = np.asarray(self.identity, dtype=np.int64)
        self.landmarks = np.asarray(self.landmarks, dtype=np.float32).reshape(n, 5, 2)
        if self.identity.shape != (n,):
            raise ValueError(f"identity has shape {self.identity.shape}, expected ({n},)")
        for k, v in self.attributes.items():
            if len(v) != n:
                raise ValueError(f"attribute '{k}' has {len(v)} values for {n} images")

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_identities(self) -> int:
        return len(self.identity_names)

    @property
    def has_landmarks(self) -> np.ndarray:
        """``(N,)`` bool: which images have all 5 landmarks."""
        return np.isfinite(self.landmarks).all(axis=(1, 2))

    def path(self, i: int) -> Path:
        return self.root / self.paths[i]

    def subset(self, selection: np.ndarray | Sequence[int], relabel: bool = True) -> FaceIndex:
        """Rows selected by a boolean mask or integer indices.

        Args:
            selection: mask or indices.
            relabel: renumber identity labels to ``0..K-1`` over the identities present (what a classifier
                head needs); otherwise keep the parent's labels and names.
        """
        idx = (
            np.flatnonzero(selection) if np.asarray(selection).dtype == bool else np.asarray(selection, dtype=np.int64)
        )
        ident = self.identity[idx]
        names = self.identity_names
        if relabel:
            present, ident = np.unique(ident, return_inverse=True)
            names = [self.identity_names[j] for j in present]
        return FaceIndex(
            root=self.root,
            paths=[self.paths[i] for i in idx],
            identity=ident,
            identity_names=list(names),
            landmarks=self.landmarks[idx],
            attributes={k: np.asarray(v)[idx] for k, v in self.attributes.items()},
            issues=list(self.issues),
        )

    def with_landmarks(self, landmarks: np.ndarray, **attributes: np.ndarray) -> FaceIndex:
        """A copy with new landmarks (e.g. filled in by a detector) and extra attributes."""
        attrs = dict(self.attributes)
        attrs.update(attributes)
        return FaceIndex(
            self.root,
            list(self.paths),
            self.identity.copy(),
            list(self.identity_names),
            landmarks,
            attrs,
            list(self.issues),
        )

    def describe(self) -> str:
        """One line for logs: sizes and how many images lack landmarks."""
        missing = int((~self.has_landmarks).sum())
        return (
            f"{len(self)} images, {self.num_identities} identities under {self.root}"
            + (f", {missing} without landmarks" if missing else "")
            + (f", {len(self.issues)} issues" if self.issues else "")
        )


def _parse_float(value: str) -> float:
    value = value.strip()
    return float("nan") if value == "" else float(value)


def read_landmarks_csv(
    path: str | Path, strict: bool = False
) -> tuple[dict[str, np.ndarray], dict[str, dict[str, str]], list[str]]:
    """Read a landmarks file in the generic format.

    Args:
        path: the CSV file.
        strict: raise :class:`DataError` on the first malformed row instead of skipping it.

    Returns:
        ``(landmarks, extras, issues)``: ``landmarks[rel_path]`` is a ``(5, 2)`` float32 array (NaN when the row's
        fields are empty), ``extras[rel_path]`` the row's other columns, ``issues`` one message per skipped row,
        naming file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"landmarks file not found: {path}")
    landmarks: dict[str, np.ndarray] = {}
    extras: dict[str, dict[str, str]] = {}
    issues: list[str] = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        missing = [c for c in ("path", *LANDMARK_COLUMNS) if c not in fields]
        if missing:
            raise DataError(
                f"{path}: header lacks column(s) {missing}; expected 'path,{','.join(LANDMARK_COLUMNS)}' (got {fields})"
            )
        for line, row in enumerate(reader, start=2):
            rel = (row.get("path") or "").strip().replace("\\", "/")
            try:
                if not rel:
                    raise ValueError("empty path")
                values = [_parse_float(row[c] or "") for c in LANDMARK_COLUMNS]
                finite = [math.isfinite(v) for v in values]
                if any(finite) and not all(finite):
                    raise ValueError("some but not all landmark fields are empty")
                if rel in landmarks:
                    raise ValueError(f"duplicate row for '{rel}'")
            except (ValueError, TypeError, AttributeError) as err:
                msg = f"{path}:{line}: malformed landmark row ({err}); row skipped"
                if strict:
                    raise DataError(msg) from err
                issues.append(msg)
                continue
            landmarks[rel] = np.asarray(values, dtype=np.float32).reshape(5, 2)
            extras[rel] = {k: v for k, v in row.items() if k not in LANDMARK_COLUMNS and k != "path" and k is not None}
    return landmarks, extras, issues


def write_landmarks_csv(
    path: str | Path, paths: Sequence[str], landmarks: np.ndarray, extra: dict[str, Sequence[Any]] | None = None
) -> Path:
    """Atomically write landmarks in the generic format (NaN rows are written as empty fields)."""
    extra = extra or {}
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", *LANDMARK_COLUMNS, *extra])
        for i, rel in enumerate(paths):
            pts = np.asarray(landmarks[i], dtype=np.float64).reshape(-1)
            cells = ["" if not np.isfinite(v) else f"{v:.2f}" for v in pts]
            w.writerow([rel, *cells, *(extra[k][i] for k in extra)])
    return Path(path)


def _scan_images(root: Path) -> Iterable[tuple[str, str]]:
    for ident_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for img in sorted(ident_dir.rglob("*")):
            if img.suffix.lower() in IMAGE_EXTENSIONS and img.is_file():
                yield ident_dir.name, img.relative_to(root).as_posix()


def read_folder(
    root: str | Path,
    landmarks: str | Path | None = "landmarks.csv",
    strict: bool = False,
    min_images_per_identity: int = 1,
) -> FaceIndex:
    """Read a ``root/<identity>/<image>`` dataset with an optional landmarks file.

    Args:
        root: dataset root; each sub-directory is one identity.
        landmarks: landmarks CSV, relative to ``root`` or absolute; ``None`` for none (all landmarks unknown).
            A missing default ``landmarks.csv`` is allowed (landmarks unknown); a missing explicit file is an error.
        strict: raise on the first problem instead of recording it in ``FaceIndex.issues``.
        min_images_per_identity: identities with fewer images are dropped (and reported).

    Raises:
        DataError: unreadable root, no images at all, or (strict) any malformed row / missing file.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset root is not a directory: {root} (expected root/<identity>/<image>)")
    found = list(_scan_images(root))
    issues: list[str] = []
    empty = sorted({p.name for p in root.iterdir() if p.is_dir()} - {ident for ident, _ in found})
    for name in empty:
        msg = f"{root / name}: identity directory holds no images ({', '.join(IMAGE_EXTENSIONS)})"
        if strict:
            raise DataError(msg)
        issues.append(msg)
    if not found:
        raise DataError(f"no images under {root}; expected root/<identity>/<image> with {', '.join(IMAGE_EXTENSIONS)}")

    lm_table: dict[str, np.ndarray] = {}
    extras: dict[str, dict[str, str]] = {}
    if landmarks is not None:
        lm_path = Path(landmarks) if Path(landmarks).is_absolute() else root / landmarks
        if lm_path.is_file():
            lm_table, extras, lm_issues = read_landmarks_csv(lm_path, strict=strict)
            issues += lm_issues
            image_set = {rel for _, rel in found}
            for rel in lm_table:
                if rel not in image_set:
                    msg = f"{lm_path}: row for '{rel}' but no such image under {root}"
                    if strict:
                        raise DataError(msg)
                    issues.append(msg)
        elif str(landmarks) != "landmarks.csv":
            raise DataError(f"landmarks file not found: {lm_path}")

    counts: dict[str, int] = {}
    for ident, _ in found:
        counts[ident] = counts.get(ident, 0) + 1
    keep = {k for k, c in counts.items() if c >= min_images_per_identity}
    for k in sorted(set(counts) - keep):
        issues.append(f"{root / k}: {counts[k]} image(s) < min_images_per_identity={min_images_per_identity}; dropped")
    found = [(i, r) for i, r in found if i in keep]
    names = sorted(keep)
    label = {n: j for j, n in enumerate(names)}
    paths = [r for _, r in found]
    nan = np.full((5, 2), np.nan, dtype=np.float32)
    lms = np.stack([lm_table.get(r, nan) for r in paths]) if paths else np.zeros((0, 5, 2), np.float32)
    attrs: dict[str, np.ndarray] = {}
    extra_cols = sorted({k for e in extras.values() for k in e})
    for col in extra_cols:
        vals = [extras.get(r, {}).get(col, "") for r in paths]
        try:
            attrs[col] = np.asarray([float(v) if v != "" else np.nan for v in vals], dtype=np.float64)
        except ValueError:
            attrs[col] = np.asarray(vals, dtype=object)
    index = FaceIndex(root, paths, np.asarray([label[i] for i, _ in found]), names, lms, attrs, issues)
    for msg in issues[:20]:
        log.warning(msg)
    if len(issues) > 20:
        log.warning("... and %d more data issues", len(issues) - 20)
    return index


def select_identities(index: FaceIndex, identities: Sequence[int] | None, source: str) -> FaceIndex:
    """Keep identity labels in an inclusive ``(lo, hi)`` range (or an explicit list) of ``index``'s labels."""
    if identities is None:
        return index
    ids = list(identities)
    keep = set(range(ids[0], ids[1] + 1)) if len(ids) == 2 and ids[0] < ids[1] else set(ids)
    mask = np.isin(index.identity, sorted(keep))
    if not mask.any():
        raise DataError(f"{source}: no images for identities {identities} (dataset has {index.num_identities})")
    return index.subset(mask)


def concat_indices(indices: Sequence[FaceIndex]) -> FaceIndex:
    """One index over several datasets (e.g. CFP plus extra training faces), for a training split made of many.

    The parts may live under different roots: the result's root is their common folder and each path is prefixed
    with its part's root relative to it, so the images are still found and caches keyed by ``root`` and ``paths``
    stay exact. Identities are qualified the same way (``<part root>/<identity>``), so identities of different
    datasets never merge, while two parts of one dataset (same root) share the identities they have in common.
    Attributes present in only some parts are filled with NaN (numbers) or ``""`` (text) in the others.

    Raises:
        ValueError: no index given.
    """
    parts = list(indices)
    if not parts:
        raise ValueError("concat_indices needs at least one FaceIndex")
    if len(parts) == 1:
        return parts[0]
    roots = [Path(os.path.abspath(Path(p.root).expanduser())) for p in parts]
    common = Path(os.path.commonpath([str(r) for r in roots]))
    prefixes = [r.relative_to(common).as_posix() for r in roots]

    def qualify(prefix: str, rel: str) -> str:
        return f"{prefix}/{rel}" if prefix not in ("", ".") else rel

    paths = [qualify(pre, rel) for pre, part in zip(prefixes, parts) for rel in part.paths]
    qualified = np.asarray(
        [qualify(pre, part.identity_names[j]) for pre, part in zip(prefixes, parts) for j in part.identity],
        dtype=object,
    )
    names, identity = np.unique(qualified, return_inverse=True) if len(qualified) else (np.zeros(0, object), [])
    attributes: dict[str, np.ndarray] = {}
    for key in dict.fromkeys(k for part in parts for k in part.attributes):
        values = [part.attributes.get(key) for part in parts]
        if all(v is not None for v in values):
            attributes[key] = np.concatenate([np.asarray(v) for v in values])
            continue
        numeric = all(np.asarray(v).dtype.kind in "biuf" for v in values if v is not None)
        fill: Any = np.nan if numeric else ""
        attributes[key] = np.concatenate(
            [
                np.asarray(v, dtype=np.float64 if numeric else object)
                if v is not None
                else np.full(len(part), fill, dtype=np.float64 if numeric else object)
                for v, part in zip(values, parts)
            ]
        )
    return FaceIndex(
        root=common,
        paths=paths,
        identity=np.asarray(identity, dtype=np.int64),
        identity_names=[str(n) for n in names],
        landmarks=np.concatenate([part.landmarks for part in parts]),
        attributes=attributes,
        issues=[msg for part in parts for msg in part.issues],
    )
