"""Decoding: ``generate`` with Hugging Face's arguments, logits processors, beam search, streaming,
and the termination tools of kexue.fm/archives/7500 (consistent sampling, the self-terminating LM).

- :func:`generate` — greedy, sampling (temperature, top-k, top-p, min-p), repetition penalty,
  beam search, ragged left-padded batches, streaming; ``CausalLM.generate`` delegates to it.
- :data:`LOGITS_FILTERS` — the registered filters; :class:`LogitsFilter` binds one to its
  parameters; :class:`LogitsProcessorList` chains processors (transformers' ones included).
- :class:`SelfTerminatingHead`, :class:`SelfTerminatingLogits`, :func:`sample` and the bounds of
  :mod:`formerlab.generate.termination`.
"""

from .generation import GenerateOutput, generate, sequence_limit
from .processors import (
    LOGITS_FILTERS,
    LogitsFilter,
    LogitsProcessorList,
    build_logits_processor,
    logits_filter_options,
    register_logits_filter,
)
from .runner import ModelRunner
from .search import beam_search
from .streaming import TextStreamer
from .termination import (
    SelfTerminatingHead,
    SelfTerminatingLogits,
    SelfTerminatingOutput,
    eos_probability_floor,
    expected_length_bound,
    greedy_termination_bound,
    non_termination_ratio,
    sample,
    self_terminating_log_probs,
)

__all__ = [
    "LOGITS_FILTERS",
    "GenerateOutput",
    "LogitsFilter",
    "LogitsProcessorList",
    "ModelRunner",
    "SelfTerminatingHead",
    "SelfTerminatingLogits",
    "SelfTerminatingOutput",
    "TextStreamer",
    "beam_search",
    "build_logits_processor",
    "eos_probability_floor",
    "expected_length_bound",
    "generate",
    "greedy_termination_bound",
    "logits_filter_options",
    "non_termination_ratio",
    "register_logits_filter",
    "sample",
    "self_terminating_log_probs",
    "sequence_limit",
]
