"""Additive relative-position biases: ALiBi, the Sandwich bias and RoPE + bias (kexue.fm/archives/9577).

- **ALiBi** (Press et al., arXiv 2108.12409): logits get ``-m_h·|i - j|`` with geometric per-head
  slopes ``m_h``.
- **RoPE + bias**: with q/k projection biases ``a, b`` under RoPE the logit gains the
  position-only term ``aᵀ R_{n-m} b`` (a decaying Toeplitz bias; FLASH/GAU hides one for n ≥ 512
  as "Construct Toeplitz matrix using RoPE"). :class:`GauRopeRelBias` is that term with learnable
  ``a, b``.
- **Sandwich** (arXiv 2212.10356): with ``a = b = √λ`` on the first channel of every RoPE pair,
  ``aᵀ R_{n-m} b = λ Σ_i cos((n-m) θ_i)`` — the sinusoidal Gram profile of post 8231.
  Post 9577's later note: the reported gain of the bias is unstable across setups.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .rope import apply_rope, rope_cos_sin
from .schedules import default_inv_freq

__all__ = ["GauRopeRelBias", "alibi_bias", "alibi_slopes", "sandwich_bias", "sandwich_vector"]


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes (float32, ``(num_heads,)``): ``2^(-8h/H)`` for a power-of-two ``H``.

    Other head counts take the slopes of the largest power of two ``m < H`` followed by every other
    slope of ``2m`` (the ALiBi reference construction).
    """
    if isinstance(num_heads, bool) or not isinstance(num_heads, int) or num_heads <= 0:
        raise ValueError(f"num_heads must be a positive int, got {num_heads!r}")

    def pow2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    m = 2 ** math.floor(math.log2(num_heads))
    slopes = pow2(m)
    if m < num_heads:
        slopes += pow2(2 * m)[0::2][: num_heads - m]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(q_positions: Tensor, k_positions: Tensor, slopes: Tensor) -> Tensor:
    """Additive ALiBi bias ``-m_h·|i - j|``: ``(H, nq, nk)``, or ``(B, H, nq, nk)`` for batched positions.

    For causal attention (``j ≤ i``) this equals the original ``-m_h·(i - j)``.
    """
    if slopes.dim() != 1:
        raise ValueError(f"slopes must be 1-D (one per head), got shape {tuple(slopes.shape)}")
    if q_positions.dim() not in (1, 2) or k_positions.dim() != q_positions.dim():
        raise ValueError("positions must both be (n,) or both (B, n)")
    dist = (q_positions.to(torch.float32)[..., :, None] - k_positions.to(torch.float32)[..., None, :]).abs()
    s = slopes.to(device=dist.device, dtype=torch.float32)[:, None, None]
    return -(s * dist[..., None, :, :]) if dist.dim() == 3 else -(s * dist)


def sandwich_vector(rotary_dim: int, lam: float = 1.0, layout: str = "half") -> Tensor:
    """``√λ`` on the first channel of every RoPE pair, 0 elsewhere (float64, ``(rotary_dim,)``)."""
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be a positive even int, got {rotary_dim}")
    if lam < 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    a = torch.zeros(rotary_dim, dtype=torch.float64)
    if layout == "half":
        a[: rotary_dim // 2] = math.sqrt(lam)
    elif layout == "interleaved":
        a[0::2] = math.sqrt(lam)
    else:
        raise ValueError(f"layout must be 'half' or 'interleaved', got {layout!r}")
    return a


def sandwich_bias(n: int, rotary_dim: int, lam: float = 1.0, base: float = 10000.0) -> Tensor:
    """Sandwich bias ``λ Σ_{i<r/2} cos((j - i)·θ_i)``, ``(n, n)`` float64 (symmetric Toeplitz)."""
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim must be a positive even int, got {rotary_dim}")
    pos = torch.arange(n, dtype=torch.float64)
    rel = pos[None, :] - pos[:, None]
    return lam * torch.cos(rel[..., None] * default_inv_freq(rotary_dim, base)).sum(-1)


class GauRopeRelBias(nn.Module):
    """Learnable RoPE Toeplitz bias ``(R_i a)ᵀ (R_j b)`` as in FLASH/GAU (post 9577).

    Args:
        dim: Channels of ``a`` and ``b`` (even).
        base: RoPE base.
        layout: RoPE layout.
        init_std: Normal init std of ``a`` and ``b``.

    ``forward(q_positions, k_positions=None)`` returns the ``(nq, nk)`` bias (float32).
    """

    def __init__(self, dim: int, base: float = 10000.0, layout: str = "half", init_std: float = 0.02) -> None:
        super().__init__()
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim must be a positive even int, got {dim}")
        self.a = nn.Parameter(torch.randn(dim) * init_std)
        self.b = nn.Parameter(torch.randn(dim) * init_std)
        self.register_buffer("inv_freq", default_inv_freq(dim, base).to(torch.float32), persistent=False)
        self.layout = layout

    def forward(self, q_positions: Tensor, k_positions: Tensor | None = None) -> Tensor:
        k_positions = q_positions if k_positions is None else k_positions
        cq, sq = rope_cos_sin(q_positions, self.inv_freq, layout=self.layout)
        ck, sk = rope_cos_sin(k_positions, self.inv_freq, layout=self.layout)
        ra = apply_rope(self.a.expand(cq.shape), cq, sq, self.layout)
        rb = apply_rope(self.b.expand(ck.shape), ck, sk, self.layout)
        return ra @ rb.transpose(-1, -2)
