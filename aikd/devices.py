"""One rule for the torch device of the work aikd does outside Lightning's Trainer.

Lightning places training on the device ``trainer.accelerator`` names, but aikd also runs models outside the
Trainer: the teacher's backbone-feature and score caches, the calibration scores of a built teacher, the
evaluation stage and the ``aikd score`` command. Each of those used to pick its device with its own rule, so
``trainer=cpu`` could still put a teacher pass on a GPU and ``trainer=gpu`` could quietly evaluate on the CPU.
:func:`resolve_device` is the single rule they all use now, so every pass of one run lands where its config says.
"""

from __future__ import annotations

import re

__all__ = ["ACCELERATORS", "DeviceError", "resolve_device"]

#: The accelerator names :func:`resolve_device` understands (besides ``cuda:N`` and ``None``).
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")

_CUDA_INDEX = re.compile(r"cuda:\d+")


class DeviceError(ValueError):
    """An accelerator name that is unknown, or that names hardware this machine lacks.

    A :class:`ValueError`, so config validation and command-line front ends can report it next to other bad
    settings instead of as a crash.
    """


def resolve_device(accelerator: str | None = "auto") -> str:
    """The torch device for an accelerator setting (``trainer.accelerator``, or a ``--device`` option).

    * ``"cpu"``: ``"cpu"``.
    * ``"gpu"`` / ``"cuda"``: ``"cuda"``; ``"cuda:N"`` is kept as given (to pick one of several GPUs).
    * ``"auto"`` or ``None``: ``"cuda"`` when CUDA is available, else ``"cpu"``. Apple's MPS is not chosen
      automatically: some operators aikd uses fall back to the CPU or are missing there, so it is opt-in.
    * ``"mps"``: ``"mps"``.

    Asking for hardware that is not there is an error rather than a silent fallback to the CPU: a run configured for
    a GPU that would take hours on the CPU should stop at once and say so.

    Args:
        accelerator: the setting, case-insensitive; ``None`` means ``"auto"``.

    Returns:
        A device string for ``torch.device`` / ``.to()``.

    Raises:
        DeviceError: the name is not one of :data:`ACCELERATORS` or ``cuda:N``, or it names CUDA/MPS and that
            backend is not available.
    """
    import torch

    name = "auto" if accelerator is None else str(accelerator).strip().lower()
    if name == "cpu":
        return "cpu"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name in ("gpu", "cuda") or _CUDA_INDEX.fullmatch(name):
        if not torch.cuda.is_available():
            raise DeviceError(
                f"accelerator {accelerator!r} needs a CUDA GPU, but this machine has no CUDA device: use trainer=cpu "
                "(--device cpu on the command line) or auto; a CPU-only torch build also has no CUDA"
            )
        return "cuda" if name == "gpu" else name
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise DeviceError("accelerator 'mps' asks for Apple's Metal backend, which is not available here")
        return "mps"
    raise DeviceError(f"unknown accelerator {accelerator!r}: use one of {', '.join(ACCELERATORS)} or cuda:N")
