"""Learning-rate schedules that need the run length (given by the module as ``total_steps``)."""

from __future__ import annotations

import math

import torch

__all__ = ["warmup_cosine"]


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup_fraction: float = 0.05, final_factor: float = 0.01
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over ``warmup_fraction`` of the steps, then cosine decay to ``final_factor`` x the base LR.

    Use as a partial in configs (``_target_: aikd.training.schedulers.warmup_cosine``, ``_partial_: true``); the
    distillation module fills in ``total_steps`` from the trainer, so one config fits any data size.
    """
    total = max(int(total_steps), 1)
    warm = max(int(total * warmup_fraction), 1)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        t = min((step - warm) / max(total - warm, 1), 1.0)
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * t))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
