"""Local versus global cosine similarity (kexue.fm/archives/9931).

Split two vectors into matching blocks, ``x = [x_1 … x_m]``, ``y = [y_1 … y_m]`` (e.g. the
parameter tensors of a model, the gradient ``g`` and an optimiser's update ``u``). Then

    cos(x, y) = Σ_i w_i cos(x_i, y_i),      w_i = ‖x_i‖ ‖y_i‖ / (‖x‖ ‖y‖) ≥ 0,

and ``ρ = Σ_i w_i`` is itself a cosine: that of the block-norm profiles ``(‖x_i‖)_i`` and
``(‖y_i‖)_i``, so ``ρ ∈ [0, 1]`` (Cauchy–Schwarz). Hence the bound

    ρ · min_i cos(x_i, y_i)  ≤  cos(x, y)  ≤  ρ · max_i cos(x_i, y_i),

tight when all local cosines are equal. Large local cosines say nothing about the global one
unless the norm profiles are aligned: with ``‖x_1‖ → 0`` and ``‖y_2‖ → 0`` every ``w_i → 0``,
and :func:`local_global_counterexample` builds vectors whose local cosines are all ``≥ λ``
while the global cosine is below any ``ε > 0``. The extreme split into coordinates makes every
local cosine of ``sign(g)`` with ``g`` equal to 1 while ``cos(g, sign g) = ‖g‖₁ / (√N ‖g‖₂)``.
Pearson's correlation is the cosine of the centred vectors, and positive within-group
correlations can pool into a negative one (Simpson's paradox).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "BlockCosine",
    "blockwise_cosine",
    "cosine",
    "local_global_counterexample",
    "model_update_alignment",
    "pearson_via_cosine",
]


def cosine(x: Tensor, y: Tensor, dim: int = -1) -> Tensor:
    """``⟨x, y⟩ / (‖x‖ ‖y‖)`` along ``dim`` (0 where a vector is zero)."""
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError("x and y must be tensors")
    if x.shape[dim] != y.shape[dim]:
        raise ValueError(f"x and y must have the same size along dim {dim}, got {x.shape[dim]} "
                         f"and {y.shape[dim]}")
    if x.shape[dim] == 0:
        raise ValueError("x and y are empty")
    num = (x * y).sum(dim)
    den = x.norm(dim=dim) * y.norm(dim=dim)
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny),
                       torch.zeros_like(num))


class BlockCosine(NamedTuple):
    """``local`` ``(m,)`` block cosines, ``weights`` ``(m,)`` (sum ``≤ 1``) and the global cosine.

    ``global_cosine == (weights * local).sum()``; :attr:`bounds` is the sandwich
    ``ρ·min(local) ≤ global ≤ ρ·max(local)`` with ``ρ = weights.sum()``.
    """

    local: Tensor
    weights: Tensor
    global_cosine: Tensor

    @property
    def norm_alignment(self) -> Tensor:
        """``ρ = Σ w_i``: the cosine between the two block-norm profiles."""
        return self.weights.sum()

    @property
    def bounds(self) -> tuple[Tensor, Tensor]:
        rho = self.norm_alignment
        return rho * self.local.min(), rho * self.local.max()


def _blocks(v: Iterable[Tensor] | Mapping[str, Tensor], name: str) -> list[Tensor]:
    items = list(v.values()) if isinstance(v, Mapping) else list(v)
    if not items:
        raise ValueError(f"{name} has no blocks")
    for k, t in enumerate(items):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name}[{k}] must be a tensor, got {type(t).__name__}")
    return [t.reshape(-1) for t in items]


def blockwise_cosine(xs: Iterable[Tensor] | Mapping[str, Tensor],
                     ys: Iterable[Tensor] | Mapping[str, Tensor]) -> BlockCosine:
    """Local cosines, their weights and the global cosine of two block-split vectors.

    Args:
        xs: Blocks of ``x`` (tensors of any shapes, e.g. ``[p.grad for p in model.parameters()]``,
            or a name → tensor mapping).
        ys: The matching blocks of ``y`` (same shapes).

    Returns:
        A :class:`BlockCosine` ``(local, weights, global_cosine)``.
    """
    bx, by = _blocks(xs, "xs"), _blocks(ys, "ys")
    if len(bx) != len(by):
        raise ValueError(f"xs has {len(bx)} blocks but ys has {len(by)}")
    for k, (u, v) in enumerate(zip(bx, by)):
        if u.numel() != v.numel():
            raise ValueError(f"block {k} has {u.numel()} entries in xs but {v.numel()} in ys")
    dtype = torch.promote_types(bx[0].dtype, by[0].dtype)
    nx = torch.stack([u.to(dtype).norm() for u in bx])
    ny = torch.stack([v.to(dtype).norm() for v in by])
    local = torch.stack([cosine(u.to(dtype), v.to(dtype)) for u, v in zip(bx, by)])
    total = nx.norm() * ny.norm()
    weights = torch.where(total > 0, nx * ny / total.clamp_min(torch.finfo(dtype).tiny),
                          torch.zeros_like(nx))
    return BlockCosine(local, weights, (weights * local).sum())


def model_update_alignment(grads: Iterable[Tensor] | Mapping[str, Tensor],
                           updates: Iterable[Tensor] | Mapping[str, Tensor],
                           per: str = "tensor") -> Tensor | dict[str, Tensor]:
    """Cosine between gradients and update directions, per parameter tensor or over the model.

    ``L(θ − ηu) ≈ L(θ) − η⟨g, u⟩``: the first-order loss decrease is set by ``cos(g, u)``.

    Args:
        grads: Gradient tensors (list or name → tensor mapping).
        updates: The matching update directions.
        per: ``"tensor"`` (local cosines: a dict if mappings are given, else a ``(m,)`` tensor)
            or ``"global"`` (one cosine over the flattened model).
    """
    res = blockwise_cosine(grads, updates)
    if per == "global":
        return res.global_cosine
    if per != "tensor":
        raise ValueError(f"per must be 'tensor' or 'global', got {per!r}")
    if isinstance(grads, Mapping):
        return dict(zip(grads.keys(), res.local))
    return res.local


def pearson_via_cosine(x: Tensor, y: Tensor, dim: int = -1) -> Tensor:
    """Pearson correlation as the cosine of the centred vectors."""
    return cosine(x - x.mean(dim, keepdim=True), y - y.mean(dim, keepdim=True), dim)


def local_global_counterexample(lam: float, eps: float, num_blocks: int = 2, block_dim: int = 2,
                                *, dtype: torch.dtype = torch.float64
                                ) -> tuple[list[Tensor], list[Tensor]]:
    """Blocks whose local cosines all equal ``lam`` while the global cosine is below ``eps``.

    Block ``i`` of ``y`` is block ``i`` of ``x`` turned by ``arccos(lam)`` within the block; the
    norms put ``x``'s mass in block 0 and ``y``'s in block 1 (all other blocks have norm ``δ``),
    so the weights ``w_i`` — and with them the global cosine — are ``O(δ)``.

    Args:
        lam: Local cosine in ``(0, 1]``.
        eps: Target bound on the global cosine, ``(0, 1]``.
        num_blocks: Number of blocks (``≥ 2``).
        block_dim: Dimension of each block (``≥ 2``).

    Returns:
        ``(xs, ys)``: two lists of ``num_blocks`` tensors of shape ``(block_dim,)``.
    """
    if not 0 < lam <= 1:
        raise ValueError(f"lam must be in (0, 1], got {lam}")
    if not 0 < eps <= 1:
        raise ValueError(f"eps must be in (0, 1], got {eps}")
    if num_blocks < 2 or block_dim < 2:
        raise ValueError(f"need num_blocks >= 2 and block_dim >= 2, got {num_blocks}, {block_dim}")
    delta = eps / (4 + num_blocks)
    e0 = torch.zeros(block_dim, dtype=dtype)
    e1 = torch.zeros(block_dim, dtype=dtype)
    e0[0], e1[1] = 1.0, 1.0
    turned = lam * e0 + (1 - lam**2) ** 0.5 * e1
    xs, ys = [], []
    for i in range(num_blocks):
        xs.append((1.0 if i == 0 else delta) * e0)
        ys.append((1.0 if i == 1 else delta) * turned)
    return xs, ys
