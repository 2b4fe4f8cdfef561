"""Self-pretraining (SPT) on a task's own inputs, backbone transfer, classifier training.

Amos, Berant & Gupta, "Never Train from Scratch: Fair Comparison of Long-Sequence Models Requires
Data-Driven Priors" (arXiv 2310.02980), read by Su in kexue.fm/archives/9787: before fine-tuning
on a Long Range Arena task, pre-train the model on the **training inputs of that task** — masked
language modelling (mask ratio 0.5 in the paper's configs) or causal language modelling — with no
external data. This lifts every architecture, Transformers most; on LRA it closes most of the gap
between Transformers and linear-RNN / SSM models.

- :func:`mlm_mask`: replace each non-special token with ``[MASK]`` with probability ``p``;
  labels only at the replaced positions (``-100`` elsewhere).
- :func:`self_pretrain`: ``"mlm"`` (any backbone; logits through the tied input embedding, or the
  LM head of a ``CausalLM``) or ``"causal"`` (next token; needs a causal backbone).
- :func:`transfer_backbone`: copy every weight but the ``head`` into a fresh classifier, checking
  that no key is left unmatched.
- :func:`train_classifier`, :func:`evaluate_classifier`: fine-tuning and accuracy.

Optimisation: AdamW with decoupled weight decay on matrices (:func:`~formerlab.train.
build_optimizer`), warmup and decay from :func:`~formerlab.train.lr_at`, gradient clipping — all
from a :class:`~formerlab.TrainConfig`. Batches come from the dataset's seeded ``batches``.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainConfig
from ..losses.lm import causal_lm_loss
from ..models.mixers import auxiliary_loss
from ..models.transformer import TransformerModel
from .schedules import lr_at
from .trainer import build_optimizer

__all__ = ["OBJECTIVES", "FitResult", "evaluate_classifier", "mlm_mask", "self_pretrain",
           "train_classifier", "transfer_backbone"]

OBJECTIVES = ("mlm", "causal")


@dataclasses.dataclass
class FitResult:
    """Loss of every step and the wall time of a training call."""

    losses: list[float]
    seconds: float

    @property
    def final_loss(self) -> float:
        tail = self.losses[-max(1, len(self.losses) // 10):]
        return sum(tail) / len(tail) if tail else math.nan


def mlm_mask(tokens: Tensor, p: float, mask_id: int, special_ids: Iterable[int] = (),
             generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT-style masking without the 80/10/10 split: ``(inputs, labels)``.

    Args:
        tokens: ``(B, n)`` token ids.
        p: Probability that a non-special token is replaced by ``mask_id``.
        mask_id: The ``[MASK]`` id.
        special_ids: Ids never masked (padding, ``[CLS]`` ...).
        generator: Random source.

    Returns:
        ``inputs`` (``tokens`` with the chosen positions set to ``mask_id``) and ``labels``
        (the original token at chosen positions, ``-100`` elsewhere).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"mask probability p must lie in [0, 1], got {p!r}")
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise TypeError(f"tokens must be integer ids, got {tokens.dtype}")
    dev = generator.device if generator is not None else tokens.device
    chosen = torch.rand(tokens.shape, generator=generator, device=dev).to(tokens.device) < p
    specials = torch.tensor(sorted(set(special_ids)), dtype=tokens.dtype, device=tokens.device)
    if specials.numel():
        chosen &= ~torch.isin(tokens, specials)
    labels = torch.where(chosen, tokens, torch.full_like(tokens, -100))
    return tokens.masked_fill(chosen, mask_id), labels


def _backbone(model: nn.Module) -> TransformerModel:
    backbone = getattr(model, "backbone", model)
    if not isinstance(backbone, TransformerModel):
        raise TypeError(f"model must be a formerlab TransformerModel (Encoder, CausalLM) or have "
                        f"one as .backbone, got {type(model).__name__}")
    return backbone


def _token_logits(backbone: TransformerModel, hidden: Tensor) -> Tensor:
    head = getattr(backbone, "lm_head", None)
    return head(hidden) if head is not None else hidden @ backbone.embed_tokens.weight.T


def _fit(model: nn.Module, loss_of: Callable[[dict[str, Tensor]], Tensor],
         batches: Iterable[dict[str, Tensor]], cfg: TrainConfig, device: torch.device,
         progress: Callable[[int, float], None] | None) -> FitResult:
    """The loop shared by pre-training and fine-tuning."""
    opt = build_optimizer(model, cfg)
    model.train()
    losses, t0 = [], time.perf_counter()
    for step, batch in enumerate(batches):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        loss = loss_of({k: v.to(device) for k, v in batch.items()})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress(step, losses[-1])
    model.eval()
    return FitResult(losses, time.perf_counter() - t0)


def _train_config(train: TrainConfig | None, steps: int) -> TrainConfig:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return (train or TrainConfig(lr=1e-3, warmup_steps=max(1, steps // 10))).replace(steps=steps)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def self_pretrain(model: nn.Module, dataset: Any, objective: str = "mlm", mask_prob: float = 0.5,
                  steps: int = 1000, *, train: TrainConfig | None = None,
                  generator: torch.Generator | None = None, bucket: int = 0,
                  progress: Callable[[int, float], None] | None = None) -> FitResult:
    """Pre-train ``model``'s backbone in place on ``dataset``'s inputs (no labels used).

    Args:
        model: A :class:`~formerlab.models.TransformerModel` or a module with one as
            ``.backbone`` (a :class:`~formerlab.models.SequenceClassifier`).
        dataset: Anything with ``batches(batch_size, steps, generator)`` yielding
            ``input_ids``/``attention_mask`` and the attributes ``mask_id``, ``special_ids``
            (e.g. :class:`~formerlab.data.listops.ClassificationDataset`).
        objective: ``"mlm"`` (masked tokens, ``mask_prob`` of the non-special ones) or
            ``"causal"`` (next-token prediction; the backbone must be causal).
        mask_prob: MLM mask ratio (0.5 as in the paper's configs).
        steps: Optimiser steps.
        train: Learning rate, batch size, warmup, decay, clipping (``steps`` overrides its
            ``steps``); default AdamW 1e-3, 10% warmup, cosine, batch 32.
        generator: Random source of the batches and the masks.
        bucket: Batch examples of similar length (``dataset.batches(..., bucket=)``).
        progress: Called with ``(step, loss)`` after every step.

    Returns:
        A :class:`FitResult` with the loss of every step.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    backbone = _backbone(model)
    if objective == "causal" and not backbone.causal:
        raise ValueError("objective='causal' needs a causal backbone (CausalLM); a bidirectional "
                         "encoder would see the tokens it predicts — use objective='mlm'")
    cfg = _train_config(train, steps)
    specials = tuple(getattr(dataset, "special_ids", ()))
    mask_id = getattr(dataset, "mask_id", None)
    if objective == "mlm" and mask_id is None:
        raise ValueError("objective='mlm' needs dataset.mask_id (the [MASK] token id)")

    def loss_of(batch: dict[str, Tensor]) -> Tensor:
        ids, attn = batch["input_ids"], batch["attention_mask"]
        if objective == "mlm":
            inputs, labels = mlm_mask(ids, mask_prob, mask_id, specials, generator)
        else:
            inputs, labels = ids, ids.masked_fill(attn == 0, -100)
        hidden = backbone.run(inputs, None, attn, None, None, None, False, False, False)[0]
        logits = _token_logits(backbone, hidden)
        if objective == "causal":
            loss = causal_lm_loss(logits, labels)
        elif bool((labels != -100).any()):
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                   labels.reshape(-1), ignore_index=-100)
        else:  # nothing masked in this batch: no MLM signal
            loss = logits.sum() * 0.0
        aux = auxiliary_loss(backbone)
        return loss if aux is None else loss + aux

    batches = dataset.batches(cfg.batch_size, steps, generator, bucket=bucket)
    return _fit(backbone, loss_of, batches, cfg, _device(backbone), progress)


def train_classifier(model: nn.Module, dataset: Any, steps: int, *,
                     train: TrainConfig | None = None, generator: torch.Generator | None = None,
                     bucket: int = 0, progress: Callable[[int, float], None] | None = None
                     ) -> FitResult:
    """Fine-tune every weight of a classifier (``model(input_ids, attention_mask, labels).loss``)
    on ``dataset``; arguments as :func:`self_pretrain`."""
    cfg = _train_config(train, steps)

    def loss_of(batch: dict[str, Tensor]) -> Tensor:
        return model(batch["input_ids"], attention_mask=batch["attention_mask"],
                     labels=batch["labels"]).loss

    batches = dataset.batches(cfg.batch_size, steps, generator, bucket=bucket)
    return _fit(model, loss_of, batches, cfg, _device(model), progress)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, dataset: Any, batch_size: int = 128) -> float:
    """Accuracy of ``model`` on every example of ``dataset`` (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    device, correct = _device(model), 0
    for lo in range(0, len(dataset), batch_size):
        batch = dataset.batch(torch.arange(lo, min(lo + batch_size, len(dataset))))
        logits = model(batch["input_ids"].to(device),
                       attention_mask=batch["attention_mask"].to(device)).logits
        correct += int((logits.argmax(-1).cpu() == batch["labels"]).sum())
    model.train(was_training)
    return correct / max(1, len(dataset))


def _excluded(key: str, exclude: tuple[str, ...]) -> bool:
    return any(part in exclude for part in key.split("."))


def transfer_backbone(src: nn.Module | dict[str, Tensor], dst: nn.Module,
                      exclude: Iterable[str] = ("head",)) -> dict[str, list[str]]:
    """Copy ``src``'s weights into ``dst`` except the modules named in ``exclude``.

    ``src`` may be a classifier, a bare backbone or a state dict; keys are matched with or
    without the ``backbone.`` prefix. A key is excluded when one of its dotted components is in
    ``exclude`` (``"head"`` matches ``head.weight``, not ``lm_head.weight``). Every other key of
    ``dst`` must be found in ``src`` with the same shape and every other key of ``src`` must land
    in ``dst`` — otherwise ``ValueError`` lists them.

    Returns:
        ``{"copied": [...], "skipped": [...]}`` (keys of ``dst``).
    """
    exclude = tuple(exclude)
    source = dict(src if isinstance(src, dict) else src.state_dict())
    target = dst.state_dict()
    src_prefixed = any(k.startswith("backbone.") for k in source)
    dst_prefixed = any(k.startswith("backbone.") for k in target)
    if dst_prefixed and not src_prefixed:
        source = {f"backbone.{k}": v for k, v in source.items()}
    elif src_prefixed and not dst_prefixed:
        source = {k[len("backbone."):]: v for k, v in source.items() if k.startswith("backbone.")}
    want = [k for k in target if not _excluded(k, exclude)]
    have = {k for k in source if not _excluded(k, exclude)}
    missing = [k for k in want if k not in source]
    unexpected = sorted(have - set(target))
    shapes = [f"{k}: {tuple(source[k].shape)} vs {tuple(target[k].shape)}" for k in want
              if k in source and source[k].shape != target[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(f"transfer_backbone: keys missing from the source {missing[:8]}, "
                         f"unmatched source keys {unexpected[:8]}, shape mismatches {shapes[:8]}")
    with torch.no_grad():
        for k in want:
            target[k].copy_(source[k])
    return {"copied": want, "skipped": [k for k in target if _excluded(k, exclude)]}
