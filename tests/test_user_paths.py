"""Every command the README shows, run as a user runs it: a subprocess, from a fresh working directory.

Each test asserts on what the command writes (files, CSV rows, report contents, printed tables), not only on its
exit code. Sizes are reduced with overrides (fewer generated faces, fewer epochs); nothing else is changed, so the
defaults the README promises are the ones exercised. The demo run is shared by the tests that need a trained
student (score, export, evaluate).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
BIN = Path(sys.executable).parent
#: The demo at a test's size: 16 identities x 8 faces (12 train, 4 held out), 2 epochs; every other setting default.
SMALL_DEMO = [
    "data.train.n_identities=16",
    "data.train.images_per_identity=8",
    "data.train.identities=[0,11]",
    "data.val.identities=[12,15]",
    "trainer.max_epochs=2",
    "teacher.fit.epochs=3",
    "evaluation.conditions=[none,jitter3,boxcrop]",
]


@pytest.fixture(scope="module")
def user_env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """The environment of a user's shell: one aikd cache for the module (as on a user's machine), no test knobs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "AIKD_TEST"))}
    # the test session's cache (see conftest.py): converted FaceNet weights are made once for all tests
    env["AIKD_CACHE"] = os.environ.get("AIKD_TEST_CACHE") or str(tmp_path_factory.getbasetemp() / "aikd-cache")
    env.update(PYTHONUNBUFFERED="1", MPLBACKEND="Agg", WANDB_MODE="offline", OMP_NUM_THREADS="2")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(
    args: list[str], cwd: Path, env: dict[str, str], ok: bool = True, timeout: int = 900
) -> subprocess.CompletedProcess:
    """Run a command line as typed in a shell (``python`` and ``aikd`` from the installed environment)."""
    exe = {"python": sys.executable, "aikd": str(BIN / "aikd")}
    cmd = [exe.get(args[0], args[0]), *args[1:]]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if ok:
        assert proc.returncode == 0, f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_dir(logs: Path, task: str) -> Path:
    dirs = sorted((logs / task / "runs").iterdir())
    assert len(dirs) == 1, dirs
    return dirs[0]


def readme_commands() -> str:
    return README.read_text()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, user_env: dict[str, str]) -> dict:
    """``python train.py`` (the README's demo), at a test's size, from a fresh working directory."""
    cwd = tmp_path_factory.mktemp("demo-cwd")
    logs = cwd / "logs"
    proc = run(["python", str(REPO / "train.py"), *SMALL_DEMO, f"paths.log_dir={logs}"], cwd, user_env)
    out = run_dir(logs, "synthetic-demo")  # the default run is named after its data and teacher
    return {"dir": out, "stdout": proc.stdout, "stderr": proc.stderr, "cwd": cwd}


def test_readme_setup_commands_are_the_ones_tested() -> None:
    text = readme_commands()
    assert "python3 -m venv .venv && .venv/bin/pip install -e . && .venv/bin/python train.py" in text
    ci = (REPO / ".ci" / "run").read_text()
    test_cmd = 'python3 -m venv .venv && .venv/bin/pip install -q -e ".[dev]" && .venv/bin/pytest'
    assert test_cmd in ci and test_cmd.replace(" -q", "") in text


def test_demo_runs_end_to_end_and_prints_its_table(demo: dict) -> None:
    out = demo["dir"]
    results = json.loads((out / "results.json").read_text())
    assert list(results["timings_s"]) == ["prepare", "preview", "teacher", "distill", "evaluate", "export"]
    assert results["data"]["train"]["identities"] == 12 and results["data"]["val"]["identities"] == 4
    pauc = results["evaluation"]["pauc_normalised"]
    for method in ("teacher:crfiqa", "student", "attribute:-severity"):  # the data's own reference row is there
        for cond in ("aligned", "jitter3", "boxcrop"):
            value = pauc[f"{method}/{cond}/start_err=0.10/pauc0.2"]
            assert 0.0 <= value <= 1.5, (method, cond, value)
    for f in ("alignment_preview.png", "evaluation/report.md", "evaluation/edc_aligned.png", "export/student.onnx",
              "export/student.safetensors", "checkpoints/last.ckpt"):  # fmt: skip
        assert (out / f).is_file(), f
    # the headline table is printed at the end of the run, methods x conditions
    table = demo["stdout"][demo["stdout"].index("normalised pAUC@0.20") :]
    assert re.search(r"method\s+aligned\s+jitter3\s+boxcrop\s+mean", table)
    assert re.search(r"student(\s+\d\.\d{3}){4}", table)
    # the report says which FR model made the comparison scores and what each row is
    report = (out / "evaluation" / "report.md").read_text()
    assert "Comparison scores: **teacher**" in report
    assert "`attribute:-severity`: a reference, not a model" in report


def test_last_checkpoint_is_the_final_student(demo: dict, user_env: dict[str, str], tmp_path: Path) -> None:
    """``checkpoints/last.ckpt`` holds the last step and scores exactly like the run's export."""
    import torch

    out = demo["dir"]
    results = json.loads((out / "results.json").read_text())
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True, mmap=True)
    assert ckpt["global_step"] == results["distill"]["global_step"] > 0
    crops = _aligned_crops(tmp_path / "crops", n=6)
    a = run(["aikd", "score", str(crops), "-m", str(out / "checkpoints" / "last.ckpt"), "-o", "a.csv", "--aligned"],
            tmp_path, user_env)  # fmt: skip
    b = run(["aikd", "score", str(crops), "-m", str(out / "export" / "student.onnx"), "-o", "b.csv", "--aligned"],
            tmp_path, user_env)  # fmt: skip
    assert a.returncode == b.returncode == 0
    ra, rb = read_csv(tmp_path / "a.csv"), read_csv(tmp_path / "b.csv")
    assert [r["path"] for r in ra] == [r["path"] for r in rb] and len(ra) == 6
    np.testing.assert_allclose(
        [float(r["quality_raw"]) for r in ra], [float(r["quality_raw"]) for r in rb], rtol=1e-4, atol=1e-4
    )


def _aligned_crops(root: Path, n: int) -> Path:
    """Aligned 112x112 crops of generated faces (what ``aikd score --aligned`` expects)."""
    import cv2

    from aikd.data.synthetic import SyntheticFaces
    from aikd.geometry.align import Geometry, align_image

    gen = SyntheticFaces(n_identities=n, images_per_identity=1, seed=3)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img, lm = gen.render(i, 0)[:2]
        crop = align_image(img, lm, Geometry(size=112))[0]
        cv2.imwrite(str(root / f"face_{i}.png"), cv2.cvtColor(crop, cv2.COLOR_RGB2BGR))
    return root


def test_generate_detect_and_score_in_every_mode(demo: dict, user_env: dict[str, str], tmp_path: Path) -> None:
    """README "Command line": generate faces, detect landmarks, score with detection, a landmarks file, crops."""
    export = demo["dir"] / "export"
    run(["aikd", "generate-faces", "faces", "--identities", "3", "--images", "2", "--quiet"], tmp_path, user_env)
    faces = tmp_path / "faces"
    images = sorted(p.relative_to(faces).as_posix() for p in faces.rglob("*.png"))
    assert len(images) == 6
    # landmarks detected by MTCNN, then used for scoring
    run(["aikd", "detect-landmarks", "faces", "--out", "detected.csv"], tmp_path, user_env)
    detected = read_csv(tmp_path / "detected.csv")
    assert sorted(r["path"] for r in detected) == images
    run(["aikd", "score", "faces", "--model", str(export), "--out", "raw.csv"], tmp_path, user_env)
    run(["aikd", "score", "faces", "-m", str(export / "student.onnx"), "-o", "lm.csv", "--landmarks",
         "faces/landmarks.csv"], tmp_path, user_env)  # fmt: skip
    crops = _aligned_crops(tmp_path / "crops", n=3)
    run(["aikd", "score", str(crops), "-m", str(export / "student.safetensors"), "-o", "crops.csv", "--aligned"],
        tmp_path, user_env)  # fmt: skip
    for name, n in (("raw.csv", 6), ("lm.csv", 6), ("crops.csv", 3)):
        rows = read_csv(tmp_path / name)
        assert list(rows[0]) == ["path", "quality_0_100", "quality_raw", "status", "detail"]
        assert len(rows) == n, name
        ok = [r for r in rows if r["status"] == "ok"]
        assert ok, (name, rows)
        assert all(0.0 <= float(r["quality_0_100"]) <= 100.0 for r in ok)
    # the generator's exact landmarks and the landmarks file give the same scores as the same crops would
    lm_rows = {r["path"]: float(r["quality_raw"]) for r in read_csv(tmp_path / "lm.csv") if r["status"] == "ok"}
    assert len(lm_rows) == 6 and len(set(np.round(list(lm_rows.values()), 5))) > 1


def test_export_command_round_trips(demo: dict, user_env: dict[str, str], tmp_path: Path) -> None:
    ckpt = demo["dir"] / "checkpoints" / "last.ckpt"
    proc = run(["aikd", "export", str(ckpt), "--out", "export"], tmp_path, user_env)
    assert "onnx parity" in proc.stdout
    assert "TracerWarning" not in proc.stderr and "onnxscript" not in proc.stderr.lower()
    meta = json.loads(next((tmp_path / "export").glob("*.json")).read_text())
    assert meta["teacher"]["name"] == "crfiqa"
    for ext in (".onnx", ".pt2", ".safetensors"):
        f = tmp_path / "export" / f"student{ext}"
        assert f.is_file() and f.stat().st_size > 1000
    assert (tmp_path / "export" / "student.safetensors").stat().st_mode & 0o044 == 0o044  # readable like the rest


def test_evaluate_command_on_a_saved_student(demo: dict, user_env: dict[str, str], tmp_path: Path) -> None:
    """``aikd evaluate`` from the repository root and from elsewhere; the README form with a saved student."""
    student = demo["dir"] / "export" / "student.safetensors"
    help_root = run(["aikd", "evaluate", "--help"], REPO, user_env)
    assert re.search(r"evaluation: cfp, .*default", help_root.stdout)
    logs = tmp_path / "logs"
    proc = run(["aikd", "evaluate", *SMALL_DEMO, "evaluation.methods=[student]", f"evaluation.student={student}",
                f"paths.log_dir={logs}"], tmp_path, user_env)  # fmt: skip
    out = run_dir(logs, "synthetic-demo")
    results = json.loads((out / "results.json").read_text())
    assert list(results["timings_s"]) == ["prepare", "evaluate"]
    # the student from its file, and the generated data's own reference row (evaluation.references: auto)
    assert {k.split("/")[0] for k in results["evaluation"]["pauc_normalised"]} == {"student", "attribute:-severity"}
    demo_pauc = json.loads((demo["dir"] / "results.json").read_text())["evaluation"]["pauc_normalised"]
    key = "student/aligned/start_err=0.10/pauc0.2"  # the same student on the same faces: the run's own figure
    assert results["evaluation"]["pauc_normalised"][key] == pytest.approx(demo_pauc[key], abs=1e-6)
    assert "normalised pAUC@0.20" in proc.stdout


@pytest.mark.data
def test_evaluate_reference_on_cfp(user_env: dict[str, str], tmp_path: Path, cfp_root: Path) -> None:
    """README: ``aikd evaluate experiment=cfp_reference_eval`` (on 5 test identities, two conditions)."""
    env = {**user_env, "AIKD_DATA": str(cfp_root.parent)}
    logs = tmp_path / "logs"
    run(["aikd", "evaluate", "experiment=cfp_reference_eval", "data.val.identities=[496,500]",
         "evaluation.conditions=[none,boxcrop]", f"paths.log_dir={logs}"], tmp_path, env)  # fmt: skip
    out = run_dir(logs, "cfp_reference_eval")
    pauc = json.loads((out / "results.json").read_text())["evaluation"]["pauc_normalised"]
    assert set(pauc) >= {"fr_norm/aligned/start_err=0.10/pauc0.2", "attribute:pose=frontal/boxcrop/fmr=1e-3/pauc0.2"}
    assert "Comparison scores: **facenet**" in (out / "evaluation" / "report.md").read_text()


def test_own_faces_one_folder_with_held_out_identities(user_env: dict[str, str], tmp_path: Path) -> None:
    """README "Your own faces": one folder, 20% of its identities held out for validation and evaluation."""
    run(["aikd", "generate-faces", "myfaces", "--identities", "10", "--images", "6", "--quiet"], tmp_path, user_env)
    logs = tmp_path / "logs"
    proc = run(["python", str(REPO / "train.py"), "data=folder", "data.root=myfaces", "trainer.max_epochs=1",
                "teacher.fit.epochs=2", "evaluation.conditions=[none,jitter3]", f"paths.log_dir={logs}"],
               tmp_path, user_env)  # fmt: skip
    out = run_dir(logs, "folder-demo")  # not under the demo's name
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["train"]["identities"] == 8 and results["data"]["val"]["identities"] == 2
    methods = {k.split("/")[0] for k in results["evaluation"]["pauc_normalised"]}
    assert methods == {"teacher:crfiqa", "student"}  # nothing demo-specific leaks into own-data runs
    assert (out / "export" / "student.onnx").is_file()
    assert "student" in proc.stdout[proc.stdout.index("normalised pAUC") :]


def test_config_mistakes_are_refused_before_any_work(user_env: dict[str, str], tmp_path: Path) -> None:
    """A misspelt key gets "did you mean"; bad values are all listed at start-up, naming key and fix."""
    typo = run(["python", str(REPO / "train.py"), "trainer.max_epoch=1"], tmp_path, user_env, ok=False)
    assert typo.returncode == 1 and "did you mean 'trainer.max_epochs'" in typo.stderr
    old = run(["python", str(REPO / "train.py"), "data=folder", "data.train.root=x"], tmp_path, user_env, ok=False)
    assert "did you mean 'data.root'" in old.stderr
    renamed = run(["python", str(REPO / "train.py"), "backbone=mobilenetv3_small", "teacher_mode=online"], tmp_path,
                  user_env, ok=False)  # fmt: skip
    assert renamed.returncode == 1 and "the group is now called `student`: student=mobilenetv3_small" in renamed.stderr
    assert "stage.distill.teacher_mode=online" in renamed.stderr
    bad = run(["python", str(REPO / "train.py"), "evaluation.conditions=[none,jiter3]",
               "evaluation.methods=[teacher,studnt]", "data=folder", "data.root=nowhere",
               f"paths.log_dir={tmp_path / 'logs'}"], tmp_path, user_env, ok=False)  # fmt: skip
    assert bad.returncode == 2
    for expected in ("data.root=nowhere: no such folder", "unknown condition 'jiter3' (did you mean 'jitter3'",
                     "unknown method 'studnt' (did you mean 'student'"):  # fmt: skip
        assert expected in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.ckpt"))


def test_adding_a_teacher_recipe_verbatim(user_env: dict[str, str], tmp_path: Path) -> None:
    """README "Adding a teacher", applied to a copy of the project as written, then ``python train.py
    teacher=myfiqa``: the defaults adapt (timm student, FR comparator) and the run goes end to end."""
    project = tmp_path / "project"
    for part in ("aikd", "teachers", "conf"):
        shutil.copytree(REPO / part, project / part, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "train.py", project / "train.py")
    section = README.read_text().split("## Adding a teacher", 1)[1].split("\n## ", 1)[0]
    (code,) = [textwrap.dedent(b) for b in re.findall(r"```python\n(.*?)```", section, flags=re.S)]
    (conf,) = [textwrap.dedent(b) for b in re.findall(r"```yaml\n(.*?)```", section, flags=re.S)]
    (command,) = re.findall(r"Then `(python train.py teacher=myfiqa)`", section)
    (project / "teachers" / "myfiqa.py").write_text(code)
    (project / "conf" / "teacher" / "myfiqa.yaml").write_text(conf)
    logs = tmp_path / "logs"
    args = command.split()[1:]
    proc = run(["python", str(project / "train.py"), *args[1:], *SMALL_DEMO[:4], "trainer.max_epochs=1",
                "evaluation.conditions=[none,boxcrop]", f"paths.log_dir={logs}"], tmp_path, user_env)  # fmt: skip
    out = run_dir(logs, "synthetic-myfiqa")
    results = json.loads((out / "results.json").read_text())
    adapted = " ".join(results["config_adapted"])
    assert "student=mobilenetv3_small" in adapted and "FR backbone 'facenet'" in adapted
    assert results["teacher"]["name"] == "myfiqa"
    methods = {k.split("/")[0] for k in results["evaluation"]["pauc_normalised"]}
    assert methods == {"teacher:myfiqa", "student", "attribute:-severity"}
    assert (out / "export" / "student.onnx").is_file()
    assert "config adapted" in proc.stdout + proc.stderr  # logged where Hydra sends the job log


def test_list_command_names_plugins(user_env: dict[str, str], tmp_path: Path) -> None:
    proc = run(["aikd", "list"], tmp_path, user_env)
    assert re.search(r"teachers:\s+.*crfiqa", proc.stdout) and "conf/misalign:" in proc.stdout


def test_package_list_covers_every_package() -> None:
    """pyproject lists packages explicitly (to ship conf/ as aikd/conf): a new package folder must be listed."""
    (line,) = re.findall(r"^packages = \[(.*?)\]$", (REPO / "pyproject.toml").read_text(), flags=re.M | re.S)
    listed = set(re.findall(r'"([^"]+)"', line))
    found = {".".join(p.parent.relative_to(REPO).parts) for p in REPO.glob("aikd/**/__init__.py")}
    found |= {"teachers", "aikd.conf"}
    assert listed == found


def test_installed_package_finds_its_config(user_env: dict[str, str], tmp_path: Path) -> None:
    """A regular (non-editable) install carries conf/ and ``aikd evaluate`` finds it from any directory."""
    src = tmp_path / "src"
    for part in ("aikd", "teachers", "conf"):
        shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / f, src / f)
    site = tmp_path / "site"
    run(["python", "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-compile", "--target",
         str(site), str(src)], tmp_path, user_env, timeout=600)  # fmt: skip
    assert (site / "aikd" / "conf" / "train.yaml").is_file() and (site / "aikd" / "conf" / "misalign").is_dir()
    shutil.rmtree(src)  # nothing of the source tree may be needed any more
    env = {**user_env, "PYTHONPATH": str(site)}
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    proc = run(["python", "-c", "import aikd.config as c; print(c.conf_dir()); print(c.project_root())"], cwd, env)
    conf, root = proc.stdout.split()
    assert Path(conf) == site / "aikd" / "conf" and root == "None"
    proc = run(["python", "-m", "aikd.app.cli", "evaluate", "--help"], cwd, env)
    assert re.search(r"evaluation: cfp, .*default", proc.stdout) and "misalign: affine" in proc.stdout


def test_repository_points_nowhere_outside_itself() -> None:
    """The repository carries its own docs: only .ci/run may name the shared data folder beside a checkout."""
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = [REPO / f for f in tracked.split() if f != ".ci/run"] + [REPO / "docs" / "methods.md"]
    outside = re.compile("|".join(re.escape(s) for s in ("../" + "shared", "/work/" + "shared", "REFERENCE" + ".md")))
    offenders = [
        str(f.relative_to(REPO))
        for f in files
        if f.is_file()
        and f.suffix in (".py", ".md", ".yaml", ".toml", ".txt", ".cfg", "")
        and outside.search(f.read_text(errors="ignore"))
    ]
    assert offenders == []


@pytest.mark.data
def test_cfp_headline_experiment_at_test_size(user_env: dict[str, str], tmp_path: Path, cfp_root: Path) -> None:
    """README: ``python train.py experiment=cfp_crfiqa_facenet`` (8 training and 5 test identities, 1 epoch)."""
    env = {**user_env, "AIKD_DATA": str(cfp_root.parent)}
    logs = tmp_path / "logs"
    proc = run(["python", str(REPO / "train.py"), "experiment=cfp_crfiqa_facenet", "data.train.identities=[1,8]",
                "data.val.identities=[496,500]", "trainer.max_epochs=1", "teacher.fit.epochs=2",
                "evaluation.conditions=[none,boxcrop]", f"paths.log_dir={logs}"], tmp_path, env)  # fmt: skip
    out = run_dir(logs, "cfp_crfiqa_facenet")
    results = json.loads((out / "results.json").read_text())
    assert list(results["timings_s"]) == ["prepare", "preview", "teacher", "distill", "evaluate", "export"]
    assert results["data"]["train"]["identities"] == 8 and results["data"]["val"]["identities"] == 5
    methods = {k.split("/")[0] for k in results["evaluation"]["pauc_normalised"]}
    assert methods == {"teacher:crfiqa", "student", "fr_norm"}
    assert "Comparison scores: **facenet**" in (out / "evaluation" / "report.md").read_text()
    assert (out / "export" / "student.onnx").is_file() and "fr_norm" in proc.stdout


@pytest.mark.data
@pytest.mark.parametrize(
    ("experiment", "student_px"), [("cfp_sface_small", 64), ("cfp_sface_aikd", 112)], ids=["small", "aikd"]
)
def test_sface_experiments_at_test_size(
    user_env: dict[str, str], tmp_path: Path, cfp_root: Path, experiment: str, student_px: int
) -> None:
    """README: ``python train.py experiment=cfp_sface_small`` / ``cfp_sface_aikd`` (8 training and 5 test
    identities, 1 epoch): the SFace CR-FIQA teacher (leave-one-out centres), its student, SFace comparison scores
    with FaceNet's alongside, the detector condition, bootstrap intervals, and the student as the export."""
    env = {**user_env, "AIKD_DATA": str(cfp_root.parent)}
    logs = tmp_path / "logs"
    run(["python", str(REPO / "train.py"), f"experiment={experiment}", "data.train.identities=[1,8]",
         "data.val.identities=[496,500]", "trainer.max_epochs=1", "teacher.fit.epochs=2", "evaluation.bootstrap=50",
         "evaluation.conditions=[none,boxcrop,yunet]", f"paths.log_dir={logs}"], tmp_path, env)  # fmt: skip
    out = run_dir(logs, experiment)
    results = json.loads((out / "results.json").read_text())
    assert results["data"]["train"]["identities"] == 8 and results["data"]["val"]["identities"] == 5
    assert {k.split("/")[0] for k in results["evaluation"]["pauc_normalised"]} == {
        "teacher:crfiqa",
        "student",
        "fr_norm",
    }
    report = (out / "evaluation" / "report.md").read_text()
    assert "Comparison scores: **sface**" in report and "**facenet**" in report and "detector=yunet" in report
    assert "paired-bootstrap interval" in report
    teacher = json.loads((out / "teacher.json").read_text())
    assert teacher["config"]["backbone"] == "sface" and teacher["config"]["quality_hidden"] == 256
    assert (out / "export" / "student.onnx").is_file()
    meta = json.loads((out / "export" / "student.json").read_text())
    assert meta["input"]["shape"][-2:] == [student_px, student_px]


@pytest.mark.data
@pytest.mark.parametrize(
    ("experiment", "identities", "epochs"),
    [("cfp_sface_small_degrade", 8, 2), ("cfp_sface_aikd_degrade", 4, 1)],
    ids=["small", "aikd"],
)
def test_degraded_students_at_test_size(
    user_env: dict[str, str], tmp_path: Path, cfp_root: Path, experiment: str, identities: int, epochs: int
) -> None:
    """README: ``python train.py experiment=cfp_sface_small_degrade`` and ``experiment=cfp_sface_aikd_degrade`` (a few
    training and 5 test identities, 1-2 epochs): half of the training faces degraded in four versions, each scored
    once by the teacher and cached (not the online teacher), the versions cycling over the epochs."""
    env = {**user_env, "AIKD_DATA": str(cfp_root.parent)}
    logs = tmp_path / "logs"
    run(["python", str(REPO / "train.py"), f"experiment={experiment}", f"data.train.identities=[1,{identities}]",
         "data.val.identities=[496,500]", f"trainer.max_epochs={epochs}", "teacher.fit.epochs=2",
         "evaluation.conditions=[none]", "evaluation.bootstrap=0", f"paths.log_dir={logs}"], tmp_path, env)  # fmt: skip
    out = run_dir(logs, experiment)
    results = json.loads((out / "results.json").read_text())
    distill = results["distill"]
    assert distill["teacher_mode"] == "cache" and distill["degraded_scores"]["variants"] == 4
    # p = 0.5 of 4 versions of the training faces (14 per identity) went through the teacher (and only those)
    n_faces = 14 * identities
    assert 0.35 * 4 * n_faces < distill["degraded_scores"]["faces_scored"] < 0.65 * 4 * n_faces
    assert Path(distill["degraded_scores"]["cache"]).is_dir()
    assert results["config"]["degrade"]["variants"] == 4 and results["config"]["degrade"]["seed"] == 0
    assert {k.split("/")[0] for k in results["evaluation"]["pauc_normalised"]} == {
        "teacher:crfiqa",
        "student",
        "fr_norm",
    }
    assert (out / "export" / "student.onnx").is_file()


@pytest.mark.data
@pytest.mark.parametrize("celeba", [False, True], ids=["cfp", "cfp_celeba"])
def test_student_recipe_at_test_size(
    user_env: dict[str, str], tmp_path: Path, cfp_root: Path, celeba: bool, request: pytest.FixtureRequest
) -> None:
    """README: ``python train.py experiment=sface_student_recipe`` and the same with ``data=cfp_celeba
    trainer.max_epochs=8`` (8 CFP training identities, plus a few CelebA folders in the second, 5 validation
    identities, 1 epoch): the student learns from CFP (and CelebA) faces, the teacher from CFP alone, and only the
    validation identities are evaluated."""
    extra: list[str] = []
    n_celeba = n_celeba_ids = 0
    if celeba:
        faces = tmp_path / "celeba"
        celeba_root: Path = request.getfixturevalue("celeba_root")
        for ident in sorted(p for p in celeba_root.iterdir() if p.is_dir())[:6]:
            shutil.copytree(ident, faces / ident.name)
        n_celeba, n_celeba_ids = len(list(faces.rglob("*.jpg"))), 6
        extra = ["data=cfp_celeba", f"data.extra_train.0.root={faces}"]
    env = {**user_env, "AIKD_DATA": str(cfp_root.parent)}
    logs = tmp_path / "logs"
    run(["python", str(REPO / "train.py"), "experiment=sface_student_recipe", *extra,
         "trainer.max_epochs=1", "data.train.identities=[1,8]", "data.val.identities=[496,500]",
         "teacher.fit.epochs=2", "evaluation.conditions=[none,boxcrop]", f"paths.log_dir={logs}"],
        tmp_path, env)  # fmt: skip
    out = run_dir(logs, "sface_student_recipe")
    results = json.loads((out / "results.json").read_text())
    assert list(results["timings_s"]) == ["prepare", "teacher", "distill", "evaluate"]
    train = results["data"]["train"]
    assert train["images"] == 8 * 14 + n_celeba and train["identities"] == 8 + n_celeba_ids
    trained_on = json.loads((out / "teacher.json").read_text())["trained_on"]
    assert trained_on["images"] == 8 * 14 and trained_on["identities"] == 8  # the teacher: CFP alone
    assert {k.split("/")[0] for k in results["evaluation"]["pauc_normalised"]} == {"teacher:crfiqa", "student"}
    assert results["data"]["val"]["identities"] == 5


@pytest.mark.data
def test_teacher_recipe_with_celeba_identities_at_test_size(
    user_env: dict[str, str], tmp_path: Path, cfp_root: Path, celeba_root: Path
) -> None:
    """README: ``python train.py experiment=sface_teacher_recipe data=cfp_celeba teacher.fit.extra_train=true
    data.extra_train.0.min_images_per_identity=3 data.extra_train.0.detector=yunet`` (8 CFP training identities plus
    a few CelebA folders, 5 validation identities): the teacher's classes are CFP's and those CelebA identities with
    3+ faces; without the minimum the run refuses at start-up, naming the key."""
    faces = tmp_path / "celeba"
    folders = sorted(p for p in celeba_root.iterdir() if p.is_dir())[:12]
    for ident in folders:
        shutil.copytree(ident, faces / ident.name)
    counts = [len(list(ident.glob("*.jpg"))) for ident in folders]
    assert min(counts) < 3 <= max(counts), counts  # both kinds of identity are in the sample
    env = {**user_env, "AIKD_DATA": str(cfp_root.parent)}
    logs = tmp_path / "logs"
    args = ["python", str(REPO / "train.py"), "experiment=sface_teacher_recipe", "data=cfp_celeba",
            "teacher.fit.extra_train=true", f"data.extra_train.0.root={faces}", "data.extra_train.0.detector=yunet",
            "data.train.identities=[1,8]", "data.val.identities=[496,500]", "teacher.fit.epochs=2",
            ]  # fmt: skip
    refused = run([*args, f"paths.log_dir={tmp_path / 'refused'}"], tmp_path, env, ok=False)
    assert refused.returncode == 2 and "data.extra_train[0].min_images_per_identity=1" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert not [p.name for p in (tmp_path / "refused").rglob("*") if p.suffix in (".json", ".safetensors", ".npy")]
    run([*args, "data.extra_train.0.min_images_per_identity=3", f"paths.log_dir={logs}"], tmp_path, env)
    out = run_dir(logs, "sface_teacher_recipe")
    trained_on = json.loads((out / "teacher.json").read_text())["trained_on"]
    kept = [n for n in counts if n >= 3]
    assert trained_on["identities"] == 8 + len(kept)
    assert 8 * 14 < trained_on["images"] <= 8 * 14 + sum(kept)  # YuNet may miss a face or two
    results = json.loads((out / "results.json").read_text())
    assert {k.split("/")[0] for k in results["evaluation"]["pauc_normalised"]} == {"teacher:crfiqa", "fr_norm"}


@pytest.mark.data
def test_seed_sweep_and_compare_runs(user_env: dict[str, str], tmp_path: Path, cfp_root: Path) -> None:
    """README: ``python train.py -m experiment=cfp_sface_small seed=12345,1,2`` then ``aikd compare-runs
    logs/cfp_sface_small/multiruns/<time> --out seeds.md`` (8 training and 5 test identities, two seeds): the sweep
    directory stands for its jobs, and the table holds each method's mean +- sd and each run's student - teacher
    interval."""
    env = {**user_env, "AIKD_DATA": str(cfp_root.parent)}
    logs = tmp_path / "logs"
    run(["python", str(REPO / "train.py"), "-m", "experiment=cfp_sface_small", "seed=12345,1",
         "data.train.identities=[1,8]", "data.val.identities=[496,500]", "trainer.max_epochs=1",
         "teacher.fit.epochs=2", "evaluation.conditions=[none]", "evaluation.bootstrap=50",
         "evaluation.methods=[teacher,student]", "stages=[prepare,teacher,distill,evaluate]",
         f"paths.log_dir={logs}"],
        tmp_path, env)  # fmt: skip
    (sweep,) = (logs / "cfp_sface_small" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if (p / "results.json").is_file())
    assert len(jobs) == 2
    seeds = [json.loads((j / "results.json").read_text())["config"]["seed"] for j in jobs]
    assert seeds == [12345, 1]
    pauc = [json.loads((j / "results.json").read_text())["evaluation"]["pauc_normalised"] for j in jobs]
    key = "student/aligned/start_err=0.10/pauc0.2"
    proc = run(["aikd", "compare-runs", str(sweep.relative_to(tmp_path)), "--out", "seeds.md"], tmp_path, env)
    text = (tmp_path / "seeds.md").read_text()
    assert proc.stdout == text and "# 2 run(s) compared" in text
    mean, sd = float(np.mean([p[key] for p in pauc])), float(np.std([p[key] for p in pauc], ddof=1))
    assert f"| student | {mean:.3f} ± {sd:.3f} |" in text
    row = next(line for line in text.splitlines() if line.startswith("| aligned |"))
    assert len(re.findall(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", row)) == 2, row  # both runs' intervals
    # README: aikd compare-runs logs/cfp_sface_small/multiruns/<time> --comparator facenet
    facenet = [json.loads((j / "results.json").read_text())["evaluation"]["extra_comparators"]["facenet"] for j in jobs]
    values = [f["pauc_normalised"][key] for f in facenet]
    text = run(["aikd", "compare-runs", str(sweep), "--comparator", "facenet"], tmp_path, env).stdout
    assert "extra comparator **facenet**" in text
    assert f"| student | {np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} |" in text


@pytest.mark.data
def test_aikd_recipe_with_clean_views_at_test_size(user_env: dict[str, str], tmp_path: Path, cfp_root: Path) -> None:
    """README: ``python train.py experiment=sface_aikd_recipe model.clean_weight=1.0`` (8 training and 5
    validation identities, 1 epoch): the AI-KD student also learns from its clean view, evaluated on validation
    identities only, nothing exported."""
    env = {**user_env, "AIKD_DATA": str(cfp_root.parent)}
    logs = tmp_path / "logs"
    run(["python", str(REPO / "train.py"), "experiment=sface_aikd_recipe", "model.clean_weight=1.0",
         "data.train.identities=[1,8]", "data.val.identities=[446,450]", "trainer.max_epochs=1",
         "teacher.fit.epochs=2", "evaluation.conditions=[none,boxcrop]", f"paths.log_dir={logs}"],
        tmp_path, env)  # fmt: skip
    out = run_dir(logs, "sface_aikd_recipe")
    results = json.loads((out / "results.json").read_text())
    assert list(results["timings_s"]) == ["prepare", "teacher", "distill", "evaluate"]
    assert results["config"]["model"]["clean_weight"] == 1.0 and results["config"]["student"]["trainable"] == "last:14"
    assert results["data"]["val"]["identities"] == 5 and not (out / "export").exists()
    pauc = results["evaluation"]["pauc_normalised"]
    assert {k.split("/")[0] for k in pauc} == {"teacher:crfiqa", "student"}
    assert {k.split("/")[1] for k in pauc} == {"aligned", "boxcrop"}


def test_development_commands_pass() -> None:
    """README "Development": the linters the project holds itself to."""
    for args in (["check", "."], ["format", "--check", "."]):
        proc = subprocess.run([str(BIN / "ruff"), *args], cwd=REPO, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout[-3000:]
