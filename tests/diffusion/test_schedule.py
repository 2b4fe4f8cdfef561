"""DDPM schedules in Su's notation: converters, the exact posterior, diffusers' DDPMScheduler."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.diffusion import (
    DDPM_SCHEDULES,
    SIGMA_CHOICES,
    DDPMSchedule,
    GaussianMixture,
    q_sample,
)

F64 = torch.float64


def test_every_registered_schedule_and_sigma_is_covered():
    assert set(DDPM_SCHEDULES) == {"su_linear", "ddpm_linear", "cosine"}
    assert set(SIGMA_CHOICES) == {"beta", "posterior"}


@pytest.mark.parametrize("kind", ["su_linear", "ddpm_linear", "cosine"])
def test_notation_round_trip_and_identities(kind):
    s = DDPMSchedule(200, kind)
    d = s.to_ddpm()
    torch.testing.assert_close(d["alphas"] + d["betas"], torch.ones(200, dtype=F64))
    torch.testing.assert_close(d["alphas_cumprod"], torch.cumprod(d["alphas"], 0))
    back = DDPMSchedule.from_ddpm(d["betas"])
    for name in ("alpha", "beta", "bar_alpha", "bar_beta"):
        torch.testing.assert_close(getattr(back, name), getattr(s, name), rtol=1e-12, atol=1e-15)
    # Su: ᾱ_t = √ᾱ_t^DDPM, β̄_t = √(1 − ᾱ_t^DDPM), α_t² + β_t² = 1, β̄_t² = β_t² + α_t² β̄_{t−1}²
    torch.testing.assert_close(s.bar_alpha[1:], d["alphas_cumprod"].sqrt())
    torch.testing.assert_close(s.bar_beta[1:], (1 - d["alphas_cumprod"]).sqrt())
    torch.testing.assert_close(s.alpha[1:] ** 2 + s.beta[1:] ** 2, torch.ones(200, dtype=F64))
    torch.testing.assert_close(s.bar_beta[1:] ** 2,
                               s.beta[1:] ** 2 + s.alpha[1:] ** 2 * s.bar_beta[:-1] ** 2)


def test_su_schedule_constants():
    s = DDPMSchedule(1000)
    assert float(s.bar_alpha[-1]) == pytest.approx(0.00648, abs=1e-5)
    assert math.log(float(s.bar_alpha[-1])) == pytest.approx(-5.04, abs=0.01)
    torch.testing.assert_close(s.to_ddpm()["betas"][[0, -1]], torch.tensor([2e-5, 0.02],
                                                                          dtype=F64))
    # the continuous DDPM-like schedule ᾱ = e^{−5t²} is within 0.039 in log
    k = torch.arange(1001, dtype=F64)
    assert float((s.bar_alpha.log() + 5 * (k / 1000) ** 2).abs().max()) <= 0.039


def test_posterior_plug_in_identity_on_random_schedules():
    g = torch.Generator().manual_seed(0)
    betas = torch.rand(50, generator=g, dtype=F64) * 0.2 + 1e-3
    s = DDPMSchedule.from_ddpm(betas, sigma="posterior")
    t = torch.arange(1, 51)
    c0, ct, std = s.posterior(t)
    x_t, eps = torch.randn(50, generator=g, dtype=F64), torch.randn(50, generator=g, dtype=F64)
    x0_hat = (x_t - s.bar_beta[t] * eps) / s.bar_alpha[t]
    generator_mean = (x_t - s.beta[t] ** 2 / s.bar_beta[t] * eps) / s.alpha[t]
    torch.testing.assert_close(c0 * x0_hat + ct * x_t, generator_mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(std, s.sigma[1:])


def test_exact_posteriors_for_point_and_standard_normal_data():
    s = DDPMSchedule(100, "ddpm_linear", sigma="posterior")
    # (a) one data point x*: the generator with the exact ε matches p(x_{t−1}|x_t, x*)
    point = GaussianMixture(torch.ones(1), torch.tensor([[0.7]]), torch.tensor([1e-12]))
    x = torch.tensor([[0.3], [-1.1]], dtype=F64)
    for t in (2, 40, 100):
        eps = point.eps(x, torch.tensor(t), s)
        mean = (x - s.beta[t] ** 2 / s.bar_beta[t] * eps) / s.alpha[t]
        c0, ct, _ = s.posterior(t)
        torch.testing.assert_close(mean, c0 * 0.7 + ct * x, rtol=1e-6, atol=1e-8)
    # (b) N(0, I) data: p(x_{t−1} | x_t) = N(α_t x_t, β_t²)
    normal = GaussianMixture(torch.ones(1), torch.zeros(1, 1), torch.ones(1))
    for t in (1, 50, 100):
        eps = normal.eps(x, torch.tensor(t), s)
        mean = (x - s.beta[t] ** 2 / s.bar_beta[t] * eps) / s.alpha[t]
        torch.testing.assert_close(mean, s.alpha[t] * x, rtol=1e-12, atol=1e-12)


def test_marginal_matches_the_simulated_chain():
    s = DDPMSchedule(60, "ddpm_linear")
    g = torch.Generator().manual_seed(1)
    x0 = torch.full((40_000,), 1.3, dtype=F64)
    x = x0.clone()
    for t in range(1, 61):
        x = s.alpha[t] * x + s.beta[t] * torch.randn(40_000, generator=g, dtype=F64)
        if t in (10, 60):
            assert float(x.mean()) == pytest.approx(float(s.bar_alpha[t] * 1.3), abs=0.01)
            assert float(x.std()) == pytest.approx(float(s.bar_beta[t]), rel=0.02)
    direct = q_sample(x0[:5], torch.full((5,), 60), torch.ones(5, dtype=F64), s)
    torch.testing.assert_close(direct, s.bar_alpha[60] * 1.3 + s.bar_beta[60] * torch.ones(5,
                                                                                      dtype=F64))


@pytest.mark.parametrize("kind", ["su_linear", "ddpm_linear", "cosine"])
def test_posterior_equals_diffusers_ddpm_scheduler(kind):
    diffusers = pytest.importorskip("diffusers")
    T = 100
    s = DDPMSchedule(T, kind)
    betas = s.to_ddpm()["betas"].float().numpy()
    ref = {}
    for variance in ("fixed_small", "fixed_large"):
        for pred in ("sample", "epsilon"):
            sc = diffusers.DDPMScheduler(
                num_train_timesteps=T, trained_betas=betas, variance_type=variance,
                prediction_type=pred, clip_sample=False)
            # diffusers keeps float32 tables (1 − ᾱ loses digits at small t): run its formulas
            # on the same betas in float64
            sc.betas = torch.tensor(betas, dtype=F64)
            sc.alphas = 1 - sc.betas
            sc.alphas_cumprod = torch.cumprod(sc.alphas, 0)
            sc.one = torch.tensor(1.0, dtype=F64)
            ref[variance, pred] = sc
    s = DDPMSchedule.from_ddpm(torch.tensor(betas, dtype=F64))
    sched = ref["fixed_small", "sample"]
    one, zero = torch.ones(1, 1, dtype=F64), torch.zeros(1, 1, dtype=F64)

    def step(sc, out, sample, t):  # the mean: the same noise draw cancels
        mk = lambda: torch.Generator().manual_seed(0)  # noqa: E731
        return (sc.step(out, t, sample, generator=mk()).prev_sample
                - sc.step(zero, t, zero, generator=mk()).prev_sample)

    for t_su in (1, 2, 30, 77, 100):
        t = t_su - 1  # diffusers' index
        c0, ct, std = s.posterior(t_su)
        assert float(step(sched, one, zero, t)) == pytest.approx(float(c0), rel=1e-10)
        assert float(step(sched, zero, one, t)) == pytest.approx(float(ct), rel=1e-10, abs=1e-12)
        if t_su > 1:
            assert float(sched._get_variance(t)) == pytest.approx(float(std**2), rel=1e-10)
            large = ref["fixed_large", "sample"]._get_variance(t)
            assert float(large) == pytest.approx(float(s.beta[t_su] ** 2), rel=1e-10)
        # ε-prediction: diffusers' mean equals Su's generator mean (x − β²/β̄ ε)/α
        x, eps = torch.full((1, 1), 0.4, dtype=F64), torch.full((1, 1), -0.8, dtype=F64)
        ours = (0.4 - float(s.beta[t_su] ** 2 / s.bar_beta[t_su]) * -0.8) / float(s.alpha[t_su])
        theirs = step(ref["fixed_small", "epsilon"], eps, x, t)
        assert float(theirs) == pytest.approx(ours, rel=1e-10)
        noisy = sched.add_noise(x, eps, torch.tensor([t]))
        assert float(noisy) == pytest.approx(float(q_sample(x, t_su, eps, s)), rel=1e-12)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="betas"):
        DDPMSchedule.from_ddpm(torch.tensor([0.1, 1.5]))
    with pytest.raises(ValueError, match="su_linear"):
        DDPMSchedule(10, "quadratic")
    with pytest.raises(ValueError, match="beta, posterior"):
        DDPMSchedule(10, sigma="learned")
    s = DDPMSchedule(10)
    with pytest.raises(TypeError, match="integer steps"):
        s.coefficients(torch.tensor([0.5]))
    with pytest.raises(ValueError, match=r"\[0, 10\]"):
        s.coefficients(11)
    with pytest.raises(ValueError, match="t = 1"):
        s.posterior(0)
    with pytest.raises(ValueError, match="T must be"):
        DDPMSchedule(0)
