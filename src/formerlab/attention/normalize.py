"""Attention normalisers: turn masked scores into attention weights.

Every normaliser is registered in :data:`NORMALIZERS` as ``fn(scores, mask=None, **options)``
where ``scores`` already include the ``1/√d`` scale and ``mask`` is boolean (``True`` = may
attend), broadcastable to ``scores``. Masked keys receive exactly zero weight; a row with no
visible key gives zeros.

Definitions (``l_i`` = number of visible keys of row ``i``; kexue.fm/archives/9019, 8823, 9052):

=========================  ==================================================================
``softmax``                ``exp(a_ij) / Σ_j exp(a_ij)`` (SDPA fast path in the kernel)
``softmax_plus``           ``softmax_j(a_ij · log(l̃_i) / log(base_len))``, ``l̃ = max(l, min_len)``:
                           entropy-invariant softmax (base_len 512; kexue.fm/archives/8823)
``squared_relu``           ``relu(a_ij)² / l_i`` (bert4keras ``attention_normalize``)
``squared_relu_fixed``     ``relu(a_ij)² / n0`` (Su's fix 1: a constant, e.g. the training length)
``squared_relu_rownorm``   ``relu(a_ij)² / (Σ_j relu(a_ij)² + ε)`` (fix 3)
``relu2_n``                ``relu(a_ij)² / n`` with ``n`` = number of keys (FLASH-style)
``l2``                     ``exp(a_ij) / sqrt(Σ_j exp(2 a_ij))`` (rows of unit l2 norm)
``none``                   ``exp(a_ij)`` (no denominator; overflow-prone, experimental)
=========================  ==================================================================

Power activations (the relu² family) are homogeneous: a row-normalised relu² is invariant to
scaling the logits, so no temperature — hence no entropy-invariant variant — exists for them;
only exp-based normalisers admit one (kexue.fm/archives/9019).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry

__all__ = [
    "NORMALIZERS",
    "attention_entropy",
    "attention_normalize",
    "check_normalizer",
    "normalizer_options",
    "row_factor",
    "entropy_floor",
    "register_normalizer",
    "softmax_plus_factor",
    "visible_counts",
]

Normalizer = Callable[..., Tensor]

#: name -> fn(scores, mask=None, **options) -> weights
NORMALIZERS: Registry[Normalizer] = Registry("attention normalization")


def register_normalizer(name: str, *, aliases: tuple[str, ...] = (), **meta: Any):
    """Register ``fn(scores, mask=None, **options) -> weights`` under ``name``."""
    return NORMALIZERS.register(name, aliases=aliases, **meta)


def attention_normalize(
    scores: Tensor, mask: Tensor | None = None, method: str = "softmax", **options: Any
) -> Tensor:
    """Normalise ``scores`` with the registered ``method`` (unknown names raise ``ValueError``).

    Args:
        scores: ``(..., nq, nk)`` logits (scale already applied).
        mask: Boolean, broadcastable to ``scores``; ``True`` = may attend.
        method: A name of :data:`NORMALIZERS`.
        **options: Method options (``base_len``/``min_len`` for ``softmax_plus``, ``n0`` for
            ``squared_relu_fixed``, ``eps`` for ``squared_relu_rownorm``).
    """
    fn = NORMALIZERS.get(method)
    if mask is not None:
        if mask.dtype != torch.bool:
            raise TypeError(f"mask must be a bool tensor (True = attend), got {mask.dtype}")
        try:
            torch.broadcast_shapes(mask.shape, scores.shape)
        except RuntimeError as exc:
            raise ValueError(
                f"mask of shape {tuple(mask.shape)} does not broadcast to the scores "
                f"{tuple(scores.shape)}"
            ) from exc
    return fn(scores, mask, **options)


def normalizer_options(method: str) -> dict[str, Any]:
    """The options (keyword arguments and their defaults) that normaliser ``method`` accepts."""
    import inspect

    sig = inspect.signature(NORMALIZERS.get(method))
    return {name: p.default for name, p in list(sig.parameters.items())[2:]
            if p.kind is not inspect.Parameter.VAR_KEYWORD}


def check_normalizer(method: str, options: dict[str, Any] | None) -> None:
    """Raise ``ValueError`` for an unknown normaliser or options it does not take."""
    allowed = normalizer_options(method)
    unknown = sorted(set(options or {}) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} of attention normalization {method!r}; "
            f"allowed: {sorted(allowed) or 'none'}"
        )


def row_factor(method: str, counts: Tensor, options: dict[str, Any] | None) -> Tensor | None:
    """The per-row logit factor of a normaliser that is softmax after scaling each row
    (``softmax_plus``), or ``None``; lets such normalisers run on the fused kernels."""
    if NORMALIZERS.meta(method).get("row_factor") is None:
        return None
    return softmax_plus_factor(counts, **(options or {}))


def visible_counts(scores: Tensor, mask: Tensor | None) -> Tensor:
    """Per-row number of visible keys ``l_i`` as a ``(..., nq, 1)`` tensor of the score dtype."""
    if mask is None:
        shape = (*scores.shape[:-1], 1)
        return torch.full(shape, scores.shape[-1], dtype=scores.dtype, device=scores.device)
    full = mask.expand(*torch.broadcast_shapes(mask.shape, scores.shape))
    return full.sum(-1, keepdim=True).to(scores.dtype)


def softmax_plus_factor(
    counts: Tensor | int | float, base_len: int = 512, min_len: int | None = None
) -> Tensor:
    """``log(l̃) / log(base_len)`` with ``l̃ = max(l, min_len)`` (and ``l̃ >= 1``), in float64.

    Both logarithms are taken by the same routine in float64, so ``l = base_len`` gives exactly 1.
    """
    if base_len < 2:
        raise ValueError(f"base_len must be >= 2, got {base_len}")
    c = torch.as_tensor(counts, dtype=torch.float64)
    floor = 1.0 if min_len is None else float(max(min_len, 1))
    c = c.clamp_min(floor)
    return torch.log(c) / torch.log(torch.tensor(float(base_len), dtype=torch.float64))


def _masked_zero(weights: Tensor, mask: Tensor | None) -> Tensor:
    return weights if mask is None else weights.masked_fill(~mask, 0.0)


@register_normalizer("softmax", sdpa=True)
def softmax(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """``exp(a_ij) / Σ_j exp(a_ij)`` over visible keys; fully masked rows give zeros."""
    if mask is None:
        return torch.softmax(scores, dim=-1)
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1)
    return torch.nan_to_num(weights, nan=0.0)


@register_normalizer("softmax_plus", aliases=("softmax_logn",), row_factor="softmax_plus_factor")
def softmax_plus(
    scores: Tensor, mask: Tensor | None = None, base_len: int = 512, min_len: int | None = None
) -> Tensor:
    """Entropy-invariant softmax ``softmax(a · log_{base_len} l̃)`` (kexue.fm/archives/8823).

    ``l`` is the per-row count of visible keys (so padding and causality change it per row);
    ``min_len`` (bert4keras' 2023 switch, e.g. 16) floors it so short rows are not flattened.
    At ``l = base_len`` the result equals :func:`softmax` bit for bit.
    """
    factor = softmax_plus_factor(visible_counts(scores, mask), base_len, min_len)
    return softmax(scores * factor.to(scores.dtype), mask)


def _relu2(scores: Tensor, mask: Tensor | None) -> Tensor:
    return _masked_zero(torch.relu(scores) ** 2, mask)


@register_normalizer("squared_relu", aliases=("relu2",))
def squared_relu(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """``relu(a_ij)² / l_i`` with ``l_i`` the per-row visible-key count (bert4keras)."""
    return _relu2(scores, mask) / visible_counts(scores, mask).clamp_min(1)


@register_normalizer("squared_relu_fixed")
def squared_relu_fixed(scores: Tensor, mask: Tensor | None = None, n0: int = 512) -> Tensor:
    """``relu(a_ij)² / n0`` with a constant ``n0`` (e.g. the pre-training length)."""
    if n0 <= 0:
        raise ValueError(f"n0 must be positive, got {n0}")
    return _relu2(scores, mask) / float(n0)


@register_normalizer("squared_relu_rownorm")
def squared_relu_rownorm(scores: Tensor, mask: Tensor | None = None, eps: float = 1e-12) -> Tensor:
    """``relu(a_ij)² / (Σ_j relu(a_ij)² + ε)``: rows sum to 1 (0 for all-negative rows)."""
    r = _relu2(scores, mask)
    return r / (r.sum(-1, keepdim=True) + eps)


@register_normalizer("relu2_n")
def relu2_n(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """``relu(a_ij)² / n`` with ``n`` the number of keys (FLASH's ``relu²(QKᵀ/√s)/n``)."""
    return _relu2(scores, mask) / float(scores.shape[-1])


@register_normalizer("l2")
def l2(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """``exp(a_ij) / sqrt(Σ_j exp(2 a_ij))`` computed as ``exp(a−M)/sqrt(Σ exp(2(a−M)))``."""
    s = scores if mask is None else scores.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    e = torch.exp(s - m)
    norm = torch.sqrt((e * e).sum(-1, keepdim=True))
    out = e / norm.clamp_min(torch.finfo(e.dtype).tiny)
    return _masked_zero(out, mask)


@register_normalizer("none", aliases=("exp",))
def none(scores: Tensor, mask: Tensor | None = None) -> Tensor:
    """``exp(a_ij)`` with no denominator (overflows for large logits; experimental)."""
    return _masked_zero(torch.exp(scores), mask)


# --- softmax facts (kexue.fm/archives/9593) ------------------------------------------------------
def attention_entropy(probs: Tensor, mask: Tensor | None = None) -> Tensor:
    """Row entropies ``H_i = −Σ_j p_ij log p_ij`` (``0·log 0 = 0``), shape ``probs.shape[:-1]``.

    ``H ∈ [0, log l_i]``; a one-hot row carries no extractable information (vanishing gradients
    under large-logit initialisation).
    """
    p = probs if mask is None else probs.masked_fill(~mask, 0.0)
    logp = torch.where(p > 0, torch.log(p.clamp_min(torch.finfo(p.dtype).tiny)),
                       torch.zeros_like(p))
    return -(p * logp).sum(-1)


def entropy_floor(tau: float = 1.0) -> tuple[float, float]:
    """``max (log n − H)`` for ``p_i ∝ exp(cos θ_i / τ)`` (logits in ``[−1/τ, 1/τ]``).

    The maximum of ``KL(p‖uniform)`` over the box sits at a two-point configuration: a fraction
    ``f`` of the logits at ``+1/τ`` and the rest at ``−1/τ``; it does not depend on ``n``. Returns
    ``(gap, f)``: every row satisfies ``H ≥ log n − gap``; τ = 1 gives ``(0.474475…, 0.2055…)``.
    A smaller τ widens the logit range, so the gap grows and the entropy floor ``log n − gap``
    drops. scipy is imported lazily.
    """
    import math

    from scipy.optimize import minimize_scalar

    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    a = 1.0 / tau

    def neg_kl(f: float) -> float:
        # work relative to the max logit to stay finite for small tau
        z = f + (1 - f) * math.exp(-2 * a)  # Z · e^{−a}
        hi, lo = 1.0 / z, math.exp(-2 * a) / z  # n·p at +a and at −a
        kl = f * hi * math.log(hi) + ((1 - f) * lo * math.log(lo) if lo > 0 else 0.0)
        return -kl

    res = minimize_scalar(neg_kl, bounds=(1e-12, 1 - 1e-12), method="bounded",
                          options={"xatol": 1e-12})
    return float(-res.fun), float(res.x)
