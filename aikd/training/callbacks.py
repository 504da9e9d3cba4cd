"""Lightning callbacks aikd adds to the stock ones, and the Lightning chatter aikd turns off."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EMAWeightAveraging, ModelCheckpoint, TQDMProgressBar
from torch import Tensor

__all__ = ["FinalStepCheckpoint", "TeacherProgressBar", "WarmupEMA", "warmup_ema_avg_fn", "silence_lightning_tips"]

#: Where Lightning's rank-zero messages are logged (``rank_zero_info`` logs through whichever of these the last
#: imported Lightning package registered; all are covered).
_RANK_ZERO_LOGGERS = (
    "pytorch_lightning.utilities.rank_zero",
    "lightning_fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)


class _LightningTipFilter(logging.Filter):
    """Drops Lightning's advertisements for its cloud services (the ``litlogger`` / ``litmodels`` tips).

    Lightning 2.6 logs one at INFO for every Trainer built without its LitLogger, and one more for every Trainer
    without a checkpoint callback; an aikd run builds several Trainers (teacher training, distillation, the
    distributed teacher pass), so the same tip came up several times per run. Lightning offers no switch for it;
    the filter matches only those messages, everything else Lightning says still shows.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.msg)
        return not (msg.startswith("\N{ELECTRIC LIGHT BULB} Tip:") and ("litlogger" in msg or "litmodels" in msg))


_TIP_FILTER = _LightningTipFilter()


#: Deprecation notices that third-party libraries raise from their own internals on every run (nothing a user of
#: aikd can change): torchdata's stateful loader calling ``torch.set_vital``, Lightning's pytree helper.
_LIBRARY_DEPRECATIONS = (
    r"'set_vital' is deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
)


def silence_lightning_tips() -> None:
    """Install the filter against Lightning's cloud-service tips and ignore the libraries' internal deprecation
    notices (idempotent; done when aikd's modules import)."""
    import warnings

    for name in _RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
    for message in _LIBRARY_DEPRECATIONS:
        warnings.filterwarnings("ignore", message=message)


silence_lightning_tips()


class FinalStepCheckpoint(ModelCheckpoint):
    """:class:`~pytorch_lightning.callbacks.ModelCheckpoint` whose ``last.ckpt`` always holds the final step.

    The stock callback with ``every_n_train_steps`` writes ``last.ckpt`` only at those steps: a run of 360 steps
    with saves every 50 ended with ``last.ckpt`` at step 350, so scoring with it gave other numbers than the run's
    export. Here ``last`` is also written at the end of every training epoch when this step is not saved yet.
    Lightning calls ``on_train_epoch_end`` for the final epoch however training stops (``max_epochs``,
    ``max_steps`` in mid-epoch, early stopping), so the final step is always saved. It is saved there rather
    than in ``on_train_end`` because the EMA callback (:class:`WarmupEMA`) copies the averaged weights into the
    model in ``on_train_end``, before checkpoint callbacks run: a save then would store the averaged weights
    as the raw ones to resume from. At ``on_train_epoch_end`` the checkpoint holds the averaged weights as
    ``state_dict`` (what :func:`aikd.serving.export.load_student` reads and what the run exports) and the raw ones for
    resuming, as the periodic saves do.

    The state key stays the stock callback's, so checkpoints written before this class existed resume with their
    checkpoint state (best and last paths). With ``save_last="link"`` Lightning makes ``last.ckpt`` a link to the
    newest periodic checkpoint instead; that mode is left as Lightning has it (aikd's configs use ``true``).
    """

    @property
    def state_key(self) -> str:
        key = super().state_key
        return "ModelCheckpoint" + key[len(type(self).__qualname__) :]

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self.save_last is True and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def warmup_ema_avg_fn(decay: float, warmup: float = 10.0) -> Callable[[Tensor, Tensor, Tensor | int], Tensor]:
    """EMA update with the usual warm-up: the effective decay is ``min(decay, (1 + n) / (warmup + n))``.

    A fixed decay of 0.999 needs thousands of steps before the average forgets the random initial weights;
    short runs (the demo, small data sets, sweeps) would then validate and export an untrained head.
    """
    # A partial of a module-level function, not a closure: the callback is pickled into DDP-spawn workers.
    return functools.partial(_warmup_ema_update, decay=float(decay), warmup=float(warmup))


def _warmup_ema_update(
    averaged: Tensor, current: Tensor, num_averaged: Tensor | int, decay: float, warmup: float
) -> Tensor:
    n = float(num_averaged)
    d = min(decay, (1.0 + n) / (warmup + n))
    return averaged * d + current * (1.0 - d)


class WarmupEMA(EMAWeightAveraging):
    """Lightning's EMA weight averaging with a decay warm-up (see :func:`warmup_ema_avg_fn`).

    Args:
        decay: the decay reached after the warm-up (AI-KD-style long runs: 0.999).
        warmup: warm-up constant (the decay is ~0.5 after ``warmup`` updates... 0.9 after ``9 * warmup``).
        **kwargs: :class:`~pytorch_lightning.callbacks.EMAWeightAveraging` arguments.
    """

    def __init__(self, decay: float = 0.999, warmup: float = 10.0, **kwargs: Any) -> None:
        super().__init__(decay=decay, **kwargs)
        self._kwargs["avg_fn"] = warmup_ema_avg_fn(decay, warmup)


class TeacherProgressBar(TQDMProgressBar):
    """The distillation's progress bar (tqdm) for teacher training, labelled ``teacher <name> epoch k/N``.

    Lightning's default bar is Rich's when ``rich`` is installed; it redraws in place and, when the output is not
    a terminal (a log file, ``tee``, a batch job), shows nothing until training ends, so a teacher training of
    several minutes looked stuck. tqdm writes a line per refresh there, as the distillation's bar does; the label
    tells the two trainings apart, and ``N`` is ``teacher.fit.epochs``.
    """

    def __init__(self, name: str, refresh_rate: int = 10) -> None:
        super().__init__(refresh_rate=refresh_rate)
        self.teacher_name = name

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        # Not Lightning's hook: it first redraws the bar as "Epoch k", one more line per epoch in a log file.
        batches = self.total_train_batches
        self.train_progress_bar.reset(total=None if batches == float("inf") else int(batches))
        total = f"/{trainer.max_epochs}" if (trainer.max_epochs or 0) > 0 else ""
        self.train_progress_bar.set_description(f"teacher {self.teacher_name} epoch {trainer.current_epoch + 1}{total}")
