"""Lab runs over several processes (``torchrun``): data-parallel training, one writer.

``torchrun --nproc_per_node=N -m formerlab lab run NAME ...`` starts ``N`` copies of the whole
experiment. The rules that keep them in step:

- **Every process runs the whole experiment**, with the same seeds, so each draws the same
  batches, initial weights and evaluation sets. Training goes through
  :meth:`~formerlab.lab.RunContext.train` and :meth:`~formerlab.lab.RunContext.trained_model`
  (which call :func:`train_in_place`), where the :class:`~formerlab.train.Trainer` gets the
  process group: each process computes its slice of every step's global batch and the gradients
  are all-reduced (DDP) or sharded (FSDP2, ``TrainConfig.parallel = "fsdp"``), so ``N``
  processes compute the update of one process with the same global batch (up to float rounding).
- **After training every process holds the full trained weights in the caller's own module** —
  a plain module, not a DDP wrapper nor FSDP shards — so the evaluation that follows runs on every
  process without any collective and gives the same numbers (the weights are identical). Only
  rank 0's rows are written; measurements of time (speed tables, ``train_seconds``) are rank 0's.
- **Only rank 0 writes**: results, tables, figures, the report, the trained-model cache and its
  checkpoints (the trainer already writes checkpoints and ``final/`` from rank 0 only), and only
  rank 0 prints. Decisions read from disk (a cached model, stored seeds) are rank 0's, broadcast
  to the others, so no process acts on a file another is still writing, and every process takes
  the same branch (and so joins the same collectives).

Experiments with their own optimisation loops (not the trainer) run the same computation on every
process: correct, but no faster than one process.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import TrainConfig
from ..models.config import ModelConfig
from ..train.distributed import DistInfo
from ..train.trainer import BatchFn, Trainer, TrainSummary

__all__ = ["barrier", "from_main", "process_device", "train_in_place"]

T = TypeVar("T")


def process_device(device: torch.device, dist_info: DistInfo) -> torch.device:
    """``device`` with each process on its own GPU (``cuda:LOCAL_RANK``) under ``torchrun``."""
    if dist_info.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", dist_info.local_rank)
    return device


def from_main(value: T, dist_info: DistInfo | None) -> T:
    """Rank 0's ``value`` on every process (a collective; ``value`` itself on one process)."""
    if dist_info is None or not dist_info.enabled:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(dist_info: DistInfo | None) -> None:
    """Wait for every process (nothing on one process)."""
    if dist_info is not None and dist_info.enabled:
        dist.barrier()


def _full_weights(trainer: Trainer) -> dict[str, Tensor]:
    """The trained module's full state on every process (gathered from the shards under FSDP)."""
    if not trainer.sharded:
        return trainer.model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # full_state_dict without cpu_offload: a collective after which every rank has every tensor
    return get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True))


def train_in_place(
    model: nn.Module,
    model_config: ModelConfig,
    train_config: TrainConfig,
    batch_fn: BatchFn,
    *,
    device: torch.device,
    dist_info: DistInfo | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    resume: bool = False,
) -> TrainSummary:
    """Train ``model`` with the :class:`~formerlab.train.Trainer`; afterwards ``model`` itself
    holds the trained weights, on ``device``, on every process.

    On one process the trainer trains ``model`` directly. Over several processes it trains a copy
    (wrapped in DDP, or sharded by FSDP2 when ``train_config.parallel == "fsdp"``) and the trained
    weights are loaded back into ``model``, which stays a plain module with no DDP hooks nor
    shards: it can be evaluated locally, copied, or trained again.

    Args:
        model: The module to train (``forward(input_ids, labels=...)`` returning ``.loss``).
        model_config, train_config, batch_fn: As for :class:`~formerlab.train.Trainer`.
        device: Where to train (each process its own GPU under ``torchrun``).
        dist_info: The process group's rank and world (``None``: one process).
        out_dir: The trainer's run folder (``None``: nothing written).
        progress: Show the trainer's progress bar (rank 0 only).
        resume: Continue from the latest checkpoint in ``out_dir``.

    Returns:
        The trainer's :class:`~formerlab.train.TrainSummary`.
    """
    info = dist_info or DistInfo()
    if not info.enabled:
        trainer = Trainer(model, model_config, train_config, batch_fn, out_dir=out_dir,
                          device=device, progress=progress, dist_info=info)
        return trainer.train(resume=resume)
    replica = copy.deepcopy(model)
    trainer = Trainer(replica, model_config, train_config, batch_fn, out_dir=out_dir,
                      device=device, progress=progress, dist_info=info)
    summary = trainer.train(resume=resume)
    weights = _full_weights(trainer)
    model.to(trainer.device)
    _load_trained(model, weights)
    model.train(trainer.model.training)
    return summary


def _load_trained(model: nn.Module, weights: dict[str, Any]) -> None:
    """Copy ``weights`` into ``model``; only tied duplicates (one tensor, two names) may be
    missing from ``weights``."""
    result = model.load_state_dict(weights, strict=False)
    own = model.state_dict(keep_vars=True)
    present = {id(own[k]) for k in own if k in weights}
    missing = [k for k in result.missing_keys if id(own[k]) not in present]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"trained weights do not match the model: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")
