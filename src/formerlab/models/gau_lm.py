"""Models built from Gated Attention Units: the GAU-α encoder and a GAU causal LM.

GAU-α (kexue.fm/archives/9052) is RoFormerV2 with every "Attention + FFN" pair replaced by two
GAU layers: token (+ segment) embeddings → parameter-free RMS norm → dropout →
24 × [GAU → dropout → add → RMSNorm0]; no biases anywhere; softmax_plus attention; truncated-normal
init ``1.13684723/√fan_in · L^(−1/3)`` (:func:`formerlab.nn.init.gau_alpha_init_`), which lets it
train without warmup (kexue.fm/archives/8978). :class:`GAUCausalLM` is the same stack with causal
units and a tied LM head, for the GAU-vs-MHA comparisons of the lab.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.gau import GAULayer
from ..config import Config, _check_choice
from ..nn.init import gau_alpha_init_
from ..nn.norms import RMSNorm
from ..nn.recompute import disable_recompute, enable_recompute
from .lm import causal_lm_loss
from .outputs import BaseModelOutput, CausalLMOutput

__all__ = ["GAUAlphaConfig", "GAUAlphaEncoder", "GAUCausalLM", "GAUConfig", "gau_parameter_count"]


@dataclasses.dataclass
class GAUConfig(Config):
    """A stack of GAU layers; the defaults are GAU-α's (``chinese_GAU-alpha-char_L-24_H-768``).

    Args:
        vocab_size, hidden_size, num_layers: Sizes (12000, 768, 24).
        expansion: ``e`` (1536). key_size: ``s`` (128).
        activation: ``silu`` (swish).
        use_bias: Dense biases and q/k offsets (``False`` in GAU-α).
        normalization: Attention normaliser (``softmax_plus``); base_len/min_len its options.
        rope, rope_layout, rope_theta: RoPE on q/k (interleaved, 10000).
        max_position_embeddings: Training length (512).
        type_vocab_size: Segment table (2; 0 = none).
        norm_position: ``post`` (GAU-α) or ``pre``; norm_eps 1e-12; norm_affine ``False`` =
            parameter-free RMS norm.
        dropout, attention_dropout: 0.1 / 0.1.
        tie_word_embeddings: LM/MLM head shares the token embedding.
        init: ``gau_alpha`` (truncated normal, depth exponent ``init_order``) or ``normal``
            (std ``initializer_range``).
        checkpoint: Recompute every layer in backward (:mod:`formerlab.nn.recompute`).
    """

    vocab_size: int = 12000
    hidden_size: int = 768
    num_layers: int = 24
    expansion: int = 1536
    key_size: int = 128
    activation: str = "silu"
    use_bias: bool = False
    normalization: str = "softmax_plus"
    base_len: int = 512
    min_len: int | None = None
    rope: bool = True
    rope_layout: str = "interleaved"
    rope_theta: float = 10000.0
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    norm_position: str = "post"
    norm_eps: float = 1e-12
    norm_affine: bool = False
    dropout: float = 0.1
    attention_dropout: float = 0.1
    tie_word_embeddings: bool = True
    init: str = "gau_alpha"
    init_order: int = 3
    initializer_range: float = 0.02
    checkpoint: bool = False

    def validate(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "expansion", "key_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        _check_choice("norm_position", self.norm_position, ("pre", "post"))
        _check_choice("rope_layout", self.rope_layout, ("half", "interleaved"))
        _check_choice("init", self.init, ("gau_alpha", "normal"))
        from ..attention.normalize import NORMALIZERS

        NORMALIZERS.canonical(self.normalization)
        for name in ("dropout", "attention_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")


GAUAlphaConfig = GAUConfig


def gau_parameter_count(hidden_size: int, expansion: int, key_size: int,
                        use_bias: bool = False) -> int:
    """Parameters of one GAU: ``d(2e+s) + e·d + 2s`` (+ ``2e+s+d`` biases and ``2s`` offsets)."""
    d, e, s = hidden_size, expansion, key_size
    n = d * (2 * e + s) + e * d + 2 * s
    return n + (2 * e + s + d + 2 * s if use_bias else 0)


def _layers(c: GAUConfig, causal: bool) -> nn.ModuleList:
    return nn.ModuleList(
        GAULayer(c.hidden_size, dropout=c.dropout, norm_position=c.norm_position,
                 norm_eps=c.norm_eps, norm_affine=c.norm_affine, expansion=c.expansion,
                 key_size=c.key_size, activation=c.activation, use_bias=c.use_bias,
                 normalization=c.normalization, rope=c.rope, rope_layout=c.rope_layout,
                 attention_dropout=c.attention_dropout, base_len=c.base_len, min_len=c.min_len,
                 causal=causal, rope_theta=c.rope_theta)
        for _ in range(c.num_layers)
    )


class _GAUStack(nn.Module):
    causal = False

    def __init__(self, config: GAUConfig | dict[str, Any]) -> None:
        super().__init__()
        config = GAUConfig.coerce(config)
        self.config = c = config
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
        self.embed_token_types = (nn.Embedding(c.type_vocab_size, c.hidden_size)
                                  if c.type_vocab_size > 0 else None)
        # Post-Norm stacks normalise the embeddings (GAU-α); Pre-Norm stacks normalise at the end
        self.embed_norm = (RMSNorm(c.hidden_size, c.norm_eps, affine=c.norm_affine)
                           if c.norm_position == "post" else nn.Identity())
        self.dropout = nn.Dropout(c.dropout)
        self.layers = _layers(c, self.causal)
        self.norm = (RMSNorm(c.hidden_size, c.norm_eps, affine=c.norm_affine)
                     if c.norm_position == "pre" else nn.Identity())
        self.reset_parameters()
        if c.checkpoint:
            self.gradient_checkpointing_enable()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        c = self.config
        if c.init == "gau_alpha":
            gau_alpha_init_(self, c.num_layers, c.init_order, generator=generator)
            return
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                with torch.no_grad():
                    m.weight.normal_(0.0, c.initializer_range, generator=generator)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    def gradient_checkpointing_enable(self) -> None:
        """Recompute every GAU layer in backward (``torch.utils.checkpoint``, non-reentrant)."""
        enable_recompute(self)

    def gradient_checkpointing_disable(self) -> None:
        disable_recompute(self)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in {id(p): p for p in self.parameters()}.values())

    def _run(self, input_ids: Tensor, attention_mask: Tensor | None, token_type_ids: Tensor | None,
             mask: Tensor | None, position_ids: Tensor | None, output_hidden_states: bool,
             output_attentions: bool) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        x = self.embed_tokens(input_ids)
        if self.embed_token_types is not None:
            tt = torch.zeros_like(input_ids) if token_type_ids is None else token_type_ids
            x = x + self.embed_token_types(tt)
        x = self.dropout(self.embed_norm(x))
        if attention_mask is not None and bool(attention_mask.bool().all()):
            attention_mask = None
        hidden = [x] if output_hidden_states else []
        attns: list[Tensor] = []
        for layer in self.layers:
            if output_attentions:
                x, a = layer(x, attention_mask, True, mask=mask, positions=position_ids)
                attns.append(a)
            else:
                x = layer(x, attention_mask, mask=mask, positions=position_ids)
            if output_hidden_states:
                hidden.append(x)
        x = self.norm(x)
        if output_hidden_states:
            hidden[-1] = x
        return x, hidden, attns


class GAUAlphaEncoder(_GAUStack):
    """The GAU-α encoder (bidirectional GAU stack); ``mlm_logits`` is the tied MLM head.

    ``forward(input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
    output_attentions=False, mask=None)`` returns a :class:`~formerlab.models.BaseModelOutput`.
    """

    causal = False

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False, mask: Tensor | None = None,
                position_ids: Tensor | None = None) -> BaseModelOutput:
        x, hidden, attns = self._run(input_ids, attention_mask, token_type_ids, mask,
                                     position_ids, output_hidden_states, output_attentions)
        return BaseModelOutput(last_hidden_state=x,
                               hidden_states=tuple(hidden) if output_hidden_states else None,
                               attentions=tuple(attns) if output_attentions else None)

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Token logits from hidden states through the tied embedding (RoFormerV2's MLM head)."""
        return hidden @ self.embed_tokens.weight.T


class GAUCausalLM(_GAUStack):
    """A decoder-only LM of causal GAU layers with a tied (or untied) head.

    ``forward(input_ids, attention_mask=None, labels=None, output_hidden_states=False,
    output_attentions=False, mask=None)`` returns a :class:`~formerlab.models.CausalLMOutput`
    (labels shifted inside, ``-100`` ignored). ``mask`` is an explicit bool ``(B|1, 1, n, n)``
    mask combined with causality (e.g. none needed for GPT; UniLM masks need ``causal=False``
    units, see :class:`GAUAlphaEncoder`).
    """

    causal = True

    def __init__(self, config: GAUConfig | dict[str, Any]) -> None:
        super().__init__(config)
        c = self.config
        self.lm_head = None if c.tie_word_embeddings else nn.Linear(c.hidden_size, c.vocab_size,
                                                                    bias=False)
        if self.lm_head is not None:
            gau_alpha_init_(self.lm_head, c.num_layers, c.init_order) if c.init == "gau_alpha" \
                else nn.init.normal_(self.lm_head.weight, std=c.initializer_range)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, output_hidden_states: bool = False,
                output_attentions: bool = False, mask: Tensor | None = None,
                position_ids: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> CausalLMOutput:
        x, hidden, attns = self._run(input_ids, attention_mask, token_type_ids, mask,
                                     position_ids, output_hidden_states, output_attentions)
        logits = x @ self.embed_tokens.weight.T if self.lm_head is None else self.lm_head(x)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return CausalLMOutput(loss=loss, logits=logits,
                              hidden_states=tuple(hidden) if output_hidden_states else None,
                              attentions=tuple(attns) if output_attentions else None)
