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

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.norms import RMSNorm
from ..position.rope import RotaryEmbedding, apply_rope
from .masks import build_mask
from .normalize import NORMALIZERS, attention_normalize, softmax_plus_factor

__all__ = ["GAULayer", "GatedAttentionUnit", "ScaleOffset"]

_ACTIVATIONS = {"silu": F.silu, "swish": F.silu, "relu": F.relu, "gelu": F.gelu,
                "identity": lambda x: x}


class ScaleOffset(nn.Module):
    """``x ⊙ γ (+ β)`` per feature (bert4keras ``ScaleOffset``): γ starts at 1, β at 0."""

    def __init__(self, dim: int, offset: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if offset else None

    def forward(self, x: Tensor) -> Tensor:
        y = x * self.weight
        return y if self.bias is None else y + self.bias


def padding_mask_to_bool(attention_mask: Tensor | None, n: int) -> Tensor | None:
    """HF ``(B, n)`` 1/0 padding mask → bool ``(B, 1, n)`` over keys (``None`` if absent)."""
    if attention_mask is None:
        return None
    if attention_mask.dim() != 2 or attention_mask.shape[-1] != n:
        raise ValueError(
            f"attention_mask must be (batch, {n}) with 1 = keep, 0 = pad, got "
            f"{tuple(attention_mask.shape)}"
        )
    return attention_mask.bool()[:, None, :]


class GatedAttentionUnit(nn.Module):
    """One GAU over ``(batch, seq, hidden)`` inputs.

    Args:
        hidden_size: ``d``.
        expansion: ``e`` (width of u and v).
        key_size: ``s`` (width of the shared z, i.e. q and k).
        activation: ``silu`` (swish), ``relu``, ``gelu`` or ``identity``.
        use_bias: Dense biases and q/k offsets (FLASH); GAU-α has none.
        normalization: Attention normaliser (:data:`formerlab.attention.NORMALIZERS`).
        rope: Rotate q and k (RoPE, base ``rope_theta``).
        rope_layout: ``"interleaved"`` (GAU-α / bert4keras) or ``"half"``.
        attention_dropout: Dropout on ``A`` during training.
        base_len, min_len: Options of ``softmax_plus``.
        causal: Causal (decoder) unit.
        normalization_options: Extra options of the normaliser (e.g. ``{"n0": 512}``).

    ``forward(x, attention_mask=None, return_attn=False, *, mask=None, positions=None)``:
    ``attention_mask`` is HF's ``(B, n)`` padding mask; ``mask`` an explicit bool
    ``(B|1, n, n)`` or ``(B|1, 1, n, n)`` mask (combined with causality and padding).
    Returns the ``(B, n, d)`` output, and ``A`` ``(B, n, n)`` if ``return_attn``.
    """

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
        rope_theta: float = 10000.0,
        normalization_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        for name, v in (("hidden_size", hidden_size), ("expansion", expansion),
                        ("key_size", key_size)):
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        NORMALIZERS.canonical(normalization)  # ValueError listing the valid names
        if rope and key_size % 2:
            raise ValueError(f"RoPE needs an even key_size, got {key_size}")
        if not 0.0 <= attention_dropout < 1.0:
            raise ValueError(f"attention_dropout must be in [0, 1), got {attention_dropout}")
        self.hidden_size, self.expansion, self.key_size = hidden_size, expansion, key_size
        self.activation = activation
        self.normalization = normalization
        self.causal = causal
        self.attention_dropout = attention_dropout
        opts = dict(normalization_options or {})
        if NORMALIZERS.canonical(normalization) == "softmax_plus":
            opts.setdefault("base_len", base_len)
            opts.setdefault("min_len", min_len)
        self.normalization_options = opts
        self.i_dense = nn.Linear(hidden_size, 2 * expansion + key_size, bias=use_bias)
        self.o_dense = nn.Linear(expansion, hidden_size, bias=use_bias)
        self.q_scaleoffset = ScaleOffset(key_size, offset=use_bias)
        self.k_scaleoffset = ScaleOffset(key_size, offset=use_bias)
        self.rotary = (RotaryEmbedding(key_size, base=rope_theta, layout=rope_layout)
                       if rope else None)

    @classmethod
    def flash(cls, hidden_size: int, expansion: int | None = None, key_size: int = 128,
              **kw: Any) -> GatedAttentionUnit:
        """FLASH's flavour: ``relu²(QKᵀ/√s)/n`` attention, biases and q/k offsets, e = 2d."""
        kw.setdefault("normalization", "relu2_n")
        kw.setdefault("use_bias", True)
        kw.setdefault("attention_dropout", 0.0)
        return cls(hidden_size, expansion or 2 * hidden_size, key_size, **kw)

    def build_mask(self, n: int, attention_mask: Tensor | None, mask: Tensor | None,
                   device: torch.device) -> Tensor | None:
        """The combined bool ``(B|1, n, n)`` mask (causal ∧ explicit ∧ key padding) or ``None``."""
        out = build_mask("causal", n, device=device)[0] if self.causal else None
        if mask is not None:
            if mask.dtype != torch.bool:
                raise TypeError(f"mask must be a bool tensor (True = attend), got {mask.dtype}")
            if mask.dim() == 4:
                if mask.shape[1] != 1:
                    raise ValueError(f"a GAU has one head; mask must be (B|1, 1, n, n), got "
                                     f"{tuple(mask.shape)}")
                mask = mask[:, 0]
            if mask.dim() != 3 or mask.shape[-2:] != (n, n):
                raise ValueError(f"mask must be (B|1, {n}, {n}), got {tuple(mask.shape)}")
            out = mask if out is None else out & mask
        pad = padding_mask_to_bool(attention_mask, n)
        if pad is not None:
            out = pad if out is None else out & pad
        return out

    def forward(self, x: Tensor, attention_mask: Tensor | None = None, return_attn: bool = False,
                *, mask: Tensor | None = None,
                positions: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(
                f"x must be (batch, seq, {self.hidden_size}), got {tuple(x.shape)}"
            )
        n = x.shape[1]
        h = _ACTIVATIONS[self.activation](self.i_dense(x))
        u, v, z = torch.split(h, [self.expansion, self.expansion, self.key_size], dim=-1)
        q, k = self.q_scaleoffset(z), self.k_scaleoffset(z)
        if self.rotary is not None:
            pos = torch.arange(n, device=x.device) if positions is None else positions
            cos, sin = self.rotary(pos)  # (n, s) or (B, n, s): no head axis in a GAU
            layout = self.rotary.layout
            q, k = apply_rope(q, cos, sin, layout), apply_rope(k, cos, sin, layout)
        pure_causal = self.causal and attention_mask is None and mask is None
        if not return_attn and pure_causal and self._sdpa_ok(None):
            return self.o_dense(u * self._sdpa(q, k, v, None, n, causal=True))
        full_mask = self.build_mask(n, attention_mask, mask, x.device)
        if not return_attn and self._sdpa_ok(full_mask):
            return self.o_dense(u * self._sdpa(q, k, v, full_mask, n))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.key_size)
        attn = attention_normalize(scores, full_mask, self.normalization,
                                   **self.normalization_options)
        a = F.dropout(attn, self.attention_dropout, self.training) if self.attention_dropout else attn
        out = self.o_dense(u * torch.matmul(a.to(v.dtype), v))
        return (out, attn) if return_attn else out

    # -- fast path: softmax / softmax_plus through SDPA ------------------------------------------
    def _sdpa_ok(self, mask: Tensor | None) -> bool:
        method = NORMALIZERS.canonical(self.normalization)
        if method not in ("softmax", "softmax_plus"):
            return False
        extra = set(self.normalization_options) - {"base_len", "min_len"}
        # a row without any visible key would give NaN in SDPA (zeros in the explicit path)
        return not extra and (mask is None or bool(mask.any(-1).all()))

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, n: int, *,
              causal: bool = False) -> Tensor:
        """``A v`` without materialising ``A``: softmax_plus's per-row factor
        ``log_{base_len}(l_i)`` multiplies the logits of row ``i``, i.e. scales ``q_i``."""
        if NORMALIZERS.canonical(self.normalization) == "softmax_plus":
            opts = self.normalization_options
            if causal:
                counts = torch.arange(1, n + 1, device=q.device)[None, :, None]
            elif mask is None:
                counts = torch.full((1, n, 1), n, device=q.device)
            else:
                counts = mask.sum(-1, keepdim=True)
            factor = softmax_plus_factor(counts, opts.get("base_len", 512), opts.get("min_len"))
            q = q * factor.to(device=q.device, dtype=q.dtype)
        out = F.scaled_dot_product_attention(
            q[:, None], k[:, None], v[:, None],
            attn_mask=None if mask is None else mask[:, None], is_causal=causal,
            scale=1.0 / math.sqrt(self.key_size),
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        return out[:, 0]

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden_size}, e={self.expansion}, s={self.key_size}, "
                f"normalization={self.normalization!r}, causal={self.causal}")


class GAULayer(nn.Module):
    """A GAU with its residual: Post-Norm ``Norm(x + drop(GAU(x)))`` (GAU-α, parameter-free
    RMS norm) or Pre-Norm ``x + drop(GAU(Norm(x)))``.

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

    def forward(self, x: Tensor, attention_mask: Tensor | None = None, return_attn: bool = False,
                *, mask: Tensor | None = None,
                positions: Tensor | None = None) -> Tensor | tuple[Tensor, Tensor]:
        inp = self.norm(x) if self.norm_position == "pre" else x
        res = self.gau(inp, attention_mask, return_attn, mask=mask, positions=positions)
        o, attn = res if return_attn else (res, None)
        x = x + self.dropout(o)
        if self.norm_position == "post":
            x = self.norm(x)
        return (x, attn) if return_attn else x
