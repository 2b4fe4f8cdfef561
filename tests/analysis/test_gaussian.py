"""Gaussian KL / Bhattacharyya / Hellinger / W₂ against torch.distributions, Monte Carlo, scipy
and POT (closed-form Bures–Wasserstein and exact OT on samples)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

from formerlab.analysis import (
    gaussian_bhattacharyya,
    gaussian_entropy,
    gaussian_hellinger,
    gaussian_kl,
    gaussian_w2,
    sqrtm_psd,
)

F64 = torch.float64


def _spd(g, *batch, n=3, jitter=0.2):
    a = torch.randn(*batch, n, n, generator=g, dtype=F64)
    return a @ a.transpose(-1, -2) / n + jitter * torch.eye(n, dtype=F64)


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    return (torch.randn(3, generator=g, dtype=F64), _spd(g),
            torch.randn(3, generator=g, dtype=F64), _spd(g))


def test_kl_equals_torch_distributions_batched():
    g = torch.Generator().manual_seed(1)
    mp, mq = torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 4, generator=g, dtype=F64)
    cp, cq = _spd(g, 5, n=4), _spd(g, 5, n=4)
    ref = kl_divergence(MultivariateNormal(mp, cp), MultivariateNormal(mq, cq))
    torch.testing.assert_close(gaussian_kl(mp, cp, mq, cq), ref, rtol=1e-10, atol=1e-12)
    # broadcasting one q against a batch of p
    ref1 = kl_divergence(MultivariateNormal(mp, cp), MultivariateNormal(mq[0], cq[0]))
    torch.testing.assert_close(gaussian_kl(mp, cp, mq[0], cq[0]), ref1, rtol=1e-10, atol=1e-12)
    entropy = MultivariateNormal(mp, cp).entropy()
    torch.testing.assert_close(gaussian_entropy(cp), entropy, rtol=1e-12, atol=1e-12)


def test_kl_and_bhattacharyya_match_monte_carlo(pair):
    mp, cp, mq, cq = pair
    p, q = MultivariateNormal(mp, cp), MultivariateNormal(mq, cq)
    torch.manual_seed(0)
    x = p.sample((400_000,))
    log_ratio = p.log_prob(x) - q.log_prob(x)
    kl, se = float(log_ratio.mean()), float(log_ratio.std()) / math.sqrt(len(x))
    assert abs(float(gaussian_kl(mp, cp, mq, cq)) - kl) < 4 * se
    # BD = −log E_p[√(q/p)]
    r = torch.exp(-0.5 * log_ratio)
    mean, se_r = float(r.mean()), float(r.std()) / math.sqrt(len(x))
    bd = float(gaussian_bhattacharyya(mp, cp, mq, cq))
    assert abs(math.exp(-bd) - mean) < 4 * se_r
    assert abs(float(gaussian_hellinger(mp, cp, mq, cq)) - (1 - mean)) < 4 * se_r


def test_divergence_properties(pair):
    mp, cp, mq, cq = pair
    assert abs(float(gaussian_kl(mp, cp, mp, cp))) < 1e-12
    assert float(gaussian_kl(mp, cp, mq, cq)) > 0
    assert abs(float(gaussian_kl(mp, cp, mq, cq) - gaussian_kl(mq, cq, mp, cp))) > 1e-3
    torch.testing.assert_close(gaussian_bhattacharyya(mp, cp, mq, cq),
                               gaussian_bhattacharyya(mq, cq, mp, cp))
    assert abs(float(gaussian_bhattacharyya(mp, cp, mp, cp))) < 1e-12
    h = float(gaussian_hellinger(mp, cp, mq, cq, squared=False))
    assert 0 < h < 1
    # against N(0, I): ½[‖μ‖² − log det Σ + Tr Σ − n]
    i3 = torch.eye(3, dtype=F64)
    expected = 0.5 * (mp @ mp - torch.logdet(cp) + torch.trace(cp) - 3)
    torch.testing.assert_close(gaussian_kl(mp, cp, torch.zeros(3, dtype=F64), i3), expected)


def test_w2_equals_pot_bures_and_both_trace_forms():
    ot = pytest.importorskip("ot")
    scipy_linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(2)
    mp, mq = torch.randn(4, 5, generator=g, dtype=F64), torch.randn(4, 5, generator=g, dtype=F64)
    cp, cq = _spd(g, 4, n=5), _spd(g, 4, n=5)
    ours = gaussian_w2(mp, cp, mq, cq, squared=False)
    ref = ot.gaussian.bures_wasserstein_distance(mp.numpy(), mq.numpy(), cp.numpy(), cq.numpy(),
                                                  paired=True)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-10)
    # version 2 (Fréchet / FID form): Tr((Σ_p Σ_q)^{1/2})
    for k in range(4):
        a, b = cp[k].numpy(), cq[k].numpy()
        v2 = (((mp[k] - mq[k]) ** 2).sum().item() + np.trace(a) + np.trace(b)
              - 2 * np.trace(scipy_linalg.sqrtm(a @ b)).real)
        assert abs(float(ours[k]) ** 2 - v2) < 1e-10


def test_w2_special_cases():
    g = torch.Generator().manual_seed(3)
    # commuting covariances: ‖Σ_p^½ − Σ_q^½‖_F²
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g, dtype=F64))
    lp, lq = torch.rand(4, generator=g, dtype=F64) + 0.1, torch.rand(4, generator=g, dtype=F64) + 0.1
    cp, cq = q @ torch.diag(lp) @ q.T, q @ torch.diag(lq) @ q.T
    mp, mq = torch.randn(4, generator=g, dtype=F64), torch.randn(4, generator=g, dtype=F64)
    expected = ((mp - mq) ** 2).sum() + ((lp.sqrt() - lq.sqrt()) ** 2).sum()
    torch.testing.assert_close(gaussian_w2(mp, cp, mq, cq), expected, rtol=1e-10, atol=1e-12)
    # diagonal fast path equals the full formula
    torch.testing.assert_close(gaussian_w2(mp, lp, mq, lq),
                               gaussian_w2(mp, torch.diag(lp), mq, torch.diag(lq)))
    torch.testing.assert_close(gaussian_kl(mp, lp, mq, lq),
                               gaussian_kl(mp, torch.diag(lp), mq, torch.diag(lq)))
    torch.testing.assert_close(gaussian_bhattacharyya(mp, lp, mq, torch.diag(lq)),
                               gaussian_bhattacharyya(mp, torch.diag(lp), mq, torch.diag(lq)))
    # 1-D: (μ₁−μ₂)² + (σ₁−σ₂)², and the empirical W₂ of sorted samples
    w = gaussian_w2(torch.tensor([0.3], dtype=F64), torch.tensor([[4.0]], dtype=F64),
                    torch.tensor([-1.0], dtype=F64), torch.tensor([[0.25]], dtype=F64))
    assert abs(float(w) - (1.3**2 + 1.5**2)) < 1e-12
    x = torch.sort(0.3 + 2.0 * torch.randn(200_000, generator=g, dtype=F64)).values
    y = torch.sort(-1.0 + 0.5 * torch.randn(200_000, generator=g, dtype=F64)).values
    assert abs(float(((x - y) ** 2).mean()) - float(w)) < 0.03


def test_w2_close_to_exact_ot_on_samples():
    ot = pytest.importorskip("ot")
    g = torch.Generator().manual_seed(4)
    mp, mq = torch.tensor([0.0, 0.0], dtype=F64), torch.tensor([1.5, -0.5], dtype=F64)
    cp = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)
    cq = torch.tensor([[0.5, -0.2], [-0.2, 1.2]], dtype=F64)
    n = 1200
    xs = mp + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(cp).T
    ys = mq + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(cq).T
    w = np.full(n, 1 / n)
    empirical = ot.emd2(w, w, ot.dist(xs.numpy(), ys.numpy()))
    closed = float(gaussian_w2(mp, cp, mq, cq))
    assert abs(empirical - closed) < 0.1 * closed  # the empirical W₂ is biased upwards
    # Gelbrich: any two laws are at least as far apart as the Gaussians with their moments
    moments = [(s.mean(0), torch.cov(s.T, correction=0)) for s in (xs, ys)]
    assert float(gaussian_w2(*moments[0], *moments[1])) <= empirical + 1e-9


def test_gradients_match_finite_differences():
    g = torch.Generator().manual_seed(5)
    mp, mq = torch.randn(3, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64)
    a, b = torch.randn(3, 3, generator=g, dtype=F64), torch.randn(3, 3, generator=g, dtype=F64)

    def spd(m):
        return m @ m.T + 0.3 * torch.eye(3, dtype=F64)

    for fn in (gaussian_w2, gaussian_kl, gaussian_bhattacharyya):
        assert torch.autograd.gradcheck(lambda x, y, u, v, fn=fn: fn(x, spd(u), y, spd(v)),
                                        (mp.clone().requires_grad_(), mq.clone().requires_grad_(),
                                         a.clone().requires_grad_(), b.clone().requires_grad_()))
    # repeated eigenvalues (identity covariances): finite gradients equal to the closed form
    cov = torch.eye(3, dtype=F64).requires_grad_()
    w = gaussian_w2(mp, cov, mq, torch.eye(3, dtype=F64))
    w.backward()
    assert bool(torch.isfinite(cov.grad).all())
    torch.testing.assert_close(cov.grad, torch.zeros(3, 3, dtype=F64), atol=1e-10, rtol=0)
    root = sqrtm_psd(4 * torch.eye(2, dtype=F64))
    torch.testing.assert_close(root, 2 * torch.eye(2, dtype=F64))


def test_bad_input_names_the_argument(pair):
    mp, cp, mq, cq = pair
    bad = cp.clone()
    bad[0, 0] = -1.0
    with pytest.raises(ValueError, match="cov_p must be positive definite"):
        gaussian_kl(mp, bad, mq, cq)
    with pytest.raises(ValueError, match="cov_q must be symmetric"):
        gaussian_w2(mp, cp, mq, cq + torch.triu(torch.ones(3, 3, dtype=F64), 1))
    with pytest.raises(ValueError, match="mu_p and mu_q must have the same dimension"):
        gaussian_bhattacharyya(mp, cp, torch.zeros(2, dtype=F64), torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="cov_q must be"):
        gaussian_kl(mp, cp, mq, torch.eye(2, dtype=F64))
    with pytest.raises(ValueError, match="diagonal variances"):
        gaussian_w2(mp, torch.tensor([1.0, 0.0, 1.0], dtype=F64), mq, cq)
    with pytest.raises(TypeError, match="mu_q"):
        gaussian_kl(mp, cp, mq.numpy(), cq)
