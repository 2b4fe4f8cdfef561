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


class Encoder(nn.Module):
    """A BERT-style encoder.

    Args:
        config: A :class:`~formerlab.config.ModelConfig` (use :func:`formerlab.models.presets.bert`
            for BERT's settings: layernorm, post-norm, gelu MLP, biases, learned positions).
        type_vocab_size: Size of the token-type (segment) table (0 = none).
        pad_token_id: Padding id of the word embedding.

    ``forward(input_ids, attention_mask=None, token_type_ids=None, position_ids=None,
    output_hidden_states=False, output_attentions=False)`` returns a
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

    def embed(self, input_ids: Tensor, token_type_ids: Tensor | None = None,
              position_ids: Tensor | None = None) -> Tensor:
        """Summed, normalised embeddings ``(B, n, hidden)`` (before dropout)."""
        n = input_ids.shape[1]
        x = self.embed_tokens(input_ids)
        if self.embed_positions is not None:
            if position_ids is None:
                position_ids = torch.arange(n, device=input_ids.device)
            if int(position_ids.max()) >= self.config.max_position_embeddings:
                raise ValueError(
                    f"positions up to {int(position_ids.max())} exceed the table of "
                    f"{self.config.max_position_embeddings} learned positions"
                )
            x = x + self.embed_positions(position_ids)
        if self.embed_token_types is not None:
            if token_type_ids is None:
                token_type_ids = torch.zeros_like(input_ids)
            x = x + self.embed_token_types(token_type_ids)
        return self.embed_norm(x)

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> BaseModelOutput:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, seq), got shape {tuple(input_ids.shape)}")
        b, n = input_ids.shape
        key_padding = None
        if attention_mask is not None:
            if attention_mask.shape != (b, n):
                raise ValueError(
                    f"attention_mask must be (batch, seq) = {(b, n)}, got {tuple(attention_mask.shape)}"
                )
            key_padding = attention_mask.bool()
            if bool(key_padding.all()):
                key_padding = None
        x = self.dropout(self.embed(input_ids, token_type_ids, position_ids))
        positions = torch.arange(n, device=input_ids.device)
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
