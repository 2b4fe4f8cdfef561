"""Exact EMD (batched transportation simplex) and Sinkhorn against POT and scipy's LP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from formerlab.analysis import TRANSPORT_SOLVERS, emd, sinkhorn

ot = pytest.importorskip("ot")
F64 = torch.float64
SENTENCES = [
    "The cat sat quietly on the warm mat by the door.",
    "A dog was lying on the rug near the entrance.",
    "Return the number of items in the container.",
    "Optimal transport moves mass at the least possible cost.",
]
TESTED_SOLVERS = {"exact", "pot", "scipy", "sinkhorn"}


def test_every_registered_solver_is_covered():
    assert set(TRANSPORT_SOLVERS) == TESTED_SOLVERS


def _weights(g, *shape):
    w = torch.rand(*shape, generator=g, dtype=F64) + 0.05
    return w / w.sum(-1, keepdim=True)


@pytest.fixture(scope="module")
def real_problems(word_vectors):
    """Cost matrices between MiniLM word vectors of real sentences (unequal lengths)."""
    vecs = [word_vectors(s) for s in SENTENCES]
    pairs = [(i, j) for i in range(len(vecs)) for j in range(len(vecs)) if i != j]
    return [(torch.cdist(vecs[i], vecs[j])) for i, j in pairs]


def test_exact_equals_pot_emd2_on_real_word_vectors(real_problems):
    g = torch.Generator().manual_seed(0)
    for cost in real_problems:
        m, n = cost.shape
        for p, q in [(torch.full((m,), 1 / m, dtype=F64), torch.full((n,), 1 / n, dtype=F64)),
                     (_weights(g, m), _weights(g, n))]:
            ours, plan = emd(p, q, cost, return_plan=True)
            ref = ot.emd2(p.numpy(), q.numpy(), cost.numpy())
            assert abs(float(ours) - ref) < 1e-10
            torch.testing.assert_close(plan.sum(-1), p, rtol=0, atol=1e-12)
            torch.testing.assert_close(plan.sum(-2), q, rtol=0, atol=1e-12)
            assert bool((plan >= 0).all())


@pytest.mark.parametrize("solver", ["pot", "scipy"])
def test_batched_exact_equals_other_lp_solvers(solver):
    g = torch.Generator().manual_seed(1)
    b, m, n = 6, 7, 5
    cost = torch.rand(b, m, n, generator=g, dtype=F64) * 3
    p, q = _weights(g, b, m), _weights(g, b, n)
    ours = emd(p, q, cost)
    theirs = emd(p, q, cost, solver=solver)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-8)
    assert ours.shape == (b,)


def test_dual_is_feasible_and_tight():
    """Strong duality: u_i + v_j ≤ C_ij everywhere, = on the plan's support, ⟨u,p⟩+⟨v,q⟩ = EMD."""
    from formerlab.analysis import _ot_kernels as kernels

    rng = np.random.default_rng(2)
    b, m, n = 20, 9, 12
    cost = rng.random((b, m, n)) * 5
    p = rng.random((b, m)) + 0.01
    p /= p.sum(1, keepdims=True)
    q = rng.random((b, n)) + 0.01
    q /= q.sum(1, keepdims=True)
    plans, us, vs = np.empty((b, m, n)), np.empty((b, m)), np.empty((b, n))
    vals, it, st = np.empty(b), np.empty(b, np.int64), np.empty(b, np.int64)
    kernels.emd_batch(p, q, cost, plans, us, vs, vals, it, st, 100000, 1e-12)
    assert (st == kernels.STATUS_OPTIMAL).all()
    slack = cost - us[:, :, None] - vs[:, None, :]
    assert slack.min() > -1e-10
    assert np.abs(slack[plans > 1e-14]).max() < 1e-10
    np.testing.assert_allclose((us * p).sum(1) + (vs * q).sum(1), vals, rtol=0, atol=1e-12)
    # the same code run as plain Python (the no-numba fallback) gives the same optimum
    fn = getattr(kernels.transport_simplex, "py_func", kernels.transport_simplex)
    plan, u, v = np.empty((m, n)), np.empty(m), np.empty(n)
    val, _, status = fn(p[0], q[0], cost[0], plan, u, v, 100000, 1e-12)
    assert status == kernels.STATUS_OPTIMAL and abs(val - vals[0]) < 1e-12


def test_degenerate_problems_with_ties():
    """Small integer costs (many ties, degenerate bases): both exact paths — the assignment
    solver (uniform masses, equal sizes) and the simplex — still reach POT's optimum."""
    rng = np.random.default_rng(9)
    for _ in range(60):
        m, n = (int(v) for v in rng.integers(2, 10, size=2))
        cost = rng.integers(0, 4, (m, n)).astype(float)
        for p, q in [(np.full(m, 1 / m), np.full(n, 1 / n)),
                     (rng.integers(1, 4, m) / 1.0, rng.integers(1, 4, n) / 1.0)]:
            p, q = p / p.sum(), q / q.sum()
            ours = emd(torch.tensor(p), torch.tensor(q), torch.tensor(cost))
            assert abs(float(ours) - ot.emd2(p, q, cost)) < 1e-12
        square = rng.integers(0, 4, (m, m)).astype(float)
        u = np.full(m, 1 / m)
        ours = emd(torch.tensor(u), torch.tensor(u), torch.tensor(square))
        assert abs(float(ours) - ot.emd2(u, u, square)) < 1e-12


def test_zero_weights_are_padding():
    g = torch.Generator().manual_seed(3)
    cost = torch.rand(6, 8, generator=g, dtype=F64)
    p = _weights(g, 6)
    q = torch.cat([_weights(g, 5), torch.zeros(3, dtype=F64)])
    full = emd(p, q, cost)
    cut = emd(p, q[:5], cost[:, :5])
    assert abs(float(full - cut)) < 1e-12


def test_gradients_are_plan_and_duals():
    g = torch.Generator().manual_seed(4)
    m, n = 6, 7
    cost = (torch.rand(m, n, generator=g, dtype=F64) * 2).requires_grad_()
    p = _weights(g, m).requires_grad_()
    q = _weights(g, n).requires_grad_()
    value, plan = emd(p, q, cost, return_plan=True)
    value.backward()
    torch.testing.assert_close(cost.grad, plan)
    # POT's own gradient for the cost (the plan is unique for random costs)
    c2 = cost.detach().clone().requires_grad_()
    ot.emd2(p.detach(), q.detach(), c2).backward()
    torch.testing.assert_close(cost.grad, c2.grad, rtol=0, atol=1e-12)
    # directional derivatives along mass-preserving moves equal finite differences
    for i, j in [(0, 1), (2, 5)]:
        d = torch.zeros(m, dtype=F64)
        d[i], d[j] = 1e-6, -1e-6
        fd = (emd(p.detach() + d, q.detach(), cost.detach())
              - emd(p.detach() - d, q.detach(), cost.detach())) / 2e-6
        assert abs(float(fd) - float(p.grad[i] - p.grad[j])) < 1e-6


def test_sinkhorn_equals_pot_sinkhorn2_value_and_gradients(real_problems):
    g = torch.Generator().manual_seed(5)
    costs = real_problems[:3]
    m = max(c.shape[0] for c in costs)
    n = max(c.shape[1] for c in costs)
    # pad to one batch: zero weights on the padding
    cost = torch.zeros(len(costs), m, n, dtype=F64)
    p = torch.zeros(len(costs), m, dtype=F64)
    q = torch.zeros(len(costs), n, dtype=F64)
    for k, c in enumerate(costs):
        cost[k, : c.shape[0], : c.shape[1]] = c
        p[k, : c.shape[0]] = _weights(g, c.shape[0])
        q[k, : c.shape[1]] = _weights(g, c.shape[1])
    reg = 0.1 * float(cost.max())
    cost.requires_grad_()
    p.requires_grad_()
    value = sinkhorn(p, q, cost, reg, stopThr=1e-12)
    value.sum().backward()
    for k, c in enumerate(costs):
        a, b = c.shape
        ck = c.clone().requires_grad_()
        pk = p.detach()[k, :a].clone().requires_grad_()
        ref = ot.sinkhorn2(pk, q.detach()[k, :b], ck, reg, numItermax=10000, stopThr=1e-13)
        ref.backward()
        assert abs(float(value[k].detach()) - float(ref.detach())) < 1e-9
        torch.testing.assert_close(cost.grad[k, :a, :b], ck.grad, rtol=0, atol=1e-8)
        gp = p.grad[k, :a]
        torch.testing.assert_close(gp - gp.mean(), pk.grad - pk.grad.mean(), rtol=0, atol=1e-8)


def test_log_domain_sinkhorn_equals_pot_sinkhorn_log_and_is_chosen_for_small_reg():
    g = torch.Generator().manual_seed(8)
    cost = torch.rand(3, 6, 5, generator=g, dtype=F64)
    p, q = _weights(g, 3, 6), _weights(g, 3, 5)
    ours = sinkhorn(p, q, cost, 0.05, method="sinkhorn_log")
    torch.testing.assert_close(ours, sinkhorn(p, q, cost, 0.05, method="sinkhorn"))
    for k in range(3):
        ref = ot.sinkhorn2(p[k].numpy(), q[k].numpy(), cost[k].numpy(), 0.05,
                           method="sinkhorn_log", stopThr=1e-9)
        assert abs(float(ours[k]) - float(ref)) < 1e-9
    # ε far below the cost range: exp(−C/ε) would underflow, the log domain runs by itself
    tiny = sinkhorn(p, q, cost, 2e-3, numItermax=1500)
    assert bool(torch.isfinite(tiny).all())
    assert float((tiny - emd(p, q, cost)).abs().max()) < 0.02
    with pytest.raises(ValueError, match="sinkhorn_log"):
        sinkhorn(p, q, cost, 0.1, method="greenkhorn")


def test_sinkhorn_approaches_exact_as_reg_shrinks():
    g = torch.Generator().manual_seed(6)
    cost = torch.rand(4, 6, 6, generator=g, dtype=F64)
    p, q = _weights(g, 4, 6), _weights(g, 4, 6)
    exact = emd(p, q, cost)
    gaps = [float((sinkhorn(p, q, cost, reg, numItermax=20000) - exact).abs().max())
            for reg in (0.1, 0.03, 0.01)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 0.02


def test_float32_and_broadcast():
    g = torch.Generator().manual_seed(7)
    cost = torch.rand(3, 5, 4, generator=g)
    p = torch.full((5,), 0.2)
    q = torch.full((4,), 0.25)
    out = emd(p, q, cost)
    assert out.dtype == torch.float32 and out.shape == (3,)
    ref = [ot.emd2(p.double().numpy(), q.double().numpy(), c.double().numpy()) for c in cost]
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-6)


# ---------------------------------------------------------------------------------- bad input
def test_bad_input_names_the_argument():
    cost = torch.rand(3, 4, dtype=F64)
    p, q = torch.full((3,), 1 / 3, dtype=F64), torch.full((4,), 0.25, dtype=F64)
    with pytest.raises(ValueError, match="p must sum to one"):
        emd(p * 2, q, cost)
    with pytest.raises(ValueError, match="q must sum to one"):
        emd(p, q * 0.5, cost)
    with pytest.raises(ValueError, match="q has 3 weights"):
        emd(p, q[:3] / q[:3].sum(), cost)
    with pytest.raises(ValueError, match="non-negative"):
        emd(torch.tensor([1.5, -0.5, 0.0], dtype=F64), q, cost)
    with pytest.raises(ValueError, match="empty"):
        emd(p[:0], q, cost[:0])
    with pytest.raises(TypeError, match="cost"):
        emd(p, q, cost.numpy())
    with pytest.raises(ValueError, match="reg"):
        emd(p, q, cost, solver="sinkhorn")
    with pytest.raises(ValueError, match="exact, pot, scipy, sinkhorn"):
        emd(p, q, cost, solver="simplex")
    with pytest.raises(ValueError, match="finite"):
        emd(p, q, torch.full((3, 4), float("inf"), dtype=F64))
