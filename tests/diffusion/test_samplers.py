"""Every sampler driven by the exact score of a Gaussian mixture reproduces the mixture; the
probability-flow ODE is deterministic and invertible; DDIM's limits."""

from __future__ import annotations

import pytest
import torch

from formerlab.diffusion import (
    VE,
    DDPMLike,
    DDPMSchedule,
    ddim_sample,
    ddpm_sample,
    energy_distance,
    make_toy,
    mode_frequencies,
    probability_flow,
    probability_flow_sample,
    reverse_sde_sample,
)

N = 2000
#: energy distance bound for N samples: data-vs-data at N = 1500–2000 stays within ±0.0025;
#: moving the eight modes from radius 2 to 2.1 already gives 0.0065
ED_BOUND = 0.006
MIX = make_toy("eight_gaussians")  # radius 2, std 0.1
REF = MIX.sample(N, generator=torch.Generator().manual_seed(1234))


def _p1(process, generator):
    """Exact samples of the diffused marginal at t = 1."""
    return MIX.at(1.0, process).sample(N, generator=generator)


def _check_mixture(x):
    """Energy distance to fresh data, mode weights within 3 points, per-mode spread within 15%
    (the sharpest of the three: coarse steps shrink the modes before they move them)."""
    assert energy_distance(x, REF) < ED_BOUND
    freq = mode_frequencies(x, MIX)
    assert float((freq - 0.125).abs().max()) < 0.03, freq
    lab = MIX.responsibilities(x).argmax(-1)
    for k in range(8):
        std = float((x[lab == k] - MIX.mus[k].float()).pow(2).mean().sqrt())
        assert 0.085 < std < 0.115, (k, std)


S1, S2, SDE, VE_SDE = DDPMSchedule(1000), DDPMSchedule(1000, sigma="posterior"), DDPMLike(), VE()
SAMPLERS = {
    "reverse_sde": lambda g: reverse_sde_sample(lambda x, t: MIX.score(x, t, SDE), SDE, (N, 2),
                                                400, generator=g, x_T=_p1(SDE, g)),
    "pf_euler": lambda g: probability_flow_sample(lambda x, t: MIX.score(x, t, SDE), SDE, (N, 2),
                                                  200, "euler", x_T=_p1(SDE, g)),
    "pf_heun": lambda g: probability_flow_sample(lambda x, t: MIX.score(x, t, SDE), SDE, (N, 2),
                                                 50, "heun", x_T=_p1(SDE, g)),
    "ddim_eta0": lambda g: ddim_sample(lambda x, t: MIX.eps(x, t, S1), S1, (N, 2), 200,
                                       generator=g),
    "ddim_eta1": lambda g: ddim_sample(lambda x, t: MIX.eps(x, t, S1), S1, (N, 2), 500, eta=1.0,
                                       generator=g),
    "ddim_sde": lambda g: ddim_sample(lambda x, t: MIX.eps(x, t, SDE), SDE, (N, 2), 200,
                                      generator=g),
    "ve_pf_heun": lambda g: probability_flow_sample(lambda x, t: MIX.score(x, t, VE_SDE), VE_SDE,
                                                    (N, 2), 100, "heun", x_T=_p1(VE_SDE, g)),
}
ANCESTRAL = {
    "ddpm_beta": lambda g: ddpm_sample(lambda x, t: MIX.eps(x, t, S1), (N, 2), S1, generator=g),
    "ddpm_posterior": lambda g: ddpm_sample(lambda x, t: MIX.eps(x, t, S2), (N, 2), S2,
                                            generator=g),
}


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_sampler_with_exact_score_reproduces_the_mixture(name):
    _check_mixture(SAMPLERS[name](torch.Generator().manual_seed(0)))


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(ANCESTRAL))
def test_ancestral_1000_steps_reproduce_the_mixture(name):
    _check_mixture(ANCESTRAL[name](torch.Generator().manual_seed(0)))


def test_gaussian_data_moments_for_every_sampler():
    data = make_toy("gaussian_1d", mean=1.5, std=0.5)
    s = DDPMSchedule(1000, sigma="posterior")
    g = torch.Generator().manual_seed(0)
    n = 8_000
    outs = {
        "ddpm": ddpm_sample(lambda x, t: data.eps(x, t, s), (n, 1), s, generator=g),
        "reverse_sde": reverse_sde_sample(lambda x, t: data.score(x, t, SDE), SDE, (n, 1), 300,
                                          generator=g, x_T=data.at(1.0, SDE).sample(n, generator=g)),
        "pf": probability_flow_sample(lambda x, t: data.score(x, t, SDE), SDE, (n, 1), 40,
                                      x_T=data.at(1.0, SDE).sample(n, generator=g)),
    }
    for name, x in outs.items():
        assert float(x.mean()) == pytest.approx(1.5, rel=0.02), name
        assert float(x.std()) == pytest.approx(0.5, rel=0.02), name


def test_reproducible_with_a_generator():
    small = (64, 2)
    for fn in (
        lambda g: ddpm_sample(lambda x, t: MIX.eps(x, t, S2), small, DDPMSchedule(50), generator=g),
        lambda g: reverse_sde_sample(lambda x, t: MIX.score(x, t, SDE), SDE, small, 30,
                                     generator=g),
        lambda g: ddim_sample(lambda x, t: MIX.eps(x, t, S1), S1, small, 20, eta=0.5,
                              generator=g),
        lambda g: probability_flow_sample(lambda x, t: MIX.score(x, t, SDE), SDE, small, 10,
                                          generator=g),
    ):
        a, b = fn(torch.Generator().manual_seed(3)), fn(torch.Generator().manual_seed(3))
        assert torch.equal(a, b)
        assert not torch.equal(a, fn(torch.Generator().manual_seed(4)))


def test_probability_flow_is_deterministic_and_invertible():
    score = lambda x, t: MIX.score(x, t, SDE)  # noqa: E731
    x0 = MIX.sample(200, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    errors = {}
    for method, steps in (("euler", 50), ("euler", 200), ("heun", 50), ("heun", 200)):
        z = probability_flow(score, SDE, x0, SDE.t_min, 1.0, steps, method)
        z2 = probability_flow(score, SDE, x0, SDE.t_min, 1.0, steps, method)
        assert torch.equal(z, z2)
        back = probability_flow(score, SDE, z, 1.0, SDE.t_min, steps, method)
        errors[method, steps] = float((back - x0).norm(dim=1).max())
    assert errors["euler", 200] < errors["euler", 50]
    assert errors["heun", 200] < errors["heun", 50]
    assert errors["heun", 50] < errors["euler", 50] / 5
    assert errors["heun", 200] < 1e-2
    # the encoded points follow the prior N(0, I) (the ODE carries p_data to p_1)
    z = probability_flow(score, SDE, x0, SDE.t_min, 1.0, 50, "heun")
    assert float(z.mean(0).abs().max()) < 0.2 and float((z.std(0) - 1).abs().max()) < 0.15


def test_ddim_is_euler_of_the_flow_in_the_small_step_limit():
    eps = lambda x, t: MIX.eps(x, t, SDE)  # noqa: E731
    score = lambda x, t: MIX.score(x, t, SDE)  # noqa: E731
    x_t = MIX.at(1.0, SDE).sample(300, generator=torch.Generator().manual_seed(6),
                                  dtype=torch.float64)
    gaps = []
    for steps in (25, 100, 400):
        a = ddim_sample(eps, SDE, x_t.shape, steps, x_T=x_t)
        b = probability_flow(score, SDE, x_t, 1.0, SDE.t_min, steps, "euler")
        gaps.append(float((a - b).norm(dim=1).mean()))
    assert gaps[0] > gaps[1] > gaps[2]
    assert gaps[2] < 0.3 * gaps[0]


def test_ddim_eta_one_step_is_the_ancestral_posterior_step():
    s = DDPMSchedule(100, "ddpm_linear", sigma="posterior")
    x = MIX.at(torch.tensor(40), s).sample(8, generator=torch.Generator().manual_seed(7),
                                           dtype=torch.float64)
    eps = MIX.eps(x, torch.tensor(40), s)
    # one DDIM step 40 → 39 with η = 1 and zero injected noise equals the ancestral mean ...
    a40, b40 = s.bar_alpha[40], s.bar_beta[40]
    a39, b39 = s.bar_alpha[39], s.bar_beta[39]
    sigma = b39 * s.beta[40] / b40
    x0 = (x - b40 * eps) / a40
    ddim_mean = a39 * x0 + (b39**2 - sigma**2).sqrt() * eps
    ancestral_mean = (x - s.beta[40] ** 2 / b40 * eps) / s.alpha[40]
    torch.testing.assert_close(ddim_mean, ancestral_mean, rtol=1e-12, atol=1e-12)
    # ... and its noise scale is the posterior σ
    torch.testing.assert_close(sigma, s.sigma[40])


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="eta"):
        ddim_sample(lambda x, t: x, S1, (2, 2), 10, eta=1.5)
    with pytest.raises(ValueError, match="steps"):
        ddim_sample(lambda x, t: x, DDPMSchedule(10), (2, 2), 20)
    with pytest.raises(ValueError, match="steps"):
        reverse_sde_sample(lambda x, t: x, SDE, (2, 2), 0)
    with pytest.raises(TypeError, match="score_fn must return a tensor"):
        probability_flow_sample(lambda x, t: 0.0, SDE, (2, 2), 3)
    with pytest.raises(ValueError, match="heun"):
        probability_flow_sample(lambda x, t: x, SDE, (2, 2), 3, method="rk4")
    with pytest.raises(ValueError, match="at least two"):
        energy_distance(torch.zeros(1, 2), torch.zeros(5, 2))
