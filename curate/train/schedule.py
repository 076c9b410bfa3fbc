"""Learning-rate schedule: linear warmup, then cosine decay to zero (open_clip's ``cosine_lr``)."""

from __future__ import annotations

import math

import torch


def cosine_lr(step: int, base_lr: float, warmup: int, total: int) -> float:
    """The learning rate for optimizer step ``step`` (0-based) of ``total`` steps.

    Warmup rises linearly from ``base_lr / warmup`` to ``base_lr`` over ``warmup`` steps; the
    rest follows half a cosine from ``base_lr`` down to 0, as open_clip's ``cosine_lr`` does.
    """
    if step < warmup:
        return base_lr * (step + 1) / warmup
    decay_steps = max(1, total - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    return 0.5 * (1.0 + math.cos(math.pi * progress)) * base_lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Put ``lr`` into every parameter group."""
    for group in optimizer.param_groups:
        group["lr"] = lr
