"""log-n attention scaling: entropy invariance for lengths beyond training.

Two distinct variants, both folded into the queries so that keys, the
KV cache and fused attention kernels are untouched (scaling q before or after RoPE is the same,
the factor is a scalar per query):

- ``"pretrain"`` (``logn``, "softmax_plus"; kexue.fm/archives/8823, 9019): every logit of row ``i``
  is multiplied by ``log(n_i)/log(base_len)`` where ``n_i`` is the number of keys row ``i`` may see
  (``i + 1`` under a causal mask, padding excluded), optionally floored at ``min_len`` (bert4keras
  added the floor 16 in 2023; GAU-α was trained without it). It is 1 exactly at ``n_i = base_len``
  and below 1 for shorter rows (never clipped). The model must be *trained* with it.
- ``"dagger"`` (``log n†``; kexue.fm/archives/9706): for a model trained without log-n,
  ``q_n ← q_n · max(1, log(n)/log(L_train))`` with ``n = position + 1``. The identity within the
  training length; Qwen's ``use_logn_attn`` and bojone/rerope apply the same factor.

Factors are computed in float64 and returned in float32.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "LOGN_MODES",
    "LogNScale",
    "logn_dagger_factor",
    "logn_pretrain_factor",
    "visible_key_counts",
]

LOGN_MODES = ("pretrain", "dagger")


def _check_length(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value < 2:
        raise ValueError(f"{name} must be an integer >= 2 (a length whose log is > 0), got {value!r}")
    return int(value)


def logn_dagger_factor(positions: Tensor, train_len: int) -> Tensor:
    """``max(1, log(pos + 1)/log(train_len))`` per position (0-based), float32, same shape."""
    train_len = _check_length("train_len", train_len)
    if not isinstance(positions, Tensor):
        raise TypeError(f"positions must be a Tensor, got {type(positions).__name__}")
    n = positions.to(torch.float64) + 1.0
    factor = torch.log(n.clamp_min(1.0)) / math.log(train_len)
    return factor.clamp_min(1.0).to(torch.float32)


def logn_pretrain_factor(
    visible_counts: Tensor, base_len: int = 512, min_len: int | None = None
) -> Tensor:
    """``log(max(n_i, min_len))/log(base_len)`` per query row, float32, same shape.

    Rows that see no key (``n_i = 0``) are treated as ``n_i = 1`` (factor 0; the row is masked anyway).
    """
    base_len = _check_length("base_len", base_len)
    if not isinstance(visible_counts, Tensor):
        raise TypeError(f"visible_counts must be a Tensor, got {type(visible_counts).__name__}")
    n = visible_counts.to(torch.float64).clamp_min(1.0)
    if min_len is not None:
        n = n.clamp_min(float(_check_length("min_len", min_len)))
    return (torch.log(n) / math.log(base_len)).to(torch.float32)


def visible_key_counts(mask: Tensor) -> Tensor:
    """Number of keys each query row may attend to: ``mask.sum(-1)`` of a bool ``(..., nq, nk)`` mask."""
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = attend), got {mask.dtype}")
    return mask.sum(-1)


class LogNScale(nn.Module):
    """Per-query log-n factor, multiplied into the queries by the attention module.

    Args:
        mode: ``"pretrain"`` (per-row visible-key count, needs training with it) or ``"dagger"``
            (inference-only ``max(1, log_{train_len}(pos + 1))``).
        base_len: Length at which the pretraining factor is 1 (512 in Su's posts).
        min_len: Optional floor of the visible count (16 in bert4keras since 2023); pretrain only.
        train_len: Training length ``L_train``; required for ``"dagger"``.

    Example:
        >>> scale = LogNScale("dagger", train_len=4)
        >>> scale.query_factor(torch.arange(6), None)
        tensor([1.0000, 1.0000, 1.0000, 1.0000, 1.1610, 1.2925])
    """

    def __init__(
        self,
        mode: str = "pretrain",
        base_len: int = 512,
        min_len: int | None = None,
        train_len: int | None = None,
    ) -> None:
        super().__init__()
        if mode not in LOGN_MODES:
            raise ValueError(f"unknown log-n mode {mode!r}; valid modes: {', '.join(LOGN_MODES)}")
        self.mode = mode
        self.base_len = _check_length("base_len", base_len)
        self.min_len = None if min_len is None else _check_length("min_len", min_len)
        if mode == "dagger":
            if train_len is None:
                raise ValueError("LogNScale(mode='dagger') requires train_len (the training length)")
            if min_len is not None:
                raise ValueError("min_len applies to mode='pretrain' only")
        self.train_len = None if train_len is None else _check_length("train_len", train_len)

    def query_factor(self, q_positions: Tensor, visible_counts: Tensor | None = None) -> Tensor:
        """The factor per query, float32.

        Args:
            q_positions: Absolute 0-based query positions ``(nq,)`` or ``(B, nq)``.
            visible_counts: Keys visible to each query row, broadcastable to ``q_positions``
                (``"pretrain"``; default ``q_positions + 1``, i.e. causal without padding). Ignored
                by ``"dagger"``.

        Returns:
            Shape ``broadcast(q_positions, visible_counts)`` (``q_positions``' shape for dagger).
        """
        if not isinstance(q_positions, Tensor):
            raise TypeError(f"q_positions must be a Tensor, got {type(q_positions).__name__}")
        if self.mode == "dagger":
            return logn_dagger_factor(q_positions, self.train_len)  # type: ignore[arg-type]
        if visible_counts is None:
            visible_counts = q_positions + 1
        counts = torch.broadcast_tensors(visible_counts.to(q_positions.device), q_positions)[0]
        return logn_pretrain_factor(counts, self.base_len, self.min_len)

    def forward(
        self, q: Tensor, q_positions: Tensor, visible_counts: Tensor | None = None
    ) -> Tensor:
        """Scale queries ``q`` of shape ``(B, H, nq, d)`` (factor ``(nq,)`` or ``(B, nq)``)."""
        factor = self.query_factor(q_positions, visible_counts)
        if factor.dim() == 2:  # (B, nq) -> (B, 1, nq, 1)
            factor = factor[:, None]
        return q * factor[..., None].to(device=q.device, dtype=q.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "base_len": self.base_len,
            "min_len": self.min_len,
            "train_len": self.train_len,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LogNScale:
        allowed = {"mode", "base_len", "min_len", "train_len"}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"unknown LogNScale key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**d)

    def extra_repr(self) -> str:
        if self.mode == "dagger":
            return f"mode='dagger', train_len={self.train_len}"
        return f"mode='pretrain', base_len={self.base_len}, min_len={self.min_len}"
