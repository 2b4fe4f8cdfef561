"""What every quantiser shares: the quantiser registry, straight-through rounding, code-usage
statistics and the process-group helpers.

Usage statistics (kexue.fm/archives/9826 on codebook collapse): with ``u_k`` the empirical
frequency of code ``k`` over a window of batches,

=====================  ==========================================================================
``perplexity``         ``exp(−Σ_k u_k log u_k)``: ``K`` for uniform use of ``K`` codes, 1 for collapse
``usage``              ``perplexity / num_codes`` (1 = uniform)
``active_fraction``    fraction of codes used at least once in the window
``dead_fraction``      ``1 − active_fraction`` (codes never used in the window)
=====================  ==========================================================================

Statistics are plain Python numbers (JSON-ready); with several codebooks they are averaged over
codebooks. Under ``torch.distributed`` counts can be summed over processes first.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from ..registry import Registry

__all__ = [
    "QUANTIZERS",
    "batch_usage",
    "build_quantizer",
    "code_counts",
    "distributed_world",
    "finite_check",
    "round_ste",
    "usage_statistics",
]

#: name -> quantiser class (``"vq"``: :class:`VectorQuantizer`, ``"fsq"``: :class:`FSQ`)
QUANTIZERS: Registry[Any] = Registry("quantizer")


def build_quantizer(name: str, **kwargs: Any) -> torch.nn.Module:
    """Construct the registered quantiser ``name`` with ``kwargs`` (unknown names raise)."""
    return QUANTIZERS.get(name)(**kwargs)


def round_ste(x: Tensor) -> Tensor:
    """``round(x)`` in the forward pass, identity gradient (straight-through estimator)."""
    return x + (x.round() - x).detach()


def code_counts(indices: Tensor, num_codes: int, mask: Tensor | None = None) -> Tensor:
    """How often each code occurs: ``(num_codes,)`` float64 counts of ``indices`` (``mask``
    ``True`` = count this position; same shape as ``indices``)."""
    flat = indices.reshape(-1)
    if mask is not None:
        flat = flat[mask.reshape(-1)]
    return torch.bincount(flat, minlength=num_codes).to(torch.float64)


def distributed_world() -> int:
    """World size of the default process group (1 when not distributed)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _perplexity(counts: Tensor) -> Tensor:
    total = counts.sum(-1, keepdim=True)
    u = counts / total.clamp_min(1e-30)
    ent = -(torch.where(u > 0, u * u.clamp_min(1e-300).log(), torch.zeros_like(u))).sum(-1)
    return torch.where(total.squeeze(-1) > 0, ent.exp(), torch.zeros_like(ent))


def usage_statistics(counts: Tensor, all_reduce: bool = False) -> dict[str, float | int]:
    """Plain-number usage statistics of code counts (``(K,)`` or ``(num_codebooks, K)``).

    Args:
        counts: Non-negative code counts over a window (rows = codebooks).
        all_reduce: Sum the counts over the default process group first (when one exists).

    Returns:
        ``{"num_codes", "total", "perplexity", "usage", "active_fraction", "dead_fraction",
        "num_dead"}``; with several codebooks ``perplexity``/fractions are means over codebooks
        and ``num_dead`` a total. An empty window gives perplexity 0.
    """
    if not isinstance(counts, Tensor) or counts.dim() not in (1, 2):
        shape = tuple(counts.shape) if isinstance(counts, Tensor) else type(counts).__name__
        raise ValueError(f"counts must be a (K,) or (codebooks, K) tensor, got {shape}")
    c = counts.detach().to(torch.float64)
    if all_reduce and distributed_world() > 1:
        c = c.clone()
        dist.all_reduce(c)
    c = c.reshape(-1, c.shape[-1])
    num_codes = c.shape[-1]
    active = (c > 0).to(torch.float64)
    ppl = _perplexity(c)
    return {
        "num_codes": int(num_codes),
        "total": round(float(c.sum())),
        "perplexity": float(ppl.mean()),
        "usage": float(ppl.mean()) / num_codes,
        "active_fraction": float(active.mean()),
        "dead_fraction": 1.0 - float(active.mean()),
        "num_dead": int((active == 0).sum()),
    }


def batch_usage(indices: Tensor, num_codes: int, mask: Tensor | None = None) -> dict[str, Tensor]:
    """Detached per-batch ``perplexity`` and ``active_fraction`` as 0-d tensors (no host sync).

    ``indices`` ``(..., C)`` with one column per codebook when ``C > 1`` is flattened per column
    by the caller; here ``indices`` is ``(C, N)`` and ``mask`` ``(N,)`` or ``None``.
    """
    c = indices.shape[0]
    offsets = torch.arange(c, device=indices.device).unsqueeze(1) * num_codes
    flat = (indices + offsets).reshape(-1)
    if mask is not None:
        flat = flat[mask.reshape(1, -1).expand(c, -1).reshape(-1)]
    counts = torch.bincount(flat, minlength=c * num_codes).reshape(c, num_codes).to(torch.float64)
    return {
        "perplexity": _perplexity(counts).mean().to(torch.float32),
        "active_fraction": (counts > 0).to(torch.float32).mean(),
    }


def finite_check(name: str, value: float, *, positive: bool = False, unit: bool = False) -> float:
    """Validate a float option (``positive``: > 0; ``unit``: in [0, 1)); return it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if unit and not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)
