"""The "can't stop" problem: consistent sampling and the self-terminating language model.

kexue.fm/archives/7500 reads Welleck et al., "Consistency of a Recurrent Language Model With
Respect to Incomplete Decoding" (ICML 2020, arXiv 2002.02492):

- **Bounded states stop ancestral sampling.** With logits ``u_v = w_vᵀh + b_v`` and ``‖h‖ ≤ R``
  (a final LayerNorm / RMSNorm bounds it), ``p(eos) ≥ δ = 1 / Σ_v exp(R‖w_v − w_eos‖ + b_v −
  b_eos)`` at every step, so the length is dominated by a geometric law: ``P(L > T) ≤ (1 − δ)^T``
  and ``E[L] ≤ 1/δ`` (:func:`eos_probability_floor`).
- **Incomplete decoders need not stop** (greedy, beam, top-k, nucleus may give ``<eos>`` zero
  mass forever). **Consistent** top-k / nucleus keep ``<eos>`` in the support with its own
  probability (``eos_token_id`` of the truncation filters, ``generate(consistent=True)``,
  :func:`sample`), so the bound above holds for them too.
- **Self-terminating (ST) LM** for deterministic decoding::

      β_t = (1 − ε)·sigmoid(u_eos,t)            ∈ [0, 1 − ε]
      1 − p_eos,t = Π_{i ≤ t} β_i                (t counted from 0)
      p(v) = (1 − p_eos,t)·softmax_{V∖eos}(u)_v  for v ≠ eos

  so ``p_eos,t ≥ 1 − (1 − ε)^{t+1}`` rises to one: greedy decoding emits ``<eos>`` by step
  ``t + 1 = ⌈ln ½ / ln(1 − ε)⌉`` (693 for ε = 1e-3, 69 for ε = 1e-2;
  :func:`greedy_termination_bound`), beam search stops too, and ancestral sampling has
  ``P(L > T) ≤ (1 − ε)^{T(T+1)/2}``, ``E[L] ≤ Σ_T (1 − ε)^{T(T+1)/2}``
  (:func:`expected_length_bound`, equality when every ``β = 1 − ε``).

:func:`self_terminating_log_probs` computes it in log space (a running sum of ``log β``, as the
paper's ``st_softmax`` but without its clamps); :class:`SelfTerminatingHead` is an LM head that
returns it, and :class:`SelfTerminatingLogits` the decoding-time form used by
``generate(self_terminating=ε)``, which carries ``Σ log β`` from step to step (and through beam
reordering). Su's verdict: the paper says what and what to do, not why.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .processors import LogitsFilter

__all__ = [
    "SelfTerminatingHead",
    "SelfTerminatingLogits",
    "SelfTerminatingOutput",
    "eos_probability_floor",
    "expected_length_bound",
    "greedy_termination_bound",
    "non_termination_ratio",
    "sample",
    "self_terminating_log_probs",
]


def _check_eps(eps: Any) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0.0 < eps < 1.0:
        raise ValueError(f"eps (the self-terminating bound ε) must lie in (0, 1), got {eps!r}")
    return float(eps)


def _check_eos(eos_token_id: Any, vocab: int | None = None) -> int:
    if isinstance(eos_token_id, bool) or not isinstance(eos_token_id, int) or eos_token_id < 0 \
            or (vocab is not None and eos_token_id >= vocab):
        raise ValueError(f"eos_token_id must be a token id in [0, {vocab}), got {eos_token_id!r}")
    return eos_token_id


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 − exp(x))`` for ``x ≤ 0``, accurate at both ends."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# -- bounds ------------------------------------------------------------------------------------
def greedy_termination_bound(eps: float) -> int:
    """``⌈ln ½ / ln(1 − ε)⌉``: by this step count ``p_eos > ½`` and greedy decoding of an ST-LM
    has emitted ``<eos>``."""
    eps = _check_eps(eps)
    return math.ceil(math.log(0.5) / math.log1p(-eps))


def expected_length_bound(eps: float, *, tol: float = 1e-12) -> float:
    """``Σ_{T ≥ 0} (1 − ε)^{T(T+1)/2}``: the largest expected length (tokens, ``<eos>`` included)
    of ancestral sampling from an ST-LM with bound ε."""
    eps = _check_eps(eps)
    total, t, log_q = 0.0, 0, math.log1p(-eps)
    while True:
        term = math.exp(log_q * t * (t + 1) / 2)
        total += term
        if term < tol:
            return total
        t += 1


def eos_probability_floor(weight: Tensor, eos_token_id: int, radius: float,
                          bias: Tensor | None = None) -> float:
    """``δ = min_{‖h‖ ≤ R} softmax(W h + b)_eos = 1 / Σ_v exp(R‖w_v − w_eos‖ + b_v − b_eos)``.

    Args:
        weight: The output layer ``(vocab, hidden)``.
        eos_token_id: Row of ``<eos>``.
        radius: ``R``, a bound on ``‖h‖`` (``√d · max|g|`` after an RMSNorm with gain ``g``).
        bias: Optional ``(vocab,)`` output bias.

    Returns:
        δ; ancestral (and consistent truncated) sampling then has ``E[L] ≤ 1/δ``.
    """
    if weight.dim() != 2:
        raise ValueError(f"weight must be (vocab, hidden), got {tuple(weight.shape)}")
    _check_eos(eos_token_id, weight.shape[0])
    if not radius >= 0:
        raise ValueError(f"radius must be >= 0, got {radius!r}")
    w = weight.detach().double()
    gap = radius * (w - w[eos_token_id]).norm(dim=-1)
    if bias is not None:
        b = bias.detach().double()
        gap = gap + b - b[eos_token_id]
    return float(torch.exp(-torch.logsumexp(gap, 0)))


def non_termination_ratio(lengths: Tensor | list[int], L: int) -> float:
    """``r_L``: the fraction of outputs of length ≥ ``L`` (arXiv 2002.02492's non-termination
    ratio; count an output cut at the cap as not terminated by giving its length as the cap)."""
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1 or lengths.numel() == 0:
        raise ValueError(f"lengths must be a non-empty 1-D list, got shape {tuple(lengths.shape)}")
    return float((lengths >= L).double().mean())


# -- the self-terminating parameterisation ------------------------------------------------------
class SelfTerminatingOutput(NamedTuple):
    """``log_probs`` like the logits; ``log_beta_sum`` ``(batch,)``, ``Σ log β`` after the last
    position (pass it as ``past_log_beta`` to continue)."""

    log_probs: Tensor
    log_beta_sum: Tensor


def self_terminating_log_probs(
    logits: Tensor,
    eos_token_id: int,
    eps: float = 1e-3,
    *,
    attention_mask: Tensor | None = None,
    past_log_beta: Tensor | None = None,
) -> SelfTerminatingOutput:
    """Self-terminating log-probabilities of ``logits`` (``(B, n, V)``, or ``(B, V)`` = one step).

    Args:
        logits: Raw scores; the ``eos_token_id`` column is the ST logit ``w_eosᵀh + b_eos``.
        eos_token_id: The ``<eos>`` id.
        eps: ε, so that ``β ≤ 1 − ε``.
        attention_mask: ``(B, n)``; positions with 0 (padding) contribute ``log β = 0``.
        past_log_beta: ``(B,)`` running ``Σ log β`` of earlier positions (default 0).

    Returns:
        :class:`SelfTerminatingOutput` ``(log_probs, log_beta_sum)``; ``log_probs`` sums to one
        (in probability) over the vocabulary at every position.
    """
    eps = _check_eps(eps)
    step = logits.dim() == 2
    x = logits[:, None] if step else logits
    if x.dim() != 3:
        raise ValueError(f"logits must be (batch, seq, vocab) or (batch, vocab), got "
                         f"{tuple(logits.shape)}")
    _check_eos(eos_token_id, x.shape[-1])
    work = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(work)
    # the running sum is kept in float64: thousands of steps add up without drift
    log_beta = math.log1p(-eps) + F.logsigmoid(x[..., eos_token_id].double())  # (B, n)
    if attention_mask is not None:
        log_beta = log_beta * attention_mask[:, -x.shape[1]:].double()
    cum = log_beta.cumsum(-1)
    if past_log_beta is not None:
        cum = cum + past_log_beta.double()[:, None]
    others = x.clone()
    others[..., eos_token_id] = float("-inf")
    out = cum[..., None].to(work) + others.log_softmax(-1)
    out[..., eos_token_id] = _log1mexp(cum).to(work)
    out = out.to(logits.dtype if logits.is_floating_point() else work)
    return SelfTerminatingOutput(out[:, 0] if step else out, cum[:, -1])


class SelfTerminatingHead(nn.Module):
    """An LM head ``(…, hidden) → (…, vocab)`` log-probabilities of the self-terminating LM.

    Args:
        hidden_size: Width of the hidden states.
        vocab_size: Vocabulary size.
        eos_id: The ``<eos>`` id (its output row gives ``β``).
        eps: ε (the paper's default 1e-3).
        bias: Output bias (``b_eos`` of the formula).

    ``forward(hidden, attention_mask=None, past_log_beta=None)`` returns a
    :class:`SelfTerminatingOutput`: full-sequence mode on ``(B, n, hidden)``, incremental mode on
    ``(B, hidden)`` (or ``(B, m, hidden)``) with the previous call's ``log_beta_sum``.
    """

    def __init__(self, hidden_size: int, vocab_size: int, eos_id: int, eps: float = 1e-3, *,
                 bias: bool = True) -> None:
        super().__init__()
        self.eos_id = _check_eos(eos_id, vocab_size)
        self.eps = _check_eps(eps)
        self.proj = nn.Linear(hidden_size, vocab_size, bias=bias)

    def forward(self, hidden: Tensor, attention_mask: Tensor | None = None,
                past_log_beta: Tensor | None = None) -> SelfTerminatingOutput:
        return self_terminating_log_probs(self.proj(hidden), self.eos_id, self.eps,
                                          attention_mask=attention_mask,
                                          past_log_beta=past_log_beta)

    def extra_repr(self) -> str:
        return f"eos_id={self.eos_id}, eps={self.eps}"


class SelfTerminatingLogits:
    """Decoding-time ST: turns each step's raw logits into ST log-probabilities.

    Args:
        eos_token_id: The ``<eos>`` id.
        eps: ε.
        include_prompt: Count ``t`` from the start of the sequence (the prompt's positions add
            their ``β``, as in training and in the paper's decoder); ``False`` counts from the
            first generated token, so the bounds apply to the new tokens alone.

    It keeps ``Σ log β`` per row: :func:`~formerlab.generate.generate` calls :meth:`prefill` with
    the prompt's logits and the state methods when beams are reordered or rows dropped. It is
    applied to the raw logits before any other processor (it *is* the model's distribution).
    """

    def __init__(self, eos_token_id: int, eps: float = 1e-3, *, include_prompt: bool = True) -> None:
        self.eos_token_id = _check_eos(eos_token_id)
        self.eps = _check_eps(eps)
        self.include_prompt = bool(include_prompt)
        self.log_beta: Tensor | None = None

    def prefill(self, input_ids: Tensor, logits: Tensor, attention_mask: Tensor | None) -> None:
        """Start from the prompt: ``logits`` ``(B, n, V)`` of every prompt position; the last
        position's β is added by the first :meth:`__call__`."""
        b = logits.shape[0]
        self.log_beta = torch.zeros(b, dtype=torch.float64, device=logits.device)
        if self.include_prompt and logits.shape[1] > 1:
            mask = None if attention_mask is None else attention_mask[:, :logits.shape[1] - 1]
            _, self.log_beta = self_terminating_log_probs(
                logits[:, :-1], self.eos_token_id, self.eps, attention_mask=mask)

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        if self.log_beta is None or self.log_beta.shape[0] != scores.shape[0]:
            if self.log_beta is not None:
                raise ValueError(f"SelfTerminatingLogits holds {self.log_beta.shape[0]} rows, the "
                                 f"scores have {scores.shape[0]}")
            self.log_beta = torch.zeros(scores.shape[0], dtype=torch.float64, device=scores.device)
        out, self.log_beta = self_terminating_log_probs(
            scores, self.eos_token_id, self.eps, past_log_beta=self.log_beta)
        return out

    def reorder(self, index: Tensor) -> None:
        if self.log_beta is not None:
            self.log_beta = self.log_beta.index_select(0, index.to(self.log_beta.device))

    def batch_select(self, index: Tensor) -> None:
        if self.log_beta is not None:
            if index.dtype == torch.bool:
                index = index.nonzero().flatten()
            self.reorder(index)

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.log_beta is not None:
            self.log_beta = self.log_beta.repeat_interleave(repeats, 0)

    def p_eos(self) -> Tensor | None:
        """``p_eos`` of the last step per row (``None`` before the first)."""
        return None if self.log_beta is None else -torch.expm1(self.log_beta)

    def __repr__(self) -> str:
        return (f"SelfTerminatingLogits(eos_token_id={self.eos_token_id}, eps={self.eps}, "
                f"include_prompt={self.include_prompt})")


# -- one consistent sampling step ---------------------------------------------------------------
def sample(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    always_include_eos: bool = True,
    eos_id: int | list[int] | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Draw one token per row of ``logits`` ``(B, V)`` with (consistent) top-k / nucleus.

    Args:
        logits: Next-token scores.
        temperature: τ (applied first).
        top_k, top_p: Truncations (``None`` = none); applied in that order.
        always_include_eos: Keep ``eos_id`` in the support with its own probability (the
            consistent variants of arXiv 2002.02492).
        eos_id: The ``<eos>`` id(s); required when ``always_include_eos`` truncates.
        generator: Source of randomness (a fresh unseeded one if ``None``; the global RNG is
            never used).

    Returns:
        ``(B,)`` token ids.
    """
    if logits.dim() != 2:
        raise ValueError(f"logits must be (batch, vocab), got {tuple(logits.shape)}")
    truncating = bool(top_k) or (top_p is not None and top_p < 1.0)
    if always_include_eos and truncating and eos_id is None:
        raise ValueError("always_include_eos=True needs eos_id")
    eos = eos_id if always_include_eos else None
    dummy = torch.zeros(logits.shape[0], 0, dtype=torch.long, device=logits.device)
    scores = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    scores = LogitsFilter("temperature", temperature=temperature)(dummy, scores) \
        if temperature != 1.0 else scores
    if top_k:
        scores = LogitsFilter("top_k", top_k=top_k, eos_token_id=eos)(dummy, scores)
    if top_p is not None and top_p < 1.0:
        scores = LogitsFilter("top_p", top_p=top_p, eos_token_id=eos)(dummy, scores)
    if generator is None:
        generator = torch.Generator(device=logits.device)
        generator.seed()
    return torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]
