"""Small file utilities shared across aikd: cache location, atomic writes and file hashes.

Everything aikd writes that took time to compute (converted weights, landmark and teacher-score caches,
checkpoints, exports, reports) goes through :func:`atomic_path`, so an interrupted run never leaves a
half-written file that a later run would trust.

Every cache (trained teachers, backbone features, teacher scores, landmarks, converted FaceNet/SFace weights,
generated faces) lives under one root, :func:`cache_root`. Outside a pipeline run that is ``$AIKD_CACHE`` or
``~/.cache/aikd``. A pipeline run uses its config's ``paths.cache_dir`` instead: :func:`aikd.app.pipeline.run` passes it
explicitly where the call chain is short (teacher, teacher scores, features) and wraps the run in
:func:`use_cache_root` for the caches reached through long chains of configured objects (a data source that
detects missing landmarks, a backbone whose ``weights="default"`` are converted on first use), so that overriding
``paths.cache_dir`` never splits one run's caches over two places.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "cache_root",
    "cache_dir",
    "use_cache_root",
    "atomic_path",
    "current_umask",
    "write_json",
    "write_text",
    "sha256_file",
    "content_key",
    "data_root",
]

#: The cache root of the pipeline run in progress, set only by :func:`use_cache_root` (``None``: no run).
_run_cache_root: Path | None = None


def cache_root() -> Path:
    """The root of aikd's caches: the running pipeline's ``paths.cache_dir``, else ``$AIKD_CACHE``, else
    ``~/.cache/aikd`` (not created here)."""
    if _run_cache_root is not None:
        return _run_cache_root
    return Path(os.environ.get("AIKD_CACHE") or Path.home() / ".cache" / "aikd").expanduser()


def cache_dir(sub: str | None = None) -> Path:
    """``sub`` under :func:`cache_root` (or the root itself), created on demand."""
    root = cache_root()
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def use_cache_root(root: str | Path) -> Iterator[Path]:
    """Make ``root`` the cache root of every :func:`cache_dir` call inside the block, then restore the previous one.

    The pipeline wraps a whole run in it so that caches written deep inside configured objects land under the
    run's ``paths.cache_dir``, like the caches it passes that root to explicitly. It is process state: threads
    started inside the block and forked workers see it; processes started with ``spawn`` do not (they fall back
    to ``$AIKD_CACHE``), which is why the pipeline hands the root explicitly to the teacher and score caches that
    distributed workers fill. Blocks nest; the innermost wins.

    Args:
        root: the cache root (``~`` is expanded; created if missing).

    Yields:
        The root as an expanded path.
    """
    global _run_cache_root
    previous = _run_cache_root
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    _run_cache_root = path
    try:
        yield path
    finally:
        _run_cache_root = previous


def data_root() -> Path | None:
    """Root of shared development data (``$AIKD_DATA``: the folder holding ``cfp/``), or ``None`` if unset."""
    value = os.environ.get("AIKD_DATA")
    return Path(value).expanduser() if value else None


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success move it over ``path`` in one rename.

    The temporary file lives in the same directory so the final ``os.replace`` is atomic on POSIX; on error it
    is removed and any previous ``path`` is left untouched. Its name ends with ``path``'s extension
    (``.student.<random>.tmp.pt2``), as writers that infer the format from the name (``torch.export.save``,
    matplotlib) expect.

    The final file gets the permissions of a plain ``open(path, "w")`` (``0o666 & ~umask``), set just before the
    rename: ``mkstemp`` creates ``0o600``, and writers that themselves replace the temporary file (safetensors
    writes its own temporary file and renames it) would otherwise leave an export or a shared cache entry that
    only its creator can read.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set back at once)."""
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def write_text(path: str | Path, text: str) -> Path:
    """Atomically write ``text`` to ``path``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON."""
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (model files run to hundreds of MB).

    The one file hash of aikd and its teachers: model identities (ONNX teachers, bundled ONNX models, converted
    weights' sources) are compared against digests written by it, so two implementations must never drift.
    """
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=1 << 20)
def _content_key(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return f"{size}:{h.hexdigest()}"


def content_key(path: str | Path) -> str:
    """``"<size>:<blake2b-128 of the bytes>"`` of a data file, or ``"missing:<resolved path>"`` when it cannot be
    read (two missing files are not the same face).

    What keys the per-image caches (features, teacher scores, trained teachers) to a dataset's *content*: a copy of
    the data (to a node's scratch disk, a re-provisioned volume, another root) has new modification times and a new
    path, and a key made of those would send every face through the backbone again. Hashing costs one read of each
    file (about 3 s for CFP's 7,000 photos on 2 cores), done once per file and process (memoised by path, size and
    modification time, so a file changed in place is read again).
    """
    try:
        st = os.stat(path)
        return _content_key(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    except OSError:
        return f"missing:{Path(path).resolve()}"
