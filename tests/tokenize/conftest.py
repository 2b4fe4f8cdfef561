"""Shared fixtures for the tokenizer tests: toy vocabularies, backends, exact-distribution checks.

The suite runs with ``--import-mode=importlib``, so helpers are handed to tests as fixtures.
"""

from __future__ import annotations

import math
import random
from collections import Counter

import numpy as np
import pytest

from formerlab.tokenize import numba_available


@pytest.fixture(params=["python", "numba"])
def backend(request) -> str:
    """Both lattice backends: the pure-Python reference and the compiled kernels."""
    if request.param == "numba" and not numba_available():
        pytest.skip("numba not installed")
    return request.param


#: The golden example lattice.
GOLDEN = {b"a": math.log(0.5), b"b": math.log(0.3), b"ab": math.log(0.2)}

#: The post's "watching" example: three segmentations with equal scores.
WATCHING = {p: math.log(0.1) for p in (b"watch", b"ing", b"wat", b"ching", b"w", b"atching")}


def random_vocab(rng: random.Random, alphabet: bytes = b"abc", n_multi: int = 8,
                 max_len: int = 4) -> dict[bytes, float]:
    """All single symbols of ``alphabet`` plus random multi-byte pieces with random log-probs."""
    vocab = {bytes([c]): math.log(rng.uniform(0.05, 1.0)) for c in alphabet}
    while len(vocab) < len(alphabet) + n_multi:
        n = rng.randint(2, max_len)
        vocab[bytes(rng.choice(alphabet) for _ in range(n))] = math.log(rng.uniform(0.05, 1.0))
    return vocab


def random_text(rng: random.Random, alphabet: bytes = b"abc", lo: int = 1, hi: int = 9) -> bytes:
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(lo, hi)))


def check_distribution(samples: list[tuple[bytes, ...]], exact: dict[tuple[bytes, ...], float],
                       *, tv_max: float = 0.01, p_min: float = 1e-3) -> tuple[float, float]:
    """Chi-square goodness of fit (rare outcomes pooled) and total variation; assert both.

    ``tv_max`` is raised to twice the expected sampling-noise TV when there are many outcomes.

    Returns ``(p_value, tv)``. A sample outside the support fails immediately.
    """
    stats = pytest.importorskip("scipy.stats")
    counts = Counter(samples)
    outside = set(counts) - set(exact)
    assert not outside, f"sampled segmentations that do not exist: {sorted(outside)[:3]}"
    n = len(samples)
    keys = sorted(exact, key=lambda k: -exact[k])
    obs = np.array([counts.get(k, 0) for k in keys], float)
    exp = np.array([exact[k] * n for k in keys])
    big = exp >= 5
    obs_b = np.append(obs[big], obs[~big].sum())
    exp_b = np.append(exp[big], exp[~big].sum())
    if exp_b[-1] == 0:
        obs_b, exp_b = obs_b[:-1], exp_b[:-1]
    p_value = 1.0 if len(exp_b) < 2 else float(stats.chisquare(obs_b, exp_b).pvalue)
    tv = 0.5 * float(np.abs(obs / n - exp / n).sum())
    # sampling noise alone gives E[TV] ≈ ½ Σ sqrt(2p(1−p)/(πn)): with many outcomes that exceeds
    # a fixed 0.01, so the bound is max(tv_max, 2·E[TV]) (the chi-square test is the sharp one)
    probs = exp / n
    noise = 0.5 * float(np.sqrt(2 * probs * (1 - probs) / (math.pi * n)).sum())
    limit = max(tv_max, 2 * noise)
    assert p_value > p_min, f"chi-square p={p_value:.3g} (tv={tv:.4f})"
    assert tv < limit, f"total variation {tv:.4f} >= {limit:.4f}"
    return p_value, tv


class Toy:
    """Helpers handed to tests through the ``toy`` fixture."""

    GOLDEN = GOLDEN
    WATCHING = WATCHING
    random_vocab = staticmethod(random_vocab)
    random_text = staticmethod(random_text)
    check_distribution = staticmethod(check_distribution)


@pytest.fixture
def toy() -> type[Toy]:
    return Toy
