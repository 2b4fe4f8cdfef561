"""Exact-distribution tests of the perfect sampler and the bias of the legacy one.

Every distribution check is a chi-square goodness-of-fit test (p > 1e-3) plus a total-variation
bound against the brute-force ``p^α/Z``; the legacy sampler is the negative control that shows the
same check fails on a biased sampler.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from itertools import groupby

import pytest
import torch

from formerlab.tokenize import UnigramLattice
from formerlab.tokenize import reference as ref
from formerlab.tokenize.engine import NumbaEngine

ALPHAS = (0.0, 0.2, 1.0, 3.0)
N_FAST = 100_000  # samples per (string, α) on the compiled path
N_REF = 10_000  # the reference is ~100x slower; its equality with the fast path is tested below


ABC = {p.encode(): math.log(x) for p, x in dict(
    a=0.2, b=0.15, c=0.1, ab=0.1, bc=0.08, ca=0.07, abc=0.1, bca=0.05, cab=0.06, abca=0.04,
    bcab=0.03).items()}


def _cases(toy):
    abc, text_abc = ABC, b"abcabcab"  # 104 segmentations
    word = "日本語"  # 9 UTF-8 bytes: every byte plus characters, fragments and words
    cjk = {bytes([b]): -6.0 for b in set(word.encode())}
    cjk.update({c.encode(): -2.0 for c in word})
    cjk.update({b"\xe6\x97": -4.0, "日本".encode(): -2.5, "本語".encode(): -3.0, word.encode(): -4.5})
    return [(abc, text_abc), (cjk, word.encode())]


@pytest.mark.parametrize("alpha", ALPHAS)
@pytest.mark.parametrize("kernel", ["linear", "log"])
def test_fast_sampler_matches_exact_distribution(alpha, kernel, toy):
    pytest.importorskip("numba")
    for case, (vocab, text) in enumerate(_cases(toy)):
        lat = UnigramLattice(vocab, backend="numba")
        lat.engine.linear_sampling = kernel == "linear"
        gen = torch.Generator().manual_seed(1000 * case + int(10 * alpha))
        samples = lat.sample_many(text, alpha, N_FAST, gen)
        toy.check_distribution(samples, lat.exact_distribution(text, alpha))


@pytest.mark.parametrize("alpha", ALPHAS)
def test_reference_sampler_matches_exact_distribution(alpha, toy):
    vocab, text = _cases(toy)[0]
    lat = UnigramLattice(vocab, backend="python")
    samples = lat.sample_many(text, alpha, N_REF, torch.Generator().manual_seed(5))
    toy.check_distribution(samples, lat.exact_distribution(text, alpha), tv_max=0.03)


def test_legacy_sampler_fails_the_same_check(toy):
    """Negative control: the distribution check has the power to reject a biased sampler."""
    pytest.importorskip("numba")
    vocab, text = _cases(toy)[0]
    lat = UnigramLattice(vocab, backend="numba")
    samples = lat.sample_many(text, 1.0, N_FAST, torch.Generator().manual_seed(3), sampler="legacy")
    with pytest.raises(AssertionError):
        toy.check_distribution(samples, lat.exact_distribution(text, 1.0))


def _freqs(samples):
    counts = Counter(b"|".join(s).decode() for s in samples)
    return {k: v / len(samples) for k, v in counts.items()}


def test_watching_perfect_vs_legacy(backend, toy):
    """kexue.fm/archives/9811: equal scores → exact 1/3 each; the legacy sampler 1/4, 1/4, 1/2."""
    lat = UnigramLattice(toy.WATCHING, backend=backend)
    n = N_FAST if backend == "numba" else N_REF
    tol = 4 * math.sqrt(0.25 / n)
    perfect = _freqs(lat.sample_many("watching", 1.0, n, torch.Generator().manual_seed(0)))
    assert set(perfect) == {"watch|ing", "wat|ching", "w|atching"}
    for p in perfect.values():
        assert abs(p - 1 / 3) < tol
    # legacy, BytePiece's arrival order (longest first): the last arrival `ing` takes 1/2
    legacy = _freqs(lat.sample_many("watching", 1.0, n, torch.Generator().manual_seed(0),
                                    sampler="legacy"))
    assert abs(legacy["watch|ing"] - 0.5) < tol
    assert abs(legacy["wat|ching"] - 0.25) < tol
    assert abs(legacy["w|atching"] - 0.25) < tol


def _sample_ref(fn, text, matches, alpha, n, seed):
    rng = ref.SplitMix64(seed)
    return [tuple(fn(text, matches, alpha, rng)) for _ in range(n)]


def _shuffle_within_ends(matches, rng):
    out = []
    for _, group in groupby(matches, key=lambda m: m.end):
        group = list(group)
        rng.shuffle(group)
        out.extend(group)
    return out


def test_arrival_order_invariance_perfect_but_not_legacy(toy):
    """Spec §7.4: shuffling matches within an end position leaves the perfect sampler exact."""
    text = b"watching"
    lat = UnigramLattice(toy.WATCHING, backend="python")
    exact = lat.exact_distribution(text, 1.0)
    rng = random.Random(0)
    base = ref.find_matches(text, toy.WATCHING)
    for trial in range(3):
        matches = _shuffle_within_ends(base, rng)
        samples = _sample_ref(ref.perfect_sample, text, matches, 1.0, N_REF, trial)
        toy.check_distribution(samples, exact, tv_max=0.03)
    longest = ref.find_matches(text, toy.WATCHING, longest_first=True)
    shortest = ref.find_matches(text, toy.WATCHING, longest_first=False)
    by_longest = _freqs(_sample_ref(ref.legacy_sample, text, longest, 1.0, N_REF, 1))
    by_shortest = _freqs(_sample_ref(ref.legacy_sample, text, shortest, 1.0, N_REF, 1))
    assert by_longest["watch|ing"] > 0.45 and by_shortest["w|atching"] > 0.45  # last arrival wins
    # on a richer lattice too: the legacy distribution moves with the order, the perfect one not
    vocab, text = _cases(toy)[0]
    exact = UnigramLattice(vocab, backend="python").exact_distribution(text, 1.0)
    orders = [ref.find_matches(text, vocab, longest_first=flag) for flag in (True, False)]
    legacy = [Counter(_sample_ref(ref.legacy_sample, text, m, 1.0, N_REF, 2)) for m in orders]
    tv = 0.5 * sum(abs(legacy[0][k] - legacy[1][k]) for k in exact) / N_REF
    assert tv > 0.05


def test_seeded_reproducibility_and_global_rng_untouched(backend, toy):
    lat = UnigramLattice(toy.random_vocab(random.Random(5)), backend=backend)
    text = b"abcabcabcabc"
    state = torch.random.get_rng_state()
    a = lat.sample_many(text, 1.0, 200, torch.Generator().manual_seed(42))
    b = lat.sample_many(text, 1.0, 200, torch.Generator().manual_seed(42))
    c = lat.sample_many(text, 1.0, 200, torch.Generator().manual_seed(43))
    lat.sample(text, 1.0)  # generator=None: fresh entropy, still no global RNG
    assert torch.equal(torch.random.get_rng_state(), state)
    assert a == b
    assert a != c
    gen = torch.Generator().manual_seed(7)
    first = [lat.sample(text, 1.0, gen) for _ in range(20)]
    assert len(set(map(tuple, first))) > 1  # the generator advances between calls
    gen = torch.Generator().manual_seed(7)
    assert [lat.sample(text, 1.0, gen) for _ in range(20)] == first
    with pytest.raises(TypeError, match="torch.Generator"):
        lat.sample(text, 1.0, generator=42)
    with pytest.raises(ValueError, match="alpha"):
        lat.sample(text, -0.5)
    with pytest.raises(ValueError, match="sampler"):
        lat.sample(text, 1.0, sampler="nbest")


def test_fast_equals_reference_sample_for_sample(toy):
    """Same seeds → the numba kernels and the reference draw identical segmentations."""
    pytest.importorskip("numba")
    rng = random.Random(9)
    for trial in range(12):
        vocab = toy.random_vocab(rng, alphabet=b"ab\xc3\xa9", n_multi=12, max_len=5)
        vocab.update({bytes([b]): -8.0 for b in range(256) if bytes([b]) not in vocab})
        texts = [toy.random_text(rng, alphabet=b"ab\xc3\xa9", lo=0, hi=40) for _ in range(30)]
        slow = UnigramLattice(vocab, backend="python").engine
        fast = UnigramLattice(vocab, backend="numba").engine
        assert isinstance(fast, NumbaEngine)
        for got, want in zip(fast.viterbi(texts), slow.viterbi(texts)):
            assert got.tolist() == want.tolist()
        alpha = rng.choice([0.0, 0.1, 1.0, 4.0])
        seeds = torch.randint(0, 2**62, (len(texts),), generator=torch.Generator().manual_seed(
            trial)).numpy().astype("uint64")
        for legacy in (False, True):
            want = slow.sample(texts, alpha, seeds, legacy=legacy)
            for linear in (True, False):
                fast.linear_sampling = linear
                got = fast.sample(texts, alpha, seeds, legacy=legacy)
                assert got[0].tolist() == want[0].tolist(), (trial, legacy, linear)
                assert got[1].tolist() == want[1].tolist()
        assert fast.log_partition(texts, alpha) == pytest.approx(
            slow.log_partition(texts, alpha), rel=1e-12, abs=1e-12)
        weights = [rng.random() for _ in texts]
        assert fast.expected_counts(texts, weights, alpha)[0] == pytest.approx(
            slow.expected_counts(texts, weights, alpha)[0], rel=1e-9, abs=1e-12)
        assert fast.alternative_scores().tolist() == slow.alternative_scores().tolist()
