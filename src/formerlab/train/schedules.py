"""Learning-rate schedules as pure functions of the step (no scheduler state to checkpoint)."""

from __future__ import annotations

import math

from ..config import TrainConfig

__all__ = ["lr_at"]


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimiser step ``step`` (0-based): linear warmup, then cosine/linear
    decay to ``lr·min_lr_ratio`` at the last step, or constant."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.schedule == "constant":
        return cfg.lr
    span = max(1, cfg.steps - cfg.warmup_steps - 1)
    t = min(1.0, max(0.0, (step - cfg.warmup_steps) / span))
    floor = cfg.lr * cfg.min_lr_ratio
    if cfg.schedule == "linear":
        return floor + (cfg.lr - floor) * (1.0 - t)
    return floor + (cfg.lr - floor) * 0.5 * (1.0 + math.cos(math.pi * t))
