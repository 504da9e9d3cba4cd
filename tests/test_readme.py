"""The README's "Adding a teacher" recipe works as written (code and YAML are taken from README.md itself)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import hydra
import torch
import yaml

from aikd.teacher import TEACHERS, Teacher

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
