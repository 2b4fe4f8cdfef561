"""Token-by-token decoding: greedy search and ancestral sampling.

Each step takes the model's next-token logits (upcast to float32; float64 stays float64),
applies the self-terminating parameterisation if asked (it defines the model's distribution),
then the processor chain (:mod:`formerlab.generate.processors`), and picks

- greedy: ``argmax`` (the first of tied maxima, as ``torch.argmax``);
- sampling: one draw from ``softmax(scores)`` with the caller's ``torch.Generator`` — a fresh
  unseeded generator when none is given, so the global RNG is never touched.

A row that emits an ``<eos>`` id is finished: its later positions hold ``pad_token_id``. Finished
rows are dropped from the batch through the state protocol's ``batch_select`` (the model then
computes only live rows); when the caller asks for per-step scores or the final cache they stay
in the batch instead and are fed ``pad_token_id``, as transformers does. Decoding ends when every
row is finished or after ``max_new_tokens`` steps.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor

from .processors import LogitsProcessorList
from .runner import ModelRunner

__all__ = ["DecodeResult", "decode", "next_token_scores", "pick_tokens"]


@dataclasses.dataclass
class DecodeResult:
    """What a decoding loop returns: ``sequences`` (prompt + new tokens) and, if recorded,
    per-step processed ``scores`` and raw ``logits``."""

    sequences: Tensor
    scores: tuple[Tensor, ...] | None = None
    logits: tuple[Tensor, ...] | None = None
    sequences_scores: Tensor | None = None
    beam_indices: Tensor | None = None


def upcast(logits: Tensor) -> Tensor:
    """Scores in float32 at least (half-precision logits are upcast, float64 is kept)."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def next_token_scores(runner: ModelRunner, ids: Tensor, logits: Tensor, *,
                      chain: LogitsProcessorList, st: Any, log_softmax: bool = False) -> Tensor:
    """The processed scores of one step: ST (if any), then ``log_softmax`` (beam search), then the
    chain."""
    scores = upcast(logits)
    if st is not None:
        scores = st(ids, scores)
    if log_softmax:
        scores = scores.log_softmax(-1)
    return chain(ids, scores, attention_mask=runner.mask)


def pick_tokens(scores: Tensor, do_sample: bool, generator: torch.Generator | None) -> Tensor:
    """``argmax`` or one sample per row of ``softmax(scores)``."""
    if not do_sample:
        return scores.argmax(-1)
    probs = scores.softmax(-1)
    if not bool(torch.isfinite(probs).all()):
        raise ValueError("the logits processors removed every token of a row (or produced NaN): "
                         "nothing left to sample")
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def decode(
    runner: ModelRunner,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    max_new_tokens: int,
    do_sample: bool,
    chain: LogitsProcessorList,
    st: Any = None,
    eos_token_id: list[int] | None = None,
    fill_token_id: int = 0,
    streamer: Any = None,
    generator: torch.Generator | None = None,
    keep_finished: bool = False,
    output_scores: bool = False,
    output_logits: bool = False,
) -> DecodeResult:
    """Greedy or sampled continuation of ``input_ids`` ``(B, n)`` (see the module docstring).

    Args:
        runner: The model, prefilled here.
        input_ids, attention_mask: The (left-padded) prompt and its mask (``None`` = no padding).
        max_new_tokens: Steps at most.
        do_sample: Sample (else greedy).
        chain: The processor chain.
        st: A :class:`~formerlab.generate.SelfTerminatingLogits` or ``None``.
        eos_token_id: Ids that finish a row.
        fill_token_id: Written after a row's end (``pad_token_id``).
        streamer: put/end streamer or ``None``.
        generator: The sampling generator.
        keep_finished: Keep finished rows in the batch (fed ``fill_token_id``).
        output_scores, output_logits: Record per-step processed scores / raw logits ``(B, V)``.

    Returns:
        :class:`DecodeResult`.
    """
    b, n0 = input_ids.shape
    device = input_ids.device
    out = input_ids.new_full((b, n0 + max_new_tokens), fill_token_id)
    out[:, :n0] = input_ids
    eos = None if not eos_token_id else torch.as_tensor(eos_token_id, device=device)
    rows = torch.arange(b, device=device)  # the batch rows still computed
    alive = torch.ones(b, dtype=torch.bool, device=device)
    scores_log: list[Tensor] = []
    logits_log: list[Tensor] = []
    stateful = [p for p in (st, *chain) if p is not None]
    logits = runner.prefill(input_ids, attention_mask)
    if runner.prompt_logits is not None:
        for p in stateful:
            if callable(getattr(p, "prefill", None)):
                p.prefill(input_ids, runner.prompt_logits, attention_mask)
    steps = 0
    tokens = None
    for t in range(max_new_tokens):
        if t:
            logits = runner.step(tokens)
        ids = out[:, :n0 + t] if rows.numel() == b else out[rows, :n0 + t]
        scores = next_token_scores(runner, ids, logits, chain=chain, st=st)
        if output_logits:
            logits_log.append(upcast(logits).clone())
        if output_scores:
            scores_log.append(scores.clone())
        tokens = pick_tokens(scores, do_sample, generator)
        if keep_finished:
            tokens = torch.where(alive, tokens, fill_token_id)
        out[rows, n0 + t] = tokens
        steps += 1
        if streamer is not None:
            streamer.put(out[:, n0 + t].cpu())
        if eos is None:
            continue
        done = torch.isin(tokens, eos)
        if keep_finished:
            alive &= ~done
            if not bool(alive.any()):
                break
        elif bool(done.any()):
            keep = ~done
            if not bool(keep.any()):
                break
            rows, tokens = rows[keep], tokens[keep]
            runner.batch_select(keep)
            for p in stateful:
                if callable(getattr(p, "batch_select", None)):
                    p.batch_select(keep)
    return DecodeResult(out[:, :n0 + steps], tuple(scores_log) if output_scores else None,
                        tuple(logits_log) if output_logits else None)
