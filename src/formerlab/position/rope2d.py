"""Axial N-D RoPE (2-D RoPE for images), kexue.fm/archives/8397.

A 2-D rotary encoding must satisfy relativity ``R_{x1,y1}ᵀ R_{x2,y2} = R_{x2-x1, y2-y1}`` and be
invertible. With ``R = exp(x B₁ + y B₂)`` this holds iff the skew-symmetric generators commute; the
simplest solution is block-diagonal: 1-D RoPE with position ``x`` on one block of channels and with
``y`` on another (quaternion-style non-commuting generators fail). The post fixes no frequency
ladder; the library convention (as lucidrains/rotary-embedding-torch's axial mode) gives each
axis its own block of ``dims_per_axis[a]`` channels with ``θ_i = base^(-2i/dims_per_axis[a])`` and
any RoPE layout inside the block. Channels beyond ``sum(dims_per_axis)`` pass through.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .rope import apply_rope, rope_cos_sin
from .schedules import default_inv_freq

__all__ = ["AxialRotaryEmbedding", "grid_positions", "rope_2d", "rope_nd"]


def _dims(head_dim: int, n_axes: int, dims_per_axis: Sequence[int] | None) -> list[int]:
    if n_axes <= 0:
        raise ValueError(f"positions need at least one axis, got {n_axes}")
    if dims_per_axis is None:
        per = head_dim // n_axes
        per -= per % 2
        dims = [per] * n_axes
    else:
        dims = [int(x) for x in dims_per_axis]
        if len(dims) != n_axes:
            raise ValueError(f"dims_per_axis has {len(dims)} entries for {n_axes} position axes")
    if any(x <= 0 or x % 2 for x in dims) or sum(dims) > head_dim:
        raise ValueError(
            f"dims_per_axis must be positive even ints summing to <= head_dim ({head_dim}), got {dims}"
        )
    return dims


def rope_nd(
    x: Tensor,
    positions: Tensor,
    dims_per_axis: Sequence[int] | None = None,
    base: float = 10000.0,
    layout: str = "half",
) -> Tensor:
    """Axial RoPE of ``x`` ``(..., n, d)`` at ``positions`` ``(..., n, n_axes)`` (fractional allowed).

    Axis ``a`` rotates channels ``[off_a, off_a + dims_per_axis[a])`` with its own frequency ladder
    (default: ``d // n_axes`` channels per axis, rounded down to even).
    """
    if positions.dim() < 2:
        raise ValueError(f"positions must be (..., n, n_axes), got shape {tuple(positions.shape)}")
    if positions.shape[-2] != x.shape[-2]:
        raise ValueError(f"positions cover {positions.shape[-2]} tokens, x has {x.shape[-2]}")
    dims = _dims(x.shape[-1], positions.shape[-1], dims_per_axis)
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    parts, off = [], 0
    for a, da in enumerate(dims):
        inv_freq = default_inv_freq(da, base).to(device=x.device, dtype=work)
        cos, sin = rope_cos_sin(positions[..., a], inv_freq, layout=layout)
        parts.append(apply_rope(x[..., off : off + da], cos, sin, layout))
        off += da
    if off < x.shape[-1]:
        parts.append(x[..., off:])
    return torch.cat(parts, dim=-1)


def rope_2d(
    x: Tensor,
    pos_h: Tensor,
    pos_w: Tensor,
    dims_per_axis: Sequence[int] | None = None,
    base: float = 10000.0,
    layout: str = "half",
) -> Tensor:
    """2-D RoPE: the first block of channels encodes ``pos_h`` (rows), the second ``pos_w`` (columns)."""
    if pos_h.shape != pos_w.shape:
        raise ValueError(f"pos_h {tuple(pos_h.shape)} and pos_w {tuple(pos_w.shape)} must match")
    return rope_nd(x, torch.stack([pos_h, pos_w], dim=-1), dims_per_axis, base, layout)


def grid_positions(h: int, w: int, device: torch.device | str | None = None) -> Tensor:
    """Row-major ``(h·w, 2)`` integer positions ``(row, col)`` of an ``h × w`` grid."""
    if h <= 0 or w <= 0:
        raise ValueError(f"grid sides must be positive, got {h}×{w}")
    rows, cols = torch.meshgrid(
        torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij"
    )
    return torch.stack([rows.flatten(), cols.flatten()], dim=-1)


class AxialRotaryEmbedding(nn.Module):
    """Axial RoPE with cached integer-position cos/sin tables per axis.

    Args:
        head_dim: Per-head channels ``d``.
        n_axes: Number of position axes (2 for images).
        dims_per_axis: Channels per axis (default ``d // n_axes`` rounded down to even).
        base: RoPE base of every axis.
        layout: RoPE layout inside each axis block.

    ``forward(x, positions)`` with integer ``positions`` ``(n, n_axes)`` reads the tables (grown as
    needed); fractional positions fall back to :func:`rope_nd`.
    """

    def __init__(
        self,
        head_dim: int,
        n_axes: int = 2,
        dims_per_axis: Sequence[int] | None = None,
        base: float = 10000.0,
        layout: str = "half",
    ) -> None:
        super().__init__()
        self.dims = _dims(head_dim, n_axes, dims_per_axis)
        self.head_dim, self.base, self.layout = head_dim, base, layout
        self._tables: list[tuple[Tensor, Tensor]] = []

    def _table(self, a: int, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if a < len(self._tables) and self._tables[a][0].shape[0] >= size and self._tables[a][0].device == device:
            return self._tables[a]
        inv_freq = default_inv_freq(self.dims[a], self.base).to(device=device, dtype=torch.float32)
        tab = rope_cos_sin(torch.arange(max(size, 64), device=device), inv_freq, layout=self.layout)
        while len(self._tables) <= a:
            self._tables.append(tab)
        self._tables[a] = tab
        return tab

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        if positions.is_floating_point() or positions.dim() != 2 or x.dtype == torch.float64:
            return rope_nd(x, positions, self.dims, self.base, self.layout)
        if positions.shape[-1] != len(self.dims) or positions.shape[0] != x.shape[-2]:
            raise ValueError(f"positions must be ({x.shape[-2]}, {len(self.dims)}), got {tuple(positions.shape)}")
        if positions.numel() and int(positions.min()) < 0:
            return rope_nd(x, positions, self.dims, self.base, self.layout)
        parts, off = [], 0
        for a, da in enumerate(self.dims):
            cos, sin = self._table(a, int(positions[:, a].max()) + 1, x.device)
            idx = positions[:, a]
            parts.append(apply_rope(x[..., off : off + da], cos[idx], sin[idx], self.layout))
            off += da
        if off < x.shape[-1]:
            parts.append(x[..., off:])
        return torch.cat(parts, dim=-1)
