"""Old module paths (aikd 0.1 flat layout) keep importing, with a warning that names the new home.

Users have ``_target_: aikd.student.Student`` or ``from aikd.misalign import misalign`` in their own YAML and code.
When the package was arranged into floors (geometry, faces, data, models, training, evaluation, serving, app),
those paths moved. Rather than leaving a shim file behind for each (which would hide the layout again), one import
hook resolves an old path to its new module and emits a :class:`FutureWarning` naming it, so Hydra's ``_target_``
lookup, ``import`` statements and ``hydra.utils.get_class`` keep working for one release. A module that was split
answers each attribute from whichever new module holds it; a name that no longer exists fails with an
:class:`AttributeError` that lists the new modules to look in.

The hook is installed once, by ``import aikd``; it only ever answers names listed in :data:`MOVED` (and their
submodules), so it cannot shadow anything else. Remove in aikd 0.3.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
import warnings
from collections.abc import Sequence
from typing import Any

#: Old module path -> its new home(s). A package maps its submodules too (``aikd.backbones.facenet`` ->
#: ``aikd.models.backbones.facenet``). Several homes: the module was split by concern.
MOVED: dict[str, tuple[str, ...]] = {
    "aikd.align": ("aikd.geometry.align",),
    "aikd.misalign": ("aikd.geometry.misalign",),
    "aikd.preprocess": ("aikd.geometry.preprocess",),
    "aikd.onnx_models": ("aikd.faces.onnx",),
    "aikd.yunet": ("aikd.faces.yunet",),
    "aikd.landmarks": ("aikd.faces.detect", "aikd.faces.mtcnn", "aikd.data.landmarks", "aikd.app.detect_landmarks"),
    "aikd.degrade": ("aikd.data.unrecognisable",),
    "aikd.registry": ("aikd.models.registry",),
    "aikd.teacher": ("aikd.models.teacher",),
    "aikd.student": ("aikd.models.student",),
    "aikd.calibration": ("aikd.models.calibration",),
    "aikd.backbones": ("aikd.models.backbones",),
    "aikd.backbones.facenet": (
        "aikd.models.backbones.facenet",
        "aikd.models.backbones.facenet_net",
        "aikd.models.backbones.facenet_convert",
        "aikd.models.backbones.facenet_reference",
    ),
    "aikd.backbones.sface": (
        "aikd.models.backbones.sface",
        "aikd.models.backbones.sface_net",
        "aikd.models.backbones.sface_convert",
        "aikd.models.backbones.sface_onnx",
    ),
    "aikd.modules": ("aikd.training",),
    "aikd.losses": (
        "aikd.training.losses",
        "aikd.training.margins",
        "aikd.training.fiqa_targets",
        "aikd.training.objectives",
        "aikd.models.calibration",
    ),
    "aikd.cache": ("aikd.training.cache",),
    "aikd.teacher_fit": ("aikd.training.teacher_fit",),
    "aikd.callbacks": ("aikd.training.callbacks",),
    "aikd.distributed": ("aikd.training.distributed",),
    "aikd.viz": ("aikd.evaluation.preview",),
    "aikd.export": ("aikd.serving.export",),
    "aikd.score": ("aikd.serving.score", "aikd.serving.load", "aikd.app.score_cli"),
    "aikd.pipeline": ("aikd.app.pipeline",),
    "aikd.cli": ("aikd.app.cli",),
    "aikd.sweep": ("aikd.app.sweep",),
    "aikd.validate": ("aikd.app.validate",),
}


def new_homes(name: str) -> tuple[str, ...] | None:
    """The new module path(s) of an old one, or None when ``name`` did not move.

    Submodules of a moved package follow it: ``aikd.modules.distill`` -> ``aikd.training.distill``.
    """
    if name in MOVED:
        return MOVED[name]
    parent, _, leaf = name.rpartition(".")
    while parent:
        if parent in MOVED and len(MOVED[parent]) == 1:
            return (f"{MOVED[parent][0]}.{leaf}",)
        parent, _, more = parent.rpartition(".")
        leaf = f"{more}.{leaf}"
    return None


class _SplitModule(types.ModuleType):
    """Stands in for a module that was split: each attribute comes from whichever new module defines it."""

    def __init__(self, name: str, homes: Sequence[str]) -> None:
        super().__init__(name, f"Moved: {name} was split into {', '.join(homes)}.")
        self._homes = tuple(homes)

    def __getattr__(self, attr: str) -> Any:
        if attr.startswith("__"):
            raise AttributeError(attr)
        for home in self._homes:
            module = importlib.import_module(home)
            if hasattr(module, attr):
                return getattr(module, attr)
        raise AttributeError(
            f"{self.__name__}.{attr} no longer exists: {self.__name__} was split into {', '.join(self._homes)} "
            f"and none of them defines {attr!r}; see the module table in README.md (Layout)."
        )


class _MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Meta-path hook answering old module paths (see the module docstring)."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith("aikd.") or new_homes(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        homes = new_homes(spec.name) or ()
        warnings.warn(
            f"{spec.name} moved to {' and '.join(homes)}; the old path works until aikd 0.3 - update your imports "
            f"and `_target_:` lines (README.md, Layout).",
            FutureWarning,
            stacklevel=2,
        )
        if len(homes) == 1:
            return importlib.import_module(homes[0])  # the same module object: no second registration
        return _SplitModule(spec.name, homes)

    def exec_module(self, module: types.ModuleType) -> None:
        """Nothing to run: the new module was executed by its own import."""


def install() -> None:
    """Put the hook first on ``sys.meta_path`` (idempotent): before the path finder, which would otherwise load
    ``aikd/models/backbones/facenet.py`` a second time under the old name ``aikd.backbones.facenet``."""
    if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _MovedModuleFinder())
