"""Lattice quantities against the brute-force enumeration oracle."""

from __future__ import annotations

import math
import random

import pytest
import torch

from formerlab.tokenize import UnigramLattice, enumerate_segmentations
from formerlab.tokenize import reference as ref

GOLDEN = {b"a": math.log(0.5), b"b": math.log(0.3), b"ab": math.log(0.2)}  # the golden lattice



def brute_logz(lat: UnigramLattice, text: bytes, alpha: float) -> float:
    scores = [alpha * lat.score(seg) for seg in lat.enumerate_segmentations(text)]
    top = max(scores)
    return top + math.log(math.fsum(math.exp(s - top) for s in scores))


def test_enumerate_golden_and_limits():
    assert sorted(enumerate_segmentations(b"ab", GOLDEN)) == [(b"a", b"b"), (b"ab",)]
    assert enumerate_segmentations(b"", GOLDEN) == [()]
    assert enumerate_segmentations(b"c", GOLDEN) == []
    assert len(enumerate_segmentations(b"a" * 12, {b"a": 0.0, b"aa": 0.0})) == 233  # Fibonacci
    with pytest.raises(ValueError, match="limit"):
        enumerate_segmentations(b"a" * 30, {b"a": 0.0, b"aa": 0.0}, limit=1000)
    with pytest.raises(TypeError):
        enumerate_segmentations(123, GOLDEN)


@pytest.mark.parametrize(
    ("alpha", "p_ab", "logz"),
    [(0.0, 0.5, math.log(2)), (1.0, 0.2 / 0.35, math.log(0.35)), (2.0, 0.64, math.log(0.0625))],
)
def test_golden_example(backend, alpha, p_ab, logz):
    """Spec §6.1: vocab {a: .5, b: .3, ab: .2}, text "ab"."""
    lat = UnigramLattice(GOLDEN, backend=backend)
    assert lat.viterbi("ab") == [b"ab"]
    assert lat.log_partition("ab", alpha) == pytest.approx(logz, abs=1e-12)
    dist = lat.exact_distribution("ab", alpha)
    assert dist[(b"ab",)] == pytest.approx(p_ab, abs=1e-12)
    assert dist[(b"a", b"b")] == pytest.approx(1 - p_ab, abs=1e-12)
    samples = lat.sample_many("ab", alpha, 20_000, torch.Generator().manual_seed(1))
    freq = samples.count((b"ab",)) / len(samples)
    assert abs(freq - p_ab) < 4 * math.sqrt(p_ab * (1 - p_ab) / len(samples))


@pytest.mark.parametrize("order", ["shortest", "longest"])
def test_golden_reservoir_whichever_arrives_first(order):
    """At e = 2 the reservoir keeps `ab` with probability 0.2/0.35 in either arrival order."""
    matches = ref.find_matches(b"ab", GOLDEN, longest_first=order == "longest")
    rng = ref.SplitMix64(7)
    n = 20_000
    hits = sum(ref.perfect_sample(b"ab", matches, 1.0, rng) == [b"ab"] for _ in range(n))
    p = 0.2 / 0.35
    assert abs(hits / n - p) < 4 * math.sqrt(p * (1 - p) / n)


def test_log_partition_matches_brute_force(backend, toy):
    rng = random.Random(0)
    for _ in range(15):
        vocab = toy.random_vocab(rng)
        lat = UnigramLattice(vocab, backend=backend)
        text = toy.random_text(rng)
        for alpha in (0.0, 0.2, 1.0, 3.0):
            assert lat.log_partition(text, alpha) == pytest.approx(
                brute_logz(lat, text, alpha), abs=1e-12
            )


def test_viterbi_is_optimal_with_documented_ties(backend, toy):
    rng = random.Random(1)
    for _ in range(30):
        vocab = toy.random_vocab(rng)
        lat = UnigramLattice(vocab, backend=backend)
        text = toy.random_text(rng)
        segs = lat.enumerate_segmentations(text)
        best = max(lat.score(s) for s in segs)
        decoded = lat.viterbi(text)
        assert b"".join(decoded) == text
        assert lat.score(decoded) == pytest.approx(best, abs=1e-12)
    # ties: every segmentation of "ab" scores 0; the longest last piece wins
    tie = UnigramLattice({b"a": -1.0, b"b": -1.0, b"ab": -2.0}, backend=backend)
    assert tie.viterbi("ab") == [b"ab"]
    tie3 = UnigramLattice({b"a": -1.0, b"bc": -2.0, b"ab": -2.0, b"c": -1.0}, backend=backend)
    assert tie3.viterbi("abc") == [b"a", b"bc"]


def test_expected_counts_match_brute_force(backend, toy):
    rng = random.Random(2)
    for _ in range(10):
        vocab = toy.random_vocab(rng)
        lat = UnigramLattice(vocab, backend=backend)
        text = toy.random_text(rng, lo=3)
        for alpha in (0.0, 1.0, 2.5):
            exact = lat.exact_distribution(text, alpha)
            want: dict[bytes, float] = {}
            for seg, p in exact.items():
                for piece in seg:
                    want[piece] = want.get(piece, 0.0) + p
            got = lat.expected_counts(text, alpha)
            assert set(got) <= set(want)
            for piece, value in want.items():
                assert got.get(piece, 0.0) == pytest.approx(value, abs=1e-9)
            n_tokens = sum(p * len(seg) for seg, p in exact.items())
            assert sum(got.values()) == pytest.approx(n_tokens, abs=1e-9)


def test_forward_backward_reference_identity(toy):
    """F[e] + G[e] − F[L] is the log-probability that a boundary falls at e."""
    vocab = toy.random_vocab(random.Random(3))
    text = b"abcabca"
    matches = ref.find_matches(text, vocab)
    fwd, bwd, _ = ref.forward_backward(text, matches, 1.0)
    lat = UnigramLattice(vocab, backend="python")
    exact = lat.exact_distribution(text, 1.0)
    for e in range(1, len(text)):
        p_boundary = sum(p for seg, p in exact.items()
                         if e in {sum(map(len, seg[:k])) for k in range(len(seg) + 1)})
        assert math.exp(fwd[e] + bwd[e] - fwd[-1]) == pytest.approx(p_boundary, abs=1e-12)


def test_large_alpha_is_viterbi_and_zero_alpha_is_uniform(backend, toy):
    vocab = toy.random_vocab(random.Random(4))
    lat = UnigramLattice(vocab, backend=backend)
    text = b"abcabcab"
    segs = lat.enumerate_segmentations(text)
    scores = sorted((lat.score(s) for s in segs), reverse=True)
    assert scores[0] - scores[1] > 0.05  # a unique best segmentation
    decoded = tuple(lat.viterbi(text))
    samples = lat.sample_many(text, 50.0, 2000, torch.Generator().manual_seed(0))
    assert samples.count(decoded) / len(samples) > 0.9
    uniform = list(lat.exact_distribution(text, 0.0).values())
    assert uniform == pytest.approx([1.0 / len(segs)] * len(segs), abs=1e-12)


def test_unsegmentable_text_raises(backend):
    lat = UnigramLattice({b"ab": 0.0}, backend=backend)
    with pytest.raises(ValueError, match="cannot be segmented"):
        lat.viterbi("abc")
    for sampler in ("perfect", "legacy"):
        with pytest.raises(ValueError, match="cannot be segmented"):
            lat.sample("aba", 1.0, sampler=sampler)
    with pytest.raises(ValueError, match="cannot be segmented"):
        lat.expected_counts("a")
    assert lat.log_partition("a") == -math.inf
    assert lat.viterbi("abab") == [b"ab", b"ab"] and lat.viterbi("") == []
