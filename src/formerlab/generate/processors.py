"""Logits processors: the registered filters that reshape next-token scores before a token is chosen.

A logits processor is any callable ``(input_ids, scores) -> scores`` with ``input_ids``
``(batch, seq)`` the tokens so far and ``scores`` ``(batch, vocab)`` the next-token scores, the
protocol of transformers' ``LogitsProcessor`` (so its ``TopKLogitsWarper``, ``LogitsProcessorList``
... plug into :func:`formerlab.generate.generate` unchanged, and ours into transformers'
``generate``). formerlab's own are the filters of :data:`LOGITS_FILTERS`, each a short function
``fn(input_ids, scores, **params) -> scores`` bound to its parameters by :class:`LogitsFilter`;
removed tokens get ``-inf``:

======================  ==========================================================================
``temperature``         ``s / τ``
``top_k``               keep the ``k`` largest scores; every token tied with the ``k``-th is kept
                        (as transformers' ``TopKLogitsWarper``)
``top_p``               nucleus (Holtzman et al., arXiv 1904.09751): the smallest set of most
                        probable tokens whose probability sums to ≥ ``p``; computed in ascending
                        order (drop tokens whose ascending cumulative mass is ≤ ``1 − p``), so the
                        small probabilities are summed first
``min_p``               keep tokens with ``p ≥ min_p · max p`` (arXiv 2407.01082)
``repetition_penalty``  every token already in the sequence: ``s / θ`` if ``s > 0`` else ``s · θ``
                        (CTRL, arXiv 1909.05858); padding (``attention_mask == 0``) is not a token
``min_new_tokens``      ``<eos>`` ids get ``-inf`` until ``n`` new tokens exist
======================  ==========================================================================

Truncation filters keep at least ``min_tokens_to_keep`` tokens. **Consistent decoding**
(kexue.fm/archives/7500; Welleck et al., arXiv 2002.02492): ``top_k``, ``top_p`` and ``min_p`` take
``eos_token_id``; those ids keep their score whatever the truncation removes, so ``<eos>`` stays
in the support and the sampling distribution is ``q(v) ∝ p(v)`` on ``V_kept ∪ {eos}``. With a
bounded hidden state, sampling from it then terminates with probability one.

**Context and state.** :class:`LogitsProcessorList` passes the generation context
(``attention_mask``) to the processors whose ``__call__`` names it, and forwards the layer-state
protocol's ``reorder`` / ``batch_select`` / ``batch_repeat_interleave`` (and ``prefill``, which
sees the prompt's logits) to stateful processors such as
:class:`~formerlab.generate.SelfTerminatingLogits`, so they follow beam search and dropped rows.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry

__all__ = [
    "CONTEXT_ARGUMENTS",
    "LOGITS_FILTERS",
    "LogitsFilter",
    "LogitsProcessorList",
    "as_processor_list",
    "build_logits_processor",
    "logits_filter_options",
    "register_logits_filter",
]

#: name -> ``fn(input_ids, scores, *, **params) -> scores``; metadata ``check(**params)``
LOGITS_FILTERS: Registry[Callable[..., Tensor]] = Registry("logits filter")

#: keyword arguments a processor receives from the generation loop (not user parameters)
CONTEXT_ARGUMENTS = ("attention_mask",)

_NEG_INF = float("-inf")


def register_logits_filter(name: str, *, check: Callable[..., None] | None = None,
                           aliases: tuple[str, ...] = ()) -> Callable[[Callable[..., Tensor]],
                                                                      Callable[..., Tensor]]:
    """Register ``fn(input_ids, scores, *, **params) -> scores`` under ``name``.

    Args:
        check: ``check(**params)`` raising ``ValueError`` for bad parameter values.
        aliases: Other names of the filter.
    """
    return LOGITS_FILTERS.register(name, aliases=aliases, check=check)


def logits_filter_options(name: str) -> dict[str, Any]:
    """The parameters of filter ``name`` and their defaults (``inspect.Parameter.empty`` if
    required); the context arguments are left out."""
    sig = inspect.signature(LOGITS_FILTERS.get(name))
    return {p.name: p.default for p in list(sig.parameters.values())[2:]
            if p.name not in CONTEXT_ARGUMENTS and p.kind is not inspect.Parameter.VAR_KEYWORD}


# -- validation helpers ---------------------------------------------------------------------------
def _int_at_least(name: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an int >= {low}, got {value!r}")


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    return float(value)


def _token_ids(name: str, ids: Any) -> list[int] | None:
    if ids is None:
        return None
    ids = [ids] if isinstance(ids, int) else list(ids)
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise ValueError(f"{name} must be a token id or a non-empty list of them, got {ids!r}")
    return ids


def _keep_ids(out: Tensor, scores: Tensor, keep: list[int] | None) -> Tensor:
    """``out`` with the columns ``keep`` restored from ``scores`` (consistent truncation)."""
    if keep:
        idx = torch.as_tensor(keep, device=scores.device)
        out[:, idx] = scores[:, idx]
    return out


# -- the registered filters ---------------------------------------------------------------------
def _check_temperature(*, temperature: float) -> None:
    if not _number("temperature", temperature) > 0:
        raise ValueError(f"temperature must be > 0 (use do_sample=False for greedy decoding), got "
                         f"{temperature!r}")


@register_logits_filter("temperature", check=_check_temperature)
def temperature(input_ids: Tensor, scores: Tensor, *, temperature: float) -> Tensor:
    """``scores / τ``: τ < 1 sharpens the distribution, τ > 1 flattens it."""
    return scores / temperature


def _check_top_k(*, top_k: int, min_tokens_to_keep: int = 1, eos_token_id: Any = None) -> None:
    _int_at_least("top_k", top_k, 1)
    _int_at_least("min_tokens_to_keep", min_tokens_to_keep, 1)
    _token_ids("eos_token_id", eos_token_id)


@register_logits_filter("top_k", check=_check_top_k)
def top_k(input_ids: Tensor, scores: Tensor, *, top_k: int, min_tokens_to_keep: int = 1,
          eos_token_id: int | list[int] | None = None) -> Tensor:
    """Keep the ``k`` largest scores (ties with the ``k``-th value kept); ``eos_token_id`` kept
    always (consistent top-k, arXiv 2002.02492)."""
    k = min(max(top_k, min_tokens_to_keep), scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    out = scores.masked_fill(scores < kth, _NEG_INF)
    return _keep_ids(out, scores, _token_ids("eos_token_id", eos_token_id))


def _check_top_p(*, top_p: float, min_tokens_to_keep: int = 1, eos_token_id: Any = None) -> None:
    if not 0.0 < _number("top_p", top_p) <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p!r}")
    _int_at_least("min_tokens_to_keep", min_tokens_to_keep, 1)
    _token_ids("eos_token_id", eos_token_id)


@register_logits_filter("top_p", check=_check_top_p, aliases=("nucleus",))
def top_p(input_ids: Tensor, scores: Tensor, *, top_p: float, min_tokens_to_keep: int = 1,
          eos_token_id: int | list[int] | None = None) -> Tensor:
    """Nucleus sampling (arXiv 1904.09751): the smallest most-probable set of mass ≥ ``p``;
    ``eos_token_id`` kept always (consistent nucleus, arXiv 2002.02492)."""
    ascending, order = torch.sort(scores, dim=-1)
    cum = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop = cum <= 1.0 - top_p
    drop[..., -min_tokens_to_keep:] = False
    out = scores.masked_fill(drop.scatter(-1, order, drop), _NEG_INF)
    return _keep_ids(out, scores, _token_ids("eos_token_id", eos_token_id))


def _check_min_p(*, min_p: float, min_tokens_to_keep: int = 1, eos_token_id: Any = None) -> None:
    if not 0.0 <= _number("min_p", min_p) <= 1.0:
        raise ValueError(f"min_p must lie in [0, 1], got {min_p!r}")
    _int_at_least("min_tokens_to_keep", min_tokens_to_keep, 1)
    _token_ids("eos_token_id", eos_token_id)


@register_logits_filter("min_p", check=_check_min_p)
def min_p(input_ids: Tensor, scores: Tensor, *, min_p: float, min_tokens_to_keep: int = 1,
          eos_token_id: int | list[int] | None = None) -> Tensor:
    """Keep tokens with ``p ≥ min_p · max p`` (the threshold scales with the model's confidence);
    ``eos_token_id`` kept always."""
    probs = scores.softmax(dim=-1)
    drop = probs < min_p * probs.amax(dim=-1, keepdim=True)
    k = min(min_tokens_to_keep, scores.shape[-1])
    drop.scatter_(-1, torch.topk(probs, k, dim=-1).indices, False)
    out = scores.masked_fill(drop, _NEG_INF)
    return _keep_ids(out, scores, _token_ids("eos_token_id", eos_token_id))


def _check_repetition_penalty(*, penalty: float) -> None:
    if not _number("repetition_penalty", penalty) > 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 = none), got {penalty!r}")


@register_logits_filter("repetition_penalty", check=_check_repetition_penalty)
def repetition_penalty(input_ids: Tensor, scores: Tensor, *, penalty: float,
                       attention_mask: Tensor | None = None) -> Tensor:
    """Tokens present in ``input_ids`` (where ``attention_mask`` is 1): ``s/θ`` if ``s > 0`` else
    ``s·θ`` (CTRL, arXiv 1909.05858); θ > 1 discourages repeats."""
    vocab = scores.shape[-1]
    ids = input_ids if attention_mask is None else \
        input_ids.masked_fill(attention_mask[:, -input_ids.shape[1]:] == 0, vocab)
    seen = torch.zeros(scores.shape[0], vocab + 1, dtype=torch.bool, device=scores.device)
    seen.scatter_(1, ids, True)
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen[:, :vocab], penalised, scores)


def _check_min_new_tokens(*, min_new_tokens: int, prompt_length: int, eos_token_id: Any) -> None:
    _int_at_least("min_new_tokens", min_new_tokens, 0)
    _int_at_least("prompt_length", prompt_length, 0)
    if _token_ids("eos_token_id", eos_token_id) is None:
        raise ValueError("min_new_tokens needs eos_token_id (the tokens it holds back)")


@register_logits_filter("min_new_tokens", check=_check_min_new_tokens)
def min_new_tokens(input_ids: Tensor, scores: Tensor, *, min_new_tokens: int, prompt_length: int,
                   eos_token_id: int | list[int]) -> Tensor:
    """``<eos>`` gets ``-inf`` while fewer than ``min_new_tokens`` tokens follow the prompt."""
    if input_ids.shape[1] - prompt_length >= min_new_tokens:
        return scores
    out = scores.clone()
    out[:, torch.as_tensor(_token_ids("eos_token_id", eos_token_id), device=scores.device)] = \
        _NEG_INF
    return out


# -- binding and chaining -----------------------------------------------------------------------
class LogitsFilter:
    """A registered filter bound to its parameters: a logits processor.

    Args:
        name: A name of :data:`LOGITS_FILTERS`.
        **params: The filter's parameters (unknown or missing ones raise ``ValueError`` naming the
            allowed ones; values are checked by the filter's ``check``).

    Example:
        >>> import torch
        >>> f = LogitsFilter("top_k", top_k=2)
        >>> f(torch.zeros(1, 1, dtype=torch.long), torch.tensor([[1.0, 3.0, 2.0]]))
        tensor([[-inf, 3., 2.]])
    """

    def __init__(self, name: str, **params: Any) -> None:
        self.name = LOGITS_FILTERS.canonical(name)
        self.fn = LOGITS_FILTERS.get(name)
        allowed = logits_filter_options(name)
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown} of logits filter {self.name!r}; "
                             f"allowed: {sorted(allowed)}")
        missing = sorted(k for k, d in allowed.items() if d is inspect.Parameter.empty
                         and k not in params)
        if missing:
            raise ValueError(f"logits filter {self.name!r} needs {missing}")
        check = LOGITS_FILTERS.meta(name).get("check")
        if check is not None:
            check(**params)
        self.params = params
        names = inspect.signature(self.fn).parameters
        self.context = tuple(c for c in CONTEXT_ARGUMENTS if c in names)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        return self.fn(input_ids, scores, **self.params)

    def apply(self, input_ids: Tensor, scores: Tensor, **context: Any) -> Tensor:
        """``__call__`` with the generation context (``attention_mask``) the filter uses.

        (``__call__`` takes exactly ``(input_ids, scores)``, so the filter also runs inside
        transformers' ``LogitsProcessorList``, which insists on every extra argument.)
        """
        extra = {k: context[k] for k in self.context if k in context}
        return self.fn(input_ids, scores, **self.params, **extra)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"LogitsFilter({self.name!r}, {args})"


def _context_names(processor: Callable[..., Tensor]) -> tuple[str, ...] | None:
    """The context arguments ``processor`` accepts (``None`` = all, through ``**kwargs``)."""
    try:
        params = inspect.signature(processor).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return ()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return tuple(c for c in CONTEXT_ARGUMENTS if c in params)


class LogitsProcessorList(list):
    """Processors applied in order: ``scores = p(input_ids, scores[, **context])`` for each ``p``.

    Holds any callables (formerlab's :class:`LogitsFilter`, transformers' processors, plain
    functions). Context arguments (``attention_mask``) reach only the processors that name them
    (or take ``**kwargs``); the state methods reach the processors that define them.
    """

    def __call__(self, input_ids: Tensor, scores: Tensor, **context: Any) -> Tensor:
        for p in self:
            if isinstance(p, LogitsFilter):
                scores = p.apply(input_ids, scores, **context)
            else:
                names = _context_names(p)
                kw = context if names is None else {k: context[k] for k in names if k in context}
                scores = p(input_ids, scores, **kw)
            if not isinstance(scores, Tensor):
                raise TypeError(f"logits processor {p!r} returned {type(scores).__name__}, "
                                "not a tensor of scores")
        return scores

    def _each(self, method: str, *args: Any) -> None:
        for p in self:
            fn = getattr(p, method, None)
            if callable(fn):
                fn(*args)

    def prefill(self, input_ids: Tensor, logits: Tensor, attention_mask: Tensor | None) -> None:
        """Show the prompt's logits ``(B, n, V)`` to the processors that keep state."""
        self._each("prefill", input_ids, logits, attention_mask)

    def reorder(self, index: Tensor) -> None:
        self._each("reorder", index)

    def batch_select(self, index: Tensor) -> None:
        self._each("batch_select", index)

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._each("batch_repeat_interleave", repeats)

    @property
    def wants_prompt_logits(self) -> bool:
        return any(callable(getattr(p, "prefill", None)) for p in self)


def as_processor_list(processors: Any) -> LogitsProcessorList:
    """A :class:`LogitsProcessorList` from ``None``, one callable or an iterable of callables
    (transformers' ``LogitsProcessorList`` included)."""
    if processors is None:
        return LogitsProcessorList()
    items: Iterable[Any] = [processors] if callable(processors) and not isinstance(
        processors, (list, tuple)) else processors
    try:
        items = list(items)
    except TypeError:
        raise TypeError("logits_processor must be a callable (input_ids, scores) -> scores or a "
                        f"list of them, got {type(processors).__name__}") from None
    bad = [type(p).__name__ for p in items if not callable(p)]
    if bad:
        raise TypeError(f"logits_processor entries must be callables (input_ids, scores) -> "
                        f"scores, got {bad}")
    return LogitsProcessorList(items)


def build_logits_processor(
    *,
    do_sample: bool = False,
    temperature: float | None = None,
    top_k: int | None = None,
    top_p: float | None = None,
    min_p: float | None = None,
    repetition_penalty: float | None = None,
    min_new_tokens: int | None = None,
    prompt_length: int = 0,
    eos_token_id: list[int] | None = None,
    consistent: bool = False,
    num_beams: int = 1,
    logits_processor: Any = None,
) -> LogitsProcessorList:
    """The processor chain :func:`~formerlab.generate.generate` applies, in transformers' order.

    ``repetition_penalty`` and ``min_new_tokens``, then the caller's ``logits_processor``, then —
    only when sampling — ``temperature``, ``top_k``, ``top_p``, ``min_p``. Truncation keeps at
    least one token (``1 + len(eos)`` in beam sampling, as transformers does); ``consistent=True``
    keeps the ``eos_token_id`` ids through every truncation.

    Returns:
        A :class:`LogitsProcessorList`.
    """
    chain = LogitsProcessorList()
    if repetition_penalty is not None and repetition_penalty != 1.0:
        chain.append(LogitsFilter("repetition_penalty", penalty=repetition_penalty))
    if min_new_tokens and eos_token_id:
        chain.append(LogitsFilter("min_new_tokens", min_new_tokens=min_new_tokens,
                                  prompt_length=prompt_length, eos_token_id=eos_token_id))
    chain.extend(as_processor_list(logits_processor))
    if not do_sample:
        return chain
    if consistent and not eos_token_id:
        raise ValueError("consistent=True keeps <eos> in the sampling support: give eos_token_id")
    keep = max(2, 1 + len(eos_token_id or [])) if num_beams > 1 else 1
    eos = list(eos_token_id) if consistent else None
    if temperature is not None and temperature != 1.0:
        chain.append(LogitsFilter("temperature", temperature=temperature))
    if top_k:
        chain.append(LogitsFilter("top_k", top_k=top_k, min_tokens_to_keep=keep, eos_token_id=eos))
    if top_p is not None and top_p < 1.0:
        chain.append(LogitsFilter("top_p", top_p=top_p, min_tokens_to_keep=keep, eos_token_id=eos))
    if min_p is not None:
        chain.append(LogitsFilter("min_p", min_p=min_p, min_tokens_to_keep=keep, eos_token_id=eos))
    return chain
