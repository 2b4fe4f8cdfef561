"""Beam search (and beam sampling) over the layer-state protocol, with transformers' semantics.

Per batch row, ``K = num_beams`` running hypotheses and up to ``K`` finished ones. Each step:

1. scores = processors(``log_softmax(logits)``) (the processors see log-probabilities, as in
   transformers), added to each running beam's sum of log-probabilities;
2. the best ``C = max(2, 1 + #eos)·K`` continuations over all beams × vocabulary (``topk``, or
   ``C`` draws without replacement from ``softmax`` of the sums when ``do_sample``), so that ``K``
   of them are still running after some end with ``<eos>``;
3. continuations ending in ``<eos>`` (or reaching ``max_new_tokens``) that rank among the first
   ``K`` become finished hypotheses with score ``sum_logprob / new_tokens ** length_penalty``
   (the ``<eos>`` counted); the best ``K`` finished are kept;
4. the best ``K`` unfinished continuations run on: the decoding state follows them through
   ``reorder(beam_index)`` (KV caches, raw-key ReRoPE caches, recurrent states alike), the
   prompt having been expanded once with ``batch_repeat_interleave(K)`` after a single prefill.

A row is done when no running beam can beat its worst finished hypothesis: with
``early_stopping=False`` the best running score is judged at the current length (transformers'
heuristic), with ``"never"`` at the longest possible length when ``length_penalty > 0`` (the exact
criterion); ``early_stopping=True`` stops a row as soon as ``K`` hypotheses are finished. The
output is the best ``num_return_sequences`` finished hypotheses per row, ``pad_token_id`` after
their end, cut to the longest.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .processors import LogitsProcessorList
from .runner import ModelRunner
from .sampling import DecodeResult, next_token_scores, upcast

__all__ = ["beam_search"]

_BIG = 1.0e9


def _gather(t: Tensor, index: Tensor) -> Tensor:
    """``t[b, index[b, j], ...]`` for ``t`` ``(B, K, ...)`` and ``index`` ``(B, J)``."""
    while index.dim() < t.dim():
        index = index.unsqueeze(-1)
    return torch.take_along_dim(t, index, dim=1)


def beam_search(
    runner: ModelRunner,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    *,
    num_beams: int,
    max_new_tokens: int,
    chain: LogitsProcessorList,
    st: Any = None,
    eos_token_id: list[int] | None = None,
    fill_token_id: int = 0,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    generator: torch.Generator | None = None,
    output_scores: bool = False,
    output_logits: bool = False,
) -> DecodeResult:
    """Beam search continuation of ``input_ids`` ``(B, n)`` (see the module docstring).

    Returns:
        :class:`~formerlab.generate.sampling.DecodeResult` with ``sequences``
        ``(B·num_return_sequences, n + new)``, ``sequences_scores``, ``beam_indices`` (the flat
        beam of every new token, ``-1`` after the end) and, if asked, the per-step scores
        ``(B·K, V)``.
    """
    b, n0 = input_ids.shape
    k, n_new = num_beams, max_new_tokens
    device = input_ids.device
    eos = None if not eos_token_id else torch.as_tensor(eos_token_id, device=device)
    cands = max(2, 1 + (0 if eos is None else eos.numel())) * k
    first_k = torch.arange(cands, device=device) < k
    offset = torch.arange(b, device=device)[:, None] * k

    run_seq = input_ids.new_full((b, k, n0 + n_new), fill_token_id)
    run_seq[:, :, :n0] = input_ids[:, None]
    fin_seq = run_seq.clone()
    run_idx = torch.full((b, k, n_new), -1, dtype=torch.long, device=device)
    fin_idx = run_idx.clone()
    logits = runner.prefill(input_ids, attention_mask)
    stateful = [p for p in (st, *chain) if p is not None]
    if runner.prompt_logits is not None:
        for p in stateful:
            if callable(getattr(p, "prefill", None)):
                p.prefill(input_ids, runner.prompt_logits, attention_mask)
    runner.batch_repeat_interleave(k)
    for p in stateful:
        if callable(getattr(p, "batch_repeat_interleave", None)):
            p.batch_repeat_interleave(k)
    logits = logits.repeat_interleave(k, 0)
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    run_score = torch.zeros(b, k, dtype=work, device=device)
    run_score[:, 1:] = -_BIG  # the K copies of the prompt: only the first one expands
    fin_score = torch.full((b, k), -_BIG, dtype=work, device=device)
    fin_done = torch.zeros(b, k, dtype=torch.bool, device=device)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    scores_log: list[Tensor] = []
    logits_log: list[Tensor] = []

    for t in range(n_new):
        cur = n0 + t
        ids = run_seq[:, :, :cur].reshape(b * k, cur)
        if t:
            logits = runner.step(run_seq[:, :, cur - 1].reshape(b * k))
        scores = next_token_scores(runner, ids, logits, chain=chain, st=st, log_softmax=True)
        if output_logits:
            logits_log.append(upcast(logits).clone())
        if output_scores:
            scores_log.append(scores.clone())
        vocab = scores.shape[-1]
        total = (scores.view(b, k, vocab).to(work) + run_score[..., None]).view(b, k * vocab)
        if do_sample:
            pick = torch.multinomial(total.softmax(-1), cands, generator=generator)
            top = total.gather(1, pick)
            top, order = top.sort(-1, descending=True)
            pick = pick.gather(1, order)
        else:
            top, pick = torch.topk(total, cands, dim=-1)
        beam, token = pick // vocab, pick % vocab
        cand_seq = _gather(run_seq, beam)
        cand_seq[:, :, cur] = token
        cand_idx = _gather(run_idx, beam)
        cand_idx[:, :, t] = beam + offset
        ends = torch.zeros_like(token, dtype=torch.bool) if eos is None else torch.isin(token, eos)
        if t == n_new - 1:
            ends = torch.ones_like(ends)

        # the best K continuations that go on
        alive_score = top - _BIG * ends.to(work)
        nxt = torch.topk(alive_score, k, dim=-1).indices
        run_seq, run_score, run_idx = (_gather(cand_seq, nxt), _gather(alive_score, nxt),
                                       _gather(cand_idx, nxt))

        # finished hypotheses: merge the new ones into the best K
        new_fin = ends & first_k[None]
        score = top / float(t + 1) ** length_penalty
        full = fin_done.all(-1, keepdim=True) & (early_stopping is True)
        score = score - _BIG * (full | ~improvable).to(work) - _BIG * (~new_fin).to(work)
        best = torch.topk(torch.cat([fin_score, score], 1), k, dim=-1).indices
        fin_seq = _gather(torch.cat([fin_seq, cand_seq], 1), best)
        fin_score = _gather(torch.cat([fin_score, score], 1), best)
        fin_idx = _gather(torch.cat([fin_idx, cand_idx], 1), best)
        fin_done = _gather(torch.cat([fin_done, new_fin], 1), best)

        # the decoding state follows the beams that go on
        flat = (run_idx[:, :, t]).reshape(-1)
        if not torch.equal(flat, torch.arange(b * k, device=device)):
            runner.reorder(flat)
            for p in stateful:
                if callable(getattr(p, "reorder", None)):
                    p.reorder(flat)

        # can a running beam still beat the worst finished one?
        length = n_new if (early_stopping == "never" and length_penalty > 0) else t + 1
        best_running = run_score[:, :1] / float(length) ** length_penalty
        worst = torch.where(fin_done, fin_score.min(-1, keepdim=True).values,
                            torch.full_like(fin_score, -_BIG))
        improvable = improvable & (best_running > worst).any(-1, keepdim=True)
        if not bool(improvable.any()) or bool(ends.all()) or (
                early_stopping is True and bool(fin_done.all())):
            break

    r = num_return_sequences
    seqs = fin_seq[:, :r].reshape(b * r, -1)
    beam_indices = fin_idx[:, :r].reshape(b * r, -1)
    generated = int((beam_indices >= 0).sum(-1).max())
    return DecodeResult(
        seqs[:, :n0 + generated], tuple(scores_log) if output_scores else None,
        tuple(logits_log) if output_logits else None,
        sequences_scores=fin_score[:, :r].reshape(-1), beam_indices=beam_indices[:, :generated],
    )
