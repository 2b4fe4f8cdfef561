"""The diffusion-2d experiment: every registered sampler against the exact score of a mixture,
the derived DDPM chain against the SDE's marginals, the energy-distance checks on hand-made rows,
and the science of its micro rows (determinism, cost accounting, the exact-score control)."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.diffusion import DDPMLike, energy_distance, make_toy, mode_frequencies
from formerlab.lab import EXPERIMENTS, Results
from formerlab.lab.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED
from formerlab.lab.experiments.diffusion_2d import (
    SAMPLERS,
    Diffusion2DConfig,
    EpsMLP,
    NoiseCheck,
    marginal_schedule,
    mode_spread,
)

NAME = "diffusion-2d"
MIX, SDE = make_toy("eight_gaussians"), DDPMLike()
TESTED = {"ddpm", "reverse_sde", "pf_euler", "pf_heun", "ddim"}


def test_every_registered_sampler_is_tested():
    assert set(SAMPLERS) == TESTED


@pytest.mark.parametrize("name", sorted(TESTED))
def test_sampler_with_the_exact_score_reproduces_the_mixture(name):
    g = torch.Generator().manual_seed(0)
    x_T = SDE.prior_sample((1500, 2), generator=g)
    exact = lambda x, t: MIX.eps(x, t, SDE)  # noqa: E731
    steps = 50 if name == "pf_heun" else 100
    x = SAMPLERS.get(name)(exact, SDE, x_T, steps, torch.Generator().manual_seed(1))
    assert x.shape == x_T.shape
    assert energy_distance(x, MIX.sample(3000, generator=g)) < 0.006
    assert float((mode_frequencies(x, MIX) - 0.125).abs().max()) < 0.035
    again = SAMPLERS.get(name)(exact, SDE, x_T, steps, torch.Generator().manual_seed(2))
    assert torch.equal(x, again) != SAMPLERS.meta(name)["stochastic"]


def test_marginal_schedule_has_the_sde_marginals():
    for steps in (1, 7, 50):
        s = marginal_schedule(SDE, steps)
        t = torch.arange(steps + 1, dtype=torch.float64) / steps
        torch.testing.assert_close(s.bar_alpha, SDE.bar_alpha(t), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(s.bar_beta, SDE.bar_beta(t), rtol=1e-10, atol=1e-12)


def test_mode_spread_on_known_samples():
    g = torch.Generator().manual_seed(3)
    x, lab = MIX.sample(8000, generator=g, return_labels=True)
    spread, stray = mode_spread(x, MIX)
    assert spread == pytest.approx(1.0, abs=0.03) and stray < 0.002
    shrunk = MIX.mus[lab].float() + 0.5 * (x - MIX.mus[lab].float())
    assert mode_spread(shrunk, MIX)[0] == pytest.approx(0.5, abs=0.02)
    between = torch.cat([x[:7600], torch.zeros(400, 2)])  # 5% at the centre, between the modes
    spread, stray = mode_spread(between, MIX)
    assert spread == pytest.approx(1.0, abs=0.06) and stray == pytest.approx(0.05, abs=0.002)
    with pytest.raises(ValueError, match="2-D"):
        mode_spread(torch.zeros(3, 1), make_toy("gaussian_1d"))


def test_eps_mlp_is_seeded_by_its_generator():
    a, b = EpsMLP(hidden=16, layers=2), EpsMLP(hidden=16, layers=2)
    a.reset_parameters(torch.Generator().manual_seed(0))
    b.reset_parameters(torch.Generator().manual_seed(0))
    x, t = torch.randn(5, 2), torch.rand(5)
    assert torch.equal(a(x, t), b(x, t)) and a(x, t).shape == (5, 2)


def _rows(ed_a, ed_b, std=0.001, floor=0.0):
    rows = []
    for seed, (a, b) in enumerate(zip(ed_a, ed_b)):
        rows += [{"seed": seed, "kind": "floor", "ed": floor, "ed_std": std},
                 {"seed": seed, "kind": "sample", "sampler": "a", "ed": a},
                 {"seed": seed, "kind": "sample", "sampler": "b", "ed": b}]
    return Results(rows)


@pytest.mark.parametrize(("mode", "ed_a", "ed_b", "status"), [
    ("better", [0.001, 0.002], [0.005, 0.006], REPRODUCED),  # below by more than 2 × 0.001
    ("better", [0.004, 0.002], [0.005, 0.006], INCONCLUSIVE),  # seed 0 inside the margin
    ("better", [0.009, 0.009], [0.005, 0.006], NOT_REPRODUCED),
    ("no_worse", [0.0065, 0.002], [0.005, 0.006], REPRODUCED),
    ("no_worse", [0.009, 0.009], [0.005, 0.006], NOT_REPRODUCED),
    ("near_data", [0.0019, -0.001], [0.0, 0.0], REPRODUCED),  # within 2 × 0.001 of the floor
    ("near_data", [0.0019, 0.003], [0.0, 0.0], INCONCLUSIVE),
])
def test_noise_check_verdicts(mode, ed_a, ed_b, status):
    check = NoiseCheck({"kind": "sample", "sampler": "a"},
                       None if mode == "near_data" else {"kind": "sample", "sampler": "b"},
                       mode=mode)
    assert check(_rows(ed_a, ed_b)).status == status
    missing = NoiseCheck({"kind": "sample", "sampler": "c"}, {"kind": "sample", "sampler": "b"})
    assert missing(_rows(ed_a, ed_b)).status == NOT_TESTED


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="ddpm"):
        Diffusion2DConfig(samplers=["euler_maruyama"])
    with pytest.raises(ValueError, match="eight_gaussians"):
        Diffusion2DConfig(dataset="moons")
    with pytest.raises(ValueError, match="steps"):
        Diffusion2DConfig(steps=[0])
    with pytest.raises(ValueError, match="ema"):
        Diffusion2DConfig(ema=1.0)


@pytest.fixture(scope="module")
def run(micro_run):
    data, _ = micro_run(NAME)
    return Results(data["rows"], {int(k): v for k, v in data["extras"].items()}), data


@pytest.mark.slow
def test_micro_rows(run):
    results, _ = run
    samples = results.select(kind="sample")
    keys = [(r["score"], r["sampler"], r["steps"]) for r in samples]
    assert len(keys) == len(set(keys)) and {r["score"] for r in samples} == {"trained", "exact"}
    for r in samples:
        assert r["nfe"] == r["steps"] * SAMPLERS.meta(r["sampler"])["nfe"]
        assert r["seconds"] >= 0 and 0 <= r["mode_tv"] <= 1 and math.isfinite(r["ed"])
        assert 0 <= r["stray"] <= 1 and r["spread"] > 0
    for r in results.select(kind="rerun"):  # same initial noise, different noise generators
        assert (r["rerun_diff"] == 0.0) != SAMPLERS.meta(r["sampler"])["stochastic"]
    floor = results.select(kind="floor")[0]
    for s in ("pf_heun", "ddim", "pf_euler"):  # the exact-score control converges
        ed = results.values("ed", kind="sample", score="exact", sampler=s, largest=True)[0]
        assert ed < floor["ed"] + 5 * floor["ed_std"]
    train = results.select(kind="train")[0]
    assert train["loss_end"] < train["loss_start"] and train["loss_floor"] < train["loss_end"]
    assert results.select(kind="roundtrip")[0]["rel_error"] < 0.5


@pytest.mark.slow
def test_claims_and_figures(run):
    _, data = run
    statuses = {c["id"]: c["status"] for c in data["claims"]}
    assert set(statuses) == {c.id for c in EXPERIMENTS.get(NAME).claims}
    assert set(statuses.values()) <= {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED}
    assert not any(c["evidence"].startswith("the check failed") for c in data["claims"])
    assert statuses["ode-is-deterministic"] == REPRODUCED
    names = [p["name"] for p in data["plots"]]
    assert {"energy_distance_trained", "energy_distance_exact", "scatter_ddpm_10"} <= set(names)
    scatter = next(p for p in data["plots"] if p["name"] == "scatter_ddpm_10")
    assert all(s["style"]["linestyle"] == "none" for s in scatter["series"])
