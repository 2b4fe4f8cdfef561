"""Evaluation of language models at many lengths.

- :func:`evaluate_tokens` — per-token next-token accuracy and loss over all predicted positions
  and over positions ``>= L_train`` only, plus the per-position loss curve;
- :func:`last_n_loss` — the "loss on the last N tokens with growing context" protocol
  (bojone/rerope ``eval_loss.py``, kexue.fm/archives/9948).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["evaluate_tokens", "last_n_loss"]


@torch.no_grad()
def _token_stats(model: nn.Module, ids: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token loss and correctness ``(B, n-1)`` of next-token prediction."""
    logits = model(ids).logits[:, :-1].float()
    target = ids[:, 1:]
    loss = F.cross_entropy(logits.transpose(1, 2), target, reduction="none")
    correct = (logits.argmax(-1) == target).float()
    return loss, correct


@torch.no_grad()
def evaluate_tokens(
    model: nn.Module,
    tokens: Tensor,
    *,
    batch_size: int = 8,
    train_len: int | None = None,
    device: torch.device | str | None = None,
) -> dict[str, object]:
    """Accuracy and loss of next-token prediction on ``tokens`` ``(N, L)``.

    Returns:
        ``accuracy``, ``loss`` (all predicted positions), ``accuracy_beyond``/``loss_beyond``
        (targets at positions ``>= train_len``; ``None`` if ``L <= train_len``) and
        ``per_position_loss`` (a list of ``L-1`` floats: the mean loss of predicting token t+1).
    """
    if tokens.dim() != 2 or tokens.shape[1] < 2:
        raise ValueError(f"tokens must be (num_samples, length >= 2), got {tuple(tokens.shape)}")
    was_training = model.training
    model.eval()
    device = device or next(model.parameters()).device
    losses, corrects = [], []
    for i in range(0, tokens.shape[0], batch_size):
        loss, correct = _token_stats(model, tokens[i : i + batch_size].to(device))
        losses.append(loss.cpu())
        corrects.append(correct.cpu())
    model.train(was_training)
    loss, correct = torch.cat(losses), torch.cat(corrects)
    out: dict[str, object] = {
        "accuracy": float(correct.mean()),
        "loss": float(loss.mean()),
        "accuracy_beyond": None,
        "loss_beyond": None,
        "per_position_loss": loss.mean(0).tolist(),
    }
    if train_len is not None and tokens.shape[1] > train_len:
        # prediction index t scores token t+1; "beyond" = target position >= train_len
        beyond = slice(train_len - 1, None)
        out["accuracy_beyond"] = float(correct[:, beyond].mean())
        out["loss_beyond"] = float(loss[:, beyond].mean())
    return out


@torch.no_grad()
def last_n_loss(
    model: nn.Module,
    samples: Tensor,
    n_last: int,
    multipliers: tuple[int, ...] = (1, 2, 4),
    *,
    batch_size: int = 4,
) -> list[dict[str, float]]:
    """Loss on the last ``n_last`` tokens given ``n_last·c`` tokens of context, per ``c``.

    ``samples`` must be ``(N, >= n_last·max(c) + 1)``. Every ``c`` scores the same targets.
    """
    need = n_last * max(multipliers) + 1
    if samples.shape[1] < need:
        raise ValueError(f"samples must have at least {need} tokens, got {samples.shape[1]}")
    results = []
    for c in multipliers:
        window = samples[:, -(n_last * c + 1) :]
        stats = evaluate_tokens(model, window, batch_size=batch_size)
        tail = torch.tensor(stats["per_position_loss"][-n_last:])
        results.append({"context": n_last * c, "multiplier": c, "loss": float(tail.mean())})
    return results
