"""The one device rule (:func:`aikd.devices.resolve_device`), the one cache root (:mod:`aikd.io`) and the one
parser of trainable-backbone settings, with CUDA availability faked so every branch runs on any machine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from aikd import io
from aikd.devices import DeviceError, resolve_device
from aikd.models.backbones import TRAINABLE_MODES, parse_trainable, set_trainable


@pytest.fixture
def cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.fixture
def no_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.mark.parametrize("accelerator", ["cpu", "CPU"])
@pytest.mark.parametrize("has_cuda", [True, False])
def test_cpu_is_cpu_whatever_the_machine(accelerator: str, has_cuda: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)
    assert resolve_device(accelerator) == "cpu"


@pytest.mark.usefixtures("cuda")
@pytest.mark.parametrize(
    ("accelerator", "device"),
    [("gpu", "cuda"), ("cuda", "cuda"), ("cuda:1", "cuda:1"), ("auto", "cuda"), (None, "cuda")],
)
def test_gpu_names_and_auto_with_cuda(accelerator: str | None, device: str) -> None:
    assert resolve_device(accelerator) == device


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("accelerator", ["auto", None])
def test_auto_falls_back_to_cpu(accelerator: str | None) -> None:
    assert resolve_device(accelerator) == "cpu"


@pytest.mark.usefixtures("no_cuda")
@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "cuda:0"])
def test_asking_for_a_missing_gpu_is_an_error_not_a_silent_cpu_run(accelerator: str) -> None:
    with pytest.raises(DeviceError, match=r"no CUDA device: use trainer=cpu"):
        resolve_device(accelerator)


def test_mps_only_when_available(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("mps") == "mps"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="mps"):
        resolve_device("mps")


@pytest.mark.parametrize("accelerator", ["tpu", "cuda:x", "gpus", ""])
def test_unknown_accelerators_name_the_valid_ones(accelerator: str) -> None:
    with pytest.raises(DeviceError, match=r"auto, cpu, gpu, cuda, mps or cuda:N"):
        resolve_device(accelerator)


@pytest.mark.usefixtures("no_cuda")
def test_the_pipeline_device_follows_trainer_accelerator() -> None:
    from omegaconf import OmegaConf

    from aikd.app.pipeline import _device

    assert _device(OmegaConf.create({"trainer": {"accelerator": "auto"}})) == "cpu"
    assert _device(OmegaConf.create({})) == "cpu"  # no trainer: nothing asks for a GPU
    with pytest.raises(DeviceError):
        _device(OmegaConf.create({"trainer": {"accelerator": "gpu"}}))


# ---------------------------------------------------------------------------------------------------- cache root


def test_cache_root_outside_a_run_is_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIKD_CACHE", str(tmp_path / "env"))
    assert io.cache_root() == tmp_path / "env"
    assert io.cache_dir("weights") == tmp_path / "env" / "weights" and (tmp_path / "env" / "weights").is_dir()


def test_use_cache_root_overrides_the_environment_and_restores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIKD_CACHE", str(tmp_path / "env"))
    with io.use_cache_root(tmp_path / "run") as root:
        assert root == tmp_path / "run" and root.is_dir()
        assert io.cache_dir("landmarks") == tmp_path / "run" / "landmarks"
        with io.use_cache_root(tmp_path / "inner"):
            assert io.cache_root() == tmp_path / "inner"
        assert io.cache_root() == tmp_path / "run"
    assert io.cache_root() == tmp_path / "env"
    with pytest.raises(RuntimeError), io.use_cache_root(tmp_path / "failing"):
        raise RuntimeError("a failing run")
    assert io.cache_root() == tmp_path / "env"  # restored on errors too


# ------------------------------------------------------------------------------------------------ trainable modes


@pytest.mark.parametrize(
    ("mode", "keep"), [("all", None), ("none", 0), ("head", 0), ("last:0", 0), ("last:3", 3), (" last:12 ", 12)]
)
def test_parse_trainable_accepts_the_union_of_student_and_teacher_forms(mode: str, keep: int | None) -> None:
    assert parse_trainable(mode) == keep


@pytest.mark.parametrize("mode", ["frozen", "last:", "last:-1", "last:two", "ALL", "last"])
def test_parse_trainable_names_every_valid_form(mode: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_trainable(mode)
    for form in TRAINABLE_MODES:
        assert form in str(err.value)


def test_set_trainable_counts_from_the_output_end() -> None:
    net = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))  # 4 tensors: w0, b0, w1, b1
    for mode, expected in [("all", 4), ("head", 0), ("none", 0), ("last:1", 1), ("last:3", 3), ("last:9", 4)]:
        set_trainable(net, mode)
        flags = [p.requires_grad for p in net.parameters()]
        assert sum(flags) == expected, mode
        assert flags == sorted(flags), mode  # the trainable ones are the last


def test_student_and_teacher_share_the_modes() -> None:
    from aikd.models.student import Student
    from aikd.models.teacher import EmbeddingTeacher

    kw = EmbeddingTeacher.example_kwargs
    student = Student(kw["backbone"], None, kw["backbone_kwargs"], trainable="none")  # a teacher's form
    assert not any(p.requires_grad for p in student.backbone.parameters())
    teacher = EmbeddingTeacher(**{**kw, "trainable_backbone": "head"})  # a student's form
    assert teacher.backbone_frozen and not any(p.requires_grad for p in teacher.backbone.parameters())
    assert not EmbeddingTeacher(**{**kw, "trainable_backbone": "last:2"}).backbone_frozen
    with pytest.raises(ValueError, match=r"all \| none \| head \| last:K"):
        Student(kw["backbone"], None, kw["backbone_kwargs"], trainable="bottom")
