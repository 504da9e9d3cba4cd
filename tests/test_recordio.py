"""insightface RecordIO (.rec/.idx) without mxnet: format round trips, the insightface layout, failure modes, and
faces from a .rec through the DataModule and the canvas."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from aikd.data import DataError, FaceDataModule
from aikd.data.dataset import read_image
from aikd.data.recordio import (
    MAGIC,
    IRHeader,
    RecordIODataset,
    RecordIOReader,
    RecordIOSource,
    RecordIOWriter,
    insightface_layout,
    pack_payload,
    parse_record_path,
    read_idx,
    unpack_payload,
    write_insightface_recordio,
)
from aikd.geometry.align import Canvas, Geometry, template_points

LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 2]  # 3 identities, consecutive as insightface writes them


def _faces(n: int, seed: int = 0, size: int = 112) -> list[np.ndarray]:
    """Smooth random RGB crops (JPEG-friendly), each distinct."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        out.append(cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC))
    return out


@pytest.fixture
def rec_file(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    images = _faces(len(LABELS))
    return write_insightface_recordio(tmp_path / "train.rec", images, LABELS), images


def test_payload_round_trip_scalar_and_array_labels() -> None:
    h, data = unpack_payload(pack_payload(IRHeader(0, 7.0, 12, 0), b"jpeg"))
    assert (h.flag, h.label, h.id, h.identity, data) == (0, 7.0, 12, 7, b"jpeg")
    h, data = unpack_payload(pack_payload(IRHeader(0, np.array([3.0, 9.5]), 5), b"xy"))
    assert h.flag == 2 and h.label.tolist() == [3.0, 9.5] and h.identity == 3 and data == b"xy"
    # the struct is mxnet's '<IfQQ': flag, float label, id, id2 (24 bytes), then the label array
    raw = pack_payload(IRHeader(0, np.array([3.0, 9.5]), 5), b"")
    assert struct.unpack_from("<IfQQ", raw) == (2, 0.0, 5, 0) and len(raw) == 24 + 8
    with pytest.raises(DataError, match="shorter than"):
        unpack_payload(b"\x00" * 10)


def test_insightface_layout_labels_pixels_and_random_access(rec_file: tuple[Path, list[np.ndarray]]) -> None:
    rec, images = rec_file
    reader = RecordIOReader(rec)
    n, k = len(LABELS), len(set(LABELS))
    keys, offsets = read_idx(rec.with_suffix(".idx"))
    assert keys.tolist() == list(range(1 + n + k)) and offsets[0] == 0 and np.all(np.diff(offsets) > 0)
    head = reader.header(0)  # the header record: [first identity record, end]
    assert head.flag == 2 and head.label.tolist() == [1 + n, 1 + n + k]
    assert reader.header(1 + n + 2).label.tolist() == [6, 10]  # identity 2 owns image keys 6..9

    layout = insightface_layout(reader)
    assert layout.image_keys.tolist() == list(range(1, 1 + n)) and layout.labels.tolist() == LABELS
    order = np.random.default_rng(1).permutation(n)  # random access, any order
    for i in order:
        header, img = reader.image(int(layout.image_keys[i]))
        assert header.identity == LABELS[i] and header.flag == 0 and header.id == i + 1
        assert img.shape == (112, 112, 3) and img.dtype == np.uint8
        err = np.abs(img.astype(float) - images[i].astype(float))
        assert err.mean() < 2.0 and err.max() < 40, "pixels within JPEG tolerance (RGB order kept)"


def test_array_labels_and_no_header_record(tmp_path: Path) -> None:
    images = _faces(4, seed=2)
    rec = write_insightface_recordio(tmp_path / "a.rec", images, [5, 5, 9, 9], array_labels=True)
    reader = RecordIOReader(rec)
    assert reader.header(1).flag == 1 and reader.header(1).label.tolist() == [5.0]
    assert insightface_layout(reader).labels.tolist() == [0, 0, 1, 1]  # relabelled 0..K-1 by identity records
    plain = write_insightface_recordio(tmp_path / "b.rec", images, [5, 5, 9, 9], header_record=False)
    layout = insightface_layout(RecordIOReader(plain))  # im2rec-style: every record is an image
    assert layout.image_keys.tolist() == [0, 1, 2, 3] and layout.labels.tolist() == [0, 0, 1, 1]


def test_records_holding_the_magic_word_are_split_and_joined(tmp_path: Path) -> None:
    magic = struct.pack("<I", MAGIC)
    aligned = b"abcd" + magic + b"efgh" + magic + b"ij"  # magic at offsets 4 and 12: three parts
    unaligned = b"ab" + magic + b"cd"  # not 4-byte aligned: written whole
    with RecordIOWriter(tmp_path / "m.rec") as w:
        w.write(0, aligned)
        w.write(1, unaligned)
        w.write(2, b"")
    raw = (tmp_path / "m.rec").read_bytes()
    first = raw[: read_idx(tmp_path / "m.idx")[1][1]]
    heads = [i for i in range(0, len(first), 4) if first[i : i + 4] == magic]  # the parts' magic words
    flags = [struct.unpack_from("<I", first, i + 4)[0] >> 29 for i in heads]
    assert flags == [1, 2, 3], "start, middle and end parts"
    reader = RecordIOReader(tmp_path / "m.rec")
    assert reader.read(0) == aligned and reader.read(1) == unaligned and reader.read(2) == b""
    assert len(raw) % 4 == 0


def test_corrupt_magic_truncation_and_bad_index_are_clear_errors(rec_file: tuple[Path, list[np.ndarray]]) -> None:
    rec, _ = rec_file
    keys, offsets = read_idx(rec.with_suffix(".idx"))
    data = bytearray(rec.read_bytes())
    data[offsets[3] : offsets[3] + 4] = b"\x00\x01\x02\x03"
    rec.write_bytes(bytes(data))
    reader = RecordIOReader(rec)
    reader.image(2)  # other records are fine
    with pytest.raises(DataError, match=rf"no RecordIO record at byte {offsets[3]}.*magic"):
        reader.image(3)
    with pytest.raises(DataError, match="no RecordIO record"):
        reader.read_at(offsets[3] + 2)  # an index pointing into the middle of a record
    with pytest.raises(KeyError, match="no record with key 999"):
        reader.read(999)
    rec.write_bytes(bytes(data[: offsets[5] + 20]))
    with pytest.raises(DataError, match="truncated"):
        RecordIOReader(rec).image(5)
    rec.with_suffix(".idx").write_text("0\t0\nnot-a-line\n")
    with pytest.raises(DataError, match=r"train.idx:2: expected 'key<TAB>offset'"):
        read_idx(rec.with_suffix(".idx"))
    with pytest.raises(DataError, match="not found"):
        RecordIOReader(rec.with_name("missing.rec"))


def test_torch_dataset_streams_items_and_pickles(rec_file: tuple[Path, list[np.ndarray]]) -> None:
    rec, images = rec_file
    ds = RecordIODataset(rec)
    assert len(ds) == len(LABELS)
    item = ds[4]
    assert item["label"] == LABELS[4] and item["key"] == 5 and item["image"].shape == (112, 112, 3)
    clone = pickle.loads(pickle.dumps(ds))  # what DataLoader workers get: the path, not an open file
    assert clone.reader._fd is None
    np.testing.assert_array_equal(clone[4]["image"], item["image"])
    loader = torch.utils.data.DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    labels = torch.cat([b["label"] for b in loader])
    assert labels.tolist() == LABELS


def test_source_datamodule_batch_and_canvas(rec_file: tuple[Path, list[np.ndarray]]) -> None:
    from aikd.geometry.misalign import MisalignParams, misalign

    rec, images = rec_file
    source = RecordIOSource(str(rec), identities=(0, 1))  # the first two identities: 5 images
    source.prepare()
    index = source.load()
    assert len(index) == 5 and index.identity.tolist() == [0, 0, 0, 1, 1]
    template = template_points(Geometry(size=112))
    np.testing.assert_allclose(index.landmarks[0], template, atol=1e-4)
    assert parse_record_path(index.path(3)) == (str(rec.resolve()), read_idx(rec.with_suffix(".idx"))[1][4])
    np.testing.assert_array_equal(read_image(str(index.path(3))), RecordIOReader(rec).image(4)[1])

    canvas = Canvas(size=176, face=Geometry(size=112))
    dm = FaceDataModule(train=source, canvas=canvas, batch_size=4, num_workers=0, seed=0)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (4, 3, 176, 176) and batch["image"].dtype == torch.uint8
    assert int(batch["n_skipped"]) == 0
    # cutting the ArcFace crop back out of the canvas gives the stored aligned crop
    img = batch["image"].float() / 255.0
    ident = MisalignParams.identity(len(img))
    crops, _ = misalign(img, batch["landmarks"], Geometry(size=112), ident, batch["canvas_from_source"])
    for crop, row in zip(crops, batch["index"].tolist()):
        original = torch.from_numpy(images[row]).permute(2, 0, 1).float() / 255.0
        assert (crop - original).abs().mean() < 0.02, f"row {row}: the canvas path changes the aligned face"


def test_missing_files_are_reported_by_prepare(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="train.rec"):
        RecordIOSource(str(tmp_path / "train.rec")).prepare()
