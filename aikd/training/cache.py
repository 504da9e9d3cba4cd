"""Per-image caches: model outputs on the properly aligned faces of a dataset, computed once.

Distillation needs what the frozen teacher says about each training face's clean alignment; training a
quality head on a frozen backbone needs the backbone's embeddings - and so does scoring such a teacher: its
scores are its head on those cached embeddings, so every head on one backbone costs a single backbone pass.
None of this depends on the student, the misalignment or the sweep, so aikd computes it once and stores it in a
directory keyed by

* the model's fingerprint (weights + config),
* the dataset's image list (relative paths, each file's size and content hash, landmarks: a copy of the data
  elsewhere, with new modification times, finds its caches),
* the canvas and the model's crop geometry,

so every run and sweep job with the same model and data reuses them, and a changed model or dataset gets a
new entry. Arrays are memory-mapped ``.npy`` files (memory does not grow with the dataset) with a ``done``
mask that makes filling them resumable: an interrupted run continues where it stopped.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch import Tensor

from aikd.data.index import FaceIndex
from aikd.geometry.align import Canvas
from aikd.io import atomic_path, content_key, current_umask, write_json

log = logging.getLogger(__name__)

__all__ = [
    "DegradedTeacherScores",
    "RowCache",
    "TeacherScoreCache",
    "dataset_fingerprint",
    "cache_key",
    "degraded_teacher_scores",
    "canvas_batch",
    "feature_cache",
    "features_root_for",
    "fill_cache",
    "fill_lock",
    "fill_scores_from_features",
    "head_only_scoring",
    "open_feature_cache",
    "open_teacher_score_cache",
    "reuse_rows",
    "row_keys",
    "teacher_scores",
    "teacher_scores_from_features",
    "teacher_score_cache",
]


def dataset_fingerprint(index: FaceIndex, stat_files: bool = True) -> str:
    """Hash of the image list: relative paths, landmarks, and each file's size and content hash when ``stat_files``.

    Neither the root nor modification times enter, so the same data copied elsewhere keeps its caches (see
    :func:`aikd.io.content_key`); without ``stat_files`` the root does, as nothing else tells two datasets apart.
    """
    h = hashlib.sha256()
    if not stat_files:
        h.update(str(Path(index.root).resolve()).encode())
    for rel in index.paths:
        h.update(rel.encode())
        if stat_files:
            h.update(content_key(Path(index.root) / rel).encode())
    h.update(np.ascontiguousarray(np.nan_to_num(index.landmarks.astype(np.float32), nan=-1.0)).tobytes())
    return h.hexdigest()[:16]


def cache_key(
    model_fingerprint: str, data_fingerprint: str, canvas: Canvas, extra: Mapping[str, Any] | None = None
) -> str:
    """Directory name of a cache entry."""
    blob = json.dumps(
        {
            "model": model_fingerprint,
            "data": data_fingerprint,
            "canvas": {"size": canvas.size, "face": canvas.face.to_dict()},
            "extra": dict(extra or {}),
        },
        sort_keys=True,
    )
    return f"{model_fingerprint}-{data_fingerprint}-{hashlib.sha256(blob.encode()).hexdigest()[:8]}"


def _create_once(path: Path, dtype: Any, shape: tuple[int, ...]) -> None:
    """Create the zero-filled ``.npy`` array ``path`` unless it exists, atomically and without ever replacing it.

    Runs started together (the seeds of a sweep on one node) open the same cache entry at the same moment. A plain
    rename would let the second one replace an array the first has begun filling (its rows would be lost, or worse,
    marked done in ``done.npy`` with zeros in the replaced file); a hard link of a private temporary file fails
    instead when the array is already there, and the loser simply opens the winner's array.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".tmp.npy", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)  # zero-filled
        arr.flush()
        del arr
        os.chmod(tmp, 0o666 & ~current_umask())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use that one
        except OSError:  # a file system without hard links: a rename, which cannot tell the race apart
            if not path.exists():
                os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def fill_lock(cache: RowCache, desc: str = "caching") -> Iterator[None]:
    """Hold ``cache``'s fill lock (``fill.lock`` in its directory, an OS file lock that dies with its process).

    Only one process fills an entry at a time: another run that needs the same rows (a sweep's other seeds,
    started together) waits, says so, and then finds them done instead of computing them again. On a file system
    without OS locks (some network mounts) it fills unlocked, as before: a lock file that outlives a crashed run
    would block every later run, which is worse than computing rows twice.
    """
    lock = FileLock(cache.directory / "fill.lock", fallback_to_soft=False)
    try:
        lock.acquire(blocking=False)
    except Timeout:
        log.info(
            "%s: another process is filling %s; waiting for it instead of computing its rows twice",
            desc,
            cache.directory,
        )
        lock.acquire()
    except (NotImplementedError, OSError) as err:  # after Timeout, which is an OSError too
        log.warning("%s: no file lock on %s (%s); filling without one", desc, cache.directory, err)
        yield
        return
    try:
        yield
    finally:
        lock.release()


class RowCache:
    """Memory-mapped per-row arrays with a ``done`` mask.

    Args:
        directory: the entry's directory.
        n: number of rows (dataset images).
        fields: name -> ``(shape per row, dtype)``, e.g.
            ``{"quality": ((), np.float32), "embedding": ((512,), np.float16)}``.
        meta: description written to ``meta.json`` on creation.

    Files: ``<field>.npy`` of shape ``(n, *shape)``, ``done.npy`` and ``meta.json``. Opening an existing entry
    with other sizes is an error that says to delete it.
    """

    def __init__(
        self,
        directory: str | Path,
        n: int,
        fields: Mapping[str, tuple[tuple[int, ...], Any]],
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.n = int(n)
        spec = {k: [list(s), np.dtype(d).str] for k, (s, d) in fields.items()}
        meta_path = self.directory / "meta.json"
        if meta_path.is_file():
            stored = json.loads(meta_path.read_text())
            if stored.get("n") != self.n or stored.get("fields") != spec:
                raise ValueError(
                    f"cache {self.directory} holds n={stored.get('n')}, fields={stored.get('fields')} but "
                    f"n={self.n}, fields={spec} was expected; delete the directory to rebuild it"
                )
        else:
            write_json(meta_path, {"n": self.n, "fields": spec, **dict(meta or {})})
        self.arrays = {k: self._open(f"{k}.npy", d, (self.n, *s)) for k, (s, d) in fields.items()}
        self.done = self._open("done.npy", np.bool_, (self.n,))

    def __getstate__(self) -> dict[str, Any]:
        # Pickled (e.g. for spawned DDP workers) by location: memory maps are reopened, never copied.
        state = dict(self.__dict__)
        state["arrays"] = {k: (v.shape[1:], v.dtype) for k, v in self.arrays.items()}
        state["done"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.arrays = {k: self._open(f"{k}.npy", d, (self.n, *s)) for k, (s, d) in state["arrays"].items()}
        self.done = self._open("done.npy", np.bool_, (self.n,))

    def _open(self, name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        path = self.directory / name
        if not path.is_file():
            _create_once(path, dtype, shape)
        arr = np.load(path, mmap_mode="r+")
        if arr.shape != shape or arr.dtype != np.dtype(dtype):
            raise ValueError(
                f"{path}: shape/dtype {arr.shape}/{arr.dtype} != expected {shape}/{np.dtype(dtype)}; delete it"
            )
        return arr

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    def todo(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows (of ``rows``, default all) still to compute."""
        rows = np.arange(self.n) if rows is None else np.asarray(rows, dtype=np.int64)
        return rows[~self.done[rows]]

    def write(self, rows: np.ndarray | Tensor, **values: Tensor | np.ndarray) -> None:
        """Store values for ``rows``; the rows are marked done after their values are written."""
        r = np.asarray(rows.cpu() if isinstance(rows, Tensor) else rows, dtype=np.int64)
        for k, v in values.items():
            arr = v.detach().float().cpu().numpy() if isinstance(v, Tensor) else np.asarray(v)
            self.arrays[k][r] = arr.astype(self.arrays[k].dtype)
        self.done[r] = True

    def flush(self) -> None:
        for arr in (*self.arrays.values(), self.done):
            arr.flush()

    def read(self, rows: np.ndarray | Tensor, *names: str) -> tuple[Tensor, ...]:
        """float32 tensors of ``names`` for ``rows`` (on the rows' device); missing rows are an error."""
        device = rows.device if isinstance(rows, Tensor) else torch.device("cpu")
        r = np.asarray(rows.detach().cpu() if isinstance(rows, Tensor) else rows, dtype=np.int64)
        if not self.done[r].all():
            raise KeyError(f"cache {self.directory} lacks rows {r[~self.done[r]][:5].tolist()}; fill it first")
        return tuple(torch.from_numpy(np.asarray(self.arrays[k][r], dtype=np.float32)).to(device) for k in names)


def canvas_batch(batch: Mapping[str, Tensor], device: str | torch.device) -> dict[str, Tensor]:
    """A collated batch of :class:`~aikd.data.dataset.AlignedFaces` as ``compute`` functions receive it: canvases
    as float in ``[0, 1]`` and the geometry, on ``device`` (shared by :func:`fill_cache` and the DDP predict loop
    of :mod:`aikd.training.distributed`, so both store the same numbers)."""
    dev = torch.device(device)
    return {
        "image": batch["image"].to(dev).float() / 255.0,
        "landmarks": batch["landmarks"].to(dev),
        "canvas_from_source": batch["canvas_from_source"].to(dev),
        "index": batch["index"].to(dev),
        "identity": batch["identity"].to(dev),
    }


def fill_cache(
    cache: RowCache,
    index: FaceIndex,
    canvas: Canvas,
    compute: Callable[[dict[str, Tensor]], Mapping[str, Tensor]],
    rows: np.ndarray | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    flush_every_s: float = 30.0,
    progress: bool = True,
    desc: str = "caching",
    degrade: Any | None = None,
    variant: int = 0,
) -> RowCache:
    """Compute the missing rows of ``cache``: stream canvases of ``index`` and store ``compute(batch)``.

    ``compute`` receives a batch on ``device`` (``image`` as float canvases in ``[0, 1]``, ``landmarks``,
    ``canvas_from_source``, ``index``) and returns a dict of per-row tensors named like the cache fields.
    Rows without landmarks or with unreadable images are skipped (they stay not-done). Progress is flushed
    to disk every ``flush_every_s`` seconds, so an interrupted fill resumes.

    With a :class:`~aikd.data.degrade.Degradation` ``degrade`` (``variants`` set) this fills version ``variant``
    of a degradation-keyed cache of ``len(index) x variants`` rows: the faces are degraded as in epoch
    ``variant`` and index row ``r`` is stored at row ``r * variants + variant`` (``rows`` are index rows).

    The entry's :func:`fill_lock` is held while filling, so runs started together compute each row once.
    """
    from tqdm.auto import tqdm

    from aikd.data.dataset import face_loader

    stride = 1 if degrade is None else int(degrade.variants)
    rows = np.arange(len(index) if degrade is not None else cache.n) if rows is None else np.asarray(rows, np.int64)
    if cache.done[rows * stride + variant].all():
        return cache
    with fill_lock(cache, desc):
        todo = rows[~cache.done[rows * stride + variant]]  # decided under the lock: another run may have filled them
        if len(todo) == 0:
            return cache
        loader = face_loader(
            index, canvas, todo, batch_size=batch_size, num_workers=num_workers, degrade=degrade, epoch=variant
        )
        if len(loader.dataset) == 0:
            return cache
        dev = torch.device(device)
        last = time.monotonic()
        log.info(
            "%s: %d of %d rows to compute (%d cached) in %s",
            desc,
            len(loader.dataset),
            cache.n,
            int(cache.done.sum()),
            cache.directory,
        )
        with torch.inference_mode():
            for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress):
                if len(batch["index"]) == 0:
                    continue
                cache.write(batch["index"] * stride + variant, **compute(canvas_batch(batch, dev)))
                if time.monotonic() - last > flush_every_s:
                    cache.flush()
                    last = time.monotonic()
        cache.flush()
    return cache


class TeacherScoreCache(RowCache):
    """Teacher quality ``(N,)`` (float32) and embedding ``(N, D)`` (float16) on the clean alignment."""

    def __init__(
        self, directory: str | Path, n: int, embedding_dim: int | None, meta: Mapping[str, Any] | None = None
    ) -> None:
        fields: dict[str, tuple[tuple[int, ...], Any]] = {"quality": ((), np.float32)}
        if embedding_dim:
            fields["embedding"] = ((int(embedding_dim),), np.float16)
        super().__init__(directory, n, fields, meta)
        self.embedding_dim = embedding_dim

    def lookup(self, rows: Tensor) -> tuple[Tensor, Tensor | None]:
        """Teacher quality ``(B,)`` and embedding ``(B, D)`` (or ``None``) for dataset rows."""
        if self.embedding_dim:
            q, e = self.read(rows, "quality", "embedding")
            return q, e
        (q,) = self.read(rows, "quality")
        return q, None


def open_teacher_score_cache(teacher: Any, index: FaceIndex, canvas: Canvas, root: str | Path) -> TeacherScoreCache:
    """The teacher-score cache entry of ``teacher`` on ``index`` (created empty if new; nothing is computed)."""
    key = cache_key(
        teacher.fingerprint, dataset_fingerprint(index), canvas, {"geometry": teacher.input_spec.geometry.to_dict()}
    )
    return TeacherScoreCache(
        Path(root) / key,
        len(index),
        teacher.embedding_dim,
        meta={"teacher": teacher.describe(), "data_root": str(index.root), "n_images": len(index)},
    )


def _score_values(teacher: Any, quality: Tensor, embedding: Tensor | None) -> dict[str, Tensor]:
    """The fields of a teacher-score cache row: float32 ``quality`` ``(B,)`` and, for teachers with one, the
    embedding (the same post-processing as a frozen teacher's ``forward``)."""
    values = {"quality": quality.reshape(-1).float()}
    if teacher.embedding_dim and embedding is not None:
        values["embedding"] = embedding.float()
    return values


def teacher_scores(teacher: Any, batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The teacher's raw quality (and embedding) of the properly aligned crop of each canvas in ``batch``.

    This is the distillation target, so there is one definition of it: the teacher-score cache stores it
    (:func:`teacher_score_cache`, and each rank of the DDP pass in :mod:`aikd.training.distributed`) and distillation's
    online mode computes it per batch (``DistillModule``); a cached run and an online run thus train on the same
    numbers.

    Args:
        teacher: the frozen teacher, on the batch's device.
        batch: ``image`` (float canvases in ``[0, 1]``, e.g. from :func:`canvas_batch`), ``landmarks`` and
            ``canvas_from_source``.

    Returns:
        ``{"quality": (B,)}`` plus ``"embedding": (B, D)`` for teachers with an embedding.
    """
    from aikd.geometry.align import crop

    geometry = teacher.input_spec.geometry
    crops = crop(batch["image"], batch["landmarks"], geometry, batch["canvas_from_source"])
    out = teacher(crops)
    return _score_values(teacher, out.quality, out.embedding)


def head_only_scoring(teacher: Any) -> bool:
    """Whether ``teacher``'s scores can be computed from cached backbone features with its head alone.

    True for an :class:`~aikd.models.teacher.EmbeddingTeacher` whose backbone is frozen (its weights are the pretrained
    ones, shared by every head trained on them, so one feature cache serves them all) and whose ``predict`` is
    the plain ``head(features(faces))`` (a subclass that changes either is scored from images, to be safe).
    """
    from aikd.models.teacher import EmbeddingTeacher

    cls = type(teacher)
    return (
        isinstance(teacher, EmbeddingTeacher)
        and teacher.backbone_frozen
        and cls.predict is EmbeddingTeacher.predict
        and cls.features is EmbeddingTeacher.features
    )


def teacher_scores_from_features(teacher: Any, features: Tensor) -> dict[str, Tensor]:
    """:func:`teacher_scores` from the backbone features of the clean crops (``teacher.head`` only, eval mode).

    For a teacher where :func:`head_only_scoring` holds this equals :func:`teacher_scores` on the crops the
    features were computed from (to float rounding), without running the backbone.
    """
    teacher.eval()
    with torch.no_grad():
        out = teacher.head(features)
    return _score_values(teacher, out.quality, out.embedding)


def open_feature_cache(
    teacher: Any, index: FaceIndex, canvas: Canvas, root: str | Path, create: bool = True
) -> RowCache | None:
    """The backbone-feature cache entry of ``teacher`` on ``index`` (nothing is computed).

    The key is the backbone's fingerprint (weights, name, input spec), not the teacher's: every head trained on a
    frozen backbone (CR-FIQA, RI, MagFace-style heads; each new recipe or seed) shares the entry. With
    ``create=False`` a missing entry gives ``None`` instead of an empty one on disk.
    """
    key = cache_key(
        teacher.backbone_fingerprint(),
        dataset_fingerprint(index),
        canvas,
        {"geometry": teacher.input_spec.geometry.to_dict()},
    )
    directory = Path(root) / key
    if not create and not (directory / "meta.json").is_file():
        return None
    cache = RowCache(
        directory,
        len(index),
        {"features": ((int(teacher.backbone.embedding_dim),), np.float32)},
        meta={"backbone": teacher.config.get("backbone")},
    )
    _tag_rows(cache, index, _reuse_tag(teacher, canvas))
    return cache


def row_keys(index: FaceIndex) -> np.ndarray:
    """``(N, 16)`` uint8: one key per row from the image's content (:func:`aikd.io.content_key`) and its landmarks,
    so the same face reached through another index (another split of the data, extra training faces joined to it,
    another root, a copy with new modification times) has the same key."""
    lm = np.ascontiguousarray(np.nan_to_num(index.landmarks.astype(np.float32), nan=-1.0))
    keys = np.zeros((len(index), 16), dtype=np.uint8)
    for i, rel in enumerate(index.paths):
        path = Path(index.root) / rel
        h = hashlib.blake2b(f"{content_key(path)}\0".encode(), digest_size=16)
        h.update(lm[i].tobytes())
        keys[i] = np.frombuffer(h.digest(), dtype=np.uint8)
    return keys


def _reuse_tag(teacher: Any, canvas: Canvas) -> dict[str, Any]:
    """What, besides the face, decides a backbone feature: the backbone, the canvas and the crop geometry."""
    return {
        "backbone": teacher.backbone_fingerprint(),
        "canvas": {"size": canvas.size, "face": canvas.face.to_dict()},
        "geometry": teacher.input_spec.geometry.to_dict(),
    }


def _tag_rows(cache: RowCache, index: FaceIndex, tag: Mapping[str, Any]) -> None:
    """Write the entry's row keys and reuse tag once (entries made before keys existed get them when opened)."""
    keys_path = cache.directory / "row_keys.npy"
    if keys_path.is_file() and (cache.directory / "reuse.json").is_file():
        return
    with atomic_path(keys_path) as tmp, open(tmp, "wb") as f:
        np.save(f, row_keys(index))
    write_json(cache.directory / "reuse.json", dict(tag))


def _slot_keys(face_keys: np.ndarray, slots: np.ndarray, variants: int | None) -> list[bytes]:
    """The reuse key of each cache row in ``slots``: the face's :func:`row_keys` key, and for a cache of degraded
    versions (``variants`` per face, row ``r * variants + v``) also ``r`` and ``v``, since a face's degradation is
    drawn from ``(seed, version, row)`` (:class:`~aikd.data.degrade.Degradation`): the same face at another row
    is degraded differently."""
    if not variants:
        return [face_keys[s].tobytes() for s in slots]
    r, v = np.divmod(np.asarray(slots, np.int64), int(variants))
    return [face_keys[a].tobytes() + np.asarray([a, b], "<i8").tobytes() for a, b in zip(r, v)]


def reuse_rows(cache: RowCache, rows: np.ndarray | None = None) -> int:
    """Copy into ``cache`` the features of its rows still to do (of ``rows``, default all) that another entry of
    the same backbone, canvas and crop geometry (and, for degraded faces, the same degradation) already holds;
    return how many were copied.

    A feature entry is keyed by the whole image list, so a new split or extra training faces would otherwise send
    every face through the backbone again (minutes per thousand faces on a CPU); rows are matched by
    :func:`row_keys` (degraded versions also by row and version, see :func:`_slot_keys`: a split that extends
    another one, or extra faces appended to a dataset, keep their rows). Entries without keys (made by an older
    aikd and not opened since) are not searched.
    """
    todo = cache.todo(rows)
    if len(todo) == 0 or not (cache.directory / "reuse.json").is_file():
        return 0
    tag = json.loads((cache.directory / "reuse.json").read_text())
    variants = tag.get("variants")
    own = np.load(cache.directory / "row_keys.npy")
    want = dict(zip(_slot_keys(own, todo, variants), todo.tolist()))
    copied = 0
    for other in sorted(cache.directory.parent.glob(f"{tag['backbone']}-*")):
        if other == cache.directory or not want:
            continue
        try:
            if json.loads((other / "reuse.json").read_text()) != tag:
                continue
            keys = np.load(other / "row_keys.npy")
            done = np.load(other / "done.npy", mmap_mode="r")
            features = np.load(other / "features.npy", mmap_mode="r")
        except (OSError, ValueError):  # no keys yet, or an entry being written: skip it
            continue
        if len(keys) * (variants or 1) != len(done) or features.shape[1:] != cache.arrays["features"].shape[1:]:
            continue
        src, dst = [], []
        have = np.flatnonzero(done)
        for j, key in zip(have, _slot_keys(keys, have, variants)):
            i = want.pop(key, None)
            if i is not None:
                src.append(j)
                dst.append(i)
        if dst:
            cache.write(np.asarray(dst), features=np.asarray(features[np.asarray(src)]))
            copied += len(dst)
            log.info("backbone features: %d rows reused from %s", len(dst), other)
    cache.flush()
    return copied


def _backbone_features(teacher: Any, device: str | torch.device) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """The ``compute`` of a backbone-feature cache: the teacher's backbone on its aligned crops of a canvas batch."""
    from aikd.geometry.align import crop

    backbone = teacher.backbone
    backbone.to(device).eval()
    geometry = teacher.input_spec.geometry

    def compute(b: dict[str, Tensor]) -> dict[str, Tensor]:
        crops = crop(b["image"], b["landmarks"], geometry, b["canvas_from_source"])
        return {"features": backbone(crops)}

    return compute


def feature_cache(
    teacher: Any,
    index: FaceIndex,
    canvas: Canvas,
    root: str | Path,
    batch_size: int = 64,
    device: str | torch.device = "cpu",
    num_workers: int = 0,
    rows: np.ndarray | None = None,
    progress: bool = True,
) -> RowCache:
    """Backbone features of the teacher's clean crops of ``index`` (of ``rows``, default all), cached.

    Only rows whose features are not cached yet go through the backbone.
    """
    cache = open_feature_cache(teacher, index, canvas, root)
    assert cache is not None
    reuse_rows(cache, rows)
    return fill_cache(
        cache,
        index,
        canvas,
        _backbone_features(teacher, device),
        rows=rows,
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=progress,
        desc="backbone features",
    )


def fill_scores_from_features(
    cache: RowCache,
    teacher: Any,
    features: RowCache,
    rows: np.ndarray | None = None,
    device: str | torch.device | None = None,
    chunk: int = 4096,
) -> int:
    """Fill the rows of a teacher-score ``cache`` (of ``rows``, default all) that are still to do and whose
    backbone ``features`` are cached, with the teacher's head alone; return how many rows were written.

    The head is a few small layers, so this takes milliseconds where the backbone pass takes minutes; rows
    without cached features are left for the caller. ``device`` defaults to the teacher's.
    """
    if device is None:
        device = next(iter(teacher.parameters()), torch.empty(0)).device
    todo = cache.todo(rows)
    todo = todo[features.done[todo]]
    for s in range(0, len(todo), chunk):
        part = todo[s : s + chunk]
        (f,) = features.read(part, "features")
        cache.write(part, **teacher_scores_from_features(teacher, f.to(device)))
    cache.flush()
    return len(todo)


def features_root_for(root: str | Path) -> Path:
    """Default backbone-feature cache root next to a teacher-score cache root: ``<cache>/teacher_scores`` ->
    ``<cache>/features``, where teacher training (``aikd.training.teacher_fit.train_teacher``) puts its features."""
    return Path(root).parent / "features"


def teacher_score_cache(
    teacher: Any,
    index: FaceIndex,
    canvas: Canvas,
    root: str | Path,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    features_root: str | Path | None = None,
    reuse_features: bool = True,
) -> TeacherScoreCache:
    """Open (and fill if needed) the teacher-score cache for ``teacher`` on ``index``.

    A teacher whose backbone is frozen (:func:`head_only_scoring`) is scored from the backbone's cached features
    with its head alone: the features of the missing rows are computed once (and only those not cached yet,
    e.g. by teacher training), then every head on that backbone - each new recipe, objective or seed - costs
    milliseconds instead of a backbone pass over the dataset. Other teachers run on the images.

    Args:
        teacher: the frozen teacher.
        index: the faces.
        canvas: the canvas faces are aligned onto.
        root: the teacher-score cache root (``<cache>/teacher_scores``).
        batch_size: images per batch of an image pass.
        num_workers: loader worker processes.
        device: where the teacher runs.
        progress: show progress bars.
        features_root: the backbone-feature cache root (default: :func:`features_root_for` ``root``).
        reuse_features: ``False`` scores every teacher from images (and writes no feature cache).
    """
    cache = open_teacher_score_cache(teacher, index, canvas, root)
    teacher.to(device)
    if reuse_features and head_only_scoring(teacher):
        todo = cache.todo()
        if len(todo) == 0:
            return cache
        features = feature_cache(
            teacher,
            index,
            canvas,
            features_root_for(root) if features_root is None else features_root,
            batch_size=batch_size,
            device=device,
            num_workers=num_workers,
            rows=todo,
            progress=progress,
        )
        n = fill_scores_from_features(cache, teacher, features, todo, device=device)
        log.info(
            "teacher %s: %d rows scored by the head on cached backbone features (%s)",
            teacher.name,
            n,
            features.directory,
        )
        return cache
    return fill_cache(
        cache,
        index,
        canvas,
        functools.partial(teacher_scores, teacher),
        batch_size=batch_size,
        num_workers=num_workers,
        device=device,
        progress=progress,
        desc=f"teacher {teacher.name}",
    )


class DegradedTeacherScores:
    """Teacher scores of degraded training faces (``conf/degrade`` with ``variants``), looked up by face and epoch.

    A :class:`~aikd.data.degrade.Degradation` with ``variants=V`` gives each face ``V`` versions (epoch ``e``
    shows version ``e mod V``), each degraded or left clean by its own draw. The degraded versions' scores live in
    ``degraded`` (``len(index) x V`` rows, row ``r * V + v``); a version the draw leaves clean is the clean face,
    whose score is in ``clean`` (the run's ordinary teacher-score cache), so only degraded faces cost a teacher
    pass. :meth:`lookup` returns exactly what the online teacher would compute for the batch.
    """

    def __init__(self, clean: TeacherScoreCache, degraded: TeacherScoreCache, degradation: Any) -> None:
        if not getattr(degradation, "variants", None):
            raise ValueError("a degradation-keyed score cache needs degrade.variants (a number of versions per face)")
        if degraded.n != clean.n * int(degradation.variants):
            raise ValueError(f"{degraded.directory}: {degraded.n} rows for {clean.n} faces x {degradation.variants}")
        self.clean = clean
        self.degraded = degraded
        self.degradation = degradation

    @property
    def embedding_dim(self) -> int | None:
        return self.clean.embedding_dim

    def lookup(
        self, rows: Tensor, epochs: Tensor | None = None, degraded: Tensor | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Teacher quality ``(B,)`` and embedding ``(B, D)`` (or ``None``) of faces ``rows`` as degraded in
        ``epochs`` (the batch's ``epoch``, which degrading training loaders add). ``degraded``: which faces the
        draw degraded (the batch's ``degraded``, drawn by the loader); drawn again here when not given."""
        if epochs is None:
            raise ValueError(
                "degraded teacher scores need the epoch of each face (batch['epoch'], added by a degrading loader)"
            )
        quality, embedding = self.clean.lookup(rows)
        r = rows.detach().cpu().numpy().astype(np.int64)
        e = epochs.detach().cpu().numpy().astype(np.int64)
        deg = self.degradation
        if degraded is not None:
            mask = degraded.detach().cpu().numpy().astype(bool)
        else:
            mask = np.fromiter((deg.applies(int(a), int(b)) for a, b in zip(r, e)), dtype=bool, count=len(r))
        if not mask.any():
            return quality, embedding
        slots = r[mask] * int(deg.variants) + np.asarray([deg.variant(int(b)) for b in e[mask]], dtype=np.int64)
        dq, de = self.degraded.lookup(torch.from_numpy(slots).to(rows.device))
        sel = torch.from_numpy(mask).to(rows.device)
        quality = quality.clone()
        quality[sel] = dq
        if embedding is not None and de is not None:
            embedding = embedding.clone()
            embedding[sel] = de
        return quality, embedding


def degraded_teacher_scores(
    teacher: Any,
    index: FaceIndex,
    canvas: Canvas,
    root: str | Path,
    degradation: Any,
    clean: TeacherScoreCache,
    batch_size: int = 64,
    num_workers: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    features_root: str | Path | None = None,
    reuse_features: bool = True,
) -> DegradedTeacherScores:
    """Open (and fill if needed) the teacher's scores of every degraded version of the faces of ``index``.

    The cache entry is keyed by the teacher, the data, the canvas and :meth:`Degradation.fingerprint
    <aikd.data.degrade.Degradation.fingerprint>` (pipeline, ``p``, seed, variants), so another degradation gets
    its own entry and an interrupted fill resumes. For a teacher on a frozen backbone (:func:`head_only_scoring`)
    the backbone features of the degraded faces are cached too (keyed by backbone and degradation): every head on
    that backbone - another seed's teacher - then costs milliseconds, as for clean faces.

    Args:
        teacher: the frozen teacher.
        index: the training faces (the index the degrading training loader reads).
        canvas: the canvas faces are aligned onto.
        root: the teacher-score cache root.
        degradation: the run's :class:`~aikd.data.degrade.Degradation`, with ``variants`` set.
        clean: the teacher-score cache of the clean faces of ``index`` (:func:`teacher_score_cache`).
        batch_size: images per batch.
        num_workers: loader worker processes.
        device: where the teacher runs.
        progress: show progress bars.
        features_root: the backbone-feature cache root (default: :func:`features_root_for` ``root``).
        reuse_features: ``False`` scores every degraded face with the whole teacher (no feature cache).
    """
    n_var = getattr(degradation, "variants", None)
    if not n_var:
        raise ValueError(
            "degrade.variants is null: every epoch draws new degradations, which only the online teacher can score; "
            "set degrade.variants (e.g. 4) or stage.distill.teacher_mode=online"
        )
    n_var = int(n_var)
    n = len(index)
    data_fp = dataset_fingerprint(index)
    tag = {"geometry": teacher.input_spec.geometry.to_dict(), "degrade": degradation.fingerprint()}
    scores = TeacherScoreCache(
        Path(root) / cache_key(teacher.fingerprint, data_fp, canvas, tag),
        n * n_var,
        teacher.embedding_dim,
        meta={"teacher": teacher.describe(), "data_root": str(index.root), "n_images": n, "variants": n_var},
    )
    per_variant = [np.asarray([r for r in range(n) if degradation.applies(r, v)], np.int64) for v in range(n_var)]
    slots = np.concatenate([rows * n_var + v for v, rows in enumerate(per_variant)])
    if len(scores.todo(slots)) == 0:
        return DegradedTeacherScores(clean, scores, degradation)
    teacher.to(device)
    fill_kw = {"batch_size": batch_size, "num_workers": num_workers, "device": device, "progress": progress}
    if reuse_features and head_only_scoring(teacher):
        froot = features_root_for(root) if features_root is None else Path(features_root)
        features = RowCache(
            froot / cache_key(teacher.backbone_fingerprint(), data_fp, canvas, tag),
            n * n_var,
            {"features": ((int(teacher.backbone.embedding_dim),), np.float32)},
            meta={"backbone": teacher.config.get("backbone"), "variants": n_var, "degrade": repr(degradation)},
        )
        _tag_rows(features, index, {**_reuse_tag(teacher, canvas), "degrade": tag["degrade"], "variants": n_var})
        reuse_rows(features, slots)
        compute = _backbone_features(teacher, device)
        for v, rows in enumerate(per_variant):
            desc = f"backbone features, degraded faces (version {v + 1}/{n_var})"
            fill_cache(features, index, canvas, compute, rows, desc=desc, degrade=degradation, variant=v, **fill_kw)
        fill_scores_from_features(scores, teacher, features, slots, device=device)
    else:
        compute = functools.partial(teacher_scores, teacher)
        for v, rows in enumerate(per_variant):
            desc = f"teacher {teacher.name}, degraded faces (version {v + 1}/{n_var})"
            fill_cache(scores, index, canvas, compute, rows, desc=desc, degrade=degradation, variant=v, **fill_kw)
    log.info(
        "teacher %s: scores of %d degraded faces (%d versions of %d faces) in %s",
        teacher.name,
        int(scores.done.sum()),
        n_var,
        n,
        scores.directory,
    )
    return DegradedTeacherScores(clean, scores, degradation)
