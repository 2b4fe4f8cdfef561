"""Trained checkpoints cached by config hash, so repeated lab runs reuse them.

The cache key hashes the model config, the train config, the corpus identity and a format
version; the initial weights are drawn from a generator seeded with the train config's ``seed``,
so a key names one model whatever the calling process did before. A cached model lives in
``<cache>/checkpoints/<hash>/final``; an interrupted training resumes from
``<cache>/checkpoints/<hash>/checkpoints`` on the next run. The cache root is ``--cache-dir``, else
``$FORMERLAB_CACHE``, else ``~/.cache/formerlab``.

Over several processes (``torchrun``, see :mod:`formerlab.lab.distributed`) every process calls
:func:`trained_model` with the same configs: rank 0 decides whether the model is cached (and the
others follow its decision), all train together, rank 0 alone writes the checkpoints and
``final/``, and a barrier keeps every process in until it has. How the training is spread over
processes (their number, ``parallel``) is not part of the key: it changes the weights only by float
rounding. A cached model is loaded from ``final/`` by every process, so under ``torchrun`` on
several machines the cache folder must be one they all see (a shared file system), as resuming a
``formerlab train`` run already requires.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

from ..config import TrainConfig, config_hash
from ..models.config import ModelConfig
from ..models.lm import CausalLM
from ..train.distributed import DistInfo
from ..train.trainer import BatchFn
from .distributed import barrier, from_main, train_in_place

__all__ = ["CACHE_VERSION", "default_cache_dir", "trained_model"]

CACHE_VERSION = 2

#: TrainConfig fields that do not change the trained weights (excluded from the cache key)
BOOKKEEPING = ("log_every", "checkpoint_every", "keep_checkpoints")


def default_cache_dir() -> Path:
    env = os.environ.get("FORMERLAB_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "formerlab"


def trained_model(
    model_config: ModelConfig,
    train_config: TrainConfig,
    batch_fn: BatchFn,
    *,
    corpus_id: str,
    cache_dir: Path | None,
    device: torch.device,
    progress: bool = True,
    log: Callable[[str], None] = print,
    dist_info: DistInfo | None = None,
    parallel: str | None = None,
) -> tuple[CausalLM, dict[str, object]]:
    """Load the cached model for these configs, or train (resuming if interrupted) and cache it.

    Args:
        model_config, train_config, batch_fn: The model to train and how (``batch_fn(step,
            rows)`` must return the given rows of the step's global batch).
        corpus_id: Identity of the training data (part of the key).
        cache_dir: The cache root (``None``: :func:`default_cache_dir`).
        device: Where to train and load.
        progress: Show the trainer's progress bar.
        log: Where the "reusing" / "training" messages go.
        dist_info: The process group under ``torchrun`` (``None``: one process).
        parallel: ``"ddp"`` or ``"fsdp"`` to override ``train_config.parallel`` (not part of the
            key).

    Returns:
        ``(model, info)``: a plain :class:`CausalLM` on ``device`` (on every process) and
        ``cache_key``, ``run_dir``, ``cached`` and, after training, ``train_seconds``,
        ``tokens_per_second``, ``final_loss``.
    """
    train_key = {k: v for k, v in train_config.to_dict().items() if k not in BOOKKEEPING}
    key = config_hash(model_config, train_key, {"corpus": corpus_id, "v": CACHE_VERSION})
    run_dir = (cache_dir or default_cache_dir()) / "checkpoints" / key
    final = run_dir / "final"
    info: dict[str, object] = {"cache_key": key, "run_dir": str(run_dir)}
    if from_main((final / "model.safetensors").is_file(), dist_info):
        log(f"reusing cached model {key} ({run_dir})")
        model = CausalLM.from_pretrained(final, device=device)
        info["cached"] = True
        return model, info
    log(f"training model {key} -> {run_dir}")
    model = CausalLM(model_config)
    model.reset_parameters(torch.Generator().manual_seed(train_config.seed))
    if parallel is not None:
        train_config = train_config.replace(parallel=parallel)
    summary = train_in_place(model, model_config, train_config, batch_fn, device=device,
                             dist_info=dist_info, out_dir=run_dir, progress=progress, resume=True)
    barrier(dist_info)  # rank 0 has written final/ before any process goes on
    info.update(cached=False, train_seconds=round(summary.seconds, 1),
                tokens_per_second=round(summary.tokens_per_second), final_loss=summary.final_loss)
    return model, info
