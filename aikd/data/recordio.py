"""MXNet/insightface RecordIO training sets (``train.rec`` + ``train.idx``) read without mxnet.

MS1MV2 (5.8 M faces), CASIA-WebFace, Glint360K and most face-recognition training sets are distributed in the
layout insightface writes with mxnet's ``MXIndexedRecordIO``. This module reads it with the standard library and
OpenCV, one record at a time (positional reads; the ``.rec`` is never loaded), so it works in DataLoader workers
and on machines without mxnet.

On-disk format (dmlc-core ``RecordIOWriter``, little-endian ``uint32`` words):

* a record is ``magic (0xced7230a) | lrec | data | zero padding to a multiple of 4 bytes``, with
  ``lrec = cflag << 29 | length``. ``cflag`` 0 marks a complete record. When the data holds the magic word at a
  4-byte-aligned position the writer splits it there into parts (cflag 1 = first, 2 = middle, 3 = last) and drops
  the magic word, which the reader puts back between the parts;
* ``.idx`` is text, one ``key<TAB>byte offset`` line per record;
* the data of an image record (mxnet ``recordio.pack``) is the ``IRHeader`` struct ``<IfQQ`` - ``flag`` (uint32),
  ``label`` (float32), ``id`` and ``id2`` (uint64) - then, when ``flag > 0``, ``flag`` float32 labels (a label
  array; ``label`` is then 0), then the encoded image (JPEG).

insightface layout: record 0 is a header record with ``flag > 0`` and ``label = [first identity key, end key]``:
image records are keys ``1 .. label[0] - 1`` (label: the identity, a float or the first element of an array),
and keys ``label[0] .. label[1] - 1`` are one record per identity whose label ``[start, end)`` is the range of its
image keys. Without a header record (e.g. ``im2rec`` output) every record is an image.

Images are already aligned 112x112 crops, so :class:`RecordIOSource` gives every face the ArcFace template as
its landmarks: aikd's canvas, crops and misalignments then work on them as on any aligned dataset. Index rows
point into the ``.rec`` with paths ``<name>.rec@<byte offset>``, which :func:`aikd.data.dataset.read_image`
resolves with :func:`read_record_image`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch.utils.data import Dataset

from aikd.data.index import DataError, FaceIndex

log = logging.getLogger(__name__)

__all__ = [
    "MAGIC",
    "IRHeader",
    "pack_payload",
    "unpack_payload",
    "read_idx",
    "RecordIOReader",
    "RecordIOWriter",
    "write_insightface_recordio",
    "RecordLayout",
    "insightface_layout",
    "RecordIODataset",
    "RecordIOSource",
    "record_path",
    "parse_record_path",
    "read_record_image",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24
_LENGTH_BITS = 29
_MAX_LENGTH = (1 << _LENGTH_BITS) - 1
_PATH_RE = re.compile(r"^(?P<file>.+\.rec)@(?P<offset>\d+)$")


@dataclass(frozen=True)
class IRHeader:
    """mxnet's image-record header.

    Attributes:
        flag: number of float32 labels following the struct (0: ``label`` is the only label).
        label: a float, or the ``(flag,)`` float32 label array.
        id: record id (insightface: usually the key).
        id2: high bits of the id (0).
    """

    flag: int
    label: float | np.ndarray
    id: int = 0
    id2: int = 0

    @property
    def identity(self) -> int:
        """The identity label of an image record: the label, or the first element of a label array."""
        label = self.label
        return int(label) if np.ndim(label) == 0 else int(np.asarray(label).reshape(-1)[0])


def pack_payload(header: IRHeader, data: bytes) -> bytes:
    """Record data for ``header`` and the encoded image ``data`` (what mxnet's ``recordio.pack`` produces)."""
    if np.ndim(header.label) == 0:
        return struct.pack(_IR_FORMAT, 0, float(header.label), header.id, header.id2) + bytes(data)
    labels = np.asarray(header.label, dtype="<f4").reshape(-1)
    return struct.pack(_IR_FORMAT, labels.size, 0.0, header.id, header.id2) + labels.tobytes() + bytes(data)


def unpack_payload(payload: bytes, source: str = "record") -> tuple[IRHeader, bytes]:
    """Split record data into its :class:`IRHeader` and the encoded image bytes."""
    if len(payload) < _IR_SIZE:
        raise DataError(f"{source}: {len(payload)} bytes, shorter than the {_IR_SIZE}-byte image-record header")
    flag, label, rid, rid2 = struct.unpack_from(_IR_FORMAT, payload)
    rest = memoryview(payload)[_IR_SIZE:]
    if flag > 0:
        if len(rest) < 4 * flag:
            raise DataError(f"{source}: header announces {flag} labels but the record is too short for them")
        labels = np.frombuffer(rest[: 4 * flag], dtype="<f4").astype(np.float32)
        return IRHeader(flag, labels, rid, rid2), bytes(rest[4 * flag :])
    return IRHeader(flag, float(label), rid, rid2), bytes(rest)


def read_idx(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Keys and byte offsets (``int64`` arrays, in file order) of a ``.idx`` file (``key<TAB>offset`` lines).

    Parsed by numpy in one pass (MS1MV2's index has 5.8 M lines); a malformed file is re-read line by line to name
    the first bad line.
    """
    import warnings

    path = Path(path)
    if not path.is_file():
        raise DataError(f"RecordIO index not found: {path} (expected next to the .rec, same name with .idx)")
    raw = path.read_bytes()
    text = raw.decode("ascii", errors="replace")
    newlines = np.flatnonzero(np.frombuffer(raw, np.uint8) == ord("\n"))
    line_lengths = np.diff(np.concatenate([[-1], newlines, [len(raw)]])) - 1
    n_lines = int(np.count_nonzero(line_lengths > 0))  # non-empty lines (no per-line Python objects)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # numpy warns (not raises) when it stops at unparsable text
            values = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        values = np.zeros(0, np.int64)
    if values.size != 2 * n_lines or n_lines == 0:
        for line_no, line in enumerate(text.splitlines(), start=1):
            parts = line.split()
            if line.strip() and (len(parts) != 2 or not all(p.lstrip("-").isdigit() for p in parts)):
                raise DataError(f"{path}:{line_no}: expected 'key<TAB>offset', got {line.strip()!r}")
        raise DataError(f"{path}: empty RecordIO index")
    pairs = values.reshape(-1, 2)
    return pairs[:, 0].copy(), pairs[:, 1].copy()


class RecordIOReader:
    """Random access to the records of a ``.rec`` through its ``.idx``.

    Reads are positional (``os.pread``): no shared file position, so one reader serves a DataLoader worker's
    threads, and after a fork each process reopens the file itself (the reader pickles by path).

    Args:
        rec: the ``.rec`` file.
        idx: its index (default: the ``.rec`` path with ``.idx``); ``None``-able when only :meth:`read_at` is used.
    """

    def __init__(self, rec: str | Path, idx: str | Path | None = None, load_index: bool = True) -> None:
        self.rec = Path(rec)
        if not self.rec.is_file():
            raise DataError(f"RecordIO file not found: {self.rec}")
        self.idx = Path(idx) if idx is not None else self.rec.with_suffix(".idx")
        self.size = self.rec.stat().st_size
        self._fd: int | None = None
        self._pid: int | None = None
        self.keys = np.zeros(0, np.int64)
        self.offsets = np.zeros(0, np.int64)
        if load_index:
            self.keys, self.offsets = read_idx(self.idx)
        # key -> offset through sorted arrays (16 bytes a record; a dict would take ~80 for MS1MV2's 5.8 M)
        order = np.argsort(self.keys, kind="stable")
        self._sorted_keys, self._sorted_offsets = self.keys[order], self.offsets[order]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_fd"] = state["_pid"] = None
        return state

    def __len__(self) -> int:
        return len(self.keys)

    def _file(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.rec, os.O_RDONLY)
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown
            self.close()

    def _read(self, n: int, offset: int) -> bytes:
        data = os.pread(self._file(), n, offset)
        if len(data) != n:
            raise DataError(f"{self.rec}: truncated at byte {offset} (wanted {n} bytes, file has {self.size})")
        return data

    def read_at(self, offset: int) -> bytes:
        """The data of the record starting at byte ``offset`` (parts of a split record joined)."""
        offset = int(offset)
        parts: list[bytes] = []
        pos = offset
        while True:
            magic, lrec = struct.unpack("<II", self._read(8, pos))
            if magic != MAGIC:
                raise DataError(
                    f"{self.rec}: no RecordIO record at byte {pos} (magic {magic:#010x}, expected {MAGIC:#010x}); "
                    f"the file is corrupt or {self.idx.name} does not belong to it"
                )
            cflag, length = lrec >> _LENGTH_BITS, lrec & _MAX_LENGTH
            if cflag > 3 or (not parts and cflag in (2, 3)) or (parts and cflag in (0, 1)):
                raise DataError(f"{self.rec}: byte {pos}: unexpected continuation flag {cflag} (record at {offset})")
            parts.append(self._read(length, pos + 8) if length else b"")
            pos += 8 + ((length + 3) & ~3)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts)

    def has(self, keys: np.ndarray | int) -> np.ndarray:
        """Whether each of ``keys`` is in the index."""
        keys = np.asarray(keys, dtype=np.int64)
        pos = np.clip(np.searchsorted(self._sorted_keys, keys), 0, max(len(self._sorted_keys) - 1, 0))
        return (self._sorted_keys[pos] == keys) if len(self._sorted_keys) else np.zeros(keys.shape, bool)

    def offsets_of(self, keys: np.ndarray) -> np.ndarray:
        """Byte offsets of records ``keys`` (``KeyError`` naming the first missing key)."""
        keys = np.asarray(keys, dtype=np.int64)
        found = self.has(keys)
        if not np.all(found):
            raise KeyError(f"{self.idx}: no record with key {int(keys[~found].reshape(-1)[0])}")
        return self._sorted_offsets[np.searchsorted(self._sorted_keys, keys)]

    def offset(self, key: int) -> int:
        """Byte offset of record ``key``."""
        return int(self.offsets_of(np.asarray([key]))[0])

    def read(self, key: int) -> bytes:
        """The data of record ``key``."""
        return self.read_at(self.offset(key))

    def header(self, key: int) -> IRHeader:
        """The :class:`IRHeader` of record ``key`` (reads only the header, not the image)."""
        offset = self.offset(key)
        magic, lrec = struct.unpack("<II", self._read(8, offset))
        if magic == MAGIC and lrec >> _LENGTH_BITS == 0:  # complete record: read just the struct and labels
            flag = struct.unpack("<I", self._read(4, offset + 8))[0]
            head = self._read(min(_IR_SIZE + 4 * flag, lrec & _MAX_LENGTH), offset + 8)
            return unpack_payload(head, f"{self.rec}@{offset}")[0]
        return unpack_payload(self.read_at(offset), f"{self.rec}@{offset}")[0]

    def image(self, key: int | None = None, offset: int | None = None) -> tuple[IRHeader, np.ndarray]:
        """Header and decoded ``H x W x 3`` RGB uint8 image of record ``key`` (or the record at ``offset``)."""
        offset = self.offset(key) if offset is None else int(offset)
        source = f"{self.rec}@{offset}"
        header, data = unpack_payload(self.read_at(offset), source)
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR) if data else None
        if img is None:
            raise DataError(f"{source}: cannot decode the image of this record (corrupt or not an image)")
        return header, cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _frame(payload: bytes) -> bytes:
    """One record as dmlc's writer frames it (split at 4-byte-aligned magic words; padded to 4 bytes)."""
    if len(payload) > _MAX_LENGTH:
        raise ValueError(f"a RecordIO record holds at most {_MAX_LENGTH} bytes, got {len(payload)}")
    out = bytearray()
    start = 0
    for i in range(0, len(payload) - 3, 4):
        if payload[i : i + 4] == _MAGIC_BYTES:
            out += struct.pack("<II", MAGIC, (1 if start == 0 else 2) << _LENGTH_BITS | (i - start))
            out += payload[start:i]
            start = i + 4
    out += struct.pack("<II", MAGIC, (3 if start else 0) << _LENGTH_BITS | (len(payload) - start))
    out += payload[start:]
    out += b"\0" * (-len(payload) % 4)
    return bytes(out)


class RecordIOWriter:
    """Writes an indexed RecordIO pair (``.rec`` + ``.idx``), e.g. to convert a folder dataset or for tests.

    Files are written to temporary names and moved into place by :meth:`close` (an interrupted conversion leaves
    nothing that looks complete).
    """

    def __init__(self, rec: str | Path, idx: str | Path | None = None) -> None:
        self.rec = Path(rec)
        self.idx = Path(idx) if idx is not None else self.rec.with_suffix(".idx")
        self.rec.parent.mkdir(parents=True, exist_ok=True)
        self._tmp_rec = self.rec.with_name(f".{self.rec.name}.tmp")
        self._tmp_idx = self.idx.with_name(f".{self.idx.name}.tmp")
        self._frec = open(self._tmp_rec, "wb")  # noqa: SIM115 - closed in close()
        self._fidx = open(self._tmp_idx, "w")  # noqa: SIM115
        self.keys: list[int] = []

    def write(self, key: int, payload: bytes) -> int:
        """Append record ``key``; returns its byte offset."""
        offset = self._frec.tell()
        self._frec.write(_frame(payload))
        self._fidx.write(f"{int(key)}\t{offset}\n")
        self.keys.append(int(key))
        return offset

    def close(self) -> None:
        if self._frec.closed:
            return
        self._frec.close()
        self._fidx.close()
        os.replace(self._tmp_rec, self.rec)
        os.replace(self._tmp_idx, self.idx)

    def __enter__(self) -> RecordIOWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is None:
            self.close()
        else:
            self._frec.close()
            self._fidx.close()
            for p in (self._tmp_rec, self._tmp_idx):
                p.unlink(missing_ok=True)


def write_insightface_recordio(
    rec: str | Path,
    images: Iterable[np.ndarray],
    labels: Sequence[int],
    quality: int = 95,
    array_labels: bool = False,
    header_record: bool = True,
) -> Path:
    """Write RGB face crops in the insightface training-set layout (header record, images, identity records).

    Args:
        rec: the ``.rec`` path (the ``.idx`` goes next to it).
        images: ``H x W x 3`` RGB uint8 crops (aligned 112x112 faces for insightface-style sets).
        labels: identity of each image, ``0..K-1``; images of one identity must be consecutive.
        quality: JPEG quality.
        array_labels: store each image's label as a 1-element label array (``flag=1``) instead of a float.
        header_record: write record 0 and the identity records (``False``: images only, keys from 0).
    """
    labels = [int(v) for v in labels]
    if any(b < a for a, b in zip(labels, labels[1:])):
        raise ValueError("images of one identity must be consecutive, with non-decreasing labels")
    first = 1 if header_record else 0
    with RecordIOWriter(rec) as w:
        if header_record:
            n_ids = len(set(labels))
            w.write(0, pack_payload(IRHeader(2, np.array([first + len(labels), first + len(labels) + n_ids])), b""))
        ranges: dict[int, list[int]] = {}
        for i, (img, label) in enumerate(zip(images, labels, strict=True)):
            bgr = cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
            if not ok:
                raise ValueError(f"image {i}: JPEG encoding failed")
            key = first + i
            head = IRHeader(1, np.array([label], np.float32), key) if array_labels else IRHeader(0, label, key)
            w.write(key, pack_payload(head, buf.tobytes()))
            r = ranges.setdefault(label, [key, key + 1])
            r[1] = key + 1
        if header_record:
            for j, label in enumerate(sorted(ranges)):
                key = first + len(labels) + j
                w.write(key, pack_payload(IRHeader(2, np.array(ranges[label], np.float32), key), b""))
    return Path(rec)


@dataclass
class RecordLayout:
    """Which records of a ``.rec`` are face images, and their identities.

    Attributes:
        image_keys: record keys of the images, ``(N,)``.
        labels: identity label ``0..K-1`` of each image, ``(N,)``.
        identity_ranges: label -> ``[start, end)`` image keys, from the identity records (empty without them).
    """

    image_keys: np.ndarray
    labels: np.ndarray
    identity_ranges: dict[int, tuple[int, int]] = field(default_factory=dict)


def insightface_layout(reader: RecordIOReader) -> RecordLayout:
    """Image keys and identity labels of an indexed ``.rec`` (insightface header record, or every record).

    With a header record the labels come from the identity records (one read per identity, fast even for
    MS1MV2's 85 k identities); without one every image header is read once.
    """
    head = reader.header(0) if bool(reader.has(0)) else None
    if head is not None and head.flag > 0 and np.ndim(head.label) == 1 and len(head.label) >= 2:
        id_start, id_end = int(head.label[0]), int(head.label[1])
        id_keys = np.arange(id_start, id_end, dtype=np.int64)
        if not np.all(reader.has(id_keys)):
            raise DataError(f"{reader.idx}: identity records {id_start}..{id_end - 1} (named by record 0) are missing")
        ranges = {}
        for j, key in enumerate(id_keys.tolist()):
            lo, hi = (int(v) for v in np.asarray(reader.header(key).label).reshape(-1)[:2])
            ranges[j] = (lo, hi)
        image_keys = np.concatenate([np.arange(lo, hi, dtype=np.int64) for lo, hi in ranges.values()] or [[]])
        labels = np.repeat(np.arange(len(ranges), dtype=np.int64), [hi - lo for lo, hi in ranges.values()])
        image_keys = image_keys.astype(np.int64)
        missing = image_keys[~reader.has(image_keys)]
        if len(missing):
            raise DataError(
                f"{reader.idx}: image records {missing[:5].tolist()} named by the identity records are missing"
            )
        return RecordLayout(image_keys, labels, ranges)
    image_keys = reader.keys[reader.keys != 0] if head is not None and head.flag > 0 else reader.keys
    raw = np.asarray([reader.header(int(k)).identity for k in image_keys], np.int64)
    _, labels = np.unique(raw, return_inverse=True)  # contiguous 0..K-1
    return RecordLayout(np.asarray(image_keys, np.int64), labels.astype(np.int64))


class RecordIODataset(Dataset):
    """The face images of an insightface ``.rec`` as a torch Dataset: ``{"image", "label", "key"}`` per item.

    Each item is read and decoded when asked for (one positional read); ``image`` is ``H x W x 3`` RGB uint8 (or
    ``transform(image)``), ``label`` the identity (``0..K-1`` in identity-record order), ``key`` the record key.
    """

    def __init__(self, rec: str | Path, idx: str | Path | None = None, transform: Any = None) -> None:
        self.reader = RecordIOReader(rec, idx)
        layout = insightface_layout(self.reader)
        self.keys, self.labels = layout.image_keys, layout.labels
        self.offsets = self.reader.offsets_of(self.keys)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict[str, Any]:
        _, img = self.reader.image(offset=int(self.offsets[i]))
        return {
            "image": self.transform(img) if self.transform is not None else img,
            "label": int(self.labels[i]),
            "key": int(self.keys[i]),
        }


def record_path(rec_name: str, offset: int) -> str:
    """Index path of the record at ``offset`` of ``rec_name`` (relative to the index root)."""
    return f"{rec_name}@{int(offset)}"


def parse_record_path(path: str | os.PathLike[str]) -> tuple[str, int] | None:
    """``(.rec file, byte offset)`` of a ``<file>.rec@<offset>`` path, ``None`` for other paths."""
    m = _PATH_RE.match(str(path))
    return (m.group("file"), int(m.group("offset"))) if m else None


_READERS: dict[str, RecordIOReader] = {}


def read_record_image(path: str | os.PathLike[str]) -> np.ndarray:
    """RGB image of a ``<file>.rec@<offset>`` path (readers are cached per file and reopened per process)."""
    parsed = parse_record_path(path)
    if parsed is None:
        raise DataError(f"not a RecordIO image path ('<file>.rec@<offset>'): {path}")
    rec, offset = parsed
    reader = _READERS.get(rec)
    if reader is None:
        reader = _READERS[rec] = RecordIOReader(rec, load_index=False)
    return reader.image(offset=offset)[1]


@dataclass
class RecordIOSource:
    """A face source over an insightface ``.rec``/``.idx`` pair (see the module docstring).

    Args:
        rec: the ``.rec`` file (``train.rec`` of MS1MV2, CASIA-WebFace...).
        idx: its index (default: next to it, ``.idx``).
        image_size: side of the stored aligned crops (insightface: 112); their landmarks are the ArcFace template
            at this size.
        identities: optional inclusive ``(lo, hi)`` range (or list) of identity labels to keep.
        name: source name for logs and caches.
    """

    rec: str
    idx: str | None = None
    image_size: int = 112
    identities: Sequence[int] | None = None
    name: str = "recordio"

    def prepare(self) -> None:
        for p in (Path(self.rec), Path(self.idx) if self.idx else Path(self.rec).with_suffix(".idx")):
            if not p.is_file():
                raise DataError(f"RecordIO data set file not found: {p} (set data.train.rec to the train.rec path)")

    def load(self) -> FaceIndex:
        from aikd.data.index import select_identities
        from aikd.geometry.align import Geometry, template_points

        reader = RecordIOReader(self.rec, self.idx)
        layout = insightface_layout(reader)
        rec = Path(self.rec).resolve()
        paths = [record_path(rec.name, off) for off in reader.offsets_of(layout.image_keys).tolist()]
        template = template_points(Geometry(size=int(self.image_size))).astype(np.float32)
        n_ids = int(layout.labels.max()) + 1 if len(layout.labels) else 0
        index = FaceIndex(
            root=rec.parent,
            paths=paths,
            identity=layout.labels,
            identity_names=[str(j) for j in range(n_ids)],
            landmarks=np.broadcast_to(template, (len(paths), 5, 2)).copy(),
            attributes={"record_key": layout.image_keys},
        )
        log.info("%s: %d images of %d identities in %s", self.name, len(paths), n_ids, rec)
        return select_identities(index, self.identities, str(rec))
