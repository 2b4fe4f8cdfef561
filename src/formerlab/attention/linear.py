"""Linear attention baseline (Katharopoulos et al., arXiv 2006.16236).

With a positive feature map ``φ(x) = elu(x) + 1``::

    bidirectional: O = φ(Q) (φ(K)ᵀ V) / (φ(Q) (φ(K)ᵀ 1))                  O(n·d_φ·d_v)
    causal:        S_i = S_{i−1} + φ(k_i) v_iᵀ,  z_i = z_{i−1} + φ(k_i)
                   o_i = φ(q_i)ᵀ S_i / (φ(q_i)ᵀ z_i)

Both equal the quadratic form ``normalize_rows(φ(Q)φ(K)ᵀ ⊙ M) V``; the bidirectional attention
matrix ``φ(Q)φ(K)ᵀ`` has rank ≤ d_φ — the "low-rank" side of the decoder-only argument
(kexue.fm/archives/9529) and the kernelised baseline of Transformer-VQ. :class:`LinearAttentionState`
decodes one token at a time with O(d_φ·d_v) memory.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Registry

__all__ = [
    "FEATURE_MAPS",
    "LinearAttentionState",
    "linear_attention",
    "linear_attention_matrix",
]

#: name -> φ
FEATURE_MAPS: Registry[Callable[[Tensor], Tensor]] = Registry("feature map")
FEATURE_MAPS.add("elu1", lambda x: F.elu(x) + 1.0)
FEATURE_MAPS.add("relu", F.relu)
FEATURE_MAPS.add("softplus", F.softplus)
FEATURE_MAPS.add("identity", lambda x: x)


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() < 2 or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1] \
            or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(
            "expected q (..., nq, d), k (..., nk, d), v (..., nk, dv) with equal leading dims, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def linear_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                     feature_map: str = "elu1", eps: float = 0.0) -> Tensor:
    """Kernelised attention ``(…, n, d_v)`` in O(n) time and memory (causal by cumulative sums).

    Args:
        q, k: ``(…, n, d)`` (causal needs ``nq == nk``).
        v: ``(…, n, d_v)``.
        causal: Query ``i`` sees keys ``j ≤ i``.
        feature_map: A name of :data:`FEATURE_MAPS`.
        eps: Added to the denominator.
    """
    _check(q, k, v)
    phi = FEATURE_MAPS.get(feature_map)
    fq, fk = phi(q), phi(k)
    if not causal:
        kv = torch.matmul(fk.transpose(-1, -2), v)  # (…, d, dv)
        z = fk.sum(-2)  # (…, d)
        num = torch.matmul(fq, kv)
        den = (fq * z[..., None, :]).sum(-1, keepdim=True)
        return num / (den + eps)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal linear attention needs nq == nk, got {q.shape[-2]}, {k.shape[-2]}")
    s = torch.cumsum(fk[..., :, None] * v[..., None, :], dim=-3)  # (…, n, d, dv)
    z = torch.cumsum(fk, dim=-2)  # (…, n, d)
    num = torch.einsum("...nd,...nde->...ne", fq, s)
    den = (fq * z).sum(-1, keepdim=True)
    return num / (den + eps)


def linear_attention_matrix(q: Tensor, k: Tensor, causal: bool = False,
                            feature_map: str = "elu1", eps: float = 0.0) -> Tensor:
    """The explicit ``(…, nq, nk)`` matrix ``normalize_rows(φ(Q)φ(K)ᵀ ⊙ M)`` (the oracle)."""
    phi = FEATURE_MAPS.get(feature_map)
    a = torch.matmul(phi(q), phi(k).transpose(-1, -2))
    if causal:
        n = a.shape[-1]
        a = a * torch.ones(n, n, dtype=torch.bool, device=a.device).tril()
    return a / (a.sum(-1, keepdim=True) + eps)


@dataclasses.dataclass
class LinearAttentionState:
    """Recurrent state ``S`` ``(…, d_φ, d_v)`` and ``z`` ``(…, d_φ)`` for step decoding.

    ``state.step(q, k, v)`` takes one token ``(…, d)``/``(…, d_v)`` and returns its output; the
    outputs equal the causal parallel form.
    """

    feature_map: str = "elu1"
    eps: float = 0.0
    s: Tensor | None = None
    z: Tensor | None = None
    length: int = 0

    def step(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
            raise ValueError(f"step takes q, k (…, d) and v (…, d_v), got {tuple(q.shape)}, "
                             f"{tuple(k.shape)}, {tuple(v.shape)}")
        phi = FEATURE_MAPS.get(self.feature_map)
        fq, fk = phi(q), phi(k)
        outer = fk[..., :, None] * v[..., None, :]
        self.s = outer if self.s is None else self.s + outer
        self.z = fk if self.z is None else self.z + fk
        self.length += 1
        num = torch.einsum("...d,...de->...e", fq, self.s)
        den = (fq * self.z).sum(-1, keepdim=True)
        return num / (den + self.eps)
