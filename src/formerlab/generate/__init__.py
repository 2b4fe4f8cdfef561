"""Decoding: ``generate`` with Hugging Face's arguments, logits processors, beam search, streaming,
and the termination tools of kexue.fm/archives/7500 (consistent sampling, the self-terminating LM).

- :func:`generate` — greedy, sampling (temperature, top-k, top-p, min-p), repetition penalty,
  beam search, ragged left-padded batches, streaming; ``CausalLM.generate`` delegates to it.
- :data:`LOGITS_FILTERS` — the registered filters; :class:`LogitsFilter` binds one to its
  parameters; :class:`LogitsProcessorList` chains processors (transformers' ones included).
- :class:`SelfTerminatingHead`, :class:`SelfTerminatingLogits`, :func:`sample` and the bounds of
  :mod:`formerlab.generate.termination`.
- :func:`nbce_generate`, :func:`nbce_merge`, :func:`split_long_text` — naive-Bayes context
  extension (kexue.fm/archives/9617): many contexts, one question, one batched decoding.
- :class:`DialogueCollator`, :func:`build_dialogue_prompt`, :class:`ChatBot` — multi-turn
  dialogue as a language-model sequence (kexue.fm/archives/7718).
- :func:`find_unargmaxable`, :func:`hull_distance`, :func:`normalize_classifier_` — tokens an LM
  head can never predict (kexue.fm/archives/9046), with certificates.
"""

from .dialog import (
    ChatBot,
    DialogueCollator,
    DialogueExample,
    build_dialogue_lm_example,
    build_dialogue_prompt,
    dialogue_attention_mask,
)
from .generation import GenerateOutput, generate, sequence_limit
from .nbce import (
    NBCE_POOLINGS,
    NBCEOutput,
    nbce_decode,
    nbce_generate,
    nbce_merge,
    nbce_prompts,
    split_long_text,
    truncate_logprobs,
)
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
from .unargmaxable import (
    UNARGMAXABLE_METHODS,
    ArgmaxCertificates,
    HullDistance,
    find_unargmaxable,
    hull_distance,
    normalize_classifier_,
)

__all__ = [
    "LOGITS_FILTERS",
    "NBCE_POOLINGS",
    "UNARGMAXABLE_METHODS",
    "ArgmaxCertificates",
    "ChatBot",
    "DialogueCollator",
    "DialogueExample",
    "GenerateOutput",
    "HullDistance",
    "LogitsFilter",
    "LogitsProcessorList",
    "ModelRunner",
    "NBCEOutput",
    "SelfTerminatingHead",
    "SelfTerminatingLogits",
    "SelfTerminatingOutput",
    "TextStreamer",
    "beam_search",
    "build_dialogue_lm_example",
    "build_dialogue_prompt",
    "build_logits_processor",
    "dialogue_attention_mask",
    "eos_probability_floor",
    "expected_length_bound",
    "find_unargmaxable",
    "generate",
    "greedy_termination_bound",
    "hull_distance",
    "logits_filter_options",
    "nbce_decode",
    "nbce_generate",
    "nbce_merge",
    "nbce_prompts",
    "non_termination_ratio",
    "normalize_classifier_",
    "register_logits_filter",
    "sample",
    "self_terminating_log_probs",
    "sequence_limit",
    "split_long_text",
    "truncate_logprobs",
]
