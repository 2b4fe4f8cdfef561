"""Attention normalisers: turn masked scores into attention weights.

Every normaliser is registered in :data:`NORMALIZERS` as ``fn(scores, mask=None, **options)``
where ``scores`` already include the ``1/√d`` scale and ``mask`` is boolean (``True`` = may
attend), broadcastable to ``scores``. Masked keys receive exactly zero weight.

``softmax`` is the default (kexue.fm/archives/9019 argues why attention goes best with it).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry

__all__ = ["NORMALIZERS", "attention_normalize", "register_normalizer"]

Normalizer = Callable[..., Tensor]

#: name -> fn(scores, mask=None, **options) -> weights
NORMALIZERS: Registry[Normalizer] = Registry("attention normalization")


def register_normalizer(name: str, *, aliases: tuple[str, ...] = (), **meta: Any):
    """Register ``fn(scores, mask=None, **options) -> weights`` under ``name``."""
    return NORMALIZERS.register(name, aliases=aliases, **meta)


def attention_normalize(
    scores: Tensor, mask: Tensor | None = None, method: str = "softmax", **options: Any
) -> Tensor:
    """Normalise ``scores`` with the registered ``method`` (unknown names raise ``ValueError``)."""
    return NORMALIZERS.get(method)(scores, mask, **options)


@register_normalizer("softmax", sdpa=True)
def softmax(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """``exp(a_ij) / Σ_j exp(a_ij)`` over visible keys; fully masked rows give zeros."""
    if mask is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)
