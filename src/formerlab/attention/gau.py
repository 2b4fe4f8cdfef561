"""Gated Attention Unit (GAU): FLASH's single-head gated token mixer and the GAU-α variant.

FLASH (Hua et al., arXiv 2202.10447; kexue.fm/archives/8934) fuses attention and the gated FFN::

    h = act(x W_i)                       W_i ∈ R^{d×(2e+s)}
    u, v, z = split(h, [e, e, s])
    q = z ⊙ γ_q (+ β_q),  k = z ⊙ γ_k (+ β_k)      per-dimension scale-offset on a shared z
    q, k = RoPE(q), RoPE(k)
    A = normalize(q kᵀ / √s, mask)
    o = (u ⊙ (A v)) W_o

FLASH uses ``relu²(·)/n`` attention (:meth:`GatedAttentionUnit.flash`, ``relu2_n``); **GAU-α**
(kexue.fm/archives/9052) uses no biases or offsets, ``softmax_plus`` (entropy-invariant softmax,
kexue.fm/archives/8823), interleaved RoPE with base 10000, attention dropout 0.1 and a Post-Norm
residual with the parameter-free RMS norm: ``x ← RMSNorm0(x + dropout(GAU(x)))``
(:class:`GAULayer`). Initialisation: :func:`formerlab.nn.init.gau_alpha_init_`.

Parameters of one unit: ``d(2e+s) + e·d + 2s`` (``use_bias`` adds the dense biases
``2e+s+d`` and the offsets ``2s``). FLASH's paper uses separate U/V/Z projections; a fused
``W_i`` split into three is the same function.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.norms import RMSNorm
from ..nn.state import LayerState
from ..position.rope import RotaryEmbedding
from .core import LayerPosition, attend
from .multihead import _PositionHooks
from .normalize import NORMALIZERS

__all__ = ["GAU_ACTIVATIONS", "GAULayer", "GatedAttentionUnit", "ScaleOffset", "gau_parameter_count"]

GAU_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "relu": F.relu, "gelu": F.gelu,
                "identity": lambda x: x}


def gau_parameter_count(hidden_size: int, expansion: int, key_size: int,
                        use_bias: bool = False) -> int:
    """Parameters of one GAU: ``d(2e+s) + e·d + 2s`` (+ ``2e+s+d`` biases and ``2s`` offsets)."""
    d, e, s = hidden_size, expansion, key_size
    n = d * (2 * e + s) + e * d + 2 * s
    return n + (2 * e + s + d + 2 * s if use_bias else 0)


class ScaleOffset(nn.Module):
    """``x ⊙ γ (+ β)`` per feature (bert4keras ``ScaleOffset``): γ starts at 1, β at 0."""

    def __init__(self, dim: int, offset: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if offset else None

    def forward(self, x: Tensor) -> Tensor:
        y = x * self.weight
        return y if self.bias is None else y + self.bias


class GatedAttentionUnit(_PositionHooks, nn.Module):
    """One GAU (see the module docstring) over ``(batch, seq, hidden)``.

    Args:
        hidden_size: ``d``.
        expansion: ``e``, width of ``u`` and ``v`` (1536 = 2d in GAU-α).
        key_size: ``s``, width of the shared ``z`` (128).
        activation: ``silu`` (swish), ``relu``, ``gelu`` or ``identity``.
        use_bias: Biases on the dense layers and offsets ``β`` on q/k (FLASH); GAU-α has none.
        normalization: An attention normaliser (``softmax_plus`` in GAU-α, ``relu2_n`` in FLASH).
        rope: Rotate q/k with a RoPE of its own (``rope_layout``, ``rope_theta``); a model
            replaces it through :meth:`set_position`.
        attention_dropout: Dropout on the attention matrix.
        base_len, min_len: ``softmax_plus`` options (kexue.fm/archives/8823).
        causal: Causal (decoder) or bidirectional attention.
        window: Sliding-window size (``None`` = full).
        normalization_options: Extra normaliser options.
        split_values: Run softmax attention through the fused kernel with the ``e``-wide values
            cut into ``s``-wide chunks served as heads (exact; memory O(n) instead of O(n²), at
            twice the score FLOPs): see :func:`formerlab.attention.kernel.scaled_dot_product`.

    ``forward(x, positions=None, *, key_padding=None, mask=None, state=None, use_cache=False,
    return_weights=False)`` follows the token-mixer protocol of
    :class:`~formerlab.attention.MultiHeadAttention` and returns ``(out, state, weights)`` with
    the attention matrix ``(B, 1, n, past + n)`` (one head) when asked.
    """

    owner = "gau"

    def __init__(
        self,
        hidden_size: int,
        expansion: int = 1536,
        key_size: int = 128,
        activation: str = "silu",
        use_bias: bool = False,
        normalization: str = "softmax_plus",
        rope: bool = True,
        rope_layout: str = "interleaved",
        attention_dropout: float = 0.1,
        base_len: int = 512,
        min_len: int | None = None,
        *,
        causal: bool = False,
        window: int | None = None,
        rope_theta: float = 10000.0,
        normalization_options: dict[str, Any] | None = None,
        split_values: bool = False,
    ) -> None:
        super().__init__()
        for name, v in (("hidden_size", hidden_size), ("expansion", expansion),
                        ("key_size", key_size)):
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if activation not in GAU_ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(GAU_ACTIVATIONS)}, got {activation!r}")
        normalization = NORMALIZERS.canonical(normalization)  # ValueError listing the valid names
        if rope and key_size % 2:
            raise ValueError(f"RoPE needs an even key_size, got {key_size}")
        if not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {attention_dropout}")
        self.hidden_size, self.expansion, self.key_size = hidden_size, expansion, key_size
        self.head_dim = key_size  # what a model's rotary embedding must rotate
        self.activation = activation
        self.normalization = normalization
        self.causal, self.window = causal, window
        self.split_values = split_values
        self.attention_dropout = attention_dropout
        opts = dict(normalization_options or {})
        if normalization == "softmax_plus":
            opts.setdefault("base_len", base_len)
            opts.setdefault("min_len", min_len)
        self.normalization_options = opts
        self.i_dense = nn.Linear(hidden_size, 2 * expansion + key_size, bias=use_bias)
        self.o_dense = nn.Linear(expansion, hidden_size, bias=use_bias)
        self.q_scaleoffset = ScaleOffset(key_size, offset=use_bias)
        self.k_scaleoffset = ScaleOffset(key_size, offset=use_bias)
        rotary = RotaryEmbedding(key_size, base=rope_theta, layout=rope_layout) if rope else None
        self.set_position(LayerPosition(rotary=rotary))

    @classmethod
    def flash(cls, hidden_size: int, expansion: int | None = None, key_size: int = 128,
              **kw: Any) -> GatedAttentionUnit:
        """FLASH's flavour: ``relu²(QKᵀ/√s)/n`` attention, biases and q/k offsets, e = 2d."""
        kw.setdefault("normalization", "relu2_n")
        kw.setdefault("use_bias", True)
        kw.setdefault("attention_dropout", 0.0)
        return cls(hidden_size, expansion or 2 * hidden_size, key_size, **kw)

    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        *,
        key_padding: Tensor | None = None,
        mask: Tensor | None = None,
        state: LayerState | None = None,
        use_cache: bool = False,
        return_weights: bool = False,
    ) -> tuple[Tensor, LayerState | None, Tensor | None]:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be (batch, seq, {self.hidden_size}), got {tuple(x.shape)}")
        n = x.shape[1]
        if positions is None:
            past = 0 if state is None else state.length
            positions = torch.arange(past, past + n, device=x.device)
        if mask is not None and mask.dim() == 3:
            mask = mask[:, None]
        if mask is not None and mask.dim() == 4 and mask.shape[1] != 1:
            raise ValueError(f"a GAU has one head; mask must be (B|1, 1, n, nk), got {tuple(mask.shape)}")
        h = GAU_ACTIVATIONS[self.activation](self.i_dense(x))
        u, v, z = torch.split(h, [self.expansion, self.expansion, self.key_size], dim=-1)
        q, k = self.q_scaleoffset(z)[:, None], self.k_scaleoffset(z)[:, None]  # one head
        a, state, weights = attend(
            q, k, v[:, None], positions, pos=self.position, owner=self.owner, causal=self.causal,
            window=self.window, key_padding=key_padding, mask=mask, state=state,
            use_cache=use_cache, normalization=self.normalization,
            options=self.normalization_options,
            dropout_p=self.attention_dropout if self.training else 0.0,
            return_weights=return_weights, training=self.training,
            split_values=self.split_values,
        )
        return self.o_dense(u * a[:, 0]), state, weights

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden_size}, e={self.expansion}, s={self.key_size}, "
                f"normalization={self.normalization!r}, causal={self.causal}")


class GAULayer(nn.Module):
    """A GAU with its residual: Post-Norm ``Norm(x + drop(GAU(x)))`` (GAU-α, parameter-free
    RMS norm) or Pre-Norm ``x + drop(GAU(Norm(x)))``; ``forward(x, key_padding=None)`` returns
    the ``(B, n, d)`` output (models build the same thing from blocks).

    Args:
        hidden_size: ``d``.
        dropout: Hidden (residual) dropout.
        norm_position: ``"post"`` (GAU-α) or ``"pre"``.
        norm_eps: ε of the RMS norm (1e-12 in GAU-α).
        norm_affine: Learn a gain (``False`` = GAU-α's parameter-free norm).
        **gau_kwargs: Passed to :class:`GatedAttentionUnit`.
    """

    def __init__(self, hidden_size: int, *, dropout: float = 0.1, norm_position: str = "post",
                 norm_eps: float = 1e-12, norm_affine: bool = False, **gau_kwargs: Any) -> None:
        super().__init__()
        if norm_position not in ("pre", "post"):
            raise ValueError(f"norm_position must be 'pre' or 'post', got {norm_position!r}")
        self.norm_position = norm_position
        self.gau = GatedAttentionUnit(hidden_size, **gau_kwargs)
        self.norm = RMSNorm(hidden_size, eps=norm_eps, affine=norm_affine)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, key_padding: Tensor | None = None) -> Tensor:
        inp = self.norm(x) if self.norm_position == "pre" else x
        o = self.gau(inp, key_padding=key_padding)[0]
        x = x + self.dropout(o)
        return self.norm(x) if self.norm_position == "post" else x
