"""Trainer, atomic checkpoints, DDP through torchrun, LR schedules, evaluation, self-pretraining."""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .distributed import (
    DistInfo,
    distributed_session,
    init_distributed,
    resolve_device,
    shutdown_distributed,
)
from .eval import evaluate_tokens, last_n_loss
from .pretrain import (
    FitResult,
    evaluate_classifier,
    mlm_mask,
    self_pretrain,
    train_classifier,
    transfer_backbone,
)
from .schedules import lr_at
from .trainer import Trainer, TrainSummary, build_optimizer

__all__ = [
    "DistInfo",
    "FitResult",
    "TrainSummary",
    "Trainer",
    "build_optimizer",
    "evaluate_classifier",
    "evaluate_tokens",
    "init_distributed",
    "last_n_loss",
    "latest_checkpoint",
    "load_checkpoint",
    "lr_at",
    "mlm_mask",
    "resolve_device",
    "save_checkpoint",
    "self_pretrain",
    "distributed_session",
    "shutdown_distributed",
    "train_classifier",
    "transfer_backbone",
]
