"""Training a FIQA teacher as a Lightning module, whatever its objective.

The module owns what every trainable teacher shares: an *unfrozen* :class:`~aikd.models.teacher.EmbeddingTeacher`
(backbone -> projection -> embedding [-> quality head]), a margin-softmax classifier over the training identities,
the optimiser and the per-epoch loss log. What the teacher learns comes from its objective, a
:class:`~aikd.training.objectives.TeacherObjective` the teacher declares itself (``Teacher.objective``): the generic
ones live in :mod:`aikd.training.objectives` (``crfiqa``, ``magface``, ``adaface``), a teacher-specific one in the
teacher's own file (``teachers/ri.py``). Nothing here names a teacher or an objective.

Batches are either cached backbone features (``{"features", "identity"}``: the frozen-backbone recipe, fast
on CPU) or canvases from :class:`~aikd.data.FaceDataModule` (the teacher's crop is cut on the device).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from aikd.geometry.align import crop
from aikd.geometry.misalign import Misalignment, misalign
from aikd.models.teacher import EmbeddingTeacher
from aikd.training.callbacks import silence_lightning_tips
from aikd.training.margins import create_margin_head
from aikd.training.objectives import TeacherObjective

log = logging.getLogger(__name__)

silence_lightning_tips()  # every training run imports this module: Lightning's cloud tips go quiet

__all__ = ["TeacherTrainingModule"]


class TeacherTrainingModule(pl.LightningModule):
    """Trains a teacher's projection/heads (and optionally its backbone) with its objective.

    Args:
        teacher: an unfrozen :class:`EmbeddingTeacher` (built through the registry, not ``create_teacher``).
        num_classes: number of training identities.
        objective: the objective, already prepared (:meth:`~aikd.training.objectives.TeacherObjective.prepare`) if it
            needs data; ``None`` builds the teacher's own (``teacher.objective``) with default options.
        head: margin-head settings, e.g. ``{"name": "arcface", "s": 64.0, "m": 0.5}`` (the name defaults to the
            objective's ``default_head``: ArcFace for CR-FIQA/RI as in the papers, MagFace/AdaFace heads for those).
        optimizer: partial optimiser (``params -> Optimizer``).
        scheduler: optional partial LR scheduler (``optimizer -> scheduler``).
        misalign: optional perturbation of the teacher's crops in image mode (default: clean crops).

    Raises:
        ValueError: the teacher is frozen, declares no objective, or its objective cannot train it
            (:meth:`~aikd.training.objectives.TeacherObjective.check`, e.g. no quality head, or RI without UI features).
    """

    def __init__(
        self,
        teacher: EmbeddingTeacher,
        num_classes: int,
        objective: TeacherObjective | None = None,
        head: dict[str, Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        misalign: Misalignment | None = None,
    ) -> None:
        super().__init__()
        if teacher.frozen:
            raise ValueError(
                "the teacher is frozen; build it with aikd.models.teacher.TEACHERS.get(name)(...) to train it"
            )
        if objective is None:
            if teacher.objective is None:
                raise ValueError(f"teacher '{teacher.name}' declares no training objective (Teacher.objective)")
            objective = teacher.objective()
        objective.check(teacher)
        head_cfg = dict(head or {})
        head_name = head_cfg.pop("name", objective.default_head)
        self.teacher = teacher
        self.objective = objective  # a submodule: state it prepared moves to the device with the module
        self.margin_head = create_margin_head(head_name, teacher.embedding_dim, num_classes, **head_cfg)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.misalign = misalign
        #: mean training loss of every finished epoch (what the per-epoch log lines report)
        self.epoch_losses: list[float] = []
        self._loss_sum: Tensor | None = None
        self._loss_count = 0
        self.save_hyperparameters(
            {
                "objective": objective.name,
                "head": head_name,
                **head_cfg,
                **objective.hparams(),
                "num_classes": num_classes,
            }
        )

    # -- data -----------------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        if "features" in batch or len(batch.get("image", ())) == 0:
            return batch
        img = batch["image"].float() / 255.0
        lm, mat = batch["landmarks"], batch["canvas_from_source"]
        geometry = self.teacher.input_spec.geometry
        if self.misalign is not None and self.training:
            batch["faces"], _ = misalign(img, lm, geometry, self.misalign.sample(lm), mat)
        else:
            batch["faces"] = crop(img, lm, geometry, mat)
        return batch

    def _features(self, batch: dict[str, Tensor]) -> Tensor:
        if "features" in batch:
            return batch["features"]
        return self.teacher.features(batch["faces"])

    # -- training -------------------------------------------------------------------------------------------
    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        labels = batch["identity"]
        if len(labels) < 2:
            return None
        emb = self.teacher.embedding_from_features(self._features(batch))
        out = self.margin_head(emb, labels)
        logs = self.objective(self.teacher, emb, out, labels)
        loss = logs.pop("loss")
        with torch.no_grad():
            logs["acc"] = (out.cos.argmax(-1) == labels).float().mean()
        self.log("teacher/loss", loss, prog_bar=True, batch_size=len(labels))
        self.log_dict({f"teacher/{k}": v for k, v in logs.items()}, batch_size=len(labels))
        # summed on the device: no host synchronisation per step, one per epoch
        weighted = loss.detach() * len(labels)
        self._loss_sum = weighted if self._loss_sum is None else self._loss_sum + weighted
        self._loss_count += len(labels)
        return loss

    def on_train_epoch_start(self) -> None:
        self._loss_sum, self._loss_count = None, 0
        # A frozen backbone stays in eval mode (its BatchNorm statistics are part of the pretrained model).
        if self.teacher.backbone_frozen:
            self.teacher.backbone.eval()

    def on_train_epoch_end(self) -> None:
        """Log the epoch's mean loss: the progress bar shows it while training, and the log keeps a line for some
        epochs (about ten per run, always the last), so a finished run's log says whether the teacher learnt."""
        if self._loss_sum is None or self._loss_count == 0:
            return
        mean = float(self._loss_sum) / self._loss_count
        self.epoch_losses.append(mean)
        self.log("teacher/epoch_loss", mean, prog_bar=True)
        epoch = self.current_epoch + 1
        max_epochs = int(self.trainer.max_epochs or 0)
        total = max_epochs if max_epochs > 0 else epoch  # -1: no epoch limit
        stride = max(1, -(-total // 10))
        if epoch == 1 or epoch % stride == 0 or epoch >= total:
            log.info("teacher %s: epoch %d/%d, mean loss %.4f", self.teacher.name, epoch, total, mean)

    def configure_optimizers(self) -> Any:
        params = [p for p in self.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.Adam(params, lr=1e-3)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "epoch"}}
