"""Shared tensor helpers of the relative-position attention paths (reference and fast).

Private to :mod:`formerlab.position.relative` and :mod:`formerlab.position.rerope`: input checks,
RoPE at arbitrary (fractional) positions, grouped-query score products, masked softmax, and
:class:`Piecewise`, the two-parameter description (window ``w``, leaky factor ``k``) of the
ReRoPE family that the fast kernels work from.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .rope import apply_rope, rope_cos_sin


class Piecewise:
    """``f(r) = r`` for ``r < w``; beyond: ``w`` (ReRoPE, ``factor=None``) or ``w + (r-w)/k``.

    ``window=None`` is plain RoPE. :meth:`outer_positions` gives the second pass's positions
    ``(a_i, c_j)`` with ``a_i - c_j = f(i - j)`` outside the window.
    """

    def __init__(self, window: int | None, factor: float | None = None) -> None:
        if window is None and factor is not None:
            raise ValueError("leaky_factor needs a window")
        if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
            raise ValueError(f"window must be a positive int or None, got {window!r}")
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float))
                                   or not 0 < factor < float("inf")):
            raise ValueError(f"leaky factor must be a finite number > 0, got {factor!r}")
        self.window, self.factor = window, factor

    @property
    def is_identity(self) -> bool:
        return self.window is None

    def outer_positions(self, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        w = float(self.window)  # type: ignore[arg-type]
        if self.factor is None:
            return torch.full_like(q_pos, w), torch.zeros_like(k_pos)
        return (q_pos - w) / self.factor + w, k_pos / self.factor


def _check_qkv(q: Tensor, k: Tensor, v: Tensor) -> tuple[int, int, int, int, int]:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a Tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must have shape (batch, heads, seq, head_dim), got {tuple(t.shape)}")
    b, h, nq, d = q.shape
    if k.shape[0] != b or v.shape[0] != b:
        raise ValueError(f"batch sizes differ: q {b}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[-1] != d:
        raise ValueError(f"q and k head_dim differ: {d} vs {k.shape[-1]}")
    if k.shape[1] != v.shape[1] or k.shape[2] != v.shape[2]:
        raise ValueError(f"k {tuple(k.shape)} and v {tuple(v.shape)} must share heads and length")
    hkv = k.shape[1]
    if h % hkv:
        raise ValueError(f"query heads ({h}) must be a multiple of key/value heads ({hkv})")
    return b, h, hkv, nq, k.shape[2]


def _rotary_dim(inv_freq: Tensor, head_dim: int, rotary_dim: int | None) -> int:
    if not isinstance(inv_freq, Tensor) or inv_freq.dim() != 1:
        raise ValueError("inv_freq must be a 1-D tensor of r/2 inverse frequencies")
    r = 2 * inv_freq.numel() if rotary_dim is None else rotary_dim
    if r != 2 * inv_freq.numel() or r > head_dim or r <= 0:
        raise ValueError(
            f"rotary_dim ({r}) must equal 2·len(inv_freq) ({2 * inv_freq.numel()}) and be <= head_dim ({head_dim})"
        )
    return r


def _freqs_for(inv_freq: Tensor, x: Tensor) -> Tensor:
    """Frequencies in float64 for float64 activations (exactness), else as given (float32)."""
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return inv_freq.to(device=x.device, dtype=dtype)


def _positions(pos: Tensor, batch: int, n: int, name: str) -> Tensor:
    if not isinstance(pos, Tensor):
        raise TypeError(f"{name} must be a Tensor, got {type(pos).__name__}")
    if pos.shape not in ((n,), (batch, n)):
        raise ValueError(f"{name} must have shape ({n},) or ({batch}, {n}), got {tuple(pos.shape)}")
    return pos


def _rotate(x: Tensor, pos: Tensor, inv_freq: Tensor, layout: str, r: int) -> Tensor:
    """RoPE of ``x`` ``(B, H, n, d)`` at positions ``(n,)`` or ``(B, n)`` (fractional allowed)."""
    cos, sin = rope_cos_sin(pos, inv_freq, layout=layout)
    if cos.dim() == 3:
        cos, sin = cos[:, None], sin[:, None]
    return apply_rope(x, cos, sin, layout, r)


def _gqa_scores(q: Tensor, k: Tensor) -> Tensor:
    """``q @ kᵀ`` for q ``(B, H, nq, d)`` and k ``(B, Hkv, nk, d)`` -> ``(B, H, nq, nk)``."""
    b, h, nq, d = q.shape
    hkv = k.shape[1]
    if h == hkv:
        return q @ k.transpose(-1, -2)
    qg = q.reshape(b, hkv, h // hkv, nq, d)
    return (qg @ k[:, :, None].transpose(-1, -2)).reshape(b, h, nq, k.shape[2])


def _gqa_apply(p: Tensor, v: Tensor) -> Tensor:
    """``p @ v`` for p ``(B, H, nq, nk)`` and v ``(B, Hkv, nk, d)`` -> ``(B, H, nq, d)``."""
    b, h, nq, nk = p.shape
    hkv = v.shape[1]
    if h == hkv:
        return p @ v
    pg = p.reshape(b, hkv, h // hkv, nq, nk)
    return (pg @ v[:, :, None]).reshape(b, h, nq, v.shape[-1])


def _rel(q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """``i - j`` as ``(nq, nk)`` or ``(B, nq, nk)``, in float64."""
    qp, kp = q_pos.to(torch.float64), k_pos.to(torch.float64)
    return qp[..., :, None] - kp[..., None, :]


def _bhqk(x: Tensor) -> Tensor:
    """Lift a ``(nq, nk)`` or ``(B, nq, nk)`` tensor to broadcast against ``(B, H, nq, nk)``."""
    return x[:, None] if x.dim() == 3 else x


def _softmax_weights(s: Tensor, mask: Tensor | None, out_dtype: torch.dtype) -> Tensor:
    """Softmax over keys in float32 (float64 stays float64); fully masked rows give zeros."""
    work = torch.float64 if s.dtype == torch.float64 else torch.float32
    s = s.to(work)
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    p = torch.softmax(s, dim=-1)
    if mask is not None:
        p = torch.nan_to_num(p, nan=0.0)
    return p.to(out_dtype)


