"""Small file utilities shared across aikd: cache location and atomic writes.

Everything aikd writes that took time to compute (converted weights, landmark and teacher-score caches,
checkpoints, exports, reports) goes through :func:`atomic_path`, so an interrupted run never leaves a
half-written file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["cache_dir", "atomic_path", "current_umask", "write_json", "write_text", "sha256_file", "data_root"]


def cache_dir(sub: str | None = None) -> Path:
    """aikd's cache directory: ``$AIKD_CACHE`` or ``~/.cache/aikd`` (created on demand)."""
    root = Path(os.environ.get("AIKD_CACHE") or Path.home() / ".cache" / "aikd").expanduser()
    path = root / sub if sub else root
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    """Hex SHA-256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
