"""BERT-family bidirectional encoder built from formerlab's own blocks.

``Encoder`` = word + learned position + token-type embeddings → LayerNorm → dropout →
N × ``DecoderBlock(causal=False)`` with Post-Norm LayerNorm, exact-GELU MLP and biases everywhere
(Devlin et al., arXiv 1810.04805). On the Post-/Pre-Norm trade-off and BERT's initialisation see
kexue.fm/archives/8620. ``Encoder.from_pretrained(path)`` reads Hugging Face BERT checkpoints
(``config.json`` + ``model.safetensors`` or ``pytorch_model.bin``) through
:mod:`formerlab.interop.weights`; the result matches ``transformers.BertModel`` to float
tolerance (tested on all-MiniLM-L6-v2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import ModelConfig
from ..nn.init import normal_init_
from .blocks import DecoderBlock
from .outputs import BaseModelOutput

__all__ = ["Encoder"]


def _word_embeddings(
    table: nn.Embedding, input_ids: Tensor | None, inputs_embeds: Tensor | None, hidden: int
) -> Tensor:
    """``table(input_ids)`` or the given ``inputs_embeds`` (exactly one of the two)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("give exactly one of input_ids and inputs_embeds")
    if inputs_embeds is not None:
        if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != hidden:
            raise ValueError(
                f"inputs_embeds must be (batch, seq, {hidden}), got {tuple(inputs_embeds.shape)}"
            )
        return inputs_embeds
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
    if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if input_ids.numel() and not torch.compiler.is_compiling():
        lo, hi = input_ids.aminmax()
        if int(lo) < 0 or int(hi) >= table.num_embeddings:
            bad = int(lo) if int(lo) < 0 else int(hi)
            raise ValueError(
                f"input_ids holds token id {bad}, outside the vocabulary [0, {table.num_embeddings})"
            )
    return table(input_ids)


class Encoder(nn.Module):
    """A BERT-style encoder.

    Args:
        config: A :class:`~formerlab.config.ModelConfig` (use :func:`formerlab.models.presets.bert`
            for BERT's settings: layernorm, post-norm, gelu MLP, biases, learned positions).
        type_vocab_size: Size of the token-type (segment) table (0 = none).
        pad_token_id: Padding id of the word embedding.

    ``forward(input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
    output_hidden_states=False, output_attentions=False, inputs_embeds=None)`` returns a
    :class:`~formerlab.models.BaseModelOutput`; ``attention_mask`` is HF's ``(B, n)`` 1/0 mask.
    """

    def __init__(self, config: ModelConfig | dict[str, Any], type_vocab_size: int = 2,
                 pad_token_id: int | None = 0) -> None:
        super().__init__()
        config = ModelConfig.coerce(config)
        if config.position not in ("learned", "nope"):
            raise ValueError(
                f"Encoder uses learned absolute positions (or none); got position={config.position!r}"
            )
        self.config = c = config
        self.type_vocab_size = type_vocab_size
        self.pad_token_id = pad_token_id
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, padding_idx=pad_token_id)
        self.embed_positions = (nn.Embedding(c.max_position_embeddings, c.hidden_size)
                                if c.position == "learned" else None)
        self.embed_token_types = (nn.Embedding(type_vocab_size, c.hidden_size)
                                  if type_vocab_size > 0 else None)
        self.embed_norm = (nn.LayerNorm(c.hidden_size, eps=c.norm_eps) if c.norm == "layernorm"
                           else nn.Identity())
        self.dropout = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(DecoderBlock(c, i, causal=False) for i in range(c.num_layers))
        normal_init_(self, c.initializer_range)

    def embed(self, input_ids: Tensor | None = None, token_type_ids: Tensor | None = None,
              position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None) -> Tensor:
        """Summed, normalised embeddings ``(B, n, hidden)`` (before dropout).

        ``inputs_embeds`` ``(B, n, hidden)`` replaces the word embeddings of ``input_ids`` (as in
        Hugging Face's ``BertEmbeddings``); position and token-type embeddings are still added.
        """
        x = _word_embeddings(self.embed_tokens, input_ids, inputs_embeds, self.config.hidden_size)
        b, n = x.shape[:2]
        if self.embed_positions is not None:
            if position_ids is None:
                position_ids = torch.arange(n, device=x.device)
            if int(position_ids.max()) >= self.config.max_position_embeddings:
                raise ValueError(
                    f"positions up to {int(position_ids.max())} exceed the table of "
                    f"{self.config.max_position_embeddings} learned positions"
                )
            x = x + self.embed_positions(position_ids)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros(b, n, dtype=torch.long, device=x.device)
            x = x + self.embed_token_types(token_type_ids)
        return self.embed_norm(x)

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        inputs_embeds: Tensor | None = None,
    ) -> BaseModelOutput:
        x = self.embed(input_ids, token_type_ids, position_ids, inputs_embeds)
        b, n = x.shape[:2]
        key_padding = None
        if attention_mask is not None:
            if attention_mask.shape != (b, n):
                raise ValueError(
                    f"attention_mask must be (batch, seq) = {(b, n)}, got {tuple(attention_mask.shape)}"
                )
            key_padding = attention_mask.bool()
            if bool(key_padding.all()):
                key_padding = None
        x = self.dropout(x)
        positions = torch.arange(n, device=x.device)
        hidden = [x] if output_hidden_states else []
        attns = []
        for layer in self.layers:
            x, _, w = layer(x, positions, key_padding=key_padding,
                            return_weights=output_attentions)
            if output_hidden_states:
                hidden.append(x)
            if output_attentions:
                attns.append(w)
        return BaseModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
        )

    def gradient_checkpointing_enable(self) -> None:
        """Recompute every block in backward (:mod:`formerlab.nn.recompute`, non-reentrant)."""
        from ..nn.recompute import enable_recompute

        enable_recompute(self)

    def gradient_checkpointing_disable(self) -> None:
        from ..nn.recompute import disable_recompute

        disable_recompute(self)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def load_weights(self, tensors: dict[str, Tensor], source: str = "weights") -> None:
        """Load tensors strictly: missing or unexpected names raise ``ValueError`` listing them."""
        from .lm import CheckpointError

        own = self.state_dict()
        missing = sorted(set(own) - set(tensors))
        unexpected = sorted(set(tensors) - set(own))
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not match the encoder: missing {missing}, unexpected {unexpected}"
            )
        bad = {k: (tuple(v.shape), tuple(own[k].shape)) for k, v in tensors.items()
               if own[k].shape != v.shape}
        if bad:
            raise CheckpointError(f"{source}: shape mismatch (file, model): {bad}")
        self.load_state_dict(tensors, strict=True)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> Encoder:
        """Load a Hugging Face BERT-family folder (``config.json`` + weights)."""
        from ..interop.weights import load_encoder_weights

        config, tensors, extra = load_encoder_weights(path)
        model = cls(config, **extra)
        model.load_weights(tensors, source=str(path))
        model.eval()
        if dtype is not None:
            model = model.to(dtype)
        return model.to(device) if device is not None else model
