"""Transformer blocks: a token mixer + an optional FFN with Pre-Norm or Post-Norm residuals.

Pre-Norm ``x + F(Norm(x))`` keeps equal path weights; Post-Norm ``Norm(x + F(x))`` down-weights
early layers at init but is what the GAU-α extrapolation experiments used
(kexue.fm/archives/8620, 9052). The mixer comes from :data:`formerlab.models.MIXERS`; GAU blocks
have no FFN (``ffn="none"``: the unit gates inside itself).
"""

from __future__ import annotations

from torch import Tensor, nn

from ..nn.ffn import build_ffn
from ..nn.norms import build_norm
from ..nn.state import LayerState
from ..position.layers import LayerSpec
from .config import ModelConfig
from .mixers import MIXERS, build_mixer

__all__ = ["Block", "DecoderBlock"]


class Block(nn.Module):
    """One mixer + FFN block configured by :class:`~formerlab.models.ModelConfig`.

    Args:
        config: The model config.
        layer_idx: Index of the block in the stack.
        causal: Causal (decoder) or bidirectional (encoder) mixing.
        spec: The layer's :class:`~formerlab.position.LayerSpec` (window, mixer ...); default
            the config's uniform spec.
    """

    def __init__(self, config: ModelConfig, layer_idx: int = 0, causal: bool = True,
                 spec: LayerSpec | None = None) -> None:
        super().__init__()
        c = config
        spec = spec if spec is not None else c.layer_specs()[layer_idx]
        self.layer_idx = layer_idx
        self.norm_position = c.norm_position
        name, options = c.layer_mixer(spec)
        self.mixer_name = MIXERS.canonical(name)
        self.mixer = build_mixer(name, c, spec, options, causal)
        self.attn_norm = build_norm(c.norm, c.hidden_size, c.norm_eps, c.norm_affine)
        self.mlp = None if c.ffn == "none" else build_ffn(c.ffn, c.hidden_size, c.ffn_size,
                                                           bias=c.mlp_bias)
        self.mlp_norm = (None if self.mlp is None
                         else build_norm(c.norm, c.hidden_size, c.norm_eps, c.norm_affine))
        self.dropout = nn.Dropout(c.dropout)

    @property
    def positional(self) -> bool:
        return MIXERS.get(self.mixer_name).positional

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        *,
        key_padding: Tensor | None = None,
        mask: Tensor | None = None,
        state: LayerState | None = None,
        use_cache: bool = False,
        return_weights: bool = False,
    ) -> tuple[Tensor, LayerState | None, Tensor | None]:
        kw = dict(key_padding=key_padding, mask=mask, state=state, use_cache=use_cache,
                  return_weights=return_weights)
        if self.norm_position == "pre":
            a, state, w = self.mixer(self.attn_norm(x), positions, **kw)
            x = x + self.dropout(a)
            if self.mlp is not None:
                x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        else:
            a, state, w = self.mixer(x, positions, **kw)
            x = self.attn_norm(x + self.dropout(a))
            if self.mlp is not None:
                x = self.mlp_norm(x + self.dropout(self.mlp(x)))
        return x, state, w


#: the first release's name of :class:`Block`
DecoderBlock = Block
