"""Trained checkpoints cached by config hash, so repeated lab runs reuse them.

The cache key hashes the model config, the train config, the corpus identity and a format
version; the initial weights are drawn from a generator seeded with the train config's ``seed``,
so a key names one model whatever the calling process did before. A cached model lives in
``<cache>/checkpoints/<hash>/final``; an interrupted training resumes from
``<cache>/checkpoints/<hash>/checkpoints`` on the next run. The cache root is ``--cache-dir``, else
``$FORMERLAB_CACHE``, else ``~/.cache/formerlab``.
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
from ..train.trainer import BatchFn, Trainer

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
) -> tuple[CausalLM, dict[str, object]]:
    """Load the cached model for these configs, or train (resuming if interrupted) and cache it."""
    train_key = {k: v for k, v in train_config.to_dict().items() if k not in BOOKKEEPING}
    key = config_hash(model_config, train_key, {"corpus": corpus_id, "v": CACHE_VERSION})
    run_dir = (cache_dir or default_cache_dir()) / "checkpoints" / key
    final = run_dir / "final"
    info: dict[str, object] = {"cache_key": key, "run_dir": str(run_dir)}
    if (final / "model.safetensors").is_file():
        log(f"reusing cached model {key} ({run_dir})")
        model = CausalLM.from_pretrained(final, device=device)
        info["cached"] = True
        return model, info
    log(f"training model {key} -> {run_dir}")
    model = CausalLM(model_config)
    model.reset_parameters(torch.Generator().manual_seed(train_config.seed))
    trainer = Trainer(model, model_config, train_config, batch_fn, out_dir=run_dir,
                      device=device, progress=progress, dist_info=DistInfo())
    summary = trainer.train(resume=True)
    info.update(cached=False, train_seconds=round(summary.seconds, 1),
                tokens_per_second=round(summary.tokens_per_second), final_loss=summary.final_loss)
    return trainer.model, info
