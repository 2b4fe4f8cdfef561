"""NBCE: Naive Bayes-based Context Extension (kexue.fm/archives/9617, 9632; arXiv 2403.17552).

A model whose window holds one context ``S_k`` but not all of them answers from every context at
once: each context is a row of one batch (plus an unconditional row that holds only the question),
and at every step the rows' next-token distributions are merged. If the contexts are independent
given the answer ``T``, Bayes' rule gives

    log p(T | S_1..S_n) = Σ_k log p(T | S_k) − (n − 1) log p(T) + const,

generalised (post 9617) to ``(1 + β) 𝒫[log p(T | S_k)] − β log p(T)`` with a pooling ``𝒫`` over
the contexts and ``β`` a hyper-parameter (``β = n − 1`` with mean pooling is the exact naive-Bayes
product). The rules of the supplement (post 9632), all in :func:`nbce_merge`:

==============  =============================================================================
truncation      top-p (and/or top-k) on **every** row before merging; removed tokens get
                ``−∞`` and the rows are **not** renormalised (unreliable tails would be
                amplified by ``−β log p(T)``)
pooling         :data:`NBCE_POOLINGS`: ``min_entropy`` (the context of lowest entropy
                ``H_k = −Σ p log p`` over its kept tokens; the final choice of the posts),
                ``mean`` (naive Bayes), ``max`` (token-wise maximum; fine for greedy
                decoding, unreadable when sampling)
−∞ rule         where ``log p(T) = −∞`` (truncated from the unconditional row) the output is
                ``𝒫[…]`` alone, elsewhere the formula: no ``+∞``, no NaN
stickiness η    the previously chosen context's entropy is lowered by ``η`` before the argmin,
                so the choice switches only if another context is better by more than ``η``
==============  =============================================================================

:func:`nbce_generate` runs the whole loop (the reference is bojone/NBCE ``test.py``): row 0 is the
template with an empty context, rows 1..n the template with each context, all left-padded in one
batch with one shared KV cache; every step appends the same sampled token to every row. It needs
only ``model(input_ids, attention_mask=..., past_key_values=..., use_cache=True)`` returning
``.logits`` and ``.past_key_values``, so it runs formerlab's :class:`~formerlab.models.CausalLM`
and any Hugging Face causal LM alike (position ids are passed when the model takes them, so
learned absolute positions see left padding correctly). :func:`split_long_text` cuts one long
document into overlapping windows (rule (d): each answer fragment should depend on one context).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry

__all__ = [
    "NBCEOutput",
    "NBCE_POOLINGS",
    "nbce_decode",
    "nbce_generate",
    "nbce_merge",
    "nbce_prompts",
    "split_long_text",
    "truncate_logprobs",
]

#: name -> ``fn(logp (…, n, V), entropy (…, n), prev (…) | None, eta) -> (pooled (…, V), chosen)``
#: where ``chosen`` holds 0-based context indices (or is ``None`` for token-wise poolings)
NBCE_POOLINGS: Registry[Callable[..., tuple[Tensor, Tensor | None]]] = Registry("NBCE pooling")


@NBCE_POOLINGS.register("min_entropy", aliases=("entropy",))
def _min_entropy(logp: Tensor, entropy: Tensor, prev: Tensor | None, eta: float
                 ) -> tuple[Tensor, Tensor]:
    """The context of lowest entropy (kexue.fm/archives/9617), sticky by ``eta`` (9632)."""
    if prev is not None and eta:
        has = prev >= 0
        bonus = torch.zeros_like(entropy)
        bonus.scatter_(-1, prev.clamp_min(0)[..., None], eta)
        entropy = entropy - bonus * has[..., None]
    chosen = entropy.argmin(-1)
    pooled = logp.gather(-2, chosen[..., None, None].expand(*chosen.shape, 1, logp.shape[-1]))
    return pooled.squeeze(-2), chosen


@NBCE_POOLINGS.register("mean", aliases=("average",))
def _mean(logp: Tensor, entropy: Tensor, prev: Tensor | None, eta: float) -> tuple[Tensor, None]:
    """Average of the contexts' log-probabilities: with ``β = n − 1``, naive Bayes (9617)."""
    return logp.mean(-2), None


@NBCE_POOLINGS.register("max")
def _max(logp: Tensor, entropy: Tensor, prev: Tensor | None, eta: float) -> tuple[Tensor, None]:
    """Token-wise maximum over the contexts (the first generalisation of 9617)."""
    return logp.amax(-2), None


def _check_top_p(top_p: float | None) -> None:
    if top_p is None:
        return
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be a float in (0, 1] or None, got {top_p!r}")


def _check_top_k(top_k: int | None) -> None:
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be a positive int or None, got {top_k!r}")


def truncate_logprobs(logp: Tensor, top_p: float | None = None, top_k: int | None = None
                      ) -> Tensor:
    """Set every token outside the top-p / top-k set of its row to ``−∞`` (no renormalisation).

    Args:
        logp: ``(…, V)`` log-probabilities (normalised over the last axis).
        top_p: Keep the smallest set of most probable tokens whose probability sums to at least
            ``top_p`` (Holtzman et al., arXiv 1904.09751); ``None`` or ``1.0`` keeps all.
        top_k: Keep the ``top_k`` most probable tokens (every token tied with the k-th is kept).

    Returns:
        ``logp`` with the removed entries at ``−∞``; at least one token per row survives.
    """
    _check_top_p(top_p)
    _check_top_k(top_k)
    out = logp
    if top_k is not None and top_k < logp.shape[-1]:
        kth = logp.topk(top_k, dim=-1).values[..., -1:]
        out = out.masked_fill(logp < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_lp, order = out.sort(dim=-1, descending=True)
        before = sorted_lp.exp().cumsum(-1) - sorted_lp.exp()  # mass of the tokens ranked above
        drop_sorted = before >= top_p
        drop_sorted[..., 0] = False
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        out = out.masked_fill(drop, -math.inf)
    return out


def _entropy(logp: Tensor) -> Tensor:
    """``−Σ p log p`` over the finite entries (truncated tokens contribute 0, never NaN)."""
    finite = torch.isfinite(logp)
    safe = torch.where(finite, logp, torch.zeros_like(logp))
    return -(safe.exp() * safe * finite).sum(-1)


def _merge(logp: Tensor, beta: float, pooling: str, eta: float, prev: Tensor | None
           ) -> tuple[Tensor, Tensor | None]:
    uncond, ctx = logp[..., 0, :], logp[..., 1:, :]
    pooled, chosen = NBCE_POOLINGS.get(pooling)(ctx, _entropy(ctx), prev, eta)
    formula = (1.0 + beta) * pooled - beta * uncond
    merged = torch.where(torch.isfinite(uncond), formula, pooled)  # the −∞ rule (9632)
    return merged, chosen


def nbce_merge(
    logits: Tensor,
    beta: float = 0.25,
    pooling: str = "min_entropy",
    top_p: float | None = 0.95,
    top_k: int | None = None,
    eta: float = 0.1,
    prev: int | Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Merge the next-token distributions of the contexts into NBCE's (see the module docstring).

    Args:
        logits: ``(…, n + 1, V)`` next-token logits (or log-probabilities): row 0 is the
            unconditional row (the question without context), rows 1..n one context each.
        beta: ``β ≥ 0`` in ``(1 + β)·𝒫[log p(T|S)] − β·log p(T)``; ``β = n − 1`` with
            ``pooling="mean"`` and no truncation is the naive-Bayes posterior, ``β = 0`` the
            pooled distribution alone.
        pooling: A name of :data:`NBCE_POOLINGS` (``min_entropy``, ``mean``, ``max``).
        top_p: Top-p truncation of every row before merging (``None``/``1.0``: none).
        top_k: Top-k truncation of every row (``None``: none).
        eta: Stickiness: the entropy of the context chosen at the previous step is lowered by
            ``η`` before the argmin (``min_entropy`` only).
        prev: The context chosen at the previous step (0-based, as returned), ``(…)`` for
            batched input with ``−1`` for none; ``None`` at the first step.

    Returns:
        ``(merged, chosen)``: ``(…, V)`` normalised log-probabilities (``−∞`` outside the
        support) and the 0-based index of the chosen context (``(…)`` long tensor), or ``None``
        for the token-wise poolings ``mean`` and ``max``.

    Raises:
        ValueError: ``logits`` not ``(…, n + 1, V)`` with ``n ≥ 1``; ``top_p`` outside (0, 1];
            a bad ``top_k``, ``beta``, ``eta``, ``prev`` or pooling name.
    """
    if not isinstance(logits, Tensor) or not logits.is_floating_point():
        raise TypeError(f"logits must be a floating tensor, got "
                        f"{logits.dtype if isinstance(logits, Tensor) else type(logits).__name__}")
    if logits.dim() < 2 or logits.shape[-2] < 2:
        raise ValueError(f"logits must be (…, n + 1, V) with row 0 unconditional and n >= 1 "
                         f"contexts, got shape {tuple(logits.shape)}")
    if not isinstance(beta, (int, float)) or not math.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    if not isinstance(eta, (int, float)) or not math.isfinite(eta) or eta < 0:
        raise ValueError(f"eta must be a finite number >= 0, got {eta!r}")
    NBCE_POOLINGS.get(pooling)
    n = logits.shape[-2] - 1
    prev_t = _check_prev(prev, n, logits.shape[:-2], logits.device)
    work = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    logp = torch.log_softmax(work, dim=-1)
    merged, chosen = _merge(truncate_logprobs(logp, top_p, top_k), float(beta), pooling,
                            float(eta), prev_t)
    dead = torch.isneginf(merged).all(-1)
    if bool(dead.any()):  # token-wise pooling of disjoint supports: merge untruncated there
        full, _ = _merge(logp, float(beta), pooling, float(eta), prev_t)
        merged = torch.where(dead[..., None], full, merged)
    return torch.log_softmax(merged, dim=-1), chosen


def _check_prev(prev: int | Tensor | None, n: int, lead: torch.Size, device: torch.device
                ) -> Tensor | None:
    if prev is None:
        return None
    t = torch.as_tensor(prev, device=device)
    if t.dtype.is_floating_point or t.dtype == torch.bool or t.shape not in (torch.Size([]), lead):
        raise ValueError(f"prev must be an int or a long tensor of shape {tuple(lead)}, got {prev!r}")
    if bool(((t < -1) | (t >= n)).any()):
        raise ValueError(f"prev must hold context indices in [0, {n}) (or -1 for none), got {prev!r}")
    return t.long().expand(lead)


# --- the decoding loop -----------------------------------------------------------------------------
@dataclasses.dataclass
class NBCEOutput:
    """What :func:`nbce_generate` returns.

    Attributes:
        text: The decoded answer (special tokens skipped).
        token_ids: The generated ids (the end-of-sequence token excluded).
        chosen: The 0-based context chosen at every step (``None`` for ``mean``/``max``).
        scores: With ``output_scores=True``, per step the ``(n + 1, V)`` log-probabilities of
            every row before merging (row 0 unconditional).
        merged: With ``output_scores=True``, per step the merged ``(V,)`` log-probabilities.
    """

    text: str
    token_ids: list[int]
    chosen: list[int] | None
    scores: list[Tensor] | None = None
    merged: list[Tensor] | None = None


def _accepts(fn: Any, name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _cache_keyword(forward: Any) -> str:
    """``past_key_values`` (formerlab, transformers < 5.24) or ``cache`` (transformers 5.24+)."""
    try:
        params = inspect.signature(forward).parameters
    except (TypeError, ValueError):
        return "past_key_values"
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


def _returned_cache(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")


def _render(template: str | Callable[[str, str], str], context: str, question: str) -> str:
    if callable(template):
        text = template(context, question)
        if not isinstance(text, str):
            raise TypeError(f"template(context, question) must return a str, got {type(text).__name__}")
        return text
    return template.format(context=context, question=question)


def nbce_prompts(tokenizer: Any, contexts: Sequence[str], question: str,
                 template: str | Callable[[str, str], str] = "{context}\n\n{question}"
                 ) -> list[list[int]]:
    """Token ids of NBCE's rows: row 0 the template with an empty context, then one per context.

    Args:
        tokenizer: Anything with ``encode(text) -> list[int]`` (Hugging Face tokenizers,
            :class:`~formerlab.interop.weights.GGUFTokenizer`, ...).
        contexts: The contexts (non-empty strings).
        question: The question every row shares.
        template: A format string with ``{context}`` and ``{question}``, or a function
            ``(context, question) -> str`` (e.g. one applying a chat template).

    Raises:
        ValueError: No contexts, an empty context, or a template without the placeholders.
    """
    if isinstance(contexts, str) or not isinstance(contexts, Sequence):
        raise ValueError("contexts must be a list of strings (for one long text use "
                         f"split_long_text), got {type(contexts).__name__}")
    if len(contexts) == 0:
        raise ValueError("contexts must hold at least one context, got an empty list")
    for i, c in enumerate(contexts):
        if not isinstance(c, str) or not c.strip():
            raise ValueError(f"contexts[{i}] must be a non-empty string, got {c!r}")
    if not isinstance(question, str):
        raise TypeError(f"question must be a str, got {type(question).__name__}")
    if not callable(template) and (not isinstance(template, str) or "{context}" not in template
                                   or "{question}" not in template):
        raise ValueError("template must be a callable or a str with {context} and {question}, "
                         f"got {template!r}")
    if not callable(getattr(tokenizer, "encode", None)):
        raise ValueError(f"tokenizer must have an encode(text) method, got {type(tokenizer).__name__}")
    rows = []
    for c in ["", *contexts]:
        ids = list(tokenizer.encode(_render(template, c, question)))
        if not ids:
            raise ValueError(f"the prompt of context {c[:40]!r} encodes to no tokens")
        rows.append([int(i) for i in ids])
    return rows


def _eos_ids(tokenizer: Any, eos_token_id: int | Sequence[int] | None) -> list[int]:
    eos = eos_token_id if eos_token_id is not None else getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise ValueError(f"tokenizer {type(tokenizer).__name__} has no eos_token_id (needed to "
                         "stop); pass eos_token_id=... (an int or a list of ints)")
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def _left_pad(rows: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long, device=device)
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long, device=device)
        mask[i, width - len(r):] = 1
    return ids, mask


def _sample(logp: Tensor, temperature: float, generator: torch.Generator | None) -> int:
    if temperature == 0:
        return int(logp.argmax())
    probs = torch.softmax(logp.double() / temperature, dim=-1)
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


@torch.no_grad()
def nbce_decode(
    model: Any,
    prompt_ids: Sequence[Sequence[int]],
    max_new_tokens: int = 64,
    *,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    beta: float = 0.25,
    pooling: str = "min_entropy",
    top_p: float | None = 0.95,
    top_k: int | None = None,
    eta: float = 0.1,
    temperature: float = 0.01,
    generator: torch.Generator | None = None,
    output_scores: bool = False,
) -> tuple[list[int], list[int] | None, list[Tensor] | None, list[Tensor] | None]:
    """NBCE's loop on token ids: ``prompt_ids[0]`` unconditional, one row per context after it.

    Args: as :func:`nbce_generate` (``eos_token_id=None`` runs ``max_new_tokens`` steps).

    Returns:
        ``(token_ids, chosen, scores, merged)`` as the fields of :class:`NBCEOutput`.
    """
    if len(prompt_ids) < 2 or any(len(r) == 0 for r in prompt_ids):
        raise ValueError("prompt_ids must hold the unconditional row and at least one context "
                         f"row, each non-empty; got {len(prompt_ids)} rows")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    _check_top_p(top_p)
    _check_top_k(top_k)
    eos = set() if eos_token_id is None else set(
        eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
    pad = pad_token_id if pad_token_id is not None else (min(eos) if eos else 0)
    device = _device(model)
    ids, mask = _left_pad([list(r) for r in prompt_ids], int(pad), device)
    forward = getattr(model, "forward", model)
    use_pos = _accepts(forward, "position_ids")
    cache_kw = _cache_keyword(forward)
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    past, prev = None, None
    tokens: list[int] = []
    chosen: list[int] = []
    scores: list[Tensor] | None = [] if output_scores else None
    merged_all: list[Tensor] | None = [] if output_scores else None
    for _ in range(max_new_tokens):
        kwargs: dict[str, Any] = {"attention_mask": mask, "use_cache": True}
        if past is not None:
            kwargs[cache_kw] = past
        if use_pos:
            kwargs["position_ids"] = pos
        out = model(ids, **kwargs)
        past = _returned_cache(out)
        logits = out.logits[:, -1].float()
        merged, k = nbce_merge(logits, beta, pooling, top_p, top_k, eta, prev)
        if scores is not None:
            scores.append(torch.log_softmax(logits, -1).cpu())
            merged_all.append(merged.cpu())
        token = _sample(merged, float(temperature), generator)
        if token in eos:
            break
        tokens.append(token)
        if k is not None:
            prev = k
            chosen.append(int(k))
        rows = ids.shape[0]
        ids = torch.full((rows, 1), token, dtype=torch.long, device=device)
        mask = torch.cat([mask, torch.ones((rows, 1), dtype=mask.dtype, device=device)], dim=1)
        pos = mask.sum(-1, keepdim=True) - 1
    picks = NBCE_POOLINGS.canonical(pooling) == "min_entropy"
    return tokens, (chosen if picks else None), scores, merged_all


def _decode_text(tokenizer: Any, ids: list[int]) -> str:
    """``tokenizer.decode`` without special tokens; invalid UTF-8 from byte-level tokenizers is
    replaced rather than raised when the tokenizer takes ``errors=``."""
    kwargs: dict[str, Any] = {}
    for name, value in (("skip_special_tokens", True), ("errors", "replace")):
        try:
            if name in inspect.signature(tokenizer.decode).parameters:
                kwargs[name] = value
        except (TypeError, ValueError):
            pass
    return tokenizer.decode(ids, **kwargs)


def nbce_generate(
    model: Any,
    tokenizer: Any,
    contexts: Sequence[str],
    question: str,
    template: str | Callable[[str, str], str] = "{context}\n\n{question}",
    max_new_tokens: int = 64,
    *,
    beta: float = 0.25,
    pooling: str = "min_entropy",
    top_p: float | None = 0.95,
    top_k: int | None = None,
    eta: float = 0.1,
    temperature: float = 0.01,
    generator: torch.Generator | None = None,
    eos_token_id: int | Sequence[int] | None = None,
    pad_token_id: int | None = None,
    output_scores: bool = False,
) -> NBCEOutput:
    """Answer ``question`` from many ``contexts`` with NBCE (one batch, one shared KV cache).

    Args:
        model: A causal LM called as ``model(input_ids, attention_mask=..., past_key_values=...,
            use_cache=True)`` returning ``.logits`` and ``.past_key_values``: formerlab's
            ``CausalLM`` or any Hugging Face causal LM.
        tokenizer: ``encode(text) -> ids``, ``decode(ids)`` and (unless given) ``eos_token_id``.
        contexts: The contexts, each short enough for the model's window.
        question: The question (in every row, after the context).
        template: ``"{context}\\n\\n{question}"`` by default; a format string or a function
            ``(context, question) -> str``. Row 0 uses an empty context.
        max_new_tokens: Generation budget.
        beta, pooling, top_p, top_k, eta: As :func:`nbce_merge` (defaults of post 9632).
        temperature: Sampling temperature of the merged distribution; ``0`` is greedy, the
            reference's ``0.01`` is nearly greedy.
        generator: Random source of the sampling.
        eos_token_id: Stop token(s) (default the tokenizer's ``eos_token_id``).
        pad_token_id: Left-padding id (default the first stop token; padding is masked anyway).
        output_scores: Keep every step's per-row and merged log-probabilities.

    Returns:
        An :class:`NBCEOutput`.

    Raises:
        ValueError: Empty ``contexts`` or an empty context, a tokenizer without ``eos_token_id``
            (and none given), ``top_p`` outside (0, 1], other bad arguments.
    """
    rows = nbce_prompts(tokenizer, contexts, question, template)
    eos = _eos_ids(tokenizer, eos_token_id)
    if pad_token_id is None:
        pad_token_id = getattr(tokenizer, "pad_token_id", None)
    tokens, chosen, scores, merged = nbce_decode(
        model, rows, max_new_tokens, eos_token_id=eos, pad_token_id=pad_token_id, beta=beta,
        pooling=pooling, top_p=top_p, top_k=top_k, eta=eta, temperature=temperature,
        generator=generator, output_scores=output_scores)
    return NBCEOutput(_decode_text(tokenizer, tokens), tokens, chosen, scores, merged)


def split_long_text(text: str, window: int, overlap: int = 0, *, return_offsets: bool = False
                    ) -> list[str] | list[tuple[int, int]]:
    """Cut ``text`` into windows of at most ``window`` characters overlapping by ``overlap``.

    Cuts fall on whitespace when there is some in the second half of a window (words stay
    whole); the next window starts ``overlap`` characters before the cut, moved forward to the
    start of a word. Consecutive windows leave no gap and share at most ``overlap`` characters
    (rule (d) of kexue.fm/archives/9632: a long document as overlapping sliding windows).

    Args:
        text: The document.
        window: Largest window, in characters (≥ 1).
        overlap: Characters shared by consecutive windows (``0 ≤ overlap < window``).
        return_offsets: Return the ``(start, end)`` character spans instead of the strings.

    Returns:
        The windows (or their spans) in order (``[]`` for an empty text).
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be a positive int, got {window!r}")
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap < window:
        raise ValueError(f"overlap must be an int in [0, window = {window}), got {overlap!r}")
    out: list[tuple[int, int]] = []
    start, last, n = 0, 0, len(text)
    while start < n:
        end = min(start + window, n)
        if end < n:  # cut after whitespace, past the previous window's end
            lo = max(start + window // 2, last)
            cut = max(text.rfind(" ", lo, end), text.rfind("\n", lo, end))
            if cut >= lo:
                end = cut + 1
        last = end
        out.append((start, end))
        if end >= n:
            break
        nxt = max(end - overlap, start + 1)
        while overlap and nxt < end and not text[nxt - 1].isspace():
            nxt += 1  # start the next window at a word boundary inside the overlap
        start = nxt
    return out if return_offsets else [text[a:b] for a, b in out]
