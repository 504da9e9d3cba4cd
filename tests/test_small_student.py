"""The small students (``student=fastfacenet``, the fast one; ``student=mobilefacenet``): under 3 M parameters,
right shapes, a small ONNX file that agrees with PyTorch, and they learn.

The backbones' registry contract (finite raw embeddings, eval determinism, input spec) is checked with every other
backbone in ``tests/test_backbones.py``; this file checks what makes them *small, deployable* students. Their speed
against the teachers is measured by ``benchmarks/student_speed.py`` (the README command is run by the slow test at
the end).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from aikd.geometry.align import Geometry, crop, template_points
from aikd.models.backbones import create_backbone
from aikd.models.backbones.fastfacenet import FastFaceNet
from aikd.models.backbones.mobilefacenet import MobileFaceNet
from aikd.models.student import Student
from aikd.serving.export import export_student
from aikd.training.losses import distillation_loss

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
#: The small-student options: ``fastfacenet`` is the one benchmarked as *the* small student.
SMALL_STUDENTS = ("fastfacenet", "mobilefacenet")
#: The embedding size of the teachers the student is distilled from (FaceNet / projected CR-FIQA teachers: 512);
#: the student's 128-d embedding is projected to it, which is the largest configuration it is used in.
TEACHER_DIM = 512


def _student(option: str = "mobilefacenet", embedding_dim: int = TEACHER_DIM) -> Student:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "student" / f"{option}.yaml"))
    torch.manual_seed(0)
    return Student(
        cfg["backbone"],
        cfg["backbone_weights"],
        cfg["backbone_kwargs"],
        embedding_dim,
        cfg["hidden"],
        cfg["trainable"],
    )


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("option", SMALL_STUDENTS)
def test_config_is_a_from_scratch_student(option: str) -> None:
    cfg = OmegaConf.load(CONF / "student" / f"{option}.yaml")
    assert cfg.from_teacher is False and cfg.backbone == option and cfg.backbone_weights is None
    assert cfg.trainable == "all"


@pytest.mark.parametrize(
    ("option", "teacher_dim"), [("fastfacenet", 128), ("fastfacenet", 512), ("mobilefacenet", 128)]
)
def test_composed_run_config_builds_the_student_for_its_teacher(compose_cfg, option: str, teacher_dim: int) -> None:
    """``student=<option>`` composes with the run config and builds as a run builds it: the teacher's embedding
    size (a projection only where it differs from the backbone's 128), still from scratch and under 3 M."""
    from aikd.app.pipeline import build_student_from_config

    cfg = compose_cfg(f"student={option}")
    teacher = SimpleNamespace(name="stub", embedding_dim=teacher_dim, config={})
    student = build_student_from_config(cfg, teacher)
    assert student.backbone_name == option and student.embedding_dim == teacher_dim
    assert isinstance(student.projection, torch.nn.Identity) == (teacher_dim == 128)
    assert _n_params(student) <= 3_000_000


def test_paper_architecture_size_and_spatial_path() -> None:
    """Table 1 of Chen et al.: about 0.99 M parameters at 128-d, 112 -> 7x7 before the global depthwise conv."""
    net = create_backbone("mobilefacenet").eval()
    assert isinstance(net, MobileFaceNet) and net.embedding_dim == 128
    assert 0.95e6 < _n_params(net) < 1.05e6
    assert len(net.blocks) == 15 and sum(b.residual for b in net.blocks) == 12  # 3 blocks with stride 2
    x = net.input_spec.normalize(torch.rand(2, 3, 112, 112))
    with torch.inference_mode():
        fmap = net.conv_expand(net.blocks(net.stem(x)))
        assert fmap.shape == (2, 512, 7, 7)
        assert net.gdconv(fmap).shape == (2, 512, 1, 1)
    spec = net.input_spec
    assert (spec.size, spec.geometry.template, spec.colour, spec.mean, spec.std) == (
        (112, 112),
        "arcface",
        "RGB",
        (0.5,) * 3,
        (0.5,) * 3,
    )
    assert create_backbone("mobilefacenet", embedding_dim=256).embedding_dim == 256


@pytest.mark.parametrize("option", SMALL_STUDENTS)
def test_whole_student_is_under_3m_parameters_and_has_the_right_shapes(option: str) -> None:
    student = _student(option).eval()
    assert _n_params(student) <= 3_000_000
    assert all(p.requires_grad for p in student.parameters())  # trainable: all, from scratch
    with torch.inference_mode():
        out = student(torch.rand(3, 3, *student.input_spec.size))
    assert out.quality.shape == (3,) and out.embedding.shape == (3, TEACHER_DIM)
    assert torch.isfinite(out.quality).all() and torch.isfinite(out.embedding).all()


@pytest.mark.parametrize("option", SMALL_STUDENTS)
def test_onnx_export_is_small_and_matches_pytorch(tmp_path: Path, option: str) -> None:
    ort = pytest.importorskip("onnxruntime")
    student = _student(option, embedding_dim=128)  # as distilled from the SFace teacher (128-d)
    info = export_student(student, tmp_path, formats=("onnx",), dynamo=False)
    onnx_file = Path(info["files"]["onnx"])
    assert onnx_file.stat().st_size <= 15 * 1024 * 1024
    assert info["onnx_max_abs_diff"] <= 1e-3  # the exporter's parity check against onnxruntime passed
    # and again on faces of another batch size (the batch axis is dynamic): quality and its 0..100 calibration
    faces = torch.rand(5, 3, *student.input_spec.size, generator=torch.Generator().manual_seed(1))
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    raw, calibrated = sess.run(None, {"faces": faces.numpy()})
    with torch.inference_mode():
        ref = student.eval()(faces).quality.numpy()
    np.testing.assert_allclose(raw, ref, rtol=1e-4, atol=1e-4)
    assert calibrated.shape == (5,) and np.all((calibrated >= 0) & (calibrated <= 100))
    graph = onnx_file.read_bytes()
    # FastFaceNet's speed rests on ReLU (fused into the convolutions by onnxruntime); MobileFaceNet uses PReLU
    assert (b"PRelu" in graph) == (option == "mobilefacenet")


def test_fastfacenet_is_the_fast_layout_at_64px() -> None:
    """64x64 ArcFace crops down-sampled by 16 to a 4x4 map that the global depthwise conv reduces; ReLU only."""
    net = create_backbone("fastfacenet").eval()
    assert isinstance(net, FastFaceNet) and net.embedding_dim == 128
    spec = net.input_spec
    assert (spec.size, spec.geometry.template, spec.colour, spec.mean, spec.std) == (
        (64, 64), "arcface", "RGB", (0.5,) * 3, (0.5,) * 3,
    )  # fmt: skip
    x = spec.normalize(torch.rand(2, 3, 64, 64))
    with torch.inference_mode():
        fmap = net.conv_expand(net.blocks(net.stem(x)))
        assert fmap.shape == (2, 512, 4, 4) and net.gdconv(fmap).shape == (2, 512, 1, 1)
    assert not any(isinstance(m, torch.nn.PReLU) for m in net.modules())
    assert len(net.blocks) == 6 and sum(b.residual for b in net.blocks) == 4
    assert _n_params(net) < 0.3e6
    # other sides divisible by 16 keep the layout (80 px -> 5x5); anything else is refused with the fix named
    assert create_backbone("fastfacenet", input_size=80).eval()(torch.rand(1, 3, 80, 80)).shape == (1, 128)
    with pytest.raises(ValueError, match="multiple of 16"):
        create_backbone("fastfacenet", input_size=72)


def test_student_crops_are_cut_at_its_own_size() -> None:
    """The crop a 64 px student sees is aligned at 64 px, not a 112 px crop: a mark on the left eye lands on the
    64 px template's left eye."""
    geometry = _student("fastfacenet").input_spec.geometry
    assert geometry.hw == (64, 64)
    landmarks = np.array([[80.0, 90.0], [140.0, 88.0], [110.0, 125.0], [86.0, 160.0], [136.0, 158.0]])
    yy, xx = np.mgrid[0:240, 0:220]
    image = np.exp(-((xx - 80.0) ** 2 + (yy - 90.0) ** 2) / (2 * 3.0**2))  # a blob on the left eye
    faces = torch.from_numpy(np.repeat(image[None, None], 3, axis=1)).float()
    cut = crop(faces, torch.from_numpy(landmarks).float()[None], geometry)
    assert cut.shape == (1, 3, 64, 64)
    peak = np.unravel_index(int(cut[0, 0].argmax()), (64, 64))
    expected = template_points(geometry)[0]  # (x, y) of the left eye on the 64 px ArcFace template
    assert abs(peak[1] - expected[0]) <= 1.5 and abs(peak[0] - expected[1]) <= 1.5
    assert np.allclose(template_points(Geometry(size=112))[0], (expected + 0.5) * 112 / 64 - 0.5)


@pytest.mark.parametrize("option", SMALL_STUDENTS)
def test_a_few_train_steps_lower_the_distillation_loss(option: str) -> None:
    student = _student(option).train()
    g = torch.Generator().manual_seed(0)
    faces = torch.rand(8, 3, *student.input_spec.size, generator=g)
    q_teacher = torch.randn(8, generator=g)
    e_teacher = torch.randn(8, TEACHER_DIM, generator=g)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        out = student(faces)
        loss = distillation_loss(out.quality, q_teacher, out.embedding, e_teacher)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.slow
def test_readme_benchmark_command_runs_from_a_fresh_directory(tmp_path: Path) -> None:
    """The README's ``python benchmarks/student_speed.py`` (few repeats), run as a user would from another directory:
    it prints the table and writes the JSON with every model and the ratios."""
    readme = (REPO / "README.md").read_text()
    command = "python benchmarks/student_speed.py"
    assert f"`{command}`" in readme
    out = tmp_path / "speed.json"
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    proc = subprocess.run(
        [sys.executable, str(REPO / command.split()[1]), "--repeats", "1", "--latency-runs", "2", "--train-steps", "1",
         "--train-rounds", "1", "--students", "fastfacenet", "--no-reference", "--out", str(out),
         "--student-override", "backbone_kwargs.input_size=80"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "small student (fastfacenet)" in proc.stdout and "x the FaceNet teacher" in proc.stdout
    doc = json.loads(out.read_text())
    labels = [m["label"] for m in doc["models"]]
    assert labels == ["small student (fastfacenet)", "SFace CR-FIQA teacher", "FaceNet CR-FIQA teacher"]
    small = doc["models"][0]
    assert small["input"] == [80, 80] and small["overrides"] == ["backbone_kwargs.input_size=80"]
    assert small["params"] <= 3_000_000 and small["onnx_bytes"] <= 15 * 1024 * 1024
    assert all(m["onnx_img_s"] > 0 and m["onnx_max_abs_diff"] <= 1e-3 for m in doc["models"])
    assert doc["ratios"]["small_vs_facenet_teacher"] > 1 and doc["training"]["ratio"] > 0


def test_speed_benchmark_times_a_student_variant_through_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--student-override backbone_kwargs.input_size=112`` builds the variant a recipe run used (its crops, its
    parameters); a key the option does not have is refused with the key and an example, not silently added."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("student_speed", REPO / "benchmarks" / "student_speed.py")
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclasses look their module up while defined
    spec.loader.exec_module(bench)
    teacher = SimpleNamespace(name="stub", embedding_dim=128, config={})  # what building a student reads of it
    base = bench.build_student("fastfacenet", teacher)
    wide = bench.build_student("fastfacenet", teacher, ["backbone_kwargs.input_size=112"])
    assert tuple(base.input_spec.size) == (64, 64) and tuple(wide.input_spec.size) == (112, 112)
    projected = bench.build_student("fastfacenet", teacher, ["embedding_dim=512"])  # a key whose value is null
    assert projected.embedding_dim == 512 and base.embedding_dim == 128
    with torch.no_grad():
        assert wide(torch.rand(2, 3, 112, 112))[0].shape[0] == 2
    with pytest.raises(SystemExit, match="backbone_kwargs.input_sise=112"):
        bench.build_student("fastfacenet", teacher, ["backbone_kwargs.input_sise=112"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        bench.build_student("fastfacenet", teacher, ["backbone_kwargs.input_size"])
