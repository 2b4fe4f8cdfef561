"""Pure-Python reference lattice: the oracle for the compiled kernels and the fallback without numba.

A vocabulary maps byte strings (pieces) to scores ``v = log p(piece)``. A *match* is a triple
``(s, e, v)`` with ``text[s:e]`` a piece. Matches are processed in non-decreasing end position, so
every quantity indexed by ``s`` is final when a match starting at ``s`` is used. Within one end
position formerlab's **canonical arrival order is shorter pieces first** (the order in which a
reversed trie walked from ``e`` finds them); BytePiece's automaton emits the longer ones first
(``find_matches(..., longest_first=True)``).

- Viterbi decoding (kexue.fm/archives/9752): ``best[e] = max(best[s] + v)``. Ties keep the *last*
  arrival (``>=``), i.e. the **longest last piece** wins a tie (fewer tokens).
- Perfect sampling (kexue.fm/archives/9811): ``logZ[e] = logsumexp(logZ[s] + α·v)`` and a
  weighted reservoir over the arrivals at ``e`` keeps ``back[e] = s`` with probability
  ``Z_s e^{αv} / Z_e``; backtracking then draws every segmentation with probability
  ``∝ exp(α·score)`` exactly (the products telescope), whatever the arrival order.
- Legacy pairwise sampling (kexue.fm/archives/9768), kept for the ablation: the newcomer replaces
  the incumbent with probability ``sigmoid(α·(cand − best[e]))``; biased towards late arrivals.
  formerlab feeds it BytePiece's order (longest first), as in the post.

Randomness: a sampler draws from a SplitMix64 stream whose 64-bit seed the caller takes from its
``torch.Generator``, **one uniform per reachable arrival that finds the reservoir non-empty**, in
arrival order (the first reachable arrival at an end position is kept for sure). The reservoir is an
"online softmax": ``top`` is the running maximum of ``lw = logZ[s] + α·v``, ``total`` the running
``Σ exp(lw − top)`` (rescaled by ``exp(top_old − top_new)`` when the maximum grows), and the arrival
is kept when ``u·total < w`` with ``w = exp(lw − top)`` — the textbook test ``u < exp(lw − logZ_so_far)``
with one ``exp`` per match. The compiled kernels use the same stream, order and formulas, so both
paths give the same samples for the same seed.

Everything here is iterative (no recursion), so very long inputs only cost time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import groupby, pairwise
from typing import NamedTuple

__all__ = [
    "Match",
    "SplitMix64",
    "enumerate_segmentations",
    "find_matches",
    "forward_backward",
    "legacy_sample",
    "log_partition",
    "perfect_sample",
    "segmentation_score",
    "viterbi",
]

NEG_INF = float("-inf")
_MASK64 = (1 << 64) - 1


class Match(NamedTuple):
    """One lattice edge: ``text[start:end]`` is a piece with log-probability ``score``."""

    start: int
    end: int
    score: float


class SplitMix64:
    """The uniform stream shared by the reference and the compiled samplers (Steele et al. 2014).

    ``uniform()`` returns ``k · 2^-53`` for the top 53 bits ``k`` of the next output, in [0, 1).
    """

    def __init__(self, seed: int) -> None:
        self.state = seed & _MASK64

    def uniform(self) -> float:
        self.state = (self.state + 0x9E3779B97F4A7C15) & _MASK64
        z = self.state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
        z ^= z >> 31
        return (z >> 11) * 2.0**-53


def find_matches(
    text: bytes,
    vocab: Mapping[bytes, float],
    max_len: int | None = None,
    *,
    longest_first: bool = False,
) -> list[Match]:
    """All matches of ``vocab`` in ``text``: end ascending, shorter first (or longer first)."""
    if max_len is None:
        max_len = max((len(p) for p in vocab), default=0)
    out = []
    for e in range(1, len(text) + 1):
        starts = range(e - 1, max(0, e - max_len) - 1, -1)
        for s in reversed(starts) if longest_first else starts:
            piece = text[s:e]
            if piece in vocab:
                out.append(Match(s, e, float(vocab[piece])))
    return out


def _check_order(matches: Sequence[Match]) -> None:
    for a, b in pairwise(matches):
        if b.end < a.end:
            raise ValueError("matches must be sorted by non-decreasing end position")


def _backtrack(text: bytes, back: list[int]) -> list[bytes]:
    if text and back[len(text)] < 0:
        raise ValueError("text cannot be segmented with this vocabulary")
    pieces = []
    e = len(text)
    while e > 0:
        s = back[e]
        pieces.append(text[s:e])
        e = s
    pieces.reverse()
    return pieces


def viterbi(text: bytes, matches: Sequence[Match]) -> tuple[list[bytes], float]:
    """Best segmentation and its score; ties keep the last arrival (``>=``)."""
    _check_order(matches)
    best = [NEG_INF] * (len(text) + 1)
    back = [-1] * (len(text) + 1)
    best[0] = 0.0
    for s, e, v in matches:
        cand = best[s] + v
        if cand >= best[e] and cand > NEG_INF:
            best[e], back[e] = cand, s
    return _backtrack(text, back), best[len(text)]


class _Reservoir:
    """Online log-sum-exp over the arrivals at one end position (see the module docstring)."""

    def __init__(self) -> None:
        self.top = NEG_INF
        self.total = 0.0

    def add(self, lw: float) -> float:
        """Account for an arrival of log-weight ``lw``; return its weight relative to ``top``."""
        if lw > self.top:
            self.total = self.total * math.exp(self.top - lw) + 1.0
            self.top = lw
            return 1.0
        if lw > NEG_INF:
            w = math.exp(lw - self.top)
            self.total += w
            return w
        return 0.0

    def log_total(self) -> float:
        return self.top + math.log(self.total) if self.total > 0.0 else NEG_INF


def log_partition(text: bytes, matches: Sequence[Match], alpha: float) -> float:
    """``log Σ_seg exp(α·score(seg))`` by the forward recursion (Viterbi with max → logsumexp)."""
    _check_order(matches)
    logz = [NEG_INF] * (len(text) + 1)
    logz[0] = 0.0
    for e, group in groupby(matches, key=lambda m: m.end):
        acc = _Reservoir()
        for s, _, v in group:
            acc.add(logz[s] + alpha * v)
        logz[e] = acc.log_total()
    return logz[len(text)]


def perfect_sample(
    text: bytes, matches: Sequence[Match], alpha: float, rng: SplitMix64
) -> list[bytes]:
    """One segmentation drawn with probability ``∝ exp(α·score)`` (kexue.fm/archives/9811)."""
    _check_order(matches)
    logz = [NEG_INF] * (len(text) + 1)
    back = [-1] * (len(text) + 1)
    logz[0] = 0.0
    for e, group in groupby(matches, key=lambda m: m.end):
        acc = _Reservoir()
        for s, _, v in group:
            lw = logz[s] + alpha * v
            if acc.total == 0.0:  # empty reservoir: a reachable arrival is kept, no uniform
                if acc.add(lw) > 0.0:
                    back[e] = s
                continue
            u = rng.uniform()
            w = acc.add(lw)
            if u * acc.total < w:  # keep this arrival with probability w / (total so far)
                back[e] = s
        logz[e] = acc.log_total()
    return _backtrack(text, back)


def _sigmoid(x: float) -> float:
    if x >= 0.0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def legacy_sample(
    text: bytes, matches: Sequence[Match], alpha: float, rng: SplitMix64
) -> list[bytes]:
    """The 2023-09 pairwise Viterbi sampler (kexue.fm/archives/9768): biased, for ablations only."""
    _check_order(matches)
    best = [NEG_INF] * (len(text) + 1)
    back = [-1] * (len(text) + 1)
    best[0] = 0.0
    for s, e, v in matches:
        if best[s] == NEG_INF:
            continue
        cand = best[s] + v
        # the first arrival is kept for sure (no uniform); a newcomer wins with prob. sigmoid
        if back[e] < 0 or rng.uniform() < _sigmoid(alpha * (cand - best[e])):
            best[e], back[e] = cand, s
    return _backtrack(text, back)


def _logaddexp(a: float, b: float) -> float:
    if a == NEG_INF:
        return b
    if b == NEG_INF:
        return a
    top = max(a, b)
    return top + math.log1p(math.exp(-abs(a - b)))


def forward_backward(
    text: bytes, matches: Sequence[Match], alpha: float
) -> tuple[list[float], list[float], list[float]]:
    """Forward ``F``, backward ``G`` and the expected count of every match (same order).

    ``F[e] = log Σ_{seg of text[:e]} e^{α·score}``, ``G[s] = log Σ_{seg of text[s:]} e^{α·score}``
    and the count of match ``(s, e, v)`` is ``exp(F[s] + α·v + G[e] − F[L])``.
    """
    n = len(text)
    fwd = [NEG_INF] * (n + 1)
    bwd = [NEG_INF] * (n + 1)
    fwd[0] = 0.0
    bwd[n] = 0.0
    _check_order(matches)
    for s, e, v in matches:
        fwd[e] = _logaddexp(fwd[e], fwd[s] + alpha * v)
    for s, e, v in reversed(matches):
        bwd[s] = _logaddexp(bwd[s], alpha * v + bwd[e])
    if fwd[n] == NEG_INF:
        raise ValueError("text cannot be segmented with this vocabulary")
    counts = [
        math.exp(fwd[s] + alpha * v + bwd[e] - fwd[n]) if fwd[s] > NEG_INF else 0.0
        for s, e, v in matches
    ]
    return fwd, bwd, counts


def segmentation_score(pieces: Iterable[bytes], vocab: Mapping[bytes, float]) -> float:
    """``Σ v(piece)`` of a segmentation."""
    return math.fsum(vocab[p] for p in pieces)


def enumerate_segmentations(
    text: bytes, vocab: Mapping[bytes, float], *, limit: int = 1_000_000
) -> list[tuple[bytes, ...]]:
    """Every segmentation of ``text`` into pieces of ``vocab`` (brute force, for tests).

    Built right to left (``segs[i]`` = segmentations of ``text[i:]``), so no recursion.
    Raises ``ValueError`` when there are more than ``limit`` segmentations.
    """
    if isinstance(text, str):
        text = text.encode("utf-8")
    if not isinstance(text, (bytes, bytearray)):
        raise TypeError(f"text must be bytes or str, got {type(text).__name__}")
    text = bytes(text)
    n = len(text)
    max_len = max((len(p) for p in vocab), default=0)
    segs: list[list[tuple[bytes, ...]]] = [[] for _ in range(n + 1)]
    segs[n] = [()]
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, min(n, i + max_len) + 1):
            piece = text[i:j]
            if piece in vocab and segs[j]:
                segs[i].extend((piece, *rest) for rest in segs[j])
                if len(segs[i]) > limit:
                    raise ValueError(
                        f"more than limit={limit} segmentations; use a shorter text"
                    )
    return segs[0]
