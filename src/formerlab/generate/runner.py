"""Stepping a causal LM one token at a time, with or without its decoding state.

:class:`ModelRunner` is what the decoding loops (greedy, sampling, beam search) see of a model:
``prefill(input_ids, attention_mask)``, ``step(tokens)`` and the layer-state protocol of
:mod:`formerlab.nn.state` — ``reorder(index)`` (beams), ``batch_select(index)`` (drop finished
rows), ``batch_repeat_interleave(r)`` (expand a prompt to its beams). With ``use_cache=True`` it
holds the model's :class:`~formerlab.models.Cache` (any mixer: KV caches, ReRoPE's raw-key cache,
recurrent states) and feeds one token per step; with ``use_cache=False`` it keeps the whole
sequence and runs the full forward every step (the reference the cached path must equal). The
padding mask grows by one column per step; ``None`` when the prompt has no padding, so the fast
unpadded kernels stay in use.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..nn.state import check_index

__all__ = ["ModelRunner"]


class ModelRunner:
    """Runs ``model`` for decoding.

    Args:
        model: A formerlab :class:`~formerlab.models.CausalLM` (anything whose forward takes
            ``input_ids, attention_mask, past_key_values, use_cache, logits_to_keep`` and returns
            ``logits`` and ``past_key_values``).
        use_cache: Keep the decoding state (else re-run the full sequence each step).
        keep_prompt_logits: Keep the logits of every prompt position after :meth:`prefill`
            (for processors that need them, e.g. the self-terminating LM).
    """

    def __init__(self, model: nn.Module, *, use_cache: bool = True,
                 keep_prompt_logits: bool = False) -> None:
        self.model, self.use_cache = model, use_cache
        self.keep_prompt_logits = keep_prompt_logits
        self.cache: Any = None
        self.ids: Tensor | None = None
        self.mask: Tensor | None = None
        self.prompt_logits: Tensor | None = None

    def _forward(self, ids: Tensor, past: Any, keep: int) -> Tensor:
        out = self.model(input_ids=ids, attention_mask=self.mask, past_key_values=past,
                         use_cache=self.use_cache, logits_to_keep=keep)
        if self.use_cache:
            self.cache = out.past_key_values
        return out.logits

    def prefill(self, input_ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        """Run the prompt; returns the next-token logits ``(B, V)``."""
        self.mask = attention_mask
        self.ids = None if self.use_cache else input_ids
        logits = self._forward(input_ids, None, 0 if self.keep_prompt_logits else 1)
        self.prompt_logits = logits if self.keep_prompt_logits else None
        return logits[:, -1]

    def step(self, tokens: Tensor) -> Tensor:
        """Feed one token per row ``(B,)``; returns the next-token logits ``(B, V)``."""
        new = tokens[:, None]
        if self.mask is not None:
            self.mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], 1)], 1)
        if self.use_cache:
            return self._forward(new, self.cache, 1)[:, -1]
        self.ids = torch.cat([self.ids, new.to(self.ids.dtype)], 1)
        return self._forward(self.ids, None, 1)[:, -1]

    # -- the layer-state protocol, for the whole decoding state --------------------------------
    def _rows(self, index: Tensor) -> None:
        if self.mask is not None:
            self.mask = self.mask.index_select(0, index.to(self.mask.device))
        if self.ids is not None:
            self.ids = self.ids.index_select(0, index.to(self.ids.device))

    def reorder(self, index: Tensor) -> None:
        """Keep rows ``index`` in that order (beam search)."""
        batch = self.mask.shape[0] if self.mask is not None else None
        if batch is not None:
            index = check_index(index, batch, "beam index")
        if self.cache is not None:
            self.cache.reorder(index)
        self._rows(index)

    def batch_select(self, keep: Tensor) -> None:
        """Keep the rows where the boolean ``keep`` is true (or the integer rows ``keep``)."""
        index = keep.nonzero().flatten() if keep.dtype == torch.bool else keep
        if self.cache is not None:
            self.cache.batch_select(index)
        self._rows(index)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every row ``repeats`` times (a prompt expanded to its beams)."""
        if self.cache is not None:
            self.cache.batch_repeat_interleave(repeats)
        if self.mask is not None:
            self.mask = self.mask.repeat_interleave(repeats, 0)
        if self.ids is not None:
            self.ids = self.ids.repeat_interleave(repeats, 0)
