"""Every ``python train.py ...`` command and every ``key=value`` override the docs show composes as written.

The user-path tests run the headline commands end to end, but the docs name many more: variants in prose, sweep
commands in config comments, single overrides such as ``teacher.fit.extra_train=true``. A key missing from the
config tree makes Hydra refuse such an override ("Key ... is not in struct"), so a user who copies it gets an error
instead of a run. These tests compose each one with Hydra's compose API (nothing is launched); a sweep command is
composed with the first value of each swept key.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import DictConfig

import aikd.config  # noqa: F401  (resolvers)

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
PROSE = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
DOCS = [*PROSE, *sorted(CONF.rglob("*.yaml"))]

# Commands the docs show that need something the user adds first, and the test that covers them instead.
NEEDS_USER_FILES = {
    "teacher=myfiqa": "README 'Adding a teacher' (tests/test_user_paths.py::test_adding_a_teacher_recipe_verbatim)",
}


def _top_level_split(value: str) -> list[str]:
    """``a,[b,c],d`` -> ``["a", "[b,c]", "d"]``: a sweep's values, keeping list values whole."""
    out, depth, cur = [], 0, ""
    for ch in value:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [*out, cur]


def _overrides(args: str) -> list[str]:
    """The overrides a documented command line composes: placeholders (``<time>``, ``...``) and ``-m`` dropped, a
    sweep reduced to its first value per key."""
    tokens = shlex.split(args)
    multirun = "-m" in tokens
    out = []
    for token in tokens:
        if token in ("-m", "...") or "<" in token:
            continue
        if multirun and "=" in token:
            key, value = token.split("=", 1)
            token = f"{key}={_top_level_split(value)[0]}"
        out.append(token)
    return out


def documented_commands() -> list[str]:
    """The argument strings of every ``python train.py`` command in the README, docs/ and the config comments."""
    found: set[str] = set()
    for path in DOCS:
        text = re.sub(r"\\\n\s*", " ", path.read_text())  # shell line continuations
        for match in re.finditer(r"python train\.py((?:[ \t]+[^ \t`\n#|;)]+)*)", text):
            args = match.group(1).strip()
            if not any(args.startswith(skip) or f" {skip}" in args for skip in NEEDS_USER_FILES):
                found.add(args)
    return sorted(found)


def documented_overrides() -> list[str]:
    """Single ``group.key=value`` overrides quoted in backticks in the README and docs/."""
    found: set[str] = set()
    for path in PROSE:
        found.update(re.findall(r"`([a-z_]+(?:\.[A-Za-z_0-9]+)+=[^`\s<]+)`", path.read_text()))
    return sorted(o for o in found if "..." not in o)


@pytest.fixture
def compose_train() -> Iterator:
    def _compose(overrides: list[str]) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            return compose("train", overrides=overrides, return_hydra_config=True)

    yield _compose
    GlobalHydra.instance().clear()


def test_the_docs_show_commands_and_overrides() -> None:
    """The extraction finds what the docs are known to hold (an empty list would make the tests below vacuous)."""
    commands, overrides = documented_commands(), documented_overrides()
    assert "experiment=cfp_sface_small" in commands and "-m experiment=cfp_sface_small seed=12345,1,2" in commands
    assert len(commands) >= 30
    assert "teacher.fit.extra_train=true" in overrides and "model.clean_weight=1.0" in overrides
    assert _overrides("-m experiment=x seed=1,2 'evaluation.conditions=[none,mixed]'") == [
        "experiment=x",
        "seed=1",
        "evaluation.conditions=[none,mixed]",
    ]


@pytest.mark.parametrize("args", documented_commands())
def test_documented_command_composes(args: str, compose_train) -> None:
    compose_train(_overrides(args))


def _contexts() -> list[list[str]]:
    """Where a prose override may apply: the defaults, any experiment, or any option of the data/student/teacher
    groups (``data.detector=yunet`` is a key of ``data=celeba10k``)."""
    out: list[list[str]] = [[]]
    out += [[f"experiment={p.stem}"] for p in sorted((CONF / "experiment").glob("*.yaml"))]
    for group in ("data", "student", "teacher", "model"):
        out += [[f"{group}={p.stem}"] for p in sorted((CONF / group).glob("*.yaml"))]
    return out


@pytest.mark.parametrize("override", documented_overrides())
def test_documented_override_composes_somewhere(override: str, compose_train) -> None:
    errors = []
    for context in _contexts():
        try:
            compose_train([*context, override])
            return
        except Exception as err:  # noqa: BLE001 - collected and reported below
            errors.append(f"{context}: {str(err).splitlines()[0]}")
    pytest.fail(f"`{override}` (quoted in the docs) composes in no context:\n" + "\n".join(errors[:5]))
