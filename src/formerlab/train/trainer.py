"""The training loop: AdamW, warmup + decay, clipping, accumulation, DDP or FSDP2, bf16 autocast,
``torch.compile``, atomic checkpoints.

Determinism: the batch of step ``s`` is a function of ``(seed, s)`` only
(:mod:`formerlab.data.batching`), the learning rate is a function of ``s``
(:mod:`formerlab.train.schedules`) and a checkpoint stores every optimizer tensor and the RNG
state, so a run killed at any moment and resumed with ``resume=True`` ends with the same weights
as an uninterrupted run, bit for bit on CPU (tested with ``SIGKILL``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..config import TrainConfig
from ..models.config import ModelConfig
from . import parallel
from .checkpoint import (
    latest_checkpoint,
    load_checkpoint,
    read_checkpoint,
    restore_rng,
    save_checkpoint,
)
from .distributed import DistInfo, resolve_device
from .schedules import lr_at

__all__ = ["BatchFn", "TrainSummary", "Trainer", "build_optimizer"]

#: ``batch_fn(step, rows)`` returns the given rows of the step's global batch, either as
#: ``(input_ids, labels or None)`` or as a dict of model keyword arguments (``input_ids``,
#: ``labels``, ``attention_mask`` ...); missing labels default to the input ids
BatchFn = Callable[[int, slice], "tuple[Tensor, Tensor | None] | Mapping[str, Tensor | None]"]


@dataclasses.dataclass
class TrainSummary:
    steps: int
    final_loss: float
    tokens_per_second: float
    seconds: float
    resumed_from: int | None = None
    losses: list[float] = dataclasses.field(default_factory=list)  # steps run in this call


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices only (not on norms and biases)."""
    decay, no_decay = [], []
    for p in model.parameters():  # deduplicates tied weights
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), foreach=False)


class Trainer:
    """Trains ``model`` on batches from ``batch_fn``.

    Args:
        model: A module whose ``forward(input_ids, labels=...)`` returns an object with ``loss``,
            the mean over the labelled tokens. Integer ``(batch, seq)`` labels are read as
            next-token targets (position ``t`` predicts ``labels[t+1]``, ``-100`` ignored):
            micro-batches and ranks are then weighted by their labelled tokens, so a masked
            loss trains as one process with the whole batch would; other labels weigh
            micro-batches equally.
        model_config: Saved beside every checkpoint (and checked on resume).
        train_config: Optimisation settings.
        batch_fn: ``(step, rows) -> (input_ids, labels)`` or a dict of keyword arguments;
            deterministic in ``step``.
        out_dir: Run folder (``metrics.jsonl``, ``checkpoints/``, ``final/``); ``None`` keeps
            everything in memory.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda:0"`` ...
        progress: Show a progress bar with loss and tokens/s (main process only).
        dist_info: Data-parallel rank/world (from :func:`~formerlab.train.init_distributed`).
    """

    def __init__(
        self,
        model: nn.Module,
        model_config: ModelConfig,
        train_config: TrainConfig,
        batch_fn: BatchFn,
        *,
        out_dir: str | Path | None = None,
        device: str | torch.device = "auto",
        progress: bool = True,
        dist_info: DistInfo | None = None,
    ) -> None:
        self.cfg = train_config
        self.model_config = model_config
        self.batch_fn = batch_fn
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = resolve_device(device)
        self.progress = progress
        self.dist = dist_info or DistInfo()
        if self.cfg.batch_size % (self.dist.world_size * self.cfg.grad_accum):
            raise ValueError(
                f"batch_size ({self.cfg.batch_size}) must be divisible by world_size × "
                f"grad_accum ({self.dist.world_size} × {self.cfg.grad_accum})"
            )
        self.model = model.to(self.device)
        # DDP wraps the model; FSDP2 shards it in place (the optimizer sees the shards)
        self.ddp: nn.Module = parallel.wrap(self.model, self.cfg.parallel, self.device,
                                            self.dist.enabled)
        self.sharded = self.dist.enabled and self.cfg.parallel == "fsdp"
        self.optimizer = build_optimizer(self.model, self.cfg)
        self.forward = torch.compile(self.ddp) if self.cfg.compile else self.ddp

    @property
    def checkpoint_dir(self) -> Path | None:
        return self.out_dir / "checkpoints" if self.out_dir is not None else None

    def _rows(self, micro: int) -> slice:
        local = self.cfg.batch_size // self.dist.world_size
        size = local // self.cfg.grad_accum
        start = self.dist.rank * local + micro * size
        return slice(start, start + size)

    def _log(self, record: dict[str, Any]) -> None:
        if self.out_dir is None or not self.dist.is_main:
            return
        with open(self.out_dir / "metrics.jsonl", "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def _save(self, step: int) -> None:
        full = None
        if self.sharded and self.checkpoint_dir is not None:  # every rank joins the gather
            full = parallel.full_state(self.model, self.optimizer)
        if self.checkpoint_dir is not None and self.dist.is_main:
            save_checkpoint(
                self.checkpoint_dir, step, self.model, self.optimizer, self.model_config,
                self.cfg, keep=self.cfg.keep_checkpoints,
                weights=full[0] if full else None, optimizer_state=full[1] if full else None,
            )
        if self.dist.enabled:
            dist.barrier()

    def _resume(self, ckpt: Path) -> dict[str, Any]:
        if not self.sharded:
            return load_checkpoint(ckpt, self.model, self.optimizer, self.model_config, self.cfg)
        state, weights, opt_state, rng = read_checkpoint(ckpt, self.model_config, self.cfg)
        parallel.load_full_state(self.model, self.optimizer, weights, opt_state)
        restore_rng(rng)
        return state

    def _final_weights(self) -> dict[str, Tensor] | None:
        """The full weights for ``final/`` (gathered from the shards under FSDP)."""
        if not self.sharded:
            return None
        return parallel.full_state(self.model, self.optimizer)[0]

    def train(self, resume: bool = False) -> TrainSummary:
        """Run to ``train_config.steps``; ``resume=True`` continues from the latest checkpoint."""
        cfg = self.cfg
        start, resumed = 0, None
        if self.out_dir is not None and self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if resume:
            ckpt = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
            if ckpt is not None:
                state = self._resume(ckpt)
                start = resumed = int(state["step"])
        bar = None
        if self.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=cfg.steps, initial=start, desc="train", unit="step",
                       dynamic_ncols=True, leave=False)
        tokens_per_step = cfg.batch_size * cfg.seq_len
        t0 = time.perf_counter()
        last_t, last_loss, done = t0, float("nan"), start
        losses: list[float] = []
        self.ddp.train()
        try:
            for step in range(start, cfg.steps):
                loss = self._step(step)
                losses.append(loss)
                done = step + 1
                now = time.perf_counter()
                tps = tokens_per_step / max(now - last_t, 1e-9)
                last_t, last_loss = now, loss
                if bar is not None:
                    bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tps:,.0f}")
                    bar.update(1)
                if done % cfg.log_every == 0 or done == cfg.steps:
                    self._log({"step": done, "loss": loss, "lr": lr_at(step, cfg),
                               "tokens_per_s": tps, "elapsed_s": now - t0})
                if cfg.checkpoint_every and done % cfg.checkpoint_every == 0 and done < cfg.steps:
                    self._save(done)
        except KeyboardInterrupt:
            if bar is not None:
                bar.close()
            where = latest_checkpoint(self.checkpoint_dir) if self.checkpoint_dir else None
            print(f"\ninterrupted at step {done}; last complete checkpoint: {where or 'none'} "
                  "(continue with --resume)")
            raise
        if bar is not None:
            bar.close()
        if start < cfg.steps or resumed is None:
            self._save(cfg.steps)
        full = self._final_weights()
        if self.out_dir is not None and self.dist.is_main and hasattr(self.model, "save_pretrained"):
            final = self.out_dir / "final"
            if full is None:
                self.model.save_pretrained(final)
            else:  # the shards gathered into one model file
                from safetensors.torch import save_file

                final.mkdir(parents=True, exist_ok=True)
                if getattr(self.model_config, "tie_word_embeddings", False):
                    full.pop("lm_head.weight", None)
                save_file({k: v.contiguous() for k, v in full.items()}, str(final / "model.safetensors"))
                self.model_config.save(final / "config.json")
            cfg.save(final / "train_config.json")
        seconds = time.perf_counter() - t0
        steps_run = cfg.steps - start
        return TrainSummary(
            steps=cfg.steps,
            final_loss=last_loss,
            tokens_per_second=steps_run * tokens_per_step / seconds if steps_run else 0.0,
            seconds=seconds,
            resumed_from=resumed,
            losses=losses,
        )

    def _sync(self, sync: bool) -> Any:
        """Skip the gradient all-reduce on accumulation micro-steps."""
        if sync or not self.dist.enabled:
            return contextlib.nullcontext()
        if self.sharded:
            self.model.set_requires_gradient_sync(False)
            return _restore_sync(self.model)
        return self.ddp.no_sync()

    def _autocast(self) -> Any:
        if self.cfg.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _micro_batch(self, step: int, micro: int) -> dict[str, Any]:
        batch = self.batch_fn(step, self._rows(micro))
        if not isinstance(batch, Mapping):
            batch = {"input_ids": batch[0], "labels": batch[1]}
        kwargs = {k: v.to(self.device) if isinstance(v, Tensor) else v for k, v in batch.items()}
        if kwargs.get("labels") is None:
            kwargs["labels"] = kwargs["input_ids"]
        return kwargs

    def _loss_scales(self, batches: list[dict[str, Any]]) -> list[tuple[int, int]]:
        """``(numerator, denominator)`` per micro-batch so every labelled token weighs the same.

        A micro-batch's loss is a mean over its own labelled tokens; scaled by ``n_i · world / N``
        (``N``: labelled tokens of the whole global batch, summed over ranks) and averaged by DDP,
        the gradient is the mean over all ``N`` tokens: masked labels (a response-only loss)
        give the update of one process with the whole batch. Labels that are not ``(batch,
        seq)`` token ids weigh micro-batches equally.
        """
        counts = [_labelled_tokens(b) for b in batches]
        if any(c is None for c in counts):
            return [(1, len(batches))] * len(batches)
        local = torch.stack(counts).sum()
        if self.dist.enabled:
            dist.all_reduce(local)
        total = int(local)
        if total == 0:
            return [(1, len(batches))] * len(batches)
        shares = [(int(c) * self.dist.world_size, total) for c in counts]
        if all(num * len(batches) == den for num, den in shares):  # equal shares: 1 / grad_accum
            return [(1, len(batches))] * len(batches)
        return shares

    def _step(self, step: int) -> float:
        cfg = self.cfg
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, cfg)
        total = torch.zeros((), device=self.device)
        batches = [self._micro_batch(step, micro) for micro in range(cfg.grad_accum)]
        for micro, (kwargs, (num, den)) in enumerate(zip(batches, self._loss_scales(batches))):
            sync = micro == cfg.grad_accum - 1 or not self.dist.enabled
            with self._sync(sync):
                with self._autocast():
                    out = self.forward(**kwargs)
                    loss = out.loss / den if num == 1 else out.loss * num / den
                loss.backward()
            total += loss.detach()
        if cfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.dist.enabled:
            dist.all_reduce(total)
            total /= self.dist.world_size
        value = float(total)
        if not math.isfinite(value):
            raise FloatingPointError(f"loss became {value} at step {step}; lower the learning rate")
        return value


def _labelled_tokens(batch: Mapping[str, Any]) -> Tensor | None:
    """Tokens a next-token loss counts (labels shifted by one, ``-100`` ignored), or ``None``."""
    labels = batch.get("labels")
    if not isinstance(labels, Tensor) or labels.dim() != 2 or labels.is_floating_point():
        return None
    return (labels[:, 1:] != -100).sum()


@contextlib.contextmanager
def _restore_sync(model: nn.Module) -> Any:
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)
