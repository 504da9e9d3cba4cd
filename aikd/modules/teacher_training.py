"""Training FIQA teachers as Lightning modules: CR-FIQA, MagFace/AdaFace-style norm teachers, RI.

One module, four objectives, all on an *unfrozen* :class:`~aikd.teacher.EmbeddingTeacher` (backbone ->
projection -> embedding [-> quality head]) with a margin-softmax classifier over the training identities:

* ``crfiqa`` - CE(margin logits) + lambda * SmoothL1_beta(CR target, quality head); the CR target
  CCS / (NNCCS + 1 + eps) (paper) or CCS / NNCCS (released code) is computed from the classifier's cosines
  under no_grad;
* ``magface`` - MagFace head (norm-dependent margin + lambda_g regulariser): the embedding norm becomes the
  quality;
* ``adaface`` - AdaFace head (norm-adaptive margin): the norm is the quality proxy;
* ``ri`` - CE(margin logits) + SmoothL1(0.75)(RI target, quality head) + index-diversion hinge; the UI centre
  is the normalised mean embedding of heavily degraded training faces, recomputed through the current
  projection at every step (it moves as the projection trains).

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

from aikd.align import crop
from aikd.losses import create_margin_head, crfiqa_loss, recognizability_index, ri_loss, ui_centre
from aikd.misalign import Misalignment, misalign
from aikd.teacher import EmbeddingTeacher

log = logging.getLogger(__name__)

__all__ = ["TeacherTrainingModule", "OBJECTIVES"]

OBJECTIVES = ("crfiqa", "magface", "adaface", "ri")
_DEFAULT_HEAD = {"crfiqa": "arcface", "ri": "arcface", "magface": "magface", "adaface": "adaface"}


class TeacherTrainingModule(pl.LightningModule):
    """Trains a teacher's projection/heads (and optionally its backbone) with a FIQA objective.

    Args:
        teacher: an unfrozen :class:`EmbeddingTeacher` (built through the registry, not ``create_teacher``).
        num_classes: number of training identities.
        objective: one of :data:`OBJECTIVES`.
        head: margin-head settings, e.g. ``{"name": "arcface", "s": 64.0, "m": 0.5}`` (name defaults per
            objective: ArcFace for CR-FIQA/RI as in the papers, MagFace/AdaFace heads for those).
        lam: weight of the quality regression (CR-FIQA lambda = 10).
        beta: SmoothL1 transition (CR-FIQA 0.5; RI uses 0.75 when ``objective="ri"`` and ``beta`` is None).
        cr_variant: ``"paper"`` (CCS / (NNCCS + 1 + eps)) or ``"code"`` (CCS / NNCCS, the released code).
        ri_diversion_weight: weight of RI's index-diversion hinge.
        ri_margin: cosine distance from the UI centre the hinge asks hard samples to reach.
        ui_features: ``(K, D)`` backbone features of unrecognisable faces (RI only).
        optimizer: partial optimiser (``params -> Optimizer``).
        scheduler: optional partial LR scheduler (``optimizer -> scheduler``).
        misalign: optional perturbation of the teacher's crops in image mode (default: clean crops).
    """

    def __init__(
        self,
        teacher: EmbeddingTeacher,
        num_classes: int,
        objective: str = "crfiqa",
        head: dict[str, Any] | None = None,
        lam: float = 10.0,
        beta: float | None = None,
        cr_variant: str = "paper",
        ri_diversion_weight: float = 1.0,
        ri_margin: float = 0.5,
        ui_features: Tensor | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        misalign: Misalignment | None = None,
    ) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
        if teacher.frozen:
            raise ValueError("the teacher is frozen; build it with aikd.teacher.TEACHERS.get(name)(...) to train it")
        if objective in ("crfiqa", "ri") and teacher.quality_head is None:
            raise ValueError(f"objective '{objective}' needs a teacher with a quality head")
        if objective == "ri" and ui_features is None:
            raise ValueError("objective 'ri' needs ui_features (embeddings of unrecognisable faces)")
        head_cfg = dict(head or {})
        head_name = head_cfg.pop("name", _DEFAULT_HEAD[objective])
        self.teacher = teacher
        self.objective = objective
        self.margin_head = create_margin_head(head_name, teacher.embedding_dim, num_classes, **head_cfg)
        self.lam = lam
        self.beta = beta if beta is not None else (0.75 if objective == "ri" else 0.5)
        self.cr_variant = cr_variant
        self.ri_diversion_weight = ri_diversion_weight
        self.ri_margin = ri_margin
        self.register_buffer(
            "ui_features", ui_features if ui_features is not None else torch.zeros(0), persistent=False
        )
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.misalign = misalign
        #: mean training loss of every finished epoch (what the per-epoch log lines report)
        self.epoch_losses: list[float] = []
        self._loss_sum: Tensor | None = None
        self._loss_count = 0
        self.save_hyperparameters(
            {
                "objective": objective,
                "head": head_name,
                **head_cfg,
                "lam": lam,
                "beta": self.beta,
                "cr_variant": cr_variant,
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
        feats = self._features(batch)
        emb = self.teacher.embedding_from_features(feats)
        out = self.margin_head(emb, labels)
        ce = torch.nn.functional.cross_entropy(out.logits, labels)
        logs: dict[str, Tensor] = {"ce": ce}
        if self.objective == "crfiqa":
            q = self.teacher.quality_from_embedding(emb)
            parts = crfiqa_loss(out.logits, out.cos, labels, q, lam=self.lam, beta=self.beta, variant=self.cr_variant)
            loss = parts["loss"]
            logs.update(quality_loss=parts["quality"], cr_target=parts["target"].mean())
        elif self.objective == "ri":
            with torch.no_grad():  # a constant target; eval mode so UI faces do not move BatchNorm statistics
                was_training = self.teacher.projection.training
                self.teacher.projection.eval()
                centre = ui_centre(self.teacher.embedding_from_features(self.ui_features))
                self.teacher.projection.train(was_training)
            target = recognizability_index(emb, centre, out.cos, labels)
            q = self.teacher.quality_from_embedding(emb)
            parts = ri_loss(
                q, target, emb, centre, beta=self.beta, diversion_weight=self.ri_diversion_weight, margin=self.ri_margin
            )
            loss = ce + self.lam * parts["regression"] + parts["diversion"] * self.ri_diversion_weight
            logs.update(quality_loss=parts["regression"], diversion=parts["diversion"], ri_target=target.mean())
        else:
            loss = ce + out.extra_loss
            logs.update(extra=out.extra_loss, norm=emb.norm(dim=-1).mean())
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
