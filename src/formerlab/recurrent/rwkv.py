"""RWKV's WKV mixing written as two SLRUs divided (kexue.fm/archives/9554; Peng et al., arXiv 2305.13048).

RWKV-4 mixes, per channel, with decay ``λ = e^{−w}`` (``w > 0``) and a bonus ``e^u`` for the
current token::

    wkv_t = (Σ_{i<t} λ^{t−1−i} e^{k_i} v_i + e^{u} e^{k_t} v_t) / (Σ_{i<t} λ^{t−1−i} e^{k_i} + e^{u} e^{k_t})

Two real first-order recurrences (SLRUs without normalisation) give it in parallel::

    y_t = λ y_{t−1} + e^{k_t} v_t ;   z_t = λ z_{t−1} + e^{k_t}
    wkv_t = (y_t + (λe^u − 1) e^{k_t} v_t) / (z_t + (λe^u − 1) e^{k_t})

since ``Σ_{i<t} λ^{t−1−i} e^{k_i} v_i = (y_t − e^{k_t} v_t)/λ`` (and likewise for the
denominator; the factor ``1/λ`` cancels). RWKV's ``σ(r_t) ⊙ wkv_t`` gate and projections are the
caller's. Both recurrences run as one scan over ``2C`` channels.

Numerics: ``e^{k}`` is taken relative to the per-(batch, channel) maximum of ``k`` over the
sequence (the ratio is invariant to a common factor), so large keys never overflow; keys more than
~80 (float32) below that maximum underflow, as in any non-log-space evaluation.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .scan import linear_scan

__all__ = ["rwkv_wkv"]


def rwkv_wkv(k: Tensor, v: Tensor, w: Tensor, u: Tensor, method: str = "chunked",
             **options) -> Tensor:
    """RWKV-4's WKV ``(batch, seq, channels)`` by two parallel SLRU scans.

    Args:
        k, v: ``(batch, seq, C)``.
        w: ``(C,)`` decay rates, ``> 0`` (``λ = e^{−w}``; RWKV-4 stores ``w = exp(time_decay)``).
        u: ``(C,)`` bonus of the current token (RWKV-4's ``time_first``).
        method: A name of :data:`~formerlab.recurrent.scan.SCANS`.
        **options: Scan options (``chunk_size``).
    """
    if k.dim() != 3 or k.shape != v.shape:
        raise ValueError(f"k and v must both be (batch, seq, channels), got {tuple(k.shape)} "
                         f"and {tuple(v.shape)}")
    c = k.shape[-1]
    for name, t in (("w", w), ("u", u)):
        if t.shape != (c,):
            raise ValueError(f"{name} must have shape ({c},) (one value per channel), got "
                             f"{tuple(t.shape)}")
    if bool((w <= 0).any()):
        raise ValueError("w (decay rates) must be > 0 so that λ = exp(−w) < 1")
    ek = torch.exp(k - k.amax(dim=1, keepdim=True).detach())
    lam = torch.exp(-w)
    both = linear_scan(torch.cat([lam, lam]), torch.cat([ek * v, ek], dim=-1), dim=1,
                       method=method, **options)
    y, z = both.split(c, dim=-1)
    corr = (lam * torch.exp(u) - 1) * ek
    return (y + corr * v) / (z + corr)
