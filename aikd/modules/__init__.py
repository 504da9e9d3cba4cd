"""LightningModules: teacher training and distillation."""

from aikd.callbacks import silence_lightning_tips
from aikd.modules.distill import DistillModule
from aikd.modules.teacher_training import TeacherTrainingModule

__all__ = ["DistillModule", "TeacherTrainingModule"]

# Every run that trains imports this package: Lightning's cloud-service tips are filtered from here on.
silence_lightning_tips()
