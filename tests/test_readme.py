"""The README's "Adding a teacher" recipe works as written (code and YAML are taken from README.md itself)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import hydra
import pytest
import torch
import yaml

from aikd.models.teacher import TEACHERS, Teacher

README = Path(__file__).resolve().parents[1] / "README.md"


def _section_blocks(lang: str) -> list[str]:
    text = README.read_text()
    section = text.split("## Adding a teacher", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(b) for b in re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)]


def test_readme_teacher_recipe_registers_builds_and_scores(monkeypatch) -> None:
    (code,) = _section_blocks("python")
    (conf,) = _section_blocks("yaml")
    # keep the global registry as it was: the example registers "myfiqa" only for this test
    monkeypatch.setattr(TEACHERS, "_entries", dict(TEACHERS._entries))
    namespace: dict = {}
    exec(compile(code, str(README), "exec"), namespace)
    assert "myfiqa" in TEACHERS

    spec = hydra.utils.instantiate(yaml.safe_load(conf))
    assert spec.name == "myfiqa" and spec.calibration == "ecdf"
    teacher = spec.instantiate().freeze()
    assert isinstance(teacher, Teacher)
    h, w = teacher.input_spec.size
    flat = torch.full((2, 3, h, w), 0.5)
    textured = torch.rand(2, 3, h, w, generator=torch.Generator().manual_seed(0))
    q_flat, q_textured = teacher(flat).quality, teacher(textured).quality
    assert q_flat.shape == (2,) and torch.all(q_flat == 0)
    assert torch.all(q_textured > q_flat)  # the example's "sharpness" ranks textured faces higher
    assert all(not p.requires_grad for p in teacher.parameters())


def _trainable_section_blocks(lang: str) -> list[str]:
    section = README.read_text().split("## Adding a trainable teacher", 1)[1].split("\n## ", 1)[0]
    return [textwrap.dedent(b) for b in re.findall(rf"```{lang}\n(.*?)```", section, flags=re.S)]


@pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")
def test_readme_trainable_teacher_is_one_file_and_one_yaml_that_train(monkeypatch) -> None:
    """The README's trainable teacher composes with the shared fit recipe and its objective lowers its loss."""
    from omegaconf import OmegaConf

    from aikd.config import load_option
    from aikd.models.teacher import EmbeddingTeacher
    from aikd.training import TeacherTrainingModule

    (code,) = _trainable_section_blocks("python")
    (conf,) = _trainable_section_blocks("yaml")
    monkeypatch.setattr(TEACHERS, "_entries", dict(TEACHERS._entries))
    exec(compile(code, str(README), "exec"), {})
    cfg = OmegaConf.create(yaml.safe_load(conf))
    assert list(cfg.pop("defaults")) == ["base/fit@fit", "_self_"]
    cfg = OmegaConf.merge({"fit": load_option("teacher", "base/fit")}, cfg)  # what Hydra composes
    spec = hydra.utils.instantiate(cfg, _convert_="partial")
    assert spec.name == "cosfiqa" and spec.fit["batch_size"] == 256 and spec.fit["scheduler"].keywords["T_max"] == 40
    torch.manual_seed(0)
    teacher = spec.instantiate(**EmbeddingTeacher.example_kwargs)  # small and download-free
    assert teacher.name == "cosfiqa" and type(spec.objective()).__name__ == "CosineToCentre"
    module = TeacherTrainingModule(teacher, num_classes=4, objective=spec.objective(), head=spec.fit["head"],
                                   optimizer=lambda p: torch.optim.Adam(p, lr=1e-2))  # fmt: skip
    opt = module.configure_optimizers()
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(4).repeat_interleave(8)
    features = (3.0 * torch.randn(4, int(teacher.backbone.embedding_dim), generator=g))[labels]
    batch = {"features": features + 0.5 * torch.randn(features.shape, generator=g), "identity": labels}
    losses = []
    for step in range(20):
        loss = module.training_step(batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0], losses
