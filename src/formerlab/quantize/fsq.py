"""FSQ: finite scalar quantisation (kexue.fm/archives/9826; Mentzer et al., arXiv 2309.15505).

Each of the ``d`` code dimensions is bounded and rounded to one of ``L_i`` levels: no codebook
to learn, no auxiliary loss, an implicit codebook of ``K = Π L_i`` codes (so ``d`` is small,
``log_L K``). Gradients pass straight through the rounding.

Bounds (registered in :data:`FSQ_VARIANTS`; ``b`` = bounded value in *centred level units*):

===========  =====================================================  ========================
variant      bound ``b(z)``                                          code ``ẑ`` (from ``r = round(b)``)
===========  =====================================================  ========================
``tanh``     ``tanh(z + s)·h − o``, ``h = (L−1)(1+ε)/2``,            ``r / (L div 2)`` ∈ [−1, 1]
             ``o = ½`` for even ``L`` else 0, ``s = atanh(o/h)``
             (the paper's; ε = 1e-3)
``sigmoid``  ``(L−1)·σ(z)`` (Su's form; bojone/FSQ ``fsqae.py``)     ``r / (L−1)`` ∈ [0, 1]
===========  =====================================================  ========================

Even ``L`` with ``tanh`` gives the levels ``{−L/2 … L/2−1}/(L/2)``; odd ``L`` gives
``{−(L−1)/2 … (L−1)/2}/((L−1)/2)``. Digits ``r + c`` (``c = L div 2`` for tanh, 0 for sigmoid)
lie in ``{0 … L−1}``; the index is mixed radix, ``Σ_i digit_i Π_{j<i} L_j`` (a bijection on the
grid). The ``tanh`` variant gives the codes and indices of ``vector_quantize_pytorch.FSQ``.

Su's analysis: FSQ ≈ VQ at ``K ≈ 1000``, better for ``K ≫ 1000`` and with strong
encoders/decoders (no argmin, so no collapse), worse when each quantised layer is weak or a
high-dimensional vector is needed (as for Transformer-VQ's keys).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..registry import Registry
from .common import QUANTIZERS, code_counts, finite_check, usage_statistics

__all__ = ["FSQ", "FSQOutput", "FSQ_VARIANTS", "FSQVariant", "recommended_levels"]


@dataclasses.dataclass(frozen=True)
class FSQVariant:
    """A bound ``b(z, levels, eps)`` in centred level units and the map from the rounded value
    ``r`` to the code: ``ẑ = r / scale(levels)``, digit ``= r + center(levels)``."""

    bound: Callable[[Tensor, Tensor, float], Tensor]
    center: Callable[[Tensor], Tensor]
    scale: Callable[[Tensor], Tensor]


#: name -> :class:`FSQVariant`
FSQ_VARIANTS: Registry[FSQVariant] = Registry("FSQ variant")


def _tanh_bound(z: Tensor, levels: Tensor, eps: float) -> Tensor:
    """Paper Appendix A.1: ``tanh(z + atanh(o/h))·h − o`` (kexue.fm/archives/9826)."""
    half = (levels - 1) * (1 + eps) / 2
    offset = torch.where(levels % 2 == 0, 0.5, 0.0)
    shift = torch.atanh(offset / half)
    return torch.tanh(z + shift) * half - offset


def _sigmoid_bound(z: Tensor, levels: Tensor, eps: float) -> Tensor:
    """Su's ``(L−1)·σ(z)``, rounded to ``{0 … L−1}`` (kexue.fm/archives/9826)."""
    return (levels - 1) * torch.sigmoid(z)


FSQ_VARIANTS.add("tanh", FSQVariant(_tanh_bound, lambda L: L // 2, lambda L: L // 2))
FSQ_VARIANTS.add("sigmoid", FSQVariant(_sigmoid_bound, torch.zeros_like, lambda L: L - 1))

#: paper Table 1 (heuristic ``L_i ≥ 5``): target codebook size -> levels
_RECOMMENDED: dict[int, tuple[int, ...]] = {
    2**8: (8, 6, 5),
    2**10: (8, 5, 5, 5),
    2**12: (7, 5, 5, 5, 5),
    2**14: (8, 8, 8, 6, 5),
    2**16: (8, 8, 8, 5, 5, 5),
}


def recommended_levels(codebook_size: int) -> list[int]:
    """The paper's levels for a target codebook size ``2^8 … 2^16`` (Table 1 of arXiv 2309.15505).

    ``2^10 → [8, 5, 5, 5]`` (1000 codes). Other sizes raise ``ValueError`` listing the table.
    """
    if codebook_size not in _RECOMMENDED:
        table = ", ".join(f"{k} (2^{int(math.log2(k))})" for k in _RECOMMENDED)
        raise ValueError(f"no recommended FSQ levels for codebook_size={codebook_size!r}; "
                         f"the table covers {table}")
    return list(_RECOMMENDED[codebook_size])


class FSQOutput(NamedTuple):
    """``(quantized, indices)``: codes of the input's shape and dtype, int64 indices ``(...)``."""

    quantized: Tensor
    indices: Tensor


def _check_levels(levels: Sequence[int]) -> list[int]:
    if isinstance(levels, Tensor):
        levels = levels.tolist()
    if not isinstance(levels, Sequence) or isinstance(levels, str) or len(levels) == 0:
        raise ValueError(f"levels must be a non-empty sequence of ints >= 2, got {levels!r}")
    for v in levels:
        if isinstance(v, bool) or not isinstance(v, int) or v < 2:
            raise ValueError(f"levels must be ints >= 2, got {v!r} in levels={list(levels)!r}")
    return [int(v) for v in levels]


@QUANTIZERS.register("fsq")
class FSQ(nn.Module):
    """Finite scalar quantiser (arXiv 2309.15505; kexue.fm/archives/9826).

    Args:
        levels: Levels per code dimension, each ``>= 2`` (see :func:`recommended_levels`).
        dim: Feature size of the input; ``None`` = ``len(levels)``. Otherwise inputs are
            projected to ``len(levels)`` and back (``nn.Linear`` unless modules are given).
        variant: ``"tanh"`` (paper) or ``"sigmoid"`` (Su), see :data:`FSQ_VARIANTS`.
        eps: The paper's ``ε`` in the tanh bound's half-width (keeps codes strictly inside).
        project_in: Optional module ``dim → len(levels)`` (default ``nn.Linear`` when needed).
        project_out: Optional module ``len(levels) → dim``.
        track_usage: Count code usage on every forward (:meth:`usage_stats`).

    ``forward(z)`` with ``z`` ``(..., dim)`` returns :class:`FSQOutput` ``(z_q, indices)``;
    bounding and rounding run in float32 (float64 inputs stay float64) even under autocast.
    """

    def __init__(self, levels: Sequence[int], dim: int | None = None, variant: str = "tanh",
                 eps: float = 1e-3, project_in: nn.Module | None = None,
                 project_out: nn.Module | None = None, track_usage: bool = True) -> None:
        super().__init__()
        lv = _check_levels(levels)
        self.levels = lv
        self.variant = FSQ_VARIANTS.canonical(variant)
        self.eps = finite_check("eps", eps)
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps!r}")
        self.codebook_dim = len(lv)
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ValueError(f"dim must be a positive int or None, got {dim!r}")
        self.dim = self.codebook_dim if dim is None else dim
        self.codebook_size = math.prod(lv)
        needs_proj = self.dim != self.codebook_dim
        self.project_in = project_in or (nn.Linear(self.dim, self.codebook_dim) if needs_proj
                                         else nn.Identity())
        self.project_out = project_out or (nn.Linear(self.codebook_dim, self.dim) if needs_proj
                                           else nn.Identity())
        levels_t = torch.tensor(lv, dtype=torch.int32)
        v = FSQ_VARIANTS.get(self.variant)
        self.register_buffer("_levels", levels_t, persistent=False)
        self.register_buffer("_center", v.center(levels_t).to(torch.int64), persistent=False)
        self.register_buffer("_scale", v.scale(levels_t), persistent=False)
        basis = torch.cumprod(torch.tensor([1, *lv[:-1]], dtype=torch.int64), dim=0)
        self.register_buffer("_basis", basis, persistent=False)
        self._index_offset = int((self._center * basis).sum())
        self.track_usage = track_usage
        self.register_buffer("usage_counts", torch.zeros(self.codebook_size, dtype=torch.float64),
                             persistent=False)

    def extra_repr(self) -> str:
        return (f"levels={self.levels}, variant={self.variant!r}, dim={self.dim}, "
                f"codebook_size={self.codebook_size}")

    # -- core -----------------------------------------------------------------------------------
    def bound(self, z: Tensor) -> Tensor:
        """The continuous bounded value (centred level units) of ``z`` ``(..., len(levels))``."""
        return FSQ_VARIANTS.get(self.variant).bound(z, self._levels.to(z.dtype), self.eps)

    def quantize(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``(codes, indices)`` of ``z`` ``(..., len(levels))`` without projections (STE codes)."""
        b = self.bound(z)
        r = b.detach().round()
        codes = (b + (r - b.detach())) / self._scale  # round with a straight-through gradient
        return codes, self._rounded_to_indices(r)

    def _rounded_to_indices(self, r: Tensor) -> Tensor:
        """``Σ_i (r_i + c_i)·basis_i`` as ``r·basis + c·basis``: one exact float mat-vec (the
        integers stay below 2^24 in float32, else float64)."""
        dtype = r.dtype if self.codebook_size < 2**24 or r.dtype == torch.float64 else torch.float64
        return (r.to(dtype) @ self._basis.to(dtype)).add_(self._index_offset).to(torch.int64)

    def forward(self, z: Tensor) -> FSQOutput:
        if not isinstance(z, Tensor) or z.dim() < 1 or z.shape[-1] != self.dim:
            shape = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"FSQ expects z of shape (..., {self.dim}), got {shape}")
        z = self.project_in(z)
        dtype = z.dtype
        with torch.autocast(device_type=z.device.type, enabled=False):
            zf = z if dtype == torch.float64 else z.float()
            codes, indices = self.quantize(zf)
        if self.track_usage:
            with torch.no_grad():
                self.usage_counts += code_counts(indices, self.codebook_size)
        return FSQOutput(self.project_out(codes.to(dtype)), indices)

    # -- indices ------------------------------------------------------------------------------
    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Grid codes ``(..., len(levels))`` → int64 indices ``(...)``."""
        if codes.shape[-1] != self.codebook_dim:
            raise ValueError(f"codes must be (..., {self.codebook_dim}), got {tuple(codes.shape)}")
        return self._rounded_to_indices((codes.detach() * self._scale).round())

    def indices_to_codes(self, indices: Tensor, project: bool = True) -> Tensor:
        """Indices ``(...)`` → codes ``(..., dim)`` (``project=False``: grid codes
        ``(..., len(levels))`` before ``project_out``). Indices outside ``[0, K)`` raise."""
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.codebook_size):
            raise ValueError(f"indices must lie in [0, {self.codebook_size}), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        digits = (indices.to(torch.int64).unsqueeze(-1) // self._basis) % self._levels
        codes = (digits - self._center).to(torch.float32) / self._scale
        return self.project_out(codes) if project else codes

    @property
    def implicit_codebook(self) -> Tensor:
        """All ``K = Π L`` grid codes ``(K, len(levels))``, row ``k`` = code of index ``k``."""
        idx = torch.arange(self.codebook_size, device=self._levels.device)
        return self.indices_to_codes(idx, project=False)

    # -- usage ----------------------------------------------------------------------------------
    def usage_stats(self, all_reduce: bool = False) -> dict[str, float | int]:
        """Usage since the last :meth:`reset_usage` (see :func:`usage_statistics`)."""
        return usage_statistics(self.usage_counts, all_reduce=all_reduce)

    def reset_usage(self) -> None:
        self.usage_counts.zero_()
