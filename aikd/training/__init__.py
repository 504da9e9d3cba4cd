"""Training: the LightningModules (teacher training, distillation), losses and objectives, caches and callbacks.

Floor 5. Names are imported lazily, so that reading a cache or a loss does not pay for importing Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "DistillModule": "aikd.training.distill",
    "TeacherTrainingModule": "aikd.training.teacher_training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'aikd.training' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
