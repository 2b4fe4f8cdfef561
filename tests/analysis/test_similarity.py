"""Local vs global cosine: decomposition, the ρ-sandwich bound, the counter-example, Pearson,
Simpson's paradox, sign updates (property-based with hypothesis where cheap)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from formerlab.analysis import (
    blockwise_cosine,
    cosine,
    local_global_counterexample,
    model_update_alignment,
    pearson_via_cosine,
)

F64 = torch.float64


def _split(v, sizes):
    return list(torch.split(v, sizes))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), sizes=st.lists(st.integers(1, 5), min_size=1, max_size=6))
def test_decomposition_and_bounds(seed, sizes):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(sum(sizes), generator=g, dtype=F64)
    y = torch.randn(sum(sizes), generator=g, dtype=F64)
    res = blockwise_cosine(_split(x, sizes), _split(y, sizes))
    global_ = float(cosine(x, y))
    assert abs(float(res.global_cosine) - global_) < 1e-12
    rho = float(res.norm_alignment)
    assert 0 <= rho <= 1 + 1e-12
    # ρ is the cosine of the block-norm profiles
    nx = torch.stack([b.norm() for b in _split(x, sizes)])
    ny = torch.stack([b.norm() for b in _split(y, sizes)])
    assert abs(rho - float(cosine(nx, ny))) < 1e-12
    lo, hi = res.bounds
    assert float(lo) - 1e-12 <= global_ <= float(hi) + 1e-12
    if bool((res.local >= 0).all()):
        assert global_ <= float(res.local.max()) + 1e-12


def test_bound_is_tight_for_equal_local_cosines():
    xs, ys = local_global_counterexample(0.8, 1.0, num_blocks=3)
    res = blockwise_cosine(xs, ys)
    torch.testing.assert_close(res.local, torch.full((3,), 0.8, dtype=F64))
    lo, hi = res.bounds
    torch.testing.assert_close(lo, res.global_cosine)
    torch.testing.assert_close(hi, res.global_cosine)


@pytest.mark.parametrize("lam,eps,m", [(0.9, 0.1, 2), (0.99, 1e-3, 5), (0.5, 0.5, 3)])
def test_counterexample_local_high_global_low(lam, eps, m):
    xs, ys = local_global_counterexample(lam, eps, num_blocks=m, block_dim=3)
    res = blockwise_cosine(xs, ys)
    assert bool((res.local >= lam - 1e-12).all())
    assert 0 < float(res.global_cosine) < eps
    assert float(cosine(torch.cat(xs), torch.cat(ys))) == pytest.approx(float(res.global_cosine))


def test_post_examples():
    # x = (1, 1), y = (1, 2): both 1-D local cosines are 1, the global one 3/√10
    res = blockwise_cosine([torch.tensor([1.0]), torch.tensor([1.0])],
                           [torch.tensor([1.0]), torch.tensor([2.0])])
    assert res.local.tolist() == [1.0, 1.0]
    assert float(res.global_cosine) == pytest.approx(3 / math.sqrt(10))
    # sign updates: every coordinate agrees, cos(g, sign g) = ‖g‖₁ / (√N ‖g‖₂)
    gen = torch.Generator().manual_seed(1)
    g = torch.randn(800, generator=gen, dtype=F64) * torch.exp(2 * torch.randn(800, generator=gen,
                                                                                dtype=F64))
    per = model_update_alignment(list(g[:, None]), list(torch.sign(g)[:, None]))
    assert bool((per == 1).all())
    glob = float(model_update_alignment(list(g[:, None]), list(torch.sign(g)[:, None]), "global"))
    assert glob == pytest.approx(float(g.abs().sum() / (math.sqrt(800) * g.norm())), rel=1e-10)
    assert glob < 0.5  # heavy tails: far from aligned


def test_model_update_alignment_on_a_real_module():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    net(torch.randn(16, 4)).pow(2).mean().backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    updates = {n: torch.sign(p.grad) for n, p in net.named_parameters()}
    per = model_update_alignment(grads, updates)
    assert set(per) == set(grads) and all(0 < float(v) <= 1 for v in per.values())
    flat = float(cosine(torch.cat([g.reshape(-1) for g in grads.values()]),
                        torch.cat([u.reshape(-1) for u in updates.values()])))
    assert float(model_update_alignment(grads, updates, per="global")) == pytest.approx(flat)


def test_pearson_and_simpson():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, generator=g, dtype=F64), torch.randn(50, generator=g, dtype=F64)
    assert float(pearson_via_cosine(x, y)) == pytest.approx(np.corrcoef(x, y)[0, 1], abs=1e-12)
    # two groups, each positively correlated, pooled negatively correlated
    t = torch.linspace(0, 1, 20, dtype=F64)
    gx = [t, t + 2.0]
    gy = [t + 2.0, t]
    within = [float(pearson_via_cosine(a, b)) for a, b in zip(gx, gy)]
    pooled = float(pearson_via_cosine(torch.cat(gx), torch.cat(gy)))
    assert min(within) > 0.99 and pooled < -0.5


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="xs has 2 blocks but ys has 1"):
        blockwise_cosine([torch.ones(2), torch.ones(2)], [torch.ones(4)])
    with pytest.raises(ValueError, match="block 0"):
        blockwise_cosine([torch.ones(2)], [torch.ones(3)])
    with pytest.raises(ValueError, match="xs has no blocks"):
        blockwise_cosine([], [])
    with pytest.raises(ValueError, match="lam"):
        local_global_counterexample(0.0, 0.1)
    with pytest.raises(ValueError, match="per"):
        model_update_alignment([torch.ones(2)], [torch.ones(2)], per="layer")
    with pytest.raises(ValueError, match="empty"):
        cosine(torch.ones(0), torch.ones(0))
