"""Attention normalisers, softmax facts (§2), entropy invariance (§3.4)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from formerlab.attention import scaled_dot_product
from formerlab.attention.normalize import (
    NORMALIZERS,
    attention_entropy,
    attention_normalize,
    entropy_floor,
    softmax_plus_factor,
)

G = lambda s=0: torch.Generator().manual_seed(s)  # noqa: E731


def _scores(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=G(seed), dtype=dtype)


# --- softmax_plus ------------------------------------------------------------------------------
def test_softmax_plus_equals_softmax_bit_for_bit_at_512():
    s = _scores(2, 3, 4, 512, dtype=torch.float32)
    assert torch.equal(attention_normalize(s, None, "softmax_plus"), torch.softmax(s, -1))
    # 512 visible keys out of 600 (padding): still exactly the masked softmax
    s = _scores(2, 600, dtype=torch.float32)[:, None, :].expand(2, 3, 600)
    mask = torch.zeros(1, 1, 600, dtype=torch.bool)
    mask[..., :512] = True
    ref = torch.softmax(s.masked_fill(~mask, float("-inf")), -1)
    assert torch.equal(attention_normalize(s, mask, "softmax_plus"), ref)


def test_softmax_plus_factor_monotone_and_floor():
    ls = torch.arange(1, 5000)
    f = softmax_plus_factor(ls)
    assert bool((f[1:] > f[:-1]).all())
    assert float(softmax_plus_factor(512)) == 1.0
    floored = softmax_plus_factor(torch.arange(1, 17), min_len=16)
    assert torch.equal(floored, torch.full_like(floored, math.log(16) / math.log(512)))
    assert float(softmax_plus_factor(17, min_len=16)) > float(floored[0])


def test_softmax_plus_uses_per_row_visible_count():
    s = _scores(2, 5, 7)
    mask = torch.ones(2, 1, 7, dtype=torch.bool)
    mask[0, 0, 4:] = False  # row count 4 in batch 0, 7 in batch 1
    causal = torch.ones(7, 7, dtype=torch.bool).tril()[-5:]  # rows see 3..7 keys
    full = mask & causal
    out = attention_normalize(s, full, "softmax_plus", base_len=512)
    for b in range(2):
        for i in range(5):
            m = full[min(b, full.shape[0] - 1), i]
            nv = int(m.sum())
            row = torch.softmax(s[b, i][m] * math.log(nv) / math.log(512), -1)
            torch.testing.assert_close(out[b, i][m], row, rtol=0, atol=1e-15)
            assert bool((out[b, i][~m] == 0).all())


def test_kernel_softmax_plus_causal_counts_rows():
    q, k, v = (_scores(1, 2, 6, 4, seed=i) for i in range(3))
    _, w = scaled_dot_product(q, k, v, is_causal=True, normalization="softmax_plus",
                                return_weights=True)
    scores = q @ k.transpose(-1, -2) / 2.0
    for i in range(6):
        row = torch.softmax(scores[0, :, i, : i + 1] * math.log(i + 1) / math.log(512), -1)
        torch.testing.assert_close(w[0, :, i, : i + 1], row)


# --- squared relu family ------------------------------------------------------------------------
def test_squared_relu_row_sums_and_rownorm():
    s = _scores(3, 8, 10)
    mask = torch.rand(3, 8, 10, generator=G(1)) > 0.3
    mask[..., 0] = True
    a = attention_normalize(s, mask, "squared_relu")
    counts = mask.sum(-1)
    expect = (torch.relu(s) ** 2 * mask).sum(-1) / counts
    torch.testing.assert_close(a.sum(-1), expect)
    r = attention_normalize(s, mask, "squared_relu_rownorm")
    pos = ((torch.relu(s) * mask).sum(-1) > 0)
    torch.testing.assert_close(r.sum(-1)[pos], torch.ones(int(pos.sum()), dtype=s.dtype))
    fixed = attention_normalize(s, mask, "squared_relu_fixed", n0=64)
    torch.testing.assert_close(fixed, torch.relu(s) ** 2 * mask / 64)
    n = attention_normalize(s, mask, "relu2_n")
    torch.testing.assert_close(n, torch.relu(s) ** 2 * mask / 10)


def test_homogeneity_power_vs_softmax():
    s = _scores(4, 16, 16)
    for lam in (0.1, 3.0, 17.0):
        a, b = (attention_normalize(x, None, "squared_relu_rownorm") for x in (s, lam * s))
        torch.testing.assert_close(a, b)
        # un-normalised relu² scales by λ² (no temperature survives normalisation)
        torch.testing.assert_close(attention_normalize(lam * s, None, "squared_relu"),
                                   lam ** 2 * attention_normalize(s, None, "squared_relu"))
        sm_a, sm_b = (attention_normalize(x, None, "softmax") for x in (s, lam * s))
        assert float((sm_a - sm_b).abs().max()) > 1e-2  # exp-based: the scale is a temperature


# --- l2 and none --------------------------------------------------------------------------------
def test_l2_unit_rows_and_stable():
    s = _scores(2, 5, 9) * 1e4
    mask = torch.ones(9, dtype=torch.bool)
    mask[3] = False
    a = attention_normalize(s, mask, "l2")
    assert bool(torch.isfinite(a).all())
    torch.testing.assert_close(a.norm(dim=-1), torch.ones(2, 5, dtype=s.dtype))
    small = _scores(2, 5, 9)
    ref = torch.exp(small) / torch.sqrt((torch.exp(2 * small)).sum(-1, keepdim=True))
    torch.testing.assert_close(attention_normalize(small, None, "l2"), ref)
    torch.testing.assert_close(attention_normalize(small, None, "none"), torch.exp(small))


@pytest.mark.parametrize("method", list(NORMALIZERS))
def test_masked_keys_get_exactly_zero(method):
    s = _scores(2, 3, 6, 6) * 3
    mask = torch.rand(2, 1, 6, 6, generator=G(2)) > 0.4
    mask[..., 0] = True
    mask[0, 0, 2] = False  # a fully masked row must give zeros, not NaN
    a = attention_normalize(s, mask, method)
    assert bool((a.masked_select(~mask.expand_as(a)) == 0).all())
    assert bool(torch.isfinite(a).all())


def test_unknown_method_and_bad_mask():
    with pytest.raises(ValueError, match="softmax_plus"):
        attention_normalize(_scores(2, 2), None, "sofmax")
    with pytest.raises(ValueError, match="broadcast"):
        attention_normalize(_scores(2, 4, 4), torch.ones(3, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        attention_normalize(_scores(2, 4, 4), torch.ones(4, 4))


# --- §2 softmax facts ---------------------------------------------------------------------------
def _noise_error_slope(method):
    """Log-log slope in ``n`` of ``|o(s + ε) − o(s)|`` for ``o = normalize(s) · v``, ε ~ N(0, 0.5²)."""
    errs, ns = [], [10_000, 30_000, 100_000]
    for n in ns:
        trials = []
        for seed in range(6):
            g = G(100 + seed)
            s = torch.randn(n, generator=g, dtype=torch.float64)
            v = torch.randn(n, generator=g, dtype=torch.float64)
            eps = 0.5 * torch.randn(n, generator=g, dtype=torch.float64)
            o, o_noisy = (attention_normalize(x[None], None, method)[0] @ v for x in (s, s + eps))
            trials.append(float((o_noisy - o).abs()))
        errs.append(sum(trials) / len(trials))
    return (math.log(errs[-1]) - math.log(errs[0])) / (math.log(ns[-1]) - math.log(ns[0]))


def test_softmax_robust_to_logit_noise_rate():
    # kexue.fm/archives/9593: the normalised average washes logit noise out like n^(-1/2) ...
    assert -0.8 < _noise_error_slope("softmax") < -0.25
    # ... a sum without the denominator accumulates it like n^(1/2)
    assert 0.25 < _noise_error_slope("none") < 0.8


def _two_point_gap(tau, n=20_000):
    """Exact enumeration: ``max_m (log n − H)`` over rows with ``m`` logits at ``+1/τ``, the rest at
    ``−1/τ`` (closed-form entropy, no formerlab code), and the maximising fraction ``m/n``."""
    a, best = 1.0 / tau, (-1.0, 0.0)
    for m in range(1, n):
        z = m + (n - m) * math.exp(-2 * a)  # partition function / e^a
        p_hi, p_lo = 1 / z, math.exp(-2 * a) / z
        kl = math.log(n) + m * p_hi * math.log(p_hi) + (n - m) * p_lo * math.log(p_lo)
        best = max(best, (kl, m / n))
    return best


def test_entropy_floor_for_cosine_logits():
    gap, f = entropy_floor(1.0)
    assert abs(gap - 0.474475) < 1e-5 and abs(f - 0.2055) < 1e-3
    for tau in (0.25, 0.5, 1.0, 2.0):
        g_ref, f_ref = _two_point_gap(tau)
        g_lib, f_lib = entropy_floor(tau)
        assert abs(g_lib - g_ref) < 1e-6 and abs(f_lib - f_ref) < 2e-4, tau
    for n in (3, 50, 1000):
        s = torch.rand(200, n, generator=G(n), dtype=torch.float64) * 2 - 1
        h = attention_entropy(torch.softmax(s, -1))
        assert float((math.log(n) - h).max()) <= 0.47448
    n = 2000
    m = round(0.2055 * n)
    s = torch.cat([torch.ones(m), -torch.ones(n - m)]).double()
    got = math.log(n) - float(attention_entropy(torch.softmax(s, -1)))
    assert abs(got - gap) < 1.0 / n
    assert entropy_floor(0.5)[0] > gap  # smaller τ: larger gap, lower entropy floor


def test_entropy_one_hot_zero_and_uniform_log_n():
    p = torch.zeros(5, dtype=torch.float64)
    p[2] = 1
    assert float(attention_entropy(p)) == 0.0
    torch.testing.assert_close(attention_entropy(torch.full((7,), 1 / 7, dtype=torch.float64)),
                               torch.tensor(math.log(7), dtype=torch.float64))


# --- §3.4 entropy invariance --------------------------------------------------------------------
def test_entropy_exact_identity():
    s = _scores(64)
    for lam in (0.3, 1.0, 4.0):
        p = torch.softmax(lam * s, -1)
        h = attention_entropy(p)
        torch.testing.assert_close(h, torch.logsumexp(lam * s, -1) - lam * (p * s).sum(),
                                   rtol=0, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-20, 20), min_size=2, max_size=50), st.floats(0.01, 10.0))
def test_entropy_lower_bound(values, lam):
    s = torch.tensor(values, dtype=torch.float64)
    h = float(attention_entropy(torch.softmax(lam * s, -1)))
    bound = math.log(len(values)) - lam * float(s.max() - s.mean())
    assert h >= bound - 1e-9


def test_log_n_scaling_keeps_entropy_steadier():
    def entropies(scaled: bool) -> list[float]:
        out = []
        for n in (64, 256, 1024, 4096):
            g = G(n)
            s = torch.randn(32, n, generator=g, dtype=torch.float64)
            s[:, :4] += 8.0  # k relevant tokens (clearly above the noise) + noise
            p = attention_normalize(s, None, "softmax_plus" if scaled else "softmax")
            out.append(float(attention_entropy(p).mean()))
        return out

    fixed, plus = entropies(False), entropies(True)
    assert max(plus) - min(plus) < 0.5 * (max(fixed) - min(fixed))
