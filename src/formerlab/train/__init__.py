"""Trainer, atomic checkpoints, DDP through torchrun, LR schedules, evaluation."""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import DistInfo, init_distributed, resolve_device, shutdown_distributed
from .eval import evaluate_tokens, last_n_loss
from .schedules import lr_at
from .trainer import Trainer, TrainSummary, build_optimizer

__all__ = [
    "DistInfo",
    "TrainSummary",
    "Trainer",
    "build_optimizer",
    "evaluate_tokens",
    "init_distributed",
    "last_n_loss",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "resolve_device",
    "save_checkpoint",
    "shutdown_distributed",
]
