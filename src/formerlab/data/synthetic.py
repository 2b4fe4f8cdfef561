"""Seeded synthetic tasks for small-scale experiments.

Every task returns ``(input_ids, labels)`` with ``labels = -100`` wherever the loss is not
taken, so the same causal-LM loss scores only the answer tokens. Token ids below ``num_special``
are reserved for separators.

- :func:`copy_task` — ``x SEP x``: the second copy is predictable only by looking back;
- :func:`kv_retrieval_task` — ``k1 v1 k2 v2 … SEP k_q`` → ``v_q`` (key→value retrieval, NBCE);
- :func:`even_pairs_task` — is the first token equal to the last? (kexue.fm/archives/9444).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .batching import step_generator

__all__ = ["SEP", "copy_task", "even_pairs_task", "kv_retrieval_task"]

SEP = 1  # separator token id; ids 0..num_special-1 are reserved
IGNORE = -100


def _gen(seed: int, step: int) -> torch.Generator:
    return step_generator(seed, step, stream=3)


def copy_task(
    batch_size: int, length: int, vocab_size: int, *, seed: int = 0, step: int = 0,
    num_special: int = 2,
) -> tuple[Tensor, Tensor]:
    """``[x_1..x_L, SEP, x_1..x_L]``; labels on the copy only. Shape ``(B, 2L+1)``."""
    if vocab_size <= num_special:
        raise ValueError(f"vocab_size must exceed num_special={num_special}, got {vocab_size}")
    x = torch.randint(num_special, vocab_size, (batch_size, length), generator=_gen(seed, step))
    sep = torch.full((batch_size, 1), SEP)
    ids = torch.cat([x, sep, x], dim=1)
    labels = torch.full_like(ids, IGNORE)
    labels[:, length + 1 :] = x
    return ids, labels


def kv_retrieval_task(
    batch_size: int, num_pairs: int, vocab_size: int, *, seed: int = 0, step: int = 0,
    num_special: int = 2,
) -> tuple[Tensor, Tensor]:
    """``[k_1 v_1 … k_n v_n SEP k_q v_q]`` with distinct keys; the label is ``v_q`` only.

    Keys and values share the id range ``[num_special, vocab_size)``; shape ``(B, 2n+3)``.
    """
    span = vocab_size - num_special
    if span < num_pairs:
        raise ValueError(f"need at least {num_pairs} distinct key ids, vocabulary gives {span}")
    g = _gen(seed, step)
    keys = torch.stack([torch.randperm(span, generator=g)[:num_pairs] for _ in range(batch_size)])
    keys = keys + num_special
    vals = torch.randint(num_special, vocab_size, (batch_size, num_pairs), generator=g)
    q = torch.randint(0, num_pairs, (batch_size,), generator=g)
    rows = torch.arange(batch_size)
    pairs = torch.stack([keys, vals], dim=-1).flatten(1)
    tail = torch.stack([torch.full((batch_size,), SEP), keys[rows, q], vals[rows, q]], dim=1)
    ids = torch.cat([pairs, tail], dim=1)
    labels = torch.full_like(ids, IGNORE)
    labels[:, -1] = vals[rows, q]
    return ids, labels


def even_pairs_task(
    batch_size: int, length: int, *, seed: int = 0, step: int = 0, num_special: int = 2,
) -> tuple[Tensor, Tensor]:
    """Binary strings (ids ``num_special``, ``num_special+1``) then ``SEP`` and the answer:
    ``num_special+1`` if the first symbol equals the last, else ``num_special``."""
    g = _gen(seed, step)
    bits = torch.randint(0, 2, (batch_size, length), generator=g)
    answer = (bits[:, 0] == bits[:, -1]).long()
    ids = torch.cat(
        [bits + num_special, torch.full((batch_size, 1), SEP), (answer + num_special)[:, None]], 1
    )
    labels = torch.full_like(ids, IGNORE)
    labels[:, -1] = ids[:, -1]
    return ids, labels
