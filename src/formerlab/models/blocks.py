"""Transformer blocks: attention + FFN with Pre-Norm or Post-Norm residuals.

Pre-Norm ``x + F(Norm(x))`` keeps equal path weights; Post-Norm ``Norm(x + F(x))`` down-weights
early layers at init but is what the GAU-α extrapolation experiments used
(kexue.fm/archives/8620, 9052).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..attention.multihead import KVCache, MultiHeadAttention
from ..config import ModelConfig
from ..nn.ffn import build_ffn
from ..nn.norms import build_norm

__all__ = ["DecoderBlock"]


class DecoderBlock(nn.Module):
    """One attention + FFN block configured by :class:`~formerlab.config.ModelConfig`.

    ``window`` overrides ``config.window`` for this layer (per-layer specs, HWFA).
    """

    def __init__(
        self,
        config: ModelConfig,
        layer_idx: int = 0,
        causal: bool = True,
        window: int | None = None,
    ) -> None:
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.norm_position = c.norm_position
        self.self_attn = MultiHeadAttention(
            c.hidden_size,
            c.num_heads,
            c.kv_heads,
            c.dim_per_head,
            qk_bias=c.qk_bias,
            bias=c.attention_bias,
            normalization=c.normalization,
            attention_dropout=c.attention_dropout,
            window=window if window is not None else c.window,
            causal=causal,
        )
        self.mlp = build_ffn(c.ffn, c.hidden_size, c.ffn_size, bias=c.mlp_bias)
        self.attn_norm = build_norm(c.norm, c.hidden_size, c.norm_eps, c.norm_affine)
        self.mlp_norm = build_norm(c.norm, c.hidden_size, c.norm_eps, c.norm_affine)
        self.dropout = nn.Dropout(c.dropout)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        *,
        key_padding: Tensor | None = None,
        past: KVCache | None = None,
        use_cache: bool = False,
        return_weights: bool = False,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, KVCache | None, Tensor | None]:
        kw = dict(key_padding=key_padding, past=past, use_cache=use_cache,
                  return_weights=return_weights, mask=mask)
        if self.norm_position == "pre":
            a, cache, w = self.self_attn(self.attn_norm(x), positions, **kw)
            x = x + self.dropout(a)
            x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        else:
            a, cache, w = self.self_attn(x, positions, **kw)
            x = self.attn_norm(x + self.dropout(a))
            x = self.mlp_norm(x + self.dropout(self.mlp(x)))
        return x, cache, w
