"""Decoder-only language model: embeddings → N blocks (any token mixer) → norm → LM head.

Positions: RoPE (any registered schedule, both layouts, partial rotary), sinusoidal or learned
absolute embeddings, ALiBi, or none (NoPE). Every positional layer takes the hooks of
:mod:`formerlab.attention.core`; :meth:`CausalLM.set_position_method` sets them for the whole
model (inference-time length extension: PI, NTK, ReRoPE, log-n† ...). Layers mix tokens with any
mixer of :data:`formerlab.models.MIXERS` (``mha``, ``gau``, ``synthesizer`` ...), per layer if
``position.layer_specs`` says so.

Decoding lives one layer up, in :mod:`formerlab.generate` (the import contract puts ``generate``
above ``models``). :meth:`CausalLM.generate` is a thin delegation to
:func:`formerlab.generate.generate`: the module named in :data:`GENERATION_PLUGIN` is imported by
name on the first call, the way foreign checkpoint formats reach ``from_pretrained`` through
``formats.FORMAT_PLUGINS``. ``models`` holds no static import of ``generate``, so the layers stay
as declared, and a model used only for training never loads the decoding code.
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import Tensor, nn

from ..losses.lm import causal_lm_loss
from .config import ModelConfig
from .formats import CONFIG_NAME, WEIGHTS_NAME, CheckpointError
from .mixers import auxiliary_loss
from .outputs import CausalLMOutput
from .transformer import TransformerModel

__all__ = ["CONFIG_NAME", "GENERATION_PLUGIN", "WEIGHTS_NAME", "CausalLM", "CheckpointError",
           "causal_lm_loss"]

#: the module whose ``generate(model, input_ids, attention_mask, **kwargs)`` serves
#: :meth:`CausalLM.generate` (imported by name on first use: it sits in a higher layer)
GENERATION_PLUGIN = "formerlab.generate"


class CausalLM(TransformerModel):
    """A decoder-only Transformer language model.

    Args:
        config: A :class:`~formerlab.models.ModelConfig` (or a dict accepted by its
            ``from_dict``).

    ``forward(input_ids=None, attention_mask=None, position_ids=None, labels=None,
    past_key_values=None, use_cache=False, output_hidden_states=False,
    output_attentions=False, inputs_embeds=None, token_type_ids=None)`` returns a
    :class:`~formerlab.models.CausalLMOutput`. ``labels`` are shifted inside (as in Hugging
    Face); ``-100`` is ignored; in training mode ``loss`` also holds the mixers' auxiliary
    losses (:func:`~formerlab.models.auxiliary_loss`, e.g. Transformer-VQ's commitment loss).
    ``attention_mask`` is either Hugging Face's ``(B, past + n)``
    padding mask (1 keep, 0 pad; position ids then count real tokens, so left padding works) or
    an explicit boolean ``(B|1, H|1, n, past + n)`` mask (``True`` = may attend), e.g. a
    UniLM/prefix mask. ``past_key_values`` is the :class:`~formerlab.models.Cache` returned with
    ``use_cache=True``. ``logits_to_keep=k > 0`` computes the logits of the last ``k`` positions
    only (Hugging Face's argument: a prefill needs just the last one).
    """

    causal = True
    model_kind = "causal_lm"

    def __init__(self, config: ModelConfig | dict[str, Any]) -> None:
        super().__init__(config)

    def build_heads(self) -> None:
        c = self.config
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        if c.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight

    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        position_ids: Tensor | None = None,
        labels: Tensor | None = None,
        past_key_values: list[Any] | None = None,
        use_cache: bool = False,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        inputs_embeds: Tensor | None = None,
        token_type_ids: Tensor | None = None,
        logits_to_keep: int = 0,
    ) -> CausalLMOutput:
        if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) \
                or logits_to_keep < 0:
            raise ValueError(f"logits_to_keep must be an int >= 0 (0 = every position), got "
                             f"{logits_to_keep!r}")
        if logits_to_keep and labels is not None:
            raise ValueError("labels need the logits of every position; drop logits_to_keep "
                             f"(got {logits_to_keep}) when passing labels")
        x, cache, hidden, attns = self.run(
            input_ids, inputs_embeds, attention_mask, position_ids, token_type_ids,
            past_key_values, use_cache, output_hidden_states, output_attentions)
        logits = self.lm_head(x[:, -logits_to_keep:] if logits_to_keep else x)
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels must be (batch, seq) = {tuple(logits.shape[:2])} like "
                                 f"the input, got {tuple(labels.shape)}")
            loss = causal_lm_loss(logits, labels)
            aux = auxiliary_loss(self) if self.training else None
            if aux is not None:  # e.g. Transformer-VQ's commitment loss
                loss = loss + aux
        return CausalLMOutput(
            loss=loss,
            logits=logits,
            past_key_values=cache,
            hidden_states=tuple(hidden) if output_hidden_states else None,
            attentions=tuple(attns) if output_attentions else None,
        )

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                 **kwargs: Any) -> Any:
        """Generate continuations of ``input_ids``: :func:`formerlab.generate.generate` on this
        model, with Hugging Face's argument names (``max_new_tokens``, ``do_sample``,
        ``temperature``, ``top_k``, ``top_p``, ``min_p``, ``repetition_penalty``, ``num_beams``,
        ``length_penalty``, ``early_stopping``, ``eos_token_id``, ``pad_token_id``, ``use_cache``,
        ``streamer``, ``logits_processor``, ``generator``, ``return_dict_in_generate``,
        ``output_scores`` ...) and formerlab's termination options (``consistent``,
        ``self_terminating``).

        Returns:
            The ``(batch · num_return_sequences, prompt + new)`` token ids, or a
            :class:`formerlab.generate.GenerateOutput` with ``return_dict_in_generate=True``.
        """
        plugin = importlib.import_module(GENERATION_PLUGIN)
        return plugin.generate(self, input_ids, attention_mask, **kwargs)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head
