"""The package layout shows the data flow: folders are floors, and imports only go down.

image -> crop/misalign (geometry) -> landmarks (faces) -> datasets (data) -> networks (models) -> training ->
evaluation -> export/score (serving) -> pipeline/CLI (app). A module may import its own floor and the floors below,
never above - not even inside a function, which is where circles used to hide (``aikd.data`` -> landmark cache ->
``aikd.data``). Old module paths keep importing through :mod:`aikd._compat`, with a warning naming the new one.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import aikd
from aikd import _compat

ROOT = Path(aikd.__file__).resolve().parent

#: Floors from the bottom. ``aikd`` itself (version, metadata tag, the compat hook), ``io``, ``devices`` and ``config``
#: are the foundation every floor may use.
FLOORS = [
    ("aikd", "aikd._compat", "aikd.io", "aikd.devices", "aikd.config"),
    ("aikd.geometry",),
    ("aikd.faces",),
    ("aikd.data",),
    ("aikd.models",),
    ("aikd.training",),
    ("aikd.evaluation",),
    ("aikd.serving",),
    ("aikd.app",),
]


def _module_names() -> dict[str, Path]:
    names = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        names[name] = path
    return names


def _floor(module: str) -> int:
    best = (-1, -1)  # (length of the matching prefix, floor)
    for level, prefixes in enumerate(FLOORS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[0]:
                if prefix == "aikd" and module != "aikd":
                    continue
                best = (len(prefix), level)
    if best[1] < 0:
        raise AssertionError(f"{module} belongs to no floor: add its folder to FLOORS (tests/test_layout.py)")
    return best[1]


def import_graph() -> dict[str, set[str]]:
    """Every aikd -> aikd import, including those inside functions and under ``TYPE_CHECKING`` excluded."""
    modules = _module_names()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        skip = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for n in ast.walk(node))
        deps: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                # ``from pkg import submodule`` depends on the submodule; ``from module import name`` on the module
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]  # fmt: skip
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def test_imports_only_go_down_the_floors() -> None:
    graph = import_graph()
    upward = [
        f"{a} (floor {_floor(a)}) imports {b} (floor {_floor(b)})"
        for a, deps in graph.items()
        for b in deps
        if _floor(b) > _floor(a)
    ]
    assert not upward, "imports that go up a floor:\n" + "\n".join(sorted(upward))


def test_no_import_circles() -> None:
    graph = import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    # aikd/__init__ installs the compat hook; _compat imports nothing from aikd: the only pair allowed is none.
    assert circles == [], circles


def test_teachers_package_is_never_imported_by_aikd_at_import_time() -> None:
    for name, path in _module_names().items():
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only: the registry loads plug-ins lazily, on first lookup
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "teachers":
                raise AssertionError(f"{name} imports teachers at import time")
            if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "teachers" for a in node.names):
                raise AssertionError(f"{name} imports teachers at import time")


def test_every_folder_is_a_floor_and_named_in_the_readme() -> None:
    readme = (ROOT.parent / "README.md").read_text()
    folders = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and (p / "__init__.py").exists())
    assert folders == sorted(["app", "data", "evaluation", "faces", "geometry", "models", "serving", "training"])
    for folder in folders:
        _floor(f"aikd.{folder}")
        assert f"aikd/{folder}/" in readme, f"README's layout section does not describe aikd/{folder}/"


@pytest.mark.parametrize("old", sorted(_compat.MOVED))
def test_old_module_paths_import_with_a_warning_naming_the_new_home(old: str) -> None:
    homes = _compat.MOVED[old]
    for home in homes:  # the table points at modules that exist
        importlib.import_module(home)
    sys.modules.pop(old, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    messages = [str(w.message) for w in caught if w.category is FutureWarning]
    assert any(old in m and all(h in m for h in homes) for m in messages), messages
    if len(homes) == 1:
        assert module is importlib.import_module(homes[0])  # the same object: registries are not filled twice
    sys.modules.pop(old, None)


def test_old_target_paths_in_user_yaml_still_instantiate() -> None:
    from hydra.utils import get_class, instantiate
    from omegaconf import OmegaConf

    from aikd.geometry.misalign import LandmarkJitter
    from aikd.models.student import Student

    for old in ("aikd.student", "aikd.misalign"):  # as in a fresh process: not imported under the old name yet
        sys.modules.pop(old, None)
        if hasattr(aikd, old.split(".")[1]):
            delattr(aikd, old.split(".")[1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert get_class("aikd.student.Student") is Student
        aug = instantiate(OmegaConf.create({"_target_": "aikd.misalign.LandmarkJitter", "pixels": 3.0}))
    assert isinstance(aug, LandmarkJitter) and aug.pixels == 3.0
    moved = [str(w.message) for w in caught if w.category is FutureWarning]
    assert any("aikd.models.student" in m for m in moved) and any("aikd.geometry.misalign" in m for m in moved)
    # submodules of a moved package follow it, as one module object
    old_iresnet = importlib.import_module("aikd.backbones.iresnet")
    new_iresnet = importlib.import_module("aikd.models.backbones.iresnet")

    assert old_iresnet is new_iresnet


def test_a_name_that_is_gone_fails_naming_where_to_look() -> None:
    split = [old for old, homes in _compat.MOVED.items() if len(homes) > 1]
    assert split, "no split module in the table"
    old = split[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = importlib.import_module(old)
        with pytest.raises(AttributeError, match=_compat.MOVED[old][0].replace(".", r"\.")):
            module.no_such_name  # noqa: B018
    assert _compat.new_homes("aikd.io") is None and _compat.new_homes("aikd.modules.distill") == (
        "aikd.training.distill",
    )


def test_old_paths_work_in_a_fresh_interpreter() -> None:
    """The hook is installed by ``import aikd`` alone, before anything else imported the new modules."""
    code = (
        "import warnings; warnings.simplefilter('error', FutureWarning)\n"
        "try:\n    from aikd.align import crop\nexcept FutureWarning as w:\n    print('WARN', w)\n"
        "warnings.simplefilter('ignore', FutureWarning)\n"
        "from aikd.align import crop; from aikd.geometry.align import crop as c2; print(crop is c2)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "WARN aikd.align moved to aikd.geometry.align" in out and out.strip().endswith("True")
