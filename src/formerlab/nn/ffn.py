"""Feed-forward blocks: SwiGLU (Shazeer, arXiv 2002.05202) and the classic GELU/ReLU MLP."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry

__all__ = ["FFNS", "MLP", "SwiGLU", "build_ffn"]

#: name -> ``fn(dim, hidden, bias) -> module``
FFNS: Registry = Registry("ffn")


class SwiGLU(nn.Module):
    """``down(silu(gate(x)) ⊙ up(x))`` (Llama naming: ``gate_proj``, ``up_proj``, ``down_proj``)."""

    def __init__(self, dim: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(dim, hidden, bias=bias)
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MLP(nn.Module):
    """``down(act(up(x)))`` with ``act`` = exact GELU or ReLU (BERT naming: ``up_proj``, ``down_proj``)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True, activation: str = "gelu") -> None:
        super().__init__()
        if activation not in ("gelu", "relu"):
            raise ValueError(f"activation must be 'gelu' or 'relu', got {activation!r}")
        self.activation = activation
        self.up_proj = nn.Linear(dim, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        h = self.up_proj(x)
        h = F.gelu(h) if self.activation == "gelu" else F.relu(h)
        return self.down_proj(h)


FFNS.add("swiglu", lambda dim, hidden, bias: SwiGLU(dim, hidden, bias))
FFNS.add("gelu", lambda dim, hidden, bias: MLP(dim, hidden, bias, activation="gelu"))
FFNS.add("relu", lambda dim, hidden, bias: MLP(dim, hidden, bias, activation="relu"))


def build_ffn(kind: str, dim: int, hidden: int, bias: bool = False) -> nn.Module:
    """An FFN of :data:`FFNS` (``"swiglu"``, ``"gelu"``, ``"relu"``)."""
    return FFNS.get(kind)(dim, hidden, bias)
