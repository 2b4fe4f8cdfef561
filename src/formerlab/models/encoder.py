"""Bidirectional encoders built from formerlab's blocks: BERT, GAU-α, any mixer.

``Encoder`` = word (+ absolute position, + token-type) embeddings → embedding norm → dropout →
N bidirectional blocks. With :func:`formerlab.models.bert` it is BERT (Post-Norm LayerNorm,
exact-GELU MLP, biases everywhere; Devlin et al., arXiv 1810.04805); with
:func:`formerlab.models.gau_alpha` it is the GAU-α encoder (kexue.fm/archives/9052).
On the Post-/Pre-Norm trade-off and BERT's initialisation see kexue.fm/archives/8620.
``Encoder.from_pretrained(path)`` reads Hugging Face BERT checkpoints (``config.json`` +
``model.safetensors`` or ``pytorch_model.bin``) through the ``hf`` extra; the result matches
``transformers.BertModel`` to float tolerance (tested on all-MiniLM-L6-v2).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from .config import ModelConfig
from .outputs import BaseModelOutput
from .transformer import TransformerModel, word_embeddings

__all__ = ["Encoder", "word_embeddings"]


class Encoder(TransformerModel):
    """A bidirectional encoder.

    Args:
        config: A :class:`~formerlab.models.ModelConfig` (use :func:`formerlab.models.bert` for
            BERT's settings or :func:`formerlab.models.gau_alpha` for GAU-α's).
        type_vocab_size: Overrides ``config.type_vocab_size`` (token-type / segment table).
        pad_token_id: Overrides ``config.pad_token_id``.

    ``forward(input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
    output_hidden_states=False, output_attentions=False, inputs_embeds=None)`` returns a
    :class:`~formerlab.models.BaseModelOutput`; ``attention_mask`` is HF's ``(B, n)`` 1/0 mask
    or an explicit boolean ``(B|1, H|1, n, n)`` mask (UniLM, prefix masks).
    """

    causal = False
    model_kind = "encoder"

    def __init__(self, config: ModelConfig | dict[str, Any], type_vocab_size: int | None = None,
                 pad_token_id: int | None = None) -> None:
        config = ModelConfig.coerce(config)
        changes = {k: v for k, v in (("type_vocab_size", type_vocab_size),
                                      ("pad_token_id", pad_token_id)) if v is not None}
        super().__init__(config.replace(**changes) if changes else config)

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
        x, _, hidden, attns = self.run(
            input_ids, inputs_embeds, attention_mask, position_ids, token_type_ids, None, False,
            output_hidden_states, output_attentions)
        return BaseModelOutput(
            last_hidden_state=x,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
        )

    def mlm_logits(self, hidden: Tensor) -> Tensor:
        """Token logits through the tied input embedding (BERT-style / RoFormerV2 MLM head)."""
        return hidden @ self.embed_tokens.weight.T
