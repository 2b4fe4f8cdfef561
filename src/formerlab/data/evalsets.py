"""Evaluation sets of the length-extrapolation posts.

- **non-repeated**: natural text cut to the test length (evenly spaced windows of the test split);
- **repeated**: a chunk of ``P`` tokens repeated until the sample fills the test length, so later
  copies are predictable by looking back ``P`` tokens. The period is drawn uniformly from
  ``[L_train, L_test/2]`` so copying needs a look-back beyond the training length (our
  small-scale analogue of the blog's 4096-token repeated set); when ``L_test < 2·L_train`` the
  range is ``[L_test/4, L_test/2]``. Explicit ``period=(lo, hi)`` gives the short-period variant.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from .batching import step_generator

__all__ = ["EvalSet", "last_tokens_samples", "non_repeated_set", "repeated_set"]


@dataclasses.dataclass
class EvalSet:
    """``tokens`` ``(num_samples, length)`` plus what built them."""

    name: str
    length: int
    tokens: Tensor
    periods: list[int] | None = None


def non_repeated_set(tokens: Tensor, length: int, num_samples: int) -> EvalSet:
    """``num_samples`` windows of ``length`` tokens at evenly spaced offsets (deterministic)."""
    n = tokens.numel()
    if n < length:
        raise ValueError(f"the split has {n} tokens, fewer than the test length {length}")
    starts = torch.linspace(0, n - length, num_samples).long()
    idx = starts[:, None] + torch.arange(length)[None, :]
    return EvalSet("non_repeated", length, tokens[idx])


def _default_period_range(length: int, train_len: int) -> tuple[int, int]:
    if length >= 2 * train_len:
        return train_len, length // 2
    return max(1, length // 4), max(1, length // 2)


def repeated_set(
    tokens: Tensor,
    length: int,
    num_samples: int,
    *,
    train_len: int,
    period: tuple[int, int] | None = None,
    seed: int = 0,
) -> EvalSet:
    """Samples made of one chunk of ``P`` natural tokens tiled to ``length``.

    Args:
        tokens: 1-D token tensor (the test split).
        length: Test length.
        train_len: Training length (sets the default period range).
        period: ``(lo, hi)`` inclusive range of ``P``; see the module docstring for the default.
        seed: Seed of the period and offset draws.
    """
    lo, hi = period if period is not None else _default_period_range(length, train_len)
    if not 1 <= lo <= hi:
        raise ValueError(f"period range must satisfy 1 <= lo <= hi, got ({lo}, {hi})")
    g = step_generator(seed, length, stream=7)
    periods = torch.randint(lo, hi + 1, (num_samples,), generator=g).tolist()
    base = non_repeated_set(tokens, hi, num_samples).tokens
    rows = []
    for i, p in enumerate(periods):
        chunk = base[i, :p]
        reps = -(-length // p)
        rows.append(chunk.repeat(reps)[:length])
    return EvalSet("repeated", length, torch.stack(rows), periods)


def last_tokens_samples(tokens: Tensor, total_len: int, num_samples: int) -> Tensor:
    """Windows of ``total_len`` tokens for the "last N tokens with growing context" protocol.

    The protocol (bojone/rerope ``eval_loss.py``, kexue.fm/archives/9948): for a context
    multiplier ``c``, feed the last ``N·c + 1`` tokens of each sample and score only the last
    ``N`` predictions, so every context length is scored on the same targets.
    """
    return non_repeated_set(tokens, total_len, num_samples).tokens
