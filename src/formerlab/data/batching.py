"""Stateless batch sampling: the batch of step ``s`` is a pure function of ``(seed, s)``.

Because no sampler state has to be saved, a resumed run sees exactly the batches an
uninterrupted run would, and a data-parallel run over ``W`` processes (each taking its slice of
the global batch) sees exactly the batches of a single process with the same global batch.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["step_generator", "window_batch"]


def step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    """A CPU generator seeded from ``(seed, step, stream)`` (SplitMix-style mixing)."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9 + stream * 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    x ^= x >> 31
    g = torch.Generator()
    g.manual_seed(x & ((1 << 63) - 1))
    return g


def window_batch(
    tokens: Tensor,
    batch_size: int,
    seq_len: int,
    *,
    seed: int,
    step: int,
    rows: slice | None = None,
) -> Tensor:
    """``(batch_size, seq_len)`` random windows of ``tokens`` for optimiser step ``step``.

    Args:
        tokens: 1-D token tensor.
        rows: Take only these rows of the global batch (data-parallel slice, micro-batch).
    """
    n = tokens.numel()
    if n <= seq_len:
        raise ValueError(f"the corpus split has {n} tokens, fewer than seq_len + 1 = {seq_len + 1}")
    g = step_generator(seed, step)
    starts = torch.randint(0, n - seq_len, (batch_size,), generator=g)
    if rows is not None:
        starts = starts[rows]
    idx = starts[:, None] + torch.arange(seq_len)[None, :]
    return tokens[idx]
