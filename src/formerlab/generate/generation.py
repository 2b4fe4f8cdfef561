"""``generate``: decoding with Hugging Face's arguments, on any formerlab causal LM.

:func:`generate` validates the call, builds the processor chain
(:func:`~formerlab.generate.processors.build_logits_processor`) and runs greedy search, ancestral
sampling (:mod:`~formerlab.generate.sampling`) or beam search (:mod:`~formerlab.generate.search`)
through a :class:`~formerlab.generate.runner.ModelRunner`. ``CausalLM.generate`` delegates here.

Conventions (those of transformers' ``generate``): ``input_ids`` ``(batch, n)`` left-padded with
``attention_mask`` (1 keep, 0 pad); the result holds prompt + new tokens, finished rows padded with
``pad_token_id`` (default: the model config's, else the first ``eos_token_id``); sampling options
apply only with ``do_sample=True``; ``top_k=0`` and ``top_p=1`` mean no truncation. formerlab's
additions are the termination options of kexue.fm/archives/7500: ``consistent=True`` keeps
``<eos>`` in every truncated sampling support, ``self_terminating=ε`` decodes the model as a
self-terminating LM (arXiv 2002.02492). Everything runs under ``torch.no_grad()``; sampling draws
only from ``generator`` (a fresh unseeded one if ``None``), never from the global RNG.

Bad input raises ``ValueError`` naming the argument and its value — including prompts (plus
``max_new_tokens``) longer than learned absolute positions or a synthesizer's matrices cover, since
no position method extends those.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from ..attention.synthesizer import SynthesizerAttention
from ..models.outputs import ModelOutput
from ..position.absolute import LearnedPositionEmbedding
from .processors import build_logits_processor
from .runner import ModelRunner
from .sampling import decode
from .search import beam_search
from .streaming import as_streamer
from .termination import SelfTerminatingLogits

__all__ = ["GenerateOutput", "generate", "sequence_limit"]


@dataclasses.dataclass
class GenerateOutput(ModelOutput):
    """What ``generate(..., return_dict_in_generate=True)`` returns (transformers' names).

    ``sequences`` ``(B·r, n + new)``; ``scores`` (``output_scores``): per step the processed
    scores ``(B·r·K, V)``; ``logits`` (``output_logits``): per step the raw logits;
    ``sequences_scores`` and ``beam_indices`` (beam search); ``past_key_values`` the final
    decoding state (``use_cache=True``).
    """

    sequences: Tensor | None = None
    scores: tuple[Tensor, ...] | None = None
    logits: tuple[Tensor, ...] | None = None
    sequences_scores: Tensor | None = None
    beam_indices: Tensor | None = None
    past_key_values: Any = None


# -- validation -------------------------------------------------------------------------------
def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
    return value


def _float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _ids(name: str, value: Any, vocab: int) -> list[int] | None:
    if value is None:
        return None
    ids = [value] if isinstance(value, int) and not isinstance(value, bool) else value
    if isinstance(ids, Tensor):
        ids = ids.flatten().tolist()
    try:
        ids = list(ids)
    except TypeError:
        raise ValueError(f"{name} must be a token id or a list of token ids, got {value!r}") from None
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < vocab
                      for i in ids):
        raise ValueError(f"{name} must be token ids in [0, {vocab}), got {value!r}")
    return ids


def _prompt(input_ids: Any, attention_mask: Any) -> tuple[Tensor, Tensor | None]:
    if not isinstance(input_ids, Tensor):
        raise TypeError(f"input_ids must be a tensor of token ids, got {type(input_ids).__name__}")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
        raise ValueError(f"input_ids must be (batch, seq) with seq >= 1, got shape "
                         f"{tuple(input_ids.shape)} (add a batch axis with input_ids[None])")
    if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise TypeError(f"input_ids must hold integer token ids, got dtype {input_ids.dtype}")
    if attention_mask is None:
        return input_ids.long(), None
    if not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
        shape = tuple(attention_mask.shape) if isinstance(attention_mask, Tensor) else attention_mask
        raise ValueError(f"attention_mask must be a tensor of the shape of input_ids "
                         f"{tuple(input_ids.shape)}, got {shape!r}")
    mask = attention_mask.long()
    if bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("attention_mask must hold 0 (padding) and 1 (token), got values "
                         f"{sorted(set(mask.unique().tolist()))}")
    if bool((mask[:, 1:] < mask[:, :-1]).any()):
        raise ValueError("attention_mask must be left-padded (zeros before the tokens of each row): "
                         "a causal LM continues the last position, so right padding would "
                         "continue a pad token")
    if bool((mask.sum(-1) == 0).any()):
        raise ValueError("attention_mask has a row without tokens (all zeros)")
    return input_ids.long(), (None if bool(mask.all()) else mask)


def sequence_limit(model: nn.Module) -> tuple[int, str] | None:
    """The longest sequence ``model`` can take and why, or ``None`` if unlimited.

    Learned absolute positions cover ``max_position_embeddings`` positions (counted over real
    tokens), a synthesizer's matrices ``max_len`` sequence slots (padding included); no position
    method extends either.
    """
    limits: list[tuple[int, str]] = []
    for m in model.modules():
        if isinstance(m, LearnedPositionEmbedding):
            limits.append((m.num_embeddings, f"learned position embeddings cover "
                                             f"{m.num_embeddings} positions"))
        elif isinstance(m, SynthesizerAttention):
            limits.append((m.max_len, f"the synthesizer's matrices cover max_len={m.max_len} "
                                      "positions"))
    return min(limits) if limits else None


def _check_length(model: nn.Module, ids: Tensor, mask: Tensor | None, max_new_tokens: int) -> None:
    limit = sequence_limit(model)
    if limit is None:
        return
    n, why = limit
    padded = any(isinstance(m, SynthesizerAttention) for m in model.modules())
    width = ids.shape[1] if padded or mask is None else int(mask.sum(-1).max())
    if width > n:
        raise ValueError(f"input_ids has {width} tokens but {why}, and no position method extends "
                         "them: shorten the prompt")
    if width + max_new_tokens > n:
        raise ValueError(f"max_new_tokens={max_new_tokens} after a prompt of {width} tokens exceeds "
                         f"the {n} positions the model allows ({why}); use max_new_tokens <= "
                         f"{n - width}")


def _resolve_length(max_new_tokens: Any, max_length: Any, prompt: int) -> int:
    if max_new_tokens is not None and max_length is not None:
        raise ValueError(f"give max_new_tokens or max_length, not both (got {max_new_tokens!r} and "
                         f"{max_length!r})")
    if max_length is not None:
        _int("max_length", max_length, 1)
        if max_length < prompt:
            raise ValueError(f"max_length={max_length} is shorter than the prompt ({prompt} "
                             "tokens); use max_new_tokens")
        return max_length - prompt
    if max_new_tokens is None:
        return 20
    return _int("max_new_tokens", max_new_tokens, 0)


def _check_sampling(do_sample: bool, temperature: Any, top_k: Any, top_p: Any, min_p: Any,
                    repetition_penalty: Any) -> None:
    if not isinstance(do_sample, bool):
        raise ValueError(f"do_sample must be True or False, got {do_sample!r}")
    if temperature is not None:
        t = _float("temperature", temperature)
        if do_sample and not t > 0:
            raise ValueError(f"temperature must be > 0 when sampling (use do_sample=False for greedy "
                             f"decoding), got temperature={temperature!r}")
    if top_k is not None:
        _int("top_k", top_k, 0)
    if top_p is not None and not 0.0 < _float("top_p", top_p) <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got top_p={top_p!r}")
    if min_p is not None and not 0.0 <= _float("min_p", min_p) <= 1.0:
        raise ValueError(f"min_p must lie in [0, 1], got min_p={min_p!r}")
    if repetition_penalty is not None and not _float("repetition_penalty", repetition_penalty) > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = none), got "
                         f"repetition_penalty={repetition_penalty!r}")


def _check_beams(num_beams: Any, num_return_sequences: Any, do_sample: bool, early_stopping: Any,
                 length_penalty: Any, streamer: Any) -> None:
    _int("num_beams", num_beams, 1)
    _int("num_return_sequences", num_return_sequences, 1)
    _float("length_penalty", length_penalty)
    if early_stopping not in (True, False, "never"):
        raise ValueError(f"early_stopping must be True, False or 'never', got {early_stopping!r}")
    if num_beams > 1 and num_return_sequences > num_beams:
        raise ValueError(f"num_return_sequences={num_return_sequences} exceeds "
                         f"num_beams={num_beams}")
    if num_beams == 1 and not do_sample and num_return_sequences > 1:
        raise ValueError(f"greedy search gives one sequence per prompt: num_return_sequences="
                         f"{num_return_sequences} needs do_sample=True or num_beams > 1")
    if num_beams > 1 and streamer is not None:
        raise ValueError(f"streamer cannot be used with beam search (num_beams={num_beams}): the "
                         "best sequence is known only at the end")


def _vocab_size(model: nn.Module) -> int:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if vocab is None:
        raise TypeError(f"generate needs a formerlab causal LM with config.vocab_size, got "
                        f"{type(model).__name__}")
    return int(vocab)


# -- the entry point ----------------------------------------------------------------------------
def generate(
    model: nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    max_new_tokens: int | None = None,
    max_length: int | None = None,
    min_new_tokens: int | None = None,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    num_beams: int = 1,
    num_return_sequences: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    consistent: bool = False,
    self_terminating: float | None = None,
    use_cache: bool = True,
    streamer: Any = None,
    logits_processor: Any = None,
    generator: torch.Generator | None = None,
    return_dict_in_generate: bool = False,
    output_scores: bool = False,
    output_logits: bool = False,
) -> Tensor | GenerateOutput:
    """Continue ``input_ids`` with ``model`` (greedy, sampling or beam search).

    Args:
        model: A formerlab :class:`~formerlab.models.CausalLM` (any mixer, any position method).
        input_ids: ``(batch, n)`` prompt ids, left-padded in a ragged batch.
        attention_mask: ``(batch, n)``, 1 for tokens, 0 for (left) padding.
        max_new_tokens: New tokens at most (default 20); ``max_length`` instead bounds prompt +
            new.
        min_new_tokens: Hold ``<eos>`` back until this many new tokens exist.
        do_sample: Sample from the processed distribution (else greedy / beam search).
        temperature, top_k, top_p, min_p: Sampling filters (``do_sample=True`` only).
        repetition_penalty: θ > 1 penalises tokens already present (prompt included).
        num_beams: Beam width (1 = greedy search or sampling).
        num_return_sequences: Sequences per prompt (best beams, or independent samples).
        length_penalty: Exponent of the length normalisation of finished beams.
        early_stopping: Beam stopping rule: ``True``, ``False`` (heuristic) or ``"never"``.
        eos_token_id: Id or ids that end a sequence.
        pad_token_id: Written after a sequence's end; required when the prompt is padded
            (default: the model config's ``pad_token_id``).
        consistent: Keep ``<eos>`` in the top-k / top-p / min-p support (kexue.fm/archives/7500).
        self_terminating: ε: decode as a self-terminating LM (the ``<eos>`` logit gives
            ``β = (1 − ε)·sigmoid(·)``, counted from the start of the prompt).
        use_cache: Decode with the model's state (``False`` re-runs the sequence each step; the
            tokens are the same).
        streamer: ``put``/``end`` object (transformers' ``TextStreamer``) or ``fn(token_ids)``.
        logits_processor: Extra processors ``(input_ids, scores) -> scores`` (formerlab's or
            transformers'), applied after the penalties and before the sampling filters.
        generator: ``torch.Generator`` for sampling.
        return_dict_in_generate: Return a :class:`GenerateOutput`.
        output_scores, output_logits: Record the processed scores / raw logits of every step.

    Returns:
        ``(batch · num_return_sequences, n + new)`` token ids, or a :class:`GenerateOutput`.

    Raises:
        ValueError: A bad value (named, with the value given) or a prompt the model cannot take.
        TypeError: A wrong type (a non-tensor prompt, a non-callable processor or streamer).
    """
    vocab = _vocab_size(model)
    ids, mask = _prompt(input_ids, attention_mask)
    if bool((ids < 0).any()) or bool((ids >= vocab).any()):
        raise ValueError(f"input_ids must lie in [0, {vocab}) (the vocabulary), got values in "
                         f"[{int(ids.min())}, {int(ids.max())}]")
    n_new = _resolve_length(max_new_tokens, max_length, ids.shape[1])
    _check_sampling(do_sample, temperature, top_k, top_p, min_p, repetition_penalty)
    _check_beams(num_beams, num_return_sequences, do_sample, early_stopping, length_penalty,
                 streamer)
    if min_new_tokens is not None:
        _int("min_new_tokens", min_new_tokens, 0)
    eos = _ids("eos_token_id", eos_token_id, vocab)
    if pad_token_id is None:
        pad_token_id = getattr(model.config, "pad_token_id", None)
    elif _ids("pad_token_id", pad_token_id, vocab) is None or not isinstance(pad_token_id, int):
        raise ValueError(f"pad_token_id must be one token id, got {pad_token_id!r}")
    if mask is not None and pad_token_id is None:
        raise ValueError("the prompt is padded (attention_mask has zeros) but pad_token_id is None: "
                         "give pad_token_id (the id the padding uses)")
    if self_terminating is not None and not eos:
        raise ValueError(f"self_terminating={self_terminating!r} needs eos_token_id")
    if not isinstance(consistent, bool):
        raise ValueError(f"consistent must be True or False, got {consistent!r}")
    if consistent and do_sample and not eos:
        raise ValueError("consistent=True keeps <eos> in the sampling support: give eos_token_id")
    _check_length(model, ids, mask, n_new)
    fill = pad_token_id if pad_token_id is not None else (eos[0] if eos else 0)
    streamer = as_streamer(streamer)
    if generator is None and do_sample:
        generator = torch.Generator(device=ids.device)
        generator.seed()  # fresh entropy: the global RNG stays untouched

    st = None if self_terminating is None else SelfTerminatingLogits(eos[0], self_terminating)
    if num_beams == 1 and num_return_sequences > 1:  # independent samples per prompt
        ids = ids.repeat_interleave(num_return_sequences, 0)
        mask = None if mask is None else mask.repeat_interleave(num_return_sequences, 0)
    chain = build_logits_processor(
        do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
        repetition_penalty=repetition_penalty, min_new_tokens=min_new_tokens,
        prompt_length=ids.shape[1], eos_token_id=eos, consistent=consistent,
        num_beams=num_beams, logits_processor=logits_processor)
    keep_prompt = st is not None or chain.wants_prompt_logits
    runner = ModelRunner(model, use_cache=bool(use_cache), keep_prompt_logits=keep_prompt)
    record = dict(output_scores=bool(output_scores and return_dict_in_generate),
                  output_logits=bool(output_logits and return_dict_in_generate))
    with torch.no_grad():
        if n_new == 0:
            result = None
        elif num_beams > 1:
            result = beam_search(
                runner, ids, mask, num_beams=num_beams, max_new_tokens=n_new, chain=chain, st=st,
                eos_token_id=eos, fill_token_id=fill, length_penalty=float(length_penalty),
                early_stopping=early_stopping, num_return_sequences=num_return_sequences,
                do_sample=do_sample, generator=generator, **record)
        else:
            if streamer is not None:
                streamer.put(ids.cpu())
            result = decode(
                runner, ids, mask, max_new_tokens=n_new, do_sample=do_sample, chain=chain, st=st,
                eos_token_id=eos, fill_token_id=fill, streamer=streamer, generator=generator,
                keep_finished=bool(return_dict_in_generate), **record)
    if streamer is not None and num_beams == 1:
        if n_new == 0:
            streamer.put(ids.cpu())
        streamer.end()
    sequences = ids if result is None else result.sequences
    if not return_dict_in_generate:
        return sequences
    return GenerateOutput(
        sequences=sequences, scores=None if result is None else result.scores,
        logits=None if result is None else result.logits,
        sequences_scores=None if result is None else result.sequences_scores,
        beam_indices=None if result is None else result.beam_indices,
        past_key_values=runner.cache)
