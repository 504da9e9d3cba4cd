"""The small student (``student=mobilefacenet``): under 3 M parameters, right shapes, a small ONNX file, and it
learns.

The backbone's registry contract (finite raw embeddings, eval determinism, input spec) is checked with every other
backbone in ``tests/test_backbones.py``; this file checks what makes it a *small, deployable* student.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from aikd.models.backbones import create_backbone
from aikd.models.backbones.mobilefacenet import MobileFaceNet
from aikd.models.student import Student
from aikd.serving.export import export_student
from aikd.training.losses import distillation_loss

CONF = Path(__file__).resolve().parent.parent / "conf"
#: The embedding size of the teachers the student is distilled from (FaceNet / projected CR-FIQA teachers: 512);
#: the student's 128-d embedding is projected to it, which is the largest configuration it is used in.
TEACHER_DIM = 512


def _student(**kw) -> Student:
    cfg = OmegaConf.to_container(OmegaConf.load(CONF / "student" / "mobilefacenet.yaml"))
    torch.manual_seed(0)
    return Student(
        cfg["backbone"],
        cfg["backbone_weights"],
        cfg["backbone_kwargs"],
        kw.get("embedding_dim", TEACHER_DIM),
        cfg["hidden"],
        cfg["trainable"],
    )


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_config_is_a_from_scratch_student() -> None:
    cfg = OmegaConf.load(CONF / "student" / "mobilefacenet.yaml")
    assert cfg.from_teacher is False and cfg.backbone == "mobilefacenet" and cfg.backbone_weights is None
    assert cfg.trainable == "all"


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


def test_whole_student_is_under_3m_parameters_and_has_the_right_shapes() -> None:
    student = _student().eval()
    assert _n_params(student) <= 3_000_000
    assert all(p.requires_grad for p in student.parameters())  # trainable: all, from scratch
    with torch.inference_mode():
        out = student(torch.rand(3, 3, 112, 112))
    assert out.quality.shape == (3,) and out.embedding.shape == (3, TEACHER_DIM)
    assert torch.isfinite(out.quality).all() and torch.isfinite(out.embedding).all()


def test_onnx_export_is_small_and_matches_pytorch(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    student = _student()
    info = export_student(student, tmp_path, formats=("onnx",), dynamo=False)
    onnx_file = Path(info["files"]["onnx"])
    assert onnx_file.stat().st_size <= 15 * 1024 * 1024
    assert info["onnx_max_abs_diff"] <= 1e-3  # the exporter's parity check against onnxruntime passed


def test_a_few_train_steps_lower_the_distillation_loss() -> None:
    student = _student().train()
    g = torch.Generator().manual_seed(0)
    faces = torch.rand(8, 3, 112, 112, generator=g)
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
