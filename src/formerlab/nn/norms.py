"""Normalisation layers: LayerNorm, RMSNorm (optionally parameter-free), ScaleOffset.

RMSNorm ``y = x / sqrt(mean(x²) + ε) · γ`` drops LayerNorm's centring and offset (T5); GAU-α uses
it with no parameters at all (kexue.fm/archives/9052). Statistics are computed in float32.
See kexue.fm/archives/8620 for the Pre-/Post-Norm discussion.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..registry import Registry

__all__ = ["NORMS", "RMSNorm", "build_norm"]

#: name -> ``fn(dim, eps, affine) -> module``
NORMS: Registry = Registry("norm")


class RMSNorm(nn.Module):
    """Root-mean-square norm over the last dimension.

    Args:
        dim: Feature size.
        eps: Added to the mean square.
        affine: Learn a per-feature gain ``γ`` (``False`` = parameter-free, GAU-α style).
    """

    def __init__(self, dim: int, eps: float = 1e-6, affine: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        y = y.to(x.dtype)
        return y if self.weight is None else y * self.weight

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, affine={self.weight is not None}"


NORMS.add("rmsnorm", lambda dim, eps, affine: RMSNorm(dim, eps, affine))
NORMS.add("layernorm", lambda dim, eps, affine: nn.LayerNorm(dim, eps=eps, elementwise_affine=affine))


def build_norm(kind: str, dim: int, eps: float = 1e-6, affine: bool = True) -> nn.Module:
    """A norm of :data:`NORMS` (``"rmsnorm"``, ``"layernorm"``; ``affine=False`` drops the
    learned parameters)."""
    return NORMS.get(kind)(dim, eps, affine)
