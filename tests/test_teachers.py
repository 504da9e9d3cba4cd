"""The teacher contract, checked for EVERY registered teacher (plug-ins are covered without new tests)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aikd.models.calibration import Calibration
from aikd.models.teacher import (
    TEACHERS,
    EmbeddingTeacher,
    Teacher,
    create_teacher,
    list_teachers,
    load_teacher,
    register_teacher,
    save_teacher,
)


def _faces(teacher: Teacher, n: int = 3, seed: int = 0) -> torch.Tensor:
    h, w = teacher.input_spec.size
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed))


def _build(name: str, tmp_dir: Path) -> Teacher:
    """Build a registered teacher with its download-free test arguments (files it needs go to ``tmp_dir``)."""
    torch.manual_seed(0)
    factory = TEACHERS.get(name)
    hook = getattr(factory, "example_kwargs_for_tests", None)
    kwargs = hook(tmp_dir) if hook is not None else dict(getattr(factory, "example_kwargs", {}))
    return create_teacher(name, **kwargs)


@pytest.mark.parametrize("name", list_teachers())
def test_teacher_contract(name: str, tmp_path: Path) -> None:
    teacher = _build(name, tmp_path)
    faces = _faces(teacher)
    out = teacher(faces)
    assert out.quality.shape == (3,) and torch.isfinite(out.quality).all()
    if teacher.embedding_dim is not None:
        assert out.embedding is not None and out.embedding.shape == (3, teacher.embedding_dim)
    # frozen: no gradients, eval mode even after .train(), same answer twice
    assert all(not p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not any(m.training for m in teacher.modules())
    assert not out.quality.requires_grad
    torch.testing.assert_close(teacher(faces).quality, out.quality)
    # scores do not depend on batch composition (eval-mode BatchNorm, no batch statistics)
    torch.testing.assert_close(teacher(faces[:1]).quality, out.quality[:1], atol=1e-5, rtol=1e-4)
    cal = teacher.score_0_100(faces)
    assert ((cal >= 0) & (cal <= 100)).all()


@pytest.mark.parametrize("name", list_teachers())
def test_teacher_fingerprint_and_round_trip(name: str, tmp_path: Path) -> None:
    teacher = _build(name, tmp_path)
    fp = teacher.fingerprint
    assert fp == _build(name, tmp_path).fingerprint  # deterministic for equal weights and config
    path = save_teacher(teacher, tmp_path / f"{name}.safetensors")
    loaded = load_teacher(path)
    loaded.freeze()
    faces = _faces(teacher)
    torch.testing.assert_close(loaded(faces).quality, teacher(faces).quality)
    assert loaded.fingerprint == fp
    params = [p for p in teacher.parameters() if p.numel()]
    if params:
        with torch.no_grad():
            params[-1].add_(1.0)
        teacher.invalidate_fingerprint()
        assert teacher.fingerprint != fp


def test_unfrozen_teacher_trains_and_frozen_one_does_not() -> None:
    cls = TEACHERS.get("crfiqa")
    t = cls(**cls.example_kwargs)
    assert any(p.requires_grad for p in t.parameters())  # projection and head train
    assert all(not p.requires_grad for p in t.backbone.parameters())  # trainable_backbone="none"
    t.train()
    assert t.training and t.projection.training
    t.freeze()
    t.train()
    assert not t.training


def test_load_teacher_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_teacher(tmp_path / "nope.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.safetensors"):
        load_teacher(tmp_path / "bad.safetensors")
    t = _build("crfiqa", tmp_path)
    path = save_teacher(t, tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match="holds teacher 'crfiqa'"):
        load_teacher(path, expected_name="magface")


def test_registry_rejects_duplicates_and_suggests() -> None:
    with pytest.raises(ValueError, match="already registered"):

        @register_teacher("crfiqa")
        class Other(Teacher):  # noqa: F811
            pass

    with pytest.raises(KeyError, match="Did you mean 'crfiqa'"):
        create_teacher("crfiqaa")


def test_user_teacher_plugs_in() -> None:
    """A user teacher registered in their own code works with create_teacher, then is removed again."""

    class Brightness(Teacher):
        name = "test_brightness"

        def predict(self, faces):  # noqa: ANN001, ANN202
            from aikd.models.teacher import TeacherOutput

            return TeacherOutput(faces.mean(dim=(1, 2, 3)), None)

    register_teacher("test_brightness")(Brightness)
    try:
        t = create_teacher("test_brightness")
        q = t(torch.stack([torch.zeros(3, 112, 112), torch.ones(3, 112, 112)]))
        assert q.quality.tolist() == [0.0, 1.0]
    finally:
        TEACHERS._entries.pop("test_brightness")


@settings(max_examples=30, deadline=None)
@given(
    data=st.lists(st.floats(-1e3, 1e3, allow_nan=False), min_size=2, max_size=200),
    kind=st.sampled_from(["ecdf", "logistic"]),
    probe=st.lists(st.floats(-1e4, 1e4, allow_nan=False), min_size=2, max_size=50),
)
def test_calibration_monotone_and_bounded(data: list[float], kind: str, probe: list[float]) -> None:
    cal = Calibration.fit(data, kind=kind)
    x = torch.tensor(sorted(probe), dtype=torch.float64)
    y = cal(x)
    assert ((y >= 0) & (y <= 100)).all()
    assert (torch.diff(y) >= -1e-9).all()
    assert Calibration.from_dict(cal.to_dict())(x).allclose(y)


def test_ecdf_calibration_values() -> None:
    ref = np.arange(101, dtype=np.float64)  # 0..100
    cal = Calibration.fit(ref, kind="ecdf")
    out = cal(torch.tensor([-5.0, 0.0, 25.0, 50.0, 100.0, 1e6], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([0.0, 0.0, 25.0, 50.0, 100.0, 100.0], dtype=torch.float64))
    logi = Calibration.fit(ref, kind="logistic")
    assert abs(float(logi(torch.tensor(50.0))) - 50.0) < 1e-4  # centre = median
    assert abs(float(logi(torch.tensor(75.0))) - 75.0) < 1e-3  # quartiles match by construction


def test_calibration_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        Calibration.fit([1.0])
    with pytest.raises(ValueError):
        Calibration(kind="ecdf", knots=[1.0, 0.0], levels=[0.0, 100.0])
    with pytest.raises(ValueError, match="kind"):
        Calibration(kind="weird")


def test_embedding_teacher_head_matches_full_forward() -> None:
    cls = TEACHERS.get("crfiqa")
    t = create_teacher("crfiqa", **cls.example_kwargs)
    assert isinstance(t, EmbeddingTeacher)
    faces = _faces(t)
    full = t(faces)
    with torch.no_grad():
        via = t.head(t.backbone(faces))
    torch.testing.assert_close(via.quality, full.quality)
    torch.testing.assert_close(via.embedding, full.embedding)


def test_the_decorator_writes_a_teachers_name_once() -> None:
    """``@register_teacher("x")`` is where a name is written: it sets the class's ``name`` (saved, fingerprinted)."""
    assert all(TEACHERS.get(n).name == n for n in list_teachers())

    class Unnamed(Teacher):
        def predict(self, faces):  # noqa: ANN001, ANN202
            from aikd.models.teacher import TeacherOutput

            return TeacherOutput(faces.mean(dim=(1, 2, 3)), None)

    class Misnamed(Unnamed):
        name = "something_else"

    try:
        register_teacher("test_unnamed")(Unnamed)
        assert Unnamed.name == "test_unnamed" and create_teacher("test_unnamed").name == "test_unnamed"
        with pytest.raises(ValueError, match="Misnamed.name is 'something_else' but it is registered as 'test_mis'"):
            register_teacher("test_mis")(Misnamed)
        assert "test_mis" not in TEACHERS
    finally:
        TEACHERS._entries.pop("test_unnamed", None)
