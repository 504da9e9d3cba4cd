"""Data formats, readers, the streaming dataset and the DataModule (generated data; CFP when $AIKD_DATA is set)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_folder_dataset

from aikd.data import (
    AlignedFaces,
    DataError,
    FaceDataModule,
    FolderSource,
    PairList,
    all_pairs,
    collate_faces,
    read_folder,
    read_landmarks_csv,
    read_lfw_pairs,
    read_lfw_people,
    write_landmarks_csv,
)
from aikd.data.cfp import read_cfp, read_cfp_pairs
from aikd.geometry.align import Canvas, Geometry, apply_affine

CANVAS = Canvas(size=160, face=Geometry(size=96))


def test_read_folder(folder_dataset: Path) -> None:
    index = read_folder(folder_dataset)
    assert len(index) == 12 and index.num_identities == 3
    assert index.identity_names == ["id_00", "id_01", "id_02"]
    assert index.has_landmarks.all() and not index.issues
    np.testing.assert_array_equal(np.bincount(index.identity), [4, 4, 4])
    sub = index.subset(index.identity == 2)
    assert sub.num_identities == 1 and (sub.identity == 0).all() and sub.paths[0].startswith("id_02/")


def test_landmarks_csv_round_trip(tmp_path: Path) -> None:
    lms = np.random.default_rng(0).uniform(0, 100, (3, 5, 2)).astype(np.float32)
    lms[1] = np.nan
    write_landmarks_csv(tmp_path / "lm.csv", ["a/1.png", "a/2.png", "b/1.png"], lms, {"score": [0.9, "", 0.7]})
    table, extras, issues = read_landmarks_csv(tmp_path / "lm.csv")
    assert not issues and extras["b/1.png"]["score"] == "0.7"
    np.testing.assert_allclose(table["a/1.png"], lms[0], atol=0.006)
    assert np.isnan(table["a/2.png"]).all()


def test_malformed_rows_are_reported_with_file_and_line(folder_dataset: Path) -> None:
    lm = folder_dataset / "landmarks.csv"
    lines = lm.read_text().splitlines()
    lines[2] = lines[2].rsplit(",", 1)[0] + ",abc"  # line 3: not a number
    lines.append("id_00/ghost.png," + ",".join(["1"] * 10))  # row without an image
    lm.write_text("\n".join(lines) + "\n")
    (folder_dataset / "id_empty").mkdir()
    index = read_folder(folder_dataset)
    text = "\n".join(index.issues)
    assert f"{lm}:3: malformed landmark row" in text
    assert "ghost.png" in text and "id_empty" in text
    assert (~index.has_landmarks).sum() == 1  # the malformed row's image has no landmarks now
    with pytest.raises(DataError, match="id_empty"):
        read_folder(folder_dataset, strict=True)
    (folder_dataset / "id_empty").rmdir()
    with pytest.raises(DataError, match=r"landmarks.csv:3"):
        read_folder(folder_dataset, strict=True)


def test_missing_header_and_root_errors(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "bad.csv").write_text("file,a,b\n")
    with pytest.raises(DataError, match="header lacks"):
        read_landmarks_csv(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="not a directory"):
        read_folder(tmp_path / "nope")
    with pytest.raises(DataError, match="no images"):
        read_folder(tmp_path)


def test_dataset_items_and_canvas_geometry(folder_dataset: Path) -> None:
    ds = AlignedFaces(read_folder(folder_dataset), CANVAS)
    item = ds[5]
    assert item["image"].shape == (3, 160, 160) and item["image"].dtype == torch.uint8
    assert item["index"].item() == 5 and item["identity"].item() == 1
    m = item["canvas_from_source"].double()[None]
    on_canvas = apply_affine(m, item["landmarks"].double()[None])[0].numpy()
    np.testing.assert_allclose(on_canvas, CANVAS.points(), atol=1e-2)  # float32 matrix


def test_bad_samples_are_skipped_and_counted(folder_dataset: Path) -> None:
    (folder_dataset / "id_01" / "img_0.png").write_bytes(b"not an image")
    index = read_folder(folder_dataset)
    ds = AlignedFaces(index, CANVAS)
    bad = index.paths.index("id_01/img_0.png")
    assert ds[bad] is None
    batch = collate_faces([ds[i] for i in range(len(ds))])
    assert batch["n_skipped"].item() == 1 and len(batch["image"]) == len(ds) - 1
    strict = AlignedFaces(index, CANVAS, strict=True)
    with pytest.raises(DataError, match="img_0.png"):
        strict[bad]


def test_missing_landmarks_policies(folder_dataset: Path) -> None:
    lm = folder_dataset / "landmarks.csv"
    lines = lm.read_text().splitlines()
    lm.write_text("\n".join(lines[:1] + lines[2:]) + "\n")  # first image loses its row
    index = read_folder(folder_dataset)
    assert (~index.has_landmarks).sum() == 1
    assert len(AlignedFaces(index, CANVAS)) == len(index) - 1
    with pytest.raises(DataError, match="no landmarks"):
        AlignedFaces(index, CANVAS, missing_landmarks="error", strict=True)[0]
    item = AlignedFaces(index, CANVAS, missing_landmarks="centre")[0]
    assert item["image"].shape == (3, 160, 160) and torch.isfinite(item["landmarks"]).all()


def test_all_empty_batch_collates() -> None:
    batch = collate_faces([None, None])
    assert batch["n_skipped"].item() == 2 and batch["image"].shape[0] == 0


@pytest.mark.parametrize("workers", [0, 2])
def test_datamodule_streams_batches(tmp_path: Path, workers: int) -> None:
    import albumentations as A

    root = write_folder_dataset(tmp_path / "d", identities=4, per_identity=5)
    dm = FaceDataModule(
        train=FolderSource(str(root), identities=(0, 2)),
        val=FolderSource(str(root), identities=(3, 3)),
        canvas=CANVAS,
        batch_size=4,
        num_workers=workers,
        augment=A.Compose([A.RandomBrightnessContrast(p=1.0)]),
    )
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.index("train")) == 15 and len(dm.index("val")) == 5
    batches = list(dm.train_dataloader())
    assert len(batches) == 3 and all(b["image"].shape == (4, 3, 160, 160) for b in batches)
    seen = torch.cat([b["index"] for b in batches])
    assert len(set(seen.tolist())) == 12  # shuffled, drop_last, no duplicates
    val = list(dm.val_dataloader())
    assert sum(len(b["index"]) for b in val) == 5


def test_all_pairs_counts() -> None:
    from aikd.data.index import FaceIndex

    ident = np.array([0, 0, 0, 1, 1, 2])
    index = FaceIndex(Path("."), [f"{i}.png" for i in range(6)], ident, ["a", "b", "c"], np.zeros((6, 5, 2)))
    pairs = all_pairs(index)
    assert pairs.n_mated == 3 + 1 and pairs.n_nonmated == 15 - 4
    assert (ident[pairs.a] == ident[pairs.b]).tolist() == pairs.mated.tolist()
    sampled = all_pairs(index, nonmated=5, seed=1)
    assert sampled.n_nonmated == 5 and sampled.n_mated == 4
    assert np.array_equal(all_pairs(index, nonmated=5, seed=1).a, sampled.a)


def test_lfw_pairs_and_people(tmp_path: Path) -> None:
    (tmp_path / "pairs.txt").write_text("2\t1\nAlice\t1\t2\nAlice\t1\tBob\t3\nBob\t1\t3\nCarl\t2\tAlice\t2\n")
    pa, pb, mated, fold = read_lfw_pairs(tmp_path / "pairs.txt")
    assert pa == ["Alice/Alice_0001.jpg", "Alice/Alice_0001.jpg", "Bob/Bob_0001.jpg", "Carl/Carl_0002.jpg"]
    assert pb[1] == "Bob/Bob_0003.jpg" and mated == [True, False, True, False] and fold == [0, 0, 1, 1]
    (tmp_path / "bad.txt").write_text("1\t1\nAlice\t1\n")
    with pytest.raises(DataError, match=r"bad.txt:2"):
        read_lfw_pairs(tmp_path / "bad.txt")
    (tmp_path / "people.txt").write_text("2\n1\nAlice\t2\n2\nBob\t3\nCarl\t2\n")
    assert read_lfw_people(tmp_path / "people.txt") == [("Alice", 2, 0), ("Bob", 3, 1), ("Carl", 2, 1)]


def test_pairlist_from_paths_names_missing_images(folder_dataset: Path) -> None:
    index = read_folder(folder_dataset)
    pl = PairList.from_paths(index, ["id_00/img_0.png"], ["id_00/img_1.png"], [True])
    assert pl.a.tolist() == [0] and pl.b.tolist() == [1]
    with pytest.raises(DataError, match="ghost.png"):
        PairList.from_paths(index, ["id_00/ghost.png"], ["id_00/img_1.png"], [True], source="my_pairs.txt")


# --- real data ---------------------------------------------------------------------------------------------


def test_cfp_reader_and_split(cfp_root: Path) -> None:
    train = read_cfp(cfp_root, check_fiducials=False)
    test = read_cfp(cfp_root, identities=(451, 500), check_fiducials=False)
    assert len(train) == 450 * 14 and train.num_identities == 450
    assert len(test) == 50 * 14 and set(test.attributes["cfp_id"]) == set(range(451, 501))
    frontal = read_cfp(cfp_root, identities=(451, 500), poses=("frontal",), check_fiducials=False)
    assert len(frontal) == 500 and set(frontal.attributes["pose"]) == {"frontal"}
    missing = ~test.has_landmarks
    assert missing.sum() > 0 and (test.attributes["n_faces"][missing] == 0).all()  # no-face rows kept as NaN


def test_cfp_fiducial_check_flags_disagreeing_detections(cfp_root: Path) -> None:
    index = read_cfp(cfp_root, identities=(1, 40))
    err = index.attributes["fiducial_eye_error"]
    frontal = index.attributes["pose"] == "frontal"
    assert np.nanmedian(err[frontal]) < 0.15  # detections agree with the hand-labelled eye on frontal faces
    flagged = err > 0.35
    assert (~index.attributes["landmarks_ok"][flagged]).all()


@pytest.mark.parametrize("protocol", ["FF", "FP"])
def test_cfp_protocol(cfp_root: Path, protocol: str) -> None:
    index = read_cfp(cfp_root, identities=None, check_fiducials=False)
    pairs = read_cfp_pairs(cfp_root, index, protocol)
    assert len(pairs) == 7000 and pairs.n_mated == 3500 and set(pairs.fold) == set(range(1, 11))
    same_id = index.attributes["cfp_id"][pairs.a] == index.attributes["cfp_id"][pairs.b]
    assert (same_id == pairs.mated).all()
    second_pose = set(index.attributes["pose"][pairs.b])
    assert second_pose == ({"frontal"} if protocol == "FF" else {"profile"})
