"""AI-KD distillation as a LightningModule: the student learns, from misaligned crops, the score the frozen
teacher gives the properly aligned crop of the same face.

Per batch, on the device (``on_after_batch_transfer``): canvases -> the student's misaligned view (a
``conf/misalign`` module; random in training, seeded per image in validation) and, where needed, the student's
clean view; teacher targets come from the teacher-score cache (default: computed once per dataset and teacher)
or from running the teacher online on its clean view (needed when photometric augmentation changes pixels, and
for degraded faces unless ``degrade.variants`` makes their scores cacheable: ``DegradedTeacherScores``).

Loss = SmoothL1_beta(q_student(misaligned), q_teacher(aligned))
     + embedding_weight * (1 - cos(e_student(misaligned), e_teacher(aligned)))      [teacher with embedding]
     + rank_weight * pairwise_rank_loss(q_student(misaligned), q_teacher(aligned))      [pairs of the batch]
     + clean_weight * (the same on the student's clean view).

The teacher is never a submodule: it is not in ``parameters()``, not in the optimiser and not in checkpoints,
and it stays frozen. Validation reports the Spearman rank correlation between student and teacher on clean
and on misaligned views.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor

from aikd.config import to_plain
from aikd.geometry.align import crop
from aikd.geometry.misalign import Misalignment, NoMisalign, misalign
from aikd.models.student import Student
from aikd.training.cache import teacher_scores
from aikd.training.callbacks import silence_lightning_tips
from aikd.training.losses import distillation_loss

log = logging.getLogger(__name__)

silence_lightning_tips()  # every training run imports this module: Lightning's cloud tips go quiet

__all__ = ["DistillModule", "spearman"]


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two 1-D tensors (average ranks for ties)."""
    from scipy.stats import spearmanr

    if len(a) < 3:
        return float("nan")
    return float(spearmanr(a.detach().cpu().numpy(), b.detach().cpu().numpy()).statistic)


class _Shared:
    """Holder that deep copies (EMA's averaged model copy) share rather than duplicate: the teacher and the
    memory-mapped caches must exist once."""

    def __init__(self) -> None:
        self.teacher: Any = None
        self.caches: dict[str, Any] = {}

    def __deepcopy__(self, memo: dict) -> _Shared:
        return self


class DistillModule(pl.LightningModule):
    """Distil a frozen teacher into an alignment-robust student.

    Args:
        student: the :class:`~aikd.models.student.Student` (its checkpoint is what this module saves).
        misalign: perturbation of the student's view in training.
        optimizer: partial optimiser (``params -> Optimizer``), e.g. SGD lr 0.05 as in AI-KD.
        scheduler: optional partial LR scheduler (``optimizer -> scheduler``), stepped every optimiser step.
        beta: SmoothL1 transition of the quality term (AI-KD: 0.5).
        embedding_weight: weight of the embedding-consistency term (0 disables it).
        clean_weight: weight of the same loss on the student's clean view (0 = misaligned only, as AI-KD).
        rank_weight: weight of the pairwise ranking term (``aikd.training.losses.pairwise_rank_loss``; 0 = off).
        val_misalign: perturbation for validation (default: ``misalign``), drawn per image from ``val_seed``.
        val_seed: seed of validation perturbations.
        student_config: how the student was built (stored in checkpoints so ``aikd score`` can rebuild it).
        seed: seed of the training misalignment draws (offset by the process rank under DDP). The generator's
            state is saved in checkpoints, so a resumed run draws what the uninterrupted run would have.
    """

    def __init__(
        self,
        student: Student,
        misalign: Misalignment | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        beta: float = 0.5,
        embedding_weight: float = 1.0,
        clean_weight: float = 0.0,
        rank_weight: float = 0.0,
        val_misalign: Misalignment | None = None,
        val_seed: int = 0,
        student_config: dict[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.student = student
        self.misalign = misalign or NoMisalign()
        self.val_misalign = val_misalign or self.misalign
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.beta = beta
        self.embedding_weight = embedding_weight
        self.clean_weight = clean_weight
        self.rank_weight = rank_weight
        self.val_seed = val_seed
        self._shared = _Shared()
        self._val: dict[str, list[Tensor]] = {}
        self.seed = int(seed)
        self._generator = torch.Generator().manual_seed(self.seed)
        # Plain containers only: Hydra hands dict arguments over as DictConfig, which a safe checkpoint load refuses.
        self.save_hyperparameters(
            to_plain(
                {
                    "student_config": dict(student_config or {}),
                    "input_spec": student.input_spec.to_dict(),
                    "beta": beta,
                    "embedding_weight": embedding_weight,
                    "clean_weight": clean_weight,
                    "rank_weight": rank_weight,
                    "misalign": repr(self.misalign),
                }
            )
        )

    # -- teacher ----------------------------------------------------------------------------------------------
    def attach_teacher(self, teacher: Any, caches: dict[str, Any] | None = None) -> DistillModule:
        """Set the frozen teacher and optional score caches (``{"train": TeacherScoreCache, "val": ...}``)."""
        if not getattr(teacher, "frozen", False):
            raise ValueError("distillation needs a frozen teacher (aikd.models.teacher.create_teacher freezes it)")
        self._shared.teacher = teacher
        self._shared.caches = dict(caches or {})
        # The student learns the teacher's raw scale, so the teacher's 0..100 calibration applies to it.
        self.student.calibration = teacher.calibration
        self.hparams["calibration"] = teacher.calibration.to_dict()
        self.hparams["teacher"] = {"name": teacher.name, "fingerprint": teacher.fingerprint}
        use_embedding = self.embedding_weight > 0 and teacher.embedding_dim is not None
        if use_embedding and teacher.embedding_dim != self.student.embedding_dim:
            raise ValueError(
                f"student embedding size {self.student.embedding_dim} != teacher's {teacher.embedding_dim}: set "
                f"student.embedding_dim={teacher.embedding_dim} or model.embedding_weight=0"
            )
        return self

    @property
    def teacher(self) -> Any:
        return self._shared.teacher

    def _split(self) -> str:
        return "train" if self.trainer is not None and self.trainer.training else "val"

    def _teacher_targets(self, batch: dict[str, Tensor], img: Tensor) -> tuple[Tensor, Tensor | None]:
        cache = self._shared.caches.get(self._split())
        if cache is not None:
            if "epoch" in batch:  # degraded faces: the score of the version this epoch shows (DegradedTeacherScores)
                if not hasattr(cache, "degradation"):
                    raise ValueError(
                        "the training faces are degraded but the teacher-score cache holds clean faces' scores: set "
                        "degrade.variants (scores of the degraded versions are cached) or "
                        "stage.distill.teacher_mode=online"
                    )
                return cache.lookup(batch["index"], batch["epoch"], batch.get("degraded"))
            return cache.lookup(batch["index"])
        teacher = self.teacher
        if teacher is None:
            raise RuntimeError("no teacher attached: call attach_teacher() before fitting")
        if next(iter(teacher.parameters()), torch.empty(0)).device != img.device:
            teacher.to(img.device)
        # The very computation the teacher-score cache stores, so online and cached targets cannot differ.
        values = teacher_scores(teacher, {**batch, "image": img})
        return values["quality"], values.get("embedding")

    # -- data -------------------------------------------------------------------------------------------------
    def on_after_batch_transfer(self, batch: dict[str, Tensor], dataloader_idx: int) -> dict[str, Tensor]:
        if "image" not in batch or len(batch["image"]) == 0:
            return batch
        img = batch["image"].float() / 255.0
        lm, mat = batch["landmarks"], batch["canvas_from_source"]
        geometry = self.student.input_spec.geometry
        training = self.trainer is not None and self.trainer.training
        if training:
            params = self.misalign.sample(lm, generator=self._generator)
        else:
            params = self.val_misalign.sample_for_indices(lm, batch["index"], seed=self.val_seed)
        batch["student_view"], _ = misalign(img, lm, geometry, params, mat)
        if self.clean_weight > 0 or not training:
            batch["student_clean"] = crop(img, lm, geometry, mat)
        q, e = self._teacher_targets(batch, img)
        batch["teacher_quality"] = q.to(img.device)
        if e is not None:
            batch["teacher_embedding"] = e.to(img.device)
        del batch["image"]
        return batch

    def setup(self, stage: str) -> None:
        # The canvas the faces were aligned onto is part of how the student's crops are made (photo -> canvas ->
        # crop); it travels with the checkpoint and the export so that `aikd score` cuts crops the same way.
        canvas = getattr(getattr(self.trainer, "datamodule", None), "canvas", None)
        if canvas is not None:
            self.student.canvas = canvas
            self.hparams["canvas"] = canvas.to_dict()
        if self.trainer is not None and self.trainer.world_size > 1:
            self._generator.manual_seed(self.seed + 1000003 * self.trainer.global_rank)

    def __getstate__(self) -> dict[str, Any]:
        # DDP-spawn pickles the module into each worker; a torch.Generator does not survive that (its state tensor
        # is sent through a shared-memory file descriptor that fails to map), so its state travels as bytes.
        state = super().__getstate__()
        state["_generator"] = bytes(self._generator.get_state().numpy())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(torch.frombuffer(bytearray(state["_generator"]), dtype=torch.uint8))
        state["_generator"] = generator
        super().__setstate__(state)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["misalign_generator"] = self._generator.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "misalign_generator" in checkpoint:
            self._generator.set_state(checkpoint["misalign_generator"])

    # -- steps ------------------------------------------------------------------------------------------------
    def _loss(self, view: Tensor, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        out = self.student(view)
        w = self.embedding_weight if "teacher_embedding" in batch else 0.0
        return distillation_loss(
            out.quality,
            batch["teacher_quality"],
            out.embedding,
            batch.get("teacher_embedding"),
            self.beta,
            w,
            self.rank_weight,
        )

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor | None:
        n_skipped = int(batch.get("n_skipped", 0))
        if "student_view" not in batch:
            return None
        parts = self._loss(batch["student_view"], batch)
        loss = parts["loss"]
        if self.clean_weight > 0:
            clean = self._loss(batch["student_clean"], batch)
            loss = loss + self.clean_weight * clean["loss"]
            self.log("train/loss_clean", clean["loss"], batch_size=len(batch["index"]))
        bs = len(batch["index"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/quality_loss", parts["quality"], batch_size=bs)
        self.log("train/embedding_loss", parts["embedding"], batch_size=bs)
        if self.rank_weight > 0:
            self.log("train/rank_loss", parts["rank"], batch_size=bs)
        self.log("train/skipped", float(n_skipped), reduce_fx="sum", batch_size=bs)
        return loss

    def on_validation_epoch_start(self) -> None:
        self._val = {"teacher": [], "clean": [], "misaligned": []}

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        if "student_view" not in batch:
            return
        mis = self.student(batch["student_view"])
        clean = self.student(batch["student_clean"])
        parts = self._loss(batch["student_view"], batch)
        self.log("val/loss", parts["loss"], batch_size=len(batch["index"]), sync_dist=True)
        self._val["teacher"].append(batch["teacher_quality"].detach())
        self._val["clean"].append(clean.quality.detach())
        self._val["misaligned"].append(mis.quality.detach())

    def on_validation_epoch_end(self) -> None:
        if not self._val.get("teacher"):
            return
        vals = {k: torch.cat(v) for k, v in self._val.items()}
        if self.trainer is not None and self.trainer.world_size > 1:
            vals = {k: self.all_gather(v).reshape(-1) for k, v in vals.items()}
        self.log("val/spearman_clean", spearman(vals["clean"], vals["teacher"]), prog_bar=True)
        self.log("val/spearman_misaligned", spearman(vals["misaligned"], vals["teacher"]), prog_bar=True)

    def configure_optimizers(self) -> Any:
        import inspect

        params = [p for p in self.student.parameters() if p.requires_grad]
        opt = (
            self.optimizer_factory(params) if self.optimizer_factory else torch.optim.SGD(params, lr=0.05, momentum=0.9)
        )
        if self.scheduler_factory is None:
            return opt
        kwargs = {}
        try:
            if "total_steps" in inspect.signature(self.scheduler_factory).parameters:
                kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        except (TypeError, ValueError):
            pass
        return {
            "optimizer": opt,
            "lr_scheduler": {"scheduler": self.scheduler_factory(opt, **kwargs), "interval": "step"},
        }
