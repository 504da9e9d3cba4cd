"""The synthetic face generator :class:`SyntheticFaces`: per-image parameters, rendering, and writing to disk.

:meth:`SyntheticFaces.render` draws the parameters of one image, renders it (:mod:`~aikd.data.synthetic.render`)
and degrades it (:mod:`~aikd.data.synthetic.degrade`); :meth:`SyntheticFaces.write` writes a whole dataset as
PNGs plus ``landmarks.csv``, ``meta.csv`` and ``generator.json`` in the generic folder format of
:mod:`aikd.data.index`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import shutil
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from aikd.data.index import LANDMARK_COLUMNS as _INDEX_LANDMARK_COLUMNS
from aikd.data.synthetic.degrade import DEGRADATIONS, _occluder, degrade
from aikd.data.synthetic.identity import (
    _STREAM_NOISE,
    _STREAM_PARAMS,
    _STREAM_SCENE,
    Identity,
    _identity,
    _rng,
    identity_name,
    image_name,
)
from aikd.data.synthetic.render import _FACE_HEIGHT, _SUPERSAMPLE, _background, _draw_face, _light, _Painter, _Pose
from aikd.io import atomic_path, write_json

__all__ = [
    "VERSION",
    "LANDMARK_COLUMNS",
    "META_COLUMNS",
    "PARAM_NAMES",
    "FRONTAL",
    "BROKEN_FILES",
    "SyntheticFaces",
]

log = logging.getLogger(__name__)

#: ``(root, generator spec)`` pairs this process has written or reported up to date. A run's train and val sources
#: share one root and each prepares it: the second answer goes to DEBUG instead of a contradicting "nothing to do".
_REPORTED: set[tuple[str, str]] = set()

#: Bumped whenever the rendering changes, so that datasets written by an older generator are seen as stale.
VERSION = 1

#: Header of the landmarks file written: the generic format of :mod:`aikd.data.index`.
LANDMARK_COLUMNS: tuple[str, ...] = ("path", *_INDEX_LANDMARK_COLUMNS)

#: ``meta.csv`` columns. ``scale`` is the face height (top of head to chin) as a fraction of the image side,
#: ``illumination`` the strength of the directional light gradient, ``yaw``/``roll`` are degrees, the
#: degradation columns are levels in ``[0, 1]``; ``seed`` is the generator seed (``render(identity, index)`` of a
#: generator with that seed reproduces the row); ``jpeg`` comes after ``severity`` so the documented leading
#: columns stay fixed.
META_COLUMNS: tuple[str, ...] = (
    "path",
    "identity",
    "seed",
    "size",
    "yaw",
    "roll",
    "scale",
    "illumination",
    "blur",
    "noise",
    "downscale",
    "occlusion",
    "severity",
    "jpeg",
)

#: Names accepted by ``overrides`` in :meth:`SyntheticFaces.render` / :meth:`SyntheticFaces.image_params`.
PARAM_NAMES: tuple[str, ...] = (
    "size",
    "roll",
    "yaw",
    "scale",
    "shift_x",
    "shift_y",
    "light_angle",
    "illumination",
    "brightness",
    "contrast",
    "white_balance_r",
    "white_balance_b",
    "smile",
    "mouth_open",
    "brow_raise",
    "eye_open",
    "occlusion_kind",
    "occlusion_x",
    "occlusion_y",
    "occlusion_aspect",
    *DEGRADATIONS,
)

#: ``overrides`` for an upright frontal face.
FRONTAL: dict[str, float] = {"yaw": 0.0, "roll": 0.0}

#: Deliberately broken files written with ``broken=True`` (relative path -> what is wrong with it). All three
#: also have a regular row in ``meta.csv``; the first has a correct landmarks row.
BROKEN_FILES: dict[str, str] = {
    "id_0000/broken_corrupt.png": "image file is truncated garbage after the PNG signature (cannot be decoded)",
    "id_0000/broken_malformed.png": "valid image; its left_eye_x field in landmarks.csv is 'x12.5' (not a number)",
    "id_0000/broken_nolandmarks.png": "valid image; all ten landmark fields of its landmarks.csv row are empty",
}


@dataclass
class SyntheticFaces:
    """Deterministic generator of synthetic faces with exact landmarks and recorded degradations.

    A stand-in for real faces in the demo and in tests (see :mod:`aikd.data.synthetic`); not a face model.

    Args:
        n_identities: number of identities written by :meth:`write`.
        images_per_identity: images per identity written by :meth:`write`.
        seed: generator seed; every image is a pure function of ``(seed, identity, index)``.
        min_size: smallest image side in pixels (images are square).
        max_size: largest image side in pixels.
        degradation: fraction of images that get at least one degradation (the rest are clean).
        max_roll: largest in-plane rotation in degrees.
        max_yaw: largest yaw in degrees (rendered by the head-surface projection, see :class:`_Pose`).
        broken: :meth:`write` adds the deliberately broken files of :data:`BROKEN_FILES` (for loader tests).
        workers: processes used by :meth:`write` (``0`` or ``1``: render in this process). Does not change the
            output, so it is not part of ``generator.json``.
    """

    n_identities: int = 40
    images_per_identity: int = 12
    seed: int = 0
    min_size: int = 96
    max_size: int = 224
    degradation: float = 0.35
    max_roll: float = 20.0
    max_yaw: float = 30.0
    broken: bool = False
    workers: int = 0

    def __post_init__(self) -> None:
        if self.n_identities < 1 or self.images_per_identity < 1:
            raise ValueError(
                f"need at least one identity and one image per identity, got n_identities={self.n_identities}, "
                f"images_per_identity={self.images_per_identity}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed}")
        if not 32 <= self.min_size <= self.max_size:
            raise ValueError(f"need 32 <= min_size <= max_size, got min_size={self.min_size}, max_size={self.max_size}")
        if not 0.0 <= self.degradation <= 1.0:
            raise ValueError(f"degradation is a fraction of images in [0, 1], got {self.degradation}")

    # -- parameters ----------------------------------------------------------------------------------------------

    def identity(self, identity: int) -> Identity:
        """The parameters of ``identity`` (pure function of ``seed`` and ``identity``)."""
        return _identity(self.seed, identity)

    def image_params(self, identity: int, index: int, overrides: Mapping[str, float] | None = None) -> dict[str, float]:
        """The per-image parameters of image ``index`` of ``identity``, without rendering it.

        Every parameter is drawn, always in the same order, from a stream keyed by ``(seed, identity, index)``;
        ``overrides`` then replace individual values (names in :data:`PARAM_NAMES`), leaving the others as they
        were. Degradation levels are 0 for clean images.
        """
        r = _rng(self.seed, _STREAM_PARAMS, identity, index)
        u = r.uniform
        p: dict[str, float] = {
            "size": float(r.integers(self.min_size, self.max_size + 1)),
            "roll": float(np.clip(r.normal(0.0, self.max_roll / 2.5), -self.max_roll, self.max_roll)),
            "yaw": float(np.clip(r.normal(0.0, self.max_yaw / 2.5), -self.max_yaw, self.max_yaw)),
            "scale": u(0.5, 0.9),
            "shift_x": u(-1, 1),
            "shift_y": u(-1, 1),
            "light_angle": u(0, 2 * math.pi),
            "illumination": u(0.0, 0.6),
            "brightness": u(0.75, 1.2),
            "contrast": u(0.75, 1.15),
            "white_balance_r": u(0.9, 1.1),
            "white_balance_b": u(0.9, 1.1),
            "smile": u(-0.25, 0.9),
            "mouth_open": max(0.0, u(-0.25, 0.2)),
            "brow_raise": u(-0.04, 0.1),
            "eye_open": u(0.8, 1.05),
            "occlusion_kind": float(r.integers(3)),
            "occlusion_x": u(0, 1),
            "occlusion_y": u(0, 1),
            "occlusion_aspect": u(0.5, 2.0),
        }
        degraded = u() < self.degradation
        count = int(r.choice([1, 2, 3], p=[0.55, 0.3, 0.15]))
        chosen = r.permutation(len(DEGRADATIONS))[:count]
        raw = 0.1 + 0.9 * u(size=len(DEGRADATIONS)) ** 1.3  # many moderate levels, a tail of heavy ones
        for i, name in enumerate(DEGRADATIONS):
            p[name] = float(raw[i]) if degraded and i in chosen else 0.0
        if overrides:
            unknown = sorted(set(overrides) - set(PARAM_NAMES))
            if unknown:
                raise KeyError(f"unknown image parameter(s) {unknown}; known: {list(PARAM_NAMES)}")
            p.update({k: float(v) for k, v in overrides.items()})
        for name in DEGRADATIONS:
            if not 0.0 <= p[name] <= 1.0:
                raise ValueError(f"degradation level {name}={p[name]} is outside [0, 1]")
        return p

    @staticmethod
    def severity(params: Mapping[str, float]) -> float:
        """Combined degradation level ``1 - prod(1 - level)`` in ``[0, 1]`` (0: clean)."""
        return float(1.0 - np.prod([1.0 - params.get(name, 0.0) for name in DEGRADATIONS]))

    # -- rendering -----------------------------------------------------------------------------------------------

    def render(
        self, identity: int, index: int, overrides: Mapping[str, float] | None = None
    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        """Render image ``index`` of ``identity``.

        Args:
            identity: identity number (any non-negative integer; :meth:`write` uses ``0..n_identities-1``).
            index: image number within the identity.
            overrides: per-image parameters to force (see :meth:`image_params`), e.g. :data:`CLEAN` or
                :data:`FRONTAL`.

        Returns:
            ``(image, landmarks, meta)``: ``H x W x 3`` uint8 RGB image; ``(5, 2)`` float64 landmarks (image-left
            eye, image-right eye, nose tip, image-left and image-right mouth corner; pixel centres at integers);
            a dict with the ``meta.csv`` fields (``path``, ``identity``, ``seed``, ``size``, ``yaw``, ``roll``,
            ``scale``, ``illumination``, the degradation levels, ``severity``) plus ``index``, ``iod`` (pixels)
            and the remaining parameters.
        """
        if identity < 0 or index < 0:
            raise ValueError(f"identity and index must be non-negative, got {identity}, {index}")
        ident = self.identity(identity)
        p = self.image_params(identity, index, overrides)
        size = int(p["size"])
        k = _SUPERSAMPLE
        scene = _rng(self.seed, _STREAM_SCENE, identity, index)

        iod = p["scale"] * size / _FACE_HEIGHT
        slack = max(0.0, size - p["scale"] * size) / 2 * 0.85
        centre = np.array([size / 2 + p["shift_x"] * slack, size / 2 + p["shift_y"] * slack]) - 0.5
        # the face frame origin (between the eyes) sits above the face's vertical centre
        a = math.radians(p["roll"])
        up = np.array([math.sin(a), -math.cos(a)]) * 0.05 * iod
        pose = _Pose(iod, p["roll"], p["yaw"], (float(centre[0] + up[0]), float(centre[1] + up[1])), ident.face_width)

        big = _background(size, k, scene)
        mask_big = np.zeros(big.shape[:2], np.uint8)
        paint = _Painter(big, pose, k)
        landmarks = _draw_face(paint, ident, p, scene, mask_big)
        if p["occlusion"] > 0:
            poly, colour = _occluder(p, ident, p["occlusion"])
            paint.fill(pose(poly, dz=0.4), colour)
        img = cv2.resize(big, (size, size), interpolation=cv2.INTER_AREA)
        face_mask = cv2.resize(mask_big, (size, size), interpolation=cv2.INTER_AREA)
        img = _light(img, face_mask, pose, ident, p)
        img = degrade(img, p, iod, noise_rng=_rng(self.seed, _STREAM_NOISE, identity, index))

        meta: dict[str, Any] = {
            "path": image_name(identity, index),
            "identity": identity_name(identity),
            "seed": self.seed,
            "size": size,
            "yaw": p["yaw"],
            "roll": p["roll"],
            "scale": p["scale"],
            "illumination": p["illumination"],
            **{name: p[name] for name in DEGRADATIONS},
            "severity": self.severity(p),
            "index": index,
            "iod": iod,
        }
        meta.update({key: value for key, value in p.items() if key not in meta})
        return img, landmarks, meta

    # -- writing -------------------------------------------------------------------------------------------------

    def spec(self) -> dict[str, Any]:
        """What ``generator.json`` holds: everything that determines the written files."""
        params = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "workers"}
        return {
            "generator": "aikd.data.synthetic",
            "version": VERSION,
            "params": params,
            "images": self.n_identities * self.images_per_identity,
            "broken_files": sorted(BROKEN_FILES) if self.broken else [],
        }

    def is_current(self, root: str | Path) -> bool:
        """Whether ``root`` already holds exactly what :meth:`write` would write (same ``generator.json``)."""
        root = Path(root)
        try:
            existing = json.loads((root / "generator.json").read_text())
        except (OSError, ValueError):
            return False
        spec = json.loads(json.dumps(self.spec()))
        return existing == spec and (root / "landmarks.csv").is_file() and (root / "meta.csv").is_file()

    def write(self, root: str | Path, overwrite: bool = False, progress: bool = True) -> Path:
        """Write the dataset under ``root`` in the generic folder format; a no-op if it is already there.

        Images go first, then ``landmarks.csv`` and ``meta.csv`` (atomically), and ``generator.json`` last, so a
        folder with a matching ``generator.json`` is always complete. While writing, ``root/.incomplete`` marks
        the folder as this generator's; an interrupted run is cleaned up and redone by the next call.

        Args:
            root: dataset folder (created if missing).
            overwrite: replace a synthetic dataset written with other parameters (one holding a different
                ``generator.json``). Folders holding anything else are never deleted.
            progress: show a tqdm progress bar.

        Returns:
            ``root``.

        Raises:
            FileExistsError: ``root`` holds a synthetic dataset with other parameters and ``overwrite`` is False,
                or holds files that this generator did not write.
        """
        root = Path(root)
        key = (str(root.resolve()), json.dumps(self.spec(), sort_keys=True))
        if self.is_current(root):
            # A run's train and val sources share one root and both prepare it: report it once per process.
            level = logging.DEBUG if key in _REPORTED else logging.INFO
            log.log(level, "synthetic faces in %s are up to date (generator.json matches); nothing to do", root)
            _REPORTED.add(key)
            return root
        self._prepare(root, overwrite)
        root.mkdir(parents=True, exist_ok=True)
        (root / ".incomplete").write_text(json.dumps(self.spec()) + "\n")

        jobs = [(i, j) for i in range(self.n_identities) for j in range(self.images_per_identity)]
        lm_rows: list[list[str]] = []
        meta_rows: list[list[str]] = []
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc=f"synthetic faces -> {root}", unit="img", disable=not progress)
        for png, landmarks, meta in self._rendered(jobs):
            path = root / meta["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(png)
            lm_rows.append(_landmark_row(meta["path"], landmarks))
            meta_rows.append(_meta_row(meta))
            bar.update(1)
        bar.close()
        if self.broken:
            self._write_broken(root, lm_rows, meta_rows)

        _write_csv(root / "landmarks.csv", LANDMARK_COLUMNS, sorted(lm_rows))
        _write_csv(root / "meta.csv", META_COLUMNS, sorted(meta_rows))
        write_json(root / "generator.json", self.spec())
        (root / ".incomplete").unlink()
        log.info("wrote %d synthetic face images to %s", len(jobs), root)
        _REPORTED.add(key)
        return root

    def _prepare(self, root: Path, overwrite: bool) -> None:
        """Make ``root`` safe to write into: empty, or a stale/interrupted synthetic dataset that may be removed."""
        if not root.exists():
            return
        if not root.is_dir():
            raise FileExistsError(f"{root} exists and is not a directory; choose another dataset root")
        entries = list(root.iterdir())
        if not entries:
            return
        ours = (root / "generator.json").is_file() or (root / ".incomplete").is_file()
        if not ours:
            raise FileExistsError(
                f"{root} is not empty and holds no synthetic-faces generator.json; refusing to write into it. "
                "Choose an empty or new folder."
            )
        if (root / "generator.json").is_file() and not (root / ".incomplete").is_file() and not overwrite:
            raise FileExistsError(
                f"{root} holds synthetic faces written with other parameters (its generator.json differs from "
                f"{self.spec()['params']}); pass overwrite=True (CLI: --overwrite) to replace them, "
                "or use another root."
            )
        _remove_generated(root)

    def _rendered(self, jobs: Sequence[tuple[int, int]]) -> Iterator[tuple[bytes, np.ndarray, dict[str, Any]]]:
        if self.workers > 1:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(max_workers=self.workers) as ex:
                yield from ex.map(self._render_png, jobs, chunksize=8)
        else:
            for job in jobs:
                yield self._render_png(job)

    def _render_png(self, job: tuple[int, int]) -> tuple[bytes, np.ndarray, dict[str, Any]]:
        img, landmarks, meta = self.render(*job)
        return _png(img), landmarks, meta

    def _write_broken(self, root: Path, lm_rows: list[list[str]], meta_rows: list[list[str]]) -> None:
        for k, rel in enumerate(BROKEN_FILES):
            img, landmarks, meta = self.render(0, self.images_per_identity + k)
            meta["path"] = rel
            png = _png(img)
            if "corrupt" in rel:
                png = png[:8] + bytes(_rng(self.seed, 7).integers(0, 256, 256, dtype=np.uint8))
            with atomic_path(root / rel) as tmp:
                tmp.write_bytes(png)
            row = _landmark_row(rel, landmarks)
            if "malformed" in rel:
                row[1] = "x12.5"
            elif "nolandmarks" in rel:
                row[1:] = [""] * 10
            lm_rows.append(row)
            meta_rows.append(_meta_row(meta))


def _png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img[..., ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:  # pragma: no cover
        raise RuntimeError("PNG encoding failed")
    return buf.tobytes()


def _landmark_row(path: str, landmarks: np.ndarray) -> list[str]:
    return [path, *(f"{v:.2f}" for v in np.asarray(landmarks, dtype=np.float64).reshape(-1))]


def _meta_row(meta: Mapping[str, Any]) -> list[str]:
    fmt = {"yaw": "{:.2f}", "roll": "{:.2f}", "scale": "{:.4f}", "illumination": "{:.4f}", "severity": "{:.4f}"}
    fmt.update({name: "{:.4f}" for name in DEGRADATIONS})
    return [fmt[c].format(meta[c]) if c in fmt else str(meta[c]) for c in META_COLUMNS]


def _write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    with atomic_path(path) as tmp:
        tmp.write_text(buf.getvalue())


def _remove_generated(root: Path) -> None:
    """Delete what this generator writes under ``root`` (identity folders and its three files), nothing else."""
    import re

    for entry in root.iterdir():
        if entry.is_dir() and re.fullmatch(r"id_\d{4,}", entry.name):
            shutil.rmtree(entry)
        elif entry.name in ("landmarks.csv", "meta.csv", "generator.json", ".incomplete"):
            entry.unlink()
