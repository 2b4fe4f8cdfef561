"""Absolute position embeddings: sinusoidal (fixed or with trainable frequencies) and learned.

Sinusoidal PE (Vaswani et al., arXiv 1706.03762; derivation kexue.fm/archives/8231):
``p_{k,2i} = sin(k θ_i)``, ``p_{k,2i+1} = cos(k θ_i)``, ``θ_i = base^(-2i/d)``, so that
``<p_m, p_n> = Σ_i cos((m-n) θ_i)`` depends only on ``m - n`` and decays with distance.

Post 8231 derives this form from a second-order expansion with ``H = I`` (and with a diagonal ``H``
whose paired entries are equal, the absolute term ``cos((m+n)θ_i)`` cancels). The normalised
profile ``Σ_i cos(rθ_i)/(d/2)`` approximates ``∫₀¹ cos(r·base^(-t)) dt``, which tends to 0: long-range
decay. :func:`pe_inner_product_profile` returns the profile; Su suggests base 1000 for faster decay
or trainable θ initialised at ``base^(-2i/d)`` (``SinusoidalPositionEmbedding(trainable_theta=True)``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "LearnedPositionEmbedding",
    "SinusoidalPositionEmbedding",
    "pe_inner_product_profile",
    "sinusoidal_position_embedding",
    "sinusoidal_theta",
]


def sinusoidal_theta(dim: int, base: float = 10000.0) -> Tensor:
    """``θ_i = base^(-2i/dim)`` for ``i = 0 … dim/2-1`` in float64."""
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even int, got {dim}")
    if not base > 0:
        raise ValueError(f"base must be > 0, got {base}")
    return base ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)


def pe_inner_product_profile(d: int, base: float = 10000.0, max_r: int = 1024) -> Tensor:
    """``<p_m, p_{m+r}> = Σ_{i<d/2} cos(r θ_i)`` for ``r = 0 … max_r`` (float64, length ``max_r + 1``).

    Reference values for ``d = 128``, base 10000 (post 8231): 64 at r = 0, 62.09 at r = 1,
    45.72 at r = 8, 30.52 at r = 64.
    """
    if isinstance(max_r, bool) or not isinstance(max_r, int) or max_r < 0:
        raise ValueError(f"max_r must be a non-negative int, got {max_r!r}")
    r = torch.arange(max_r + 1, dtype=torch.float64)
    return torch.cos(r[:, None] * sinusoidal_theta(d, base)).sum(-1)


def sinusoidal_position_embedding(
    positions: Tensor | int,
    dim: int,
    base: float = 10000.0,
    layout: str = "interleave",
    dtype: torch.dtype = torch.float32,
    theta: Tensor | None = None,
) -> Tensor:
    """Sinusoidal embeddings of ``positions`` (a tensor, or ``n`` for ``0 … n-1``): ``(..., dim)``.

    ``layout="interleave"`` gives ``[sin θ_0, cos θ_0, sin θ_1, …]``; ``"concat"`` gives
    ``[sin … | cos …]``. Both have the same Gram matrix. ``theta`` (``(dim/2,)``) overrides the
    frequencies ``base^(-2i/dim)``; gradients flow into it (trainable θ, post 8231).
    """
    if dim <= 0 or dim % 2:
        raise ValueError(f"dim must be a positive even int, got {dim}")
    if layout not in ("interleave", "concat"):
        raise ValueError(f"layout must be 'interleave' or 'concat', got {layout!r}")
    if isinstance(positions, int):
        positions = torch.arange(positions)
    if theta is None:
        theta = sinusoidal_theta(dim, base)
    elif theta.shape != (dim // 2,):
        raise ValueError(f"theta must have shape ({dim // 2},), got {tuple(theta.shape)}")
    work = torch.float64 if theta.dtype == torch.float64 else torch.float32
    ang = positions.to(device=theta.device, dtype=work)[..., None] * theta.to(work)
    if layout == "interleave":
        out = torch.stack([ang.sin(), ang.cos()], dim=-1).flatten(-2)
    else:
        out = torch.cat([ang.sin(), ang.cos()], dim=-1)
    return out.to(dtype)


class SinusoidalPositionEmbedding(nn.Module):
    """``forward(positions) -> (..., dim)`` sinusoidal embeddings.

    With ``trainable_theta=True`` the frequencies are an ``nn.Parameter`` (float32) initialised at
    ``base^(-2i/dim)`` (Su's suggestion in post 8231); otherwise nothing is learnable.
    """

    def __init__(
        self, dim: int, base: float = 10000.0, layout: str = "interleave", trainable_theta: bool = False
    ) -> None:
        super().__init__()
        self.dim, self.base, self.layout = dim, base, layout
        theta = sinusoidal_theta(dim, base).to(torch.float32)
        self.theta: Tensor
        if trainable_theta:
            self.theta = nn.Parameter(theta)
        else:
            self.register_buffer("theta", theta, persistent=False)
        self.trainable_theta = trainable_theta

    def forward(self, positions: Tensor) -> Tensor:
        return sinusoidal_position_embedding(
            positions, self.dim, self.base, self.layout, dtype=self.theta.dtype, theta=self.theta
        )


class LearnedPositionEmbedding(nn.Embedding):
    """A trainable table of ``max_positions`` vectors; positions beyond it raise ``ValueError``."""

    def __init__(self, max_positions: int, dim: int) -> None:
        super().__init__(max_positions, dim)

    def forward(self, positions: Tensor) -> Tensor:  # type: ignore[override]
        if positions.numel() and not torch.compiler.is_compiling() \
                and int(positions.max()) >= self.num_embeddings:
            raise ValueError(
                f"learned position embeddings cover positions < {self.num_embeddings}, got "
                f"position {int(positions.max())}; use a relative scheme to extrapolate"
            )
        return super().forward(positions)
