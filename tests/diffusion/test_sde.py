"""The SDE framework: f and g² backed out of the marginal, presets, score ↔ ε, losses."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.diffusion import (
    ODE_SOLVERS,
    SDE_PRESETS,
    TOY_DATASETS,
    VE,
    VP,
    DDPMLike,
    DDPMSchedule,
    MarginalSDE,
    ddpm_loss,
    dsm_loss,
    eps_to_score,
    make_sde,
    make_toy,
    score_to_eps,
)

F64 = torch.float64


def test_every_registered_entry_is_covered():
    assert set(SDE_PRESETS) == {"vp", "ddpm_like", "ve"}
    assert set(ODE_SOLVERS) == {"euler", "heun"}
    assert set(TOY_DATASETS) == {"eight_gaussians", "grid", "two_blobs", "gaussian_1d"}


@pytest.mark.parametrize("name,params", [("vp", {}), ("vp", {"beta_min": 0.5, "beta_max": 10}),
                                         ("ddpm_like", {}), ("ve", {"sigma_max": 20.0})])
def test_closed_form_f_g2_equal_autograd_of_the_marginal(name, params):
    sde = make_sde(name, **params)
    generic = MarginalSDE(sde._bar_alpha, sde._bar_beta)
    t = torch.linspace(0.01, 1.0, 23, dtype=F64)
    torch.testing.assert_close(sde.f(t), generic.f(t), rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(sde.g2(t), generic.g2(t), rtol=1e-9, atol=1e-10)
    a, b = sde.coefficients(torch.tensor(0.0, dtype=F64))
    assert float(a) == pytest.approx(1.0) and float(b) == pytest.approx(0.0, abs=1e-12)


def test_ddpm_like_preset():
    sde = DDPMLike()
    t = torch.linspace(0, 1, 11, dtype=F64)
    torch.testing.assert_close(sde.bar_alpha(t), torch.exp(-5 * t**2))
    torch.testing.assert_close(sde.f(t), -10 * t)
    torch.testing.assert_close(sde.g2(t), 20 * t)
    vp = VP(0.0, 20.0)
    torch.testing.assert_close(vp.bar_beta(t), sde.bar_beta(t))
    ve = VE(0.01, 50.0)
    assert float(ve.bar_beta(1.0)) == pytest.approx(50.0, rel=1e-4)


def test_derived_sde_reproduces_a_custom_marginal():
    """Euler–Maruyama on dx = f x dt + g dw for ᾱ = cos(πt/2), β̄ = sin(πt/2) lands on the
    marginal N(ᾱ x_0, β̄²)."""
    sde = MarginalSDE(lambda t: torch.cos(0.5 * math.pi * t), lambda t: torch.sin(0.5 * math.pi * t))
    g = torch.Generator().manual_seed(0)
    x0 = 1.5
    x = torch.full((20_000,), x0, dtype=F64)
    steps, t_end = 400, 0.8
    dt = t_end / steps
    for k in range(steps):
        t = k * dt
        f, g2 = float(sde.f(t)), float(sde.g2(t))
        x = x + f * x * dt + math.sqrt(g2 * dt) * torch.randn(20_000, generator=g, dtype=F64)
    a, b = (float(v) for v in sde.coefficients(t_end))
    assert float(x.mean()) == pytest.approx(a * x0, abs=0.02)
    assert float(x.std()) == pytest.approx(b, rel=0.02)


def test_eps_score_round_trip_and_exact_gaussian_score():
    sde = VP()
    mix = make_toy("gaussian_1d", mean=1.5, std=0.5)
    x = torch.linspace(-2, 3, 7, dtype=F64)[:, None]
    t = torch.full((7,), 0.3, dtype=F64)
    s = mix.score(x, t, sde)
    a, b = sde.coefficients(torch.tensor(0.3, dtype=F64))
    torch.testing.assert_close(s, -(x - a * 1.5) / (a**2 * 0.25 + b**2))
    torch.testing.assert_close(score_to_eps(eps_to_score(s, t, sde), t, sde), s)
    torch.testing.assert_close(mix.eps(x, t, sde), -b * s)


def test_dsm_losses_agree_and_reproduce():
    sde = DDPMLike()
    mix = make_toy("two_blobs")
    x0 = mix.sample(256, generator=torch.Generator().manual_seed(0), dtype=F64)
    eps_model = lambda x, t: mix.eps(x, t, sde)  # noqa: E731
    score_model = lambda x, t: mix.score(x, t, sde)  # noqa: E731
    le = dsm_loss(eps_model, x0, sde, "eps", generator=torch.Generator().manual_seed(1))
    ls = dsm_loss(score_model, x0, sde, "score", generator=torch.Generator().manual_seed(1))
    assert float(le) == pytest.approx(float(ls), rel=1e-10)
    again = dsm_loss(eps_model, x0, sde, "eps", generator=torch.Generator().manual_seed(1))
    assert float(again) == float(le)
    zero = dsm_loss(lambda x, t: torch.zeros_like(x), x0, sde, generator=torch.Generator()
                    .manual_seed(1))
    assert float(le) < 0.8 * float(zero)  # the exact ε beats predicting nothing (≈ d = 2)


def test_ddpm_loss_is_summed_over_non_batch_dims():
    s = DDPMSchedule(50)
    x0 = torch.randn(8, 3, 4, generator=torch.Generator().manual_seed(0))
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    summed = ddpm_loss(zero, x0, s, generator=torch.Generator().manual_seed(2))
    mean = ddpm_loss(zero, x0, s, reduction="mean", generator=torch.Generator().manual_seed(2))
    assert float(summed) == pytest.approx(12 * float(mean), rel=1e-6)
    assert float(summed) == pytest.approx(12.0, rel=0.3)  # E‖ε‖² = 12
    weighted = ddpm_loss(zero, x0, s, weighting=lambda t: torch.full(t.shape, 2.0),
                         generator=torch.Generator().manual_seed(2))
    assert float(weighted) == pytest.approx(2 * float(summed))


def test_training_smoke_mlp_on_eight_gaussians():
    """A 2 × 128 SiLU MLP with a sinusoidal time embedding, 400 Adam steps: the summed loss falls
    below 60% of its start (the exact-ε floor is about 0.45) and DDIM samples cover the modes."""
    from formerlab.diffusion import ddim_sample, mode_frequencies

    mix = make_toy("eight_gaussians")
    s = DDPMSchedule(1000)
    torch.manual_seed(0)
    freqs = torch.exp(torch.linspace(0, math.log(100), 8))
    net = torch.nn.Sequential(torch.nn.Linear(18, 128), torch.nn.SiLU(), torch.nn.Linear(128, 128),
                              torch.nn.SiLU(), torch.nn.Linear(128, 2))

    def model(x, t):
        u = (t.float() / 1000)[:, None] * freqs
        return net(torch.cat([x, u.sin(), u.cos()], -1))

    opt = torch.optim.Adam(net.parameters(), 2e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(400):
        loss = ddpm_loss(model, mix.sample(256, generator=g), s, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-50:]) / 50 < 0.6 * sum(losses[:10]) / 10
    with torch.no_grad():
        x = ddim_sample(model, s, (800, 2), 50, generator=g)
    assert int((mode_frequencies(x, mix) > 0.03).sum()) >= 6


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="ddpm_like, ve"):
        make_sde("subvp")
    with pytest.raises(ValueError, match="beta_min"):
        VP(5.0, 1.0)
    with pytest.raises(ValueError, match="sigma_min"):
        VE(1.0, 0.5)
    with pytest.raises(TypeError, match="callables"):
        MarginalSDE(1.0, 2.0)
    x0 = torch.zeros(4, 2)
    with pytest.raises(TypeError, match="model must return a tensor"):
        dsm_loss(lambda x, t: x.tolist(), x0, VP())
    with pytest.raises(ValueError, match="model must return the input's shape"):
        dsm_loss(lambda x, t: x[:, :1], x0, VP())
    with pytest.raises(ValueError, match="param"):
        dsm_loss(lambda x, t: x, x0, VP(), param="v")
    with pytest.raises(ValueError, match="reduction"):
        ddpm_loss(lambda x, t: x, x0, DDPMSchedule(5), reduction="none")
    with pytest.raises(ValueError, match="pis"):
        make_toy("grid").__class__(torch.tensor([0.5, 0.6]), torch.zeros(2, 2), torch.ones(2))
    with pytest.raises(ValueError, match="positive definite"):
        make_toy("grid").__class__(torch.ones(1), torch.zeros(1, 2), -torch.ones(1))
