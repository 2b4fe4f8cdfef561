"""Samplers of a diffusion model on 2-D data (kexue.fm/archives/9152, 9181, 9209, 9228).

A small ε-network (an MLP with a sinusoidal time embedding) is trained by denoising score
matching (DDPM's unweighted, summed loss) on a 2-D Gaussian mixture under the continuous
marginal ``x_t = ᾱ(t) x_0 + β̄(t) ε`` with ``ᾱ = e^{−5t²}`` (the continuous limit of Su's DDPM
schedule). One network then drives every sampler, each started from the same prior draw:

==============  =====================================================================  ======
``ddpm``        ancestral sampling (post 9152) on the ``S``-step chain with the same        S
                marginals, ``ᾱ_k = ᾱ(k/S)``, ``σ_k = β_k`` (Su's choice)
``reverse_sde`` Euler–Maruyama on ``dx = [f x − g² ∇log p] dt + g dw̄`` (post 9209)            S
``pf_euler``    the probability-flow ODE ``dx/dt = f x − ½ g² ∇log p`` (post 9228), Euler     S
``pf_heun``     the same ODE, Heun (two evaluations per step)                               2S
``ddim``        DDIM with η = 0 (post 9181): the ODE's discretisation in (x̂_0, ε̂)            S
==============  =====================================================================  ======

(last column: network evaluations, NFE, for ``S`` steps). The exact score of the mixture's
diffused marginals drives the same samplers as a control. Samples are compared with fresh data by
the energy distance ``2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖`` (noise floor: fresh data against the
same reference), the mode weights, the spread of the modes and the share of stray samples
between them; wall times are measured per run. The tensors are tiny, so the experiment runs on
the CPU with one thread (intra-op threads only add overhead at this size).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import Config
from ...diffusion import (
    TOY_DATASETS,
    DDPMLike,
    DDPMSchedule,
    GaussianMixture,
    MarginalSDE,
    ddim_sample,
    ddpm_sample,
    dsm_loss,
    energy_distance,
    eps_to_score,
    make_toy,
    mode_frequencies,
    probability_flow,
    probability_flow_sample,
    reverse_sde_sample,
)
from ...registry import Registry
from ..base import Experiment, RunContext, register_experiment
from ..claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    AllOf,
    Check,
    Claim,
    Results,
    Threshold,
    Verdict,
)
from ..figures import LinePlot, Series, series_over
from ..report import markdown_table

__all__ = ["SAMPLERS", "Diffusion2D", "Diffusion2DConfig", "EpsMLP", "NoiseCheck",
           "marginal_schedule", "mode_spread", "train_eps_model"]

POSTS = {k: f"https://kexue.fm/archives/{k}" for k in (9152, 9181, 9209, 9228)}

EpsFn = Callable[[Tensor, Tensor], Tensor]
#: name -> fn(eps_fn, sde, x_T, steps, generator) -> samples; meta: label, nfe (per step),
#: stochastic
SAMPLERS: Registry[Callable[..., Tensor]] = Registry("diffusion-2d sampler")


def marginal_schedule(sde: MarginalSDE, steps: int) -> DDPMSchedule:
    """The ``steps``-step DDPM chain whose marginals are the SDE's at ``t = k/steps``:
    ``β_k^DDPM = 1 − ᾱ(k/S)² / ᾱ((k−1)/S)²`` (so ``ᾱ_k = ᾱ(k/S)`` exactly)."""
    a = sde.bar_alpha(torch.arange(steps + 1, dtype=torch.float64) / steps)
    return DDPMSchedule.from_ddpm((1 - (a[1:] / a[:-1]) ** 2).clamp(1e-12, 1 - 1e-12))


def _score(eps_fn: EpsFn, sde: MarginalSDE) -> EpsFn:
    return lambda x, t: eps_to_score(eps_fn(x, t), t, sde)


@SAMPLERS.register("ddpm", label="ancestral DDPM", nfe=1, stochastic=True)
def _ddpm(eps_fn: EpsFn, sde: MarginalSDE, x_T: Tensor, steps: int,
          generator: torch.Generator | None) -> Tensor:
    sched = marginal_schedule(sde, steps)
    return ddpm_sample(lambda x, k: eps_fn(x, k.to(x.dtype) / steps), tuple(x_T.shape), sched,
                       generator=generator, x_T=x_T)


@SAMPLERS.register("reverse_sde", label="reverse SDE (Euler–Maruyama)", nfe=1, stochastic=True)
def _reverse_sde(eps_fn: EpsFn, sde: MarginalSDE, x_T: Tensor, steps: int,
                 generator: torch.Generator | None) -> Tensor:
    return reverse_sde_sample(_score(eps_fn, sde), sde, tuple(x_T.shape), steps,
                              generator=generator, x_T=x_T)


@SAMPLERS.register("pf_euler", label="probability-flow ODE, Euler", nfe=1, stochastic=False)
def _pf_euler(eps_fn: EpsFn, sde: MarginalSDE, x_T: Tensor, steps: int,
              generator: torch.Generator | None) -> Tensor:
    return probability_flow_sample(_score(eps_fn, sde), sde, tuple(x_T.shape), steps, "euler",
                                   x_T=x_T)


@SAMPLERS.register("pf_heun", label="probability-flow ODE, Heun", nfe=2, stochastic=False)
def _pf_heun(eps_fn: EpsFn, sde: MarginalSDE, x_T: Tensor, steps: int,
             generator: torch.Generator | None) -> Tensor:
    return probability_flow_sample(_score(eps_fn, sde), sde, tuple(x_T.shape), steps, "heun",
                                   x_T=x_T)


@SAMPLERS.register("ddim", label="DDIM (η = 0)", nfe=1, stochastic=False)
def _ddim(eps_fn: EpsFn, sde: MarginalSDE, x_T: Tensor, steps: int,
          generator: torch.Generator | None) -> Tensor:
    return ddim_sample(eps_fn, sde, tuple(x_T.shape), steps, generator=generator, x_T=x_T)


# ------------------------------------------------------------------------------- the network
class EpsMLP(nn.Module):
    """``ε_θ(x, t)``: an MLP on ``[x, sin(ω t), cos(ω t)]`` (``ω`` geometric from 1 to 200).

    Args:
        dim: Data dimension.
        hidden: Width.
        layers: Hidden layers (SiLU).
        freqs: Number of time frequencies.
    """

    def __init__(self, dim: int = 2, hidden: int = 128, layers: int = 3, freqs: int = 16) -> None:
        super().__init__()
        self.register_buffer("omega", torch.exp(torch.linspace(0.0, math.log(200.0), freqs)))
        widths = [dim + 2 * freqs] + [hidden] * layers
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(widths))
        self.out = nn.Linear(hidden, dim)

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """PyTorch's default ``Linear`` initialisation, drawn from ``generator``."""
        for lin in [*self.hidden, self.out]:
            nn.init.kaiming_uniform_(lin.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(lin.in_features)
            nn.init.uniform_(lin.bias, -bound, bound, generator=generator)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        u = t.to(x.dtype)[:, None] * self.omega
        h = torch.cat([x, u.sin(), u.cos()], -1)
        for lin in self.hidden:
            h = F.silu(lin(h))
        return self.out(h)


def train_eps_model(mix: GaussianMixture, sde: MarginalSDE, cfg: Diffusion2DConfig,
                    generator: torch.Generator, log: Callable[[str], None] = print
                    ) -> tuple[EpsMLP, dict[str, Any]]:
    """Denoising score matching (unweighted ε loss, summed over dimensions) with Adam, a cosine
    learning-rate decay and an exponential moving average of the weights (returned)."""
    net = EpsMLP(mix.dim, cfg.hidden, cfg.layers)
    net.reset_parameters(generator)
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, cfg.train_steps) / cfg.train_steps)))
    curve, t0 = [], time.perf_counter()
    for step in range(cfg.train_steps):
        loss = dsm_loss(net, mix.sample(cfg.batch_size, generator=generator), sde,
                        generator=generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), net.parameters()):
                pe.lerp_(p, 1 - cfg.ema)
        curve.append(float(loss.detach()))
        if (step + 1) % max(1, cfg.train_steps // 5) == 0:
            log(f"train step {step + 1}/{cfg.train_steps}: loss {statistics.fmean(curve[-50:]):.3f}")
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        x0 = mix.sample(8192, generator=generator)
        g = torch.Generator().manual_seed(12345)
        floor = float(dsm_loss(lambda x, t: mix.eps(x, t, sde), x0, sde, generator=g))
        final = float(dsm_loss(ema, x0, sde, generator=torch.Generator().manual_seed(12345)))
    head, every = max(1, min(50, len(curve))), max(1, len(curve) // 200)
    return ema.eval(), {"loss_start": statistics.fmean(curve[:head]), "loss_end": final,
                        "loss_floor": floor, "train_seconds": seconds,
                        "params": sum(p.numel() for p in net.parameters()),
                        "curve": curve[::every], "curve_every": every}


# ------------------------------------------------------------------------------------ metrics
def _mahalanobis(x: Tensor, mix: GaussianMixture) -> Tensor:
    """Distance of each sample to its most probable mode, in that mode's standard deviations."""
    lab = mix.responsibilities(x).argmax(-1)
    diff = x.double() - mix.mus[lab]
    chol = torch.linalg.cholesky(mix.covs)[lab]
    sol = torch.linalg.solve_triangular(chol, diff[..., None], upper=False)[..., 0]
    return sol.norm(dim=-1)


def mode_spread(x: Tensor, mix: GaussianMixture) -> tuple[float, float]:
    """``(spread, stray)`` of 2-D samples around the mixture's modes.

    ``spread``: the median Mahalanobis distance of the samples to their most probable mode over
    its value for the data, ``√(2 ln 2)`` (1 = the true spread; < 1: modes shrunk); robust to
    samples between the modes, which ``stray`` counts: the share farther than 4 standard
    deviations from every mode (``e^{−8}`` ≈ 0.03% of the data).
    """
    if mix.dim != 2:
        raise ValueError(f"mode_spread needs 2-D data, got dimension {mix.dim}")
    m = _mahalanobis(x, mix)
    return float(m.median()) / math.sqrt(2 * math.log(2)), float((m > 4).double().mean())


def _points(x: Tensor) -> list[list[float]]:
    """Sample coordinates for the scatter plots, rounded (they are stored in results.json)."""
    return [[round(float(a), 3), round(float(b), 3)] for a, b in x.tolist()]


def _measure(x: Tensor, ref: Tensor, mix: GaussianMixture) -> dict[str, float]:
    freq = mode_frequencies(x, mix)
    spread, stray = mode_spread(x, mix)
    return {"ed": energy_distance(x, ref), "mode_tv": 0.5 * float((freq - mix.pis).abs().sum()),
            "spread": spread, "stray": stray}


@dataclasses.dataclass
class NoiseCheck(Check):
    """A comparison of energy distances whose margin is the run's own noise.

    Per seed the margin is ``k ×`` the standard deviation of the energy distance between fresh
    data and the reference (the ``floor`` row). ``mode="better"``: ``a`` has a smaller energy
    distance than ``b`` by more than the margin; ``mode="no_worse"``: ``a`` is not worse than
    ``b`` by more than the margin; ``mode="near_data"``: ``a`` is within the margin of the
    floor's mean (``b`` unused).
    """

    a: dict[str, Any]
    b: dict[str, Any] | None
    mode: str = "better"
    k: float = 2.0
    labels: tuple[str, str] = ("", "")

    def __call__(self, results: Results) -> Verdict:
        if self.mode not in ("better", "no_worse", "near_data"):
            raise ValueError(f"mode must be better, no_worse or near_data, got {self.mode!r}")
        a = results.values("ed", **self.a)
        b = (results.values("ed", kind="floor") if self.mode == "near_data"
             else results.values("ed", **(self.b or {})))
        noise = results.values("ed_std", kind="floor")
        seeds = sorted(set(a) & set(b) & set(noise))
        la, lb = self.labels
        if not seeds:
            return Verdict(NOT_TESTED, f"{la if not a else lb or 'the floor'} was not measured")
        diffs = {s: a[s] - b[s] for s in seeds}  # > 0: a is farther from the data
        margins = {s: self.k * noise[s] for s in seeds}
        if self.mode == "better":
            ok = [diffs[s] < -margins[s] for s in seeds]
            bad = [diffs[s] > margins[s] for s in seeds]
        else:
            ok = [diffs[s] <= margins[s] for s in seeds]
            bad = [not o for o in ok]
        fmt = "; ".join(f"seed {s}: {a[s]:.4f} vs {b[s]:.4f} (margin {margins[s]:.4f})"
                        for s in seeds)
        what = {"better": "below", "no_worse": "not above", "near_data": "near"}[self.mode]
        evidence = f"energy distance of {la} {what} {lb or 'fresh data'}: {fmt}"
        status = REPRODUCED if all(ok) else NOT_REPRODUCED if all(bad) else INCONCLUSIVE
        return Verdict(status, evidence, {"a": a, "b": b, "margins": margins})


# -------------------------------------------------------------------------------- experiment
@dataclasses.dataclass
class Diffusion2DConfig(Config):
    """Data, network, training, samples and step counts.

    Args:
        dataset: A name of :data:`formerlab.diffusion.TOY_DATASETS` (2-D).
        train_steps, batch_size, hidden, layers, lr, ema: The ε-network and its training.
        samples: Samples per sampler run; reference: size of the fresh-data reference.
        steps: Step counts run by every sampler.
        many_steps: Also run ancestral DDPM with this many steps (the long-chain baseline).
        samplers: Names of :data:`SAMPLERS`.
        exact_control: Also run every sampler with the mixture's exact score.
        floor_repeats: Fresh-data samples measuring the energy distance's noise floor.
        roundtrip_steps: Heun steps of the data → noise → data round trip.
        scatter: Points per scatter plot.
    """

    dataset: str = "eight_gaussians"
    train_steps: int = 5000
    batch_size: int = 512
    hidden: int = 128
    layers: int = 3
    lr: float = 2e-3
    ema: float = 0.995
    samples: int = 2000
    reference: int = 4000
    steps: list[int] = dataclasses.field(default_factory=lambda: [5, 10, 20, 50, 100, 200])
    many_steps: int = 1000
    samplers: list[str] = dataclasses.field(default_factory=lambda: list(SAMPLERS))
    exact_control: bool = True
    floor_repeats: int = 10
    roundtrip_steps: int = 100
    scatter: int = 300

    def validate(self) -> None:
        TOY_DATASETS.canonical(self.dataset)
        for s in self.samplers:
            SAMPLERS.canonical(s)
        if not self.steps or any(not isinstance(s, int) or s < 1 for s in self.steps):
            raise ValueError(f"steps must be a non-empty list of positive ints, got {self.steps}")
        for name in ("train_steps", "batch_size", "hidden", "layers", "samples", "reference",
                     "many_steps", "roundtrip_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.floor_repeats < 2:
            raise ValueError(f"floor_repeats must be >= 2, got {self.floor_repeats}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")


#: the budgets (steps, or network evaluations) of the few-step comparisons, DDIM's few and DDPM's
#: many steps
BUDGETS, FEW, MANY = (10, 20), 50, 1000


def _at(sampler: str, score: str = "trained", **where: Any) -> dict[str, Any]:
    return {"kind": "sample", "score": score, "sampler": sampler, **where}


def _budget_claim(worse: str, per: str) -> AllOf:
    """The ODE (Heun) against ``worse`` at equal ``steps`` or equal ``nfe`` (network evaluations)."""
    label, unit = SAMPLERS.meta(worse)["label"], "steps" if per == "steps" else "evaluations"
    return AllOf([NoiseCheck(_at("pf_heun", **{per: n}), _at(worse, **{per: n}),
                             labels=(f"the ODE (Heun) at {n} {unit}", f"{label} at {n} {unit}"))
                  for n in BUDGETS])


def _rerun(name: str, deterministic: bool) -> Threshold:
    return Threshold("rerun_diff", {"kind": "rerun", "sampler": name}, 1e-6 if deterministic
                     else 1e-3, above=not deterministic,
                     label=f"{SAMPLERS.meta(name)['label']}: largest change on a rerun")


@register_experiment
class Diffusion2D(Experiment):
    """One trained ε-network, every sampler at several step counts, the exact score as control."""

    name = "diffusion-2d"
    title = "diffusion samplers on a 2-D mixture: DDPM, reverse SDE, probability-flow ODE, DDIM"
    post = POSTS[9228]
    config = Diffusion2DConfig
    presets = {
        "micro": lambda: Diffusion2DConfig(train_steps=300, batch_size=256, hidden=64, layers=2,
                                           lr=3e-3, ema=0.0, samples=400, reference=800,
                                           steps=[5, 10, 20, 50], many_steps=100,
                                           floor_repeats=4, roundtrip_steps=20, scatter=200),
        "quick": lambda: Diffusion2DConfig(),
        "full": lambda: Diffusion2DConfig(train_steps=20000, samples=10000, reference=20000,
                                          steps=[2, 5, 10, 20, 50, 100, 200, 500, 1000],
                                          roundtrip_steps=400, scatter=1000),
    }
    claims = [
        Claim("ode-is-deterministic",
              "The probability-flow ODE turns sampling into a deterministic map: the same "
              "initial noise always gives the same sample (the SDE's fresh noise does not).",
              POSTS[9228], AllOf([_rerun("pf_heun", True), _rerun("ddim", True),
                                  _rerun("reverse_sde", False)])),
        Claim("ode-is-invertible",
              "The map is invertible: integrating data to noise and back recovers the points "
              "(here within a tenth of a mode's spread).", POSTS[9228],
              Threshold("rel_error", {"kind": "roundtrip"}, 0.1, above=False,
                        label="round-trip error / mode spread (Heun)")),
        Claim("ode-fewer-steps-than-ddpm",
              "The ODE needs fewer steps than ancestral sampling: at 10 and 20 steps its samples "
              "are closer to the data than DDPM's.", POSTS[9228], _budget_claim("ddpm", "steps")),
        Claim("ode-fewer-evaluations-than-ddpm",
              "The ODE's advantage holds at equal cost: at 10 and 20 network evaluations (a Heun "
              "step costs two) its samples are closer to the data than DDPM's.", POSTS[9228],
              _budget_claim("ddpm", "nfe")),
        Claim("ode-fewer-steps-than-sde",
              "The ODE needs fewer steps than the reverse SDE: at 10 and 20 steps its samples "
              "are closer to the data.", POSTS[9228], _budget_claim("reverse_sde", "steps")),
        Claim("ode-fewer-evaluations-than-sde",
              "The same at equal cost: at 10 and 20 network evaluations the ODE's samples are "
              "closer to the data than the reverse SDE's.", POSTS[9228],
              _budget_claim("reverse_sde", "nfe")),
        Claim("ddim-few-matches-ddpm-many",
              f"DDIM with {FEW} steps samples as well as DDPM with its {MANY} steps.", POSTS[9181],
              NoiseCheck(_at("ddim", steps=FEW), _at("ddpm", steps=MANY), mode="no_worse",
                         labels=(f"DDIM at {FEW} steps", f"DDPM at {MANY} steps"))),
        Claim("ddpm-generates-the-data",
              f"Trained on the data, DDPM's ancestral sampler with T = {MANY} steps generates "
              "it.", POSTS[9152],
              NoiseCheck(_at("ddpm", steps=MANY), None, mode="near_data", k=3.0,
                         labels=(f"trained DDPM at {MANY} steps", ""))),
        Claim("shared-marginals",
              "The reverse SDE and the probability-flow ODE share the marginals of the forward "
              "process: driven by the exact score, both reproduce the data.", POSTS[9209],
              AllOf([NoiseCheck(_at(s, "exact", largest=True), None, mode="near_data", k=3.0,
                                labels=(f"exact-score {SAMPLERS.meta(s)['label']}", ""))
                     for s in ("reverse_sde", "pf_heun")])),
    ]

    def run(self, config: Diffusion2DConfig, ctx: RunContext) -> tuple[list[dict], dict]:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # tiny tensors: intra-op threads only add overhead
        try:
            return self._run(config, ctx)
        finally:
            torch.set_num_threads(threads)

    def _run(self, config: Diffusion2DConfig, ctx: RunContext) -> tuple[list[dict], dict]:
        g = ctx.generator
        mix, sde = make_toy(config.dataset), DDPMLike()
        if mix.dim != 2:
            raise ValueError(f"dataset must be 2-D, {config.dataset!r} has dimension {mix.dim}")
        net, info = train_eps_model(mix, sde, config, g, ctx.log)
        curve = {"curve": info.pop("curve"), "curve_every": info.pop("curve_every")}
        rows: list[dict[str, Any]] = [{"kind": "train", **info}]
        ref = mix.sample(config.reference, generator=g)
        floor = [energy_distance(mix.sample(config.samples, generator=g), ref)
                 for _ in range(config.floor_repeats)]
        rows.append({"kind": "floor", "ed": statistics.fmean(floor),
                     "ed_std": statistics.stdev(floor), "n": config.samples})
        x_T = sde.prior_sample((config.samples, 2), generator=g)
        scores: dict[str, EpsFn] = {"trained": net}
        if config.exact_control:
            scores["exact"] = lambda x, t: mix.eps(x, t, sde)
        runs = [(s, n) for n in config.steps for s in config.samplers]
        if "ddpm" in config.samplers and config.many_steps not in config.steps:
            runs.append(("ddpm", config.many_steps))
        scatter = {"data": _points(ref[:config.scatter])}
        for score, fn in scores.items():
            for name, n in runs:
                t0 = time.perf_counter()
                with torch.no_grad():
                    x = SAMPLERS.get(name)(fn, sde, x_T, n, g)
                nfe = n * SAMPLERS.meta(name)["nfe"]
                rows.append({"kind": "sample", "score": score, "sampler": name, "steps": n,
                             "nfe": nfe, "seconds": time.perf_counter() - t0,
                             "largest": n == max(config.steps), **_measure(x, ref, mix)})
                if score == "trained" and n in (BUDGETS[0], config.many_steps):
                    scatter[f"{name}@{n}"] = _points(x[:config.scatter])
            ctx.log(f"{score} score: {len(runs)} sampler runs done")
        rows += self._reruns(net, sde, x_T, config, ctx.seed)
        rows.append(self._roundtrip(net, sde, mix, config, g))
        return rows, {"scatter": scatter, **curve}

    @staticmethod
    def _reruns(net: EpsFn, sde: MarginalSDE, x_T: Tensor, cfg: Diffusion2DConfig,
                seed: int) -> list[dict[str, Any]]:
        """Each sampler twice from the same initial noise, with different noise generators."""
        n, rows = min(cfg.steps), []
        for name in cfg.samplers:
            with torch.no_grad():
                a, b = (SAMPLERS.get(name)(net, sde, x_T, n,
                                           torch.Generator().manual_seed(10_000 * seed + i))
                        for i in (1, 2))
            rows.append({"kind": "rerun", "sampler": name, "steps": n,
                         "rerun_diff": float((a - b).abs().max())})
        return rows

    @staticmethod
    def _roundtrip(net: EpsFn, sde: MarginalSDE, mix: GaussianMixture, cfg: Diffusion2DConfig,
                   g: torch.Generator) -> dict[str, Any]:
        """Data → noise → data through the ODE (Heun, ``roundtrip_steps`` each way)."""
        x0 = mix.sample(cfg.samples, generator=g)
        score = _score(net, sde)
        z = probability_flow(score, sde, x0, sde.t_min, 1.0, cfg.roundtrip_steps, "heun")
        back = probability_flow(score, sde, z, 1.0, sde.t_min, cfg.roundtrip_steps, "heun")
        rms = float((back - x0).double().pow(2).sum(-1).mean().sqrt())
        scale = math.sqrt(float(torch.diagonal(mix.covs, dim1=-2, dim2=-1).sum(-1).mean()))
        return {"kind": "roundtrip", "steps": cfg.roundtrip_steps, "error": rms,
                "rel_error": rms / scale, "noise_std": float(z.double().std())}

    # ------------------------------------------------------------------------------ report
    def _pivot(self, results: Results, metric: str, score: str, scale: float, digits: int) -> str:
        steps = sorted(results.distinct("steps", kind="sample", score=score))
        body = []
        for name in results.distinct("sampler", kind="sample", score=score):
            body.append([SAMPLERS.meta(name)["label"], *[
                results.fmt(metric, scale, digits, kind="sample", score=score, sampler=name,
                            steps=n) for n in steps]])
        return markdown_table(["sampler \\ steps", *map(str, steps)], body)

    def table(self, results: Results) -> str:
        tr = results.select(kind="train")[0]
        floor = results.fmt("ed", 1000, 2, kind="floor")
        noise = results.fmt("ed_std", 1000, 2, kind="floor")
        parts = [f"Energy distance to fresh data ×10³ (noise floor: fresh data {floor}, its "
                 f"spread {noise}); {tr.get('params', '?')}-parameter ε-network, training loss "
                 f"{results.fmt('loss_start', 1, 3, kind='train')} → "
                 f"{results.fmt('loss_end', 1, 3, kind='train')} (exact-ε floor "
                 f"{results.fmt('loss_floor', 1, 3, kind='train')}) in "
                 f"{results.fmt('train_seconds', 1, 0, kind='train')} s.",
                 "**Trained network**, by steps (Heun uses two evaluations per step):\n\n"
                 + self._pivot(results, "ed", "trained", 1000, 2)]
        if results.select(kind="sample", score="exact"):
            parts.append("**Exact score** (control):\n\n"
                         + self._pivot(results, "ed", "exact", 1000, 2))
        parts.append("Mode spread (median distance to the nearest mode over the data's; 1 = the "
                     "true spread, < 1: modes shrunk), trained network:\n\n"
                     + self._pivot(results, "spread", "trained", 1, 2))
        parts.append("Stray samples (% farther than 4 standard deviations from every mode; "
                     "data: 0.03%), trained network:\n\n"
                     + self._pivot(results, "stray", "trained", 100, 1))
        parts.append("Wall time per run (s), trained network:\n\n"
                     + self._pivot(results, "seconds", "trained", 1, 2))
        rt = results.select(kind="roundtrip")
        if rt:
            parts.append(f"ODE round trip data → noise → data ({rt[0]['steps']} Heun steps each "
                         f"way): error {results.fmt('error', 1, 4, kind='roundtrip')} "
                         f"({results.fmt('rel_error', 100, 1, kind='roundtrip')}% of a mode's "
                         "spread).")
        return "\n\n".join(parts)

    def figures(self, results: Results) -> list[LinePlot]:
        plots = []
        for score in results.distinct("score", kind="sample"):
            series = [series_over(results, "ed", "nfe", SAMPLERS.meta(s)["label"], scale=1000,
                                  kind="sample", score=score, sampler=s)
                      for s in results.distinct("sampler", kind="sample", score=score)]
            floor = results.mean("ed", kind="floor")
            xs = results.distinct("nfe", kind="sample", score=score)
            if floor is not None and xs:
                series.append(Series("fresh data (floor)", [min(xs), max(xs)], [1000 * floor] * 2,
                                     style={"linestyle": "--", "color": "grey", "marker": None}))
            plots.append(LinePlot(f"energy_distance_{score}", f"Energy distance vs network "
                                  f"evaluations ({score} score)", "network evaluations (NFE)",
                                  "energy distance ×10³", [s for s in series if s is not None],
                                  logx=True, caption="Mean over seeds (band ±1 std)."))
        extras = results.extras.get(results.seeds[0], {}) if results.seeds else {}
        pts = extras.get("scatter", {})
        data = pts.get("data", [])
        for key, xy in pts.items():
            if key == "data":
                continue
            name, n = key.split("@")
            plots.append(LinePlot(f"scatter_{name}_{n}", f"{SAMPLERS.meta(name)['label']}, "
                                  f"{n} steps (trained)", "x₁", "x₂", [
                                      Series("data", [p[0] for p in data], [p[1] for p in data],
                                             style={"linestyle": "none", "marker": ".",
                                                    "color": "lightgrey"}),
                                      Series("samples", [p[0] for p in xy], [p[1] for p in xy],
                                             style={"linestyle": "none", "marker": ".",
                                                    "ms": 2})],
                                  caption="First seed; grey: fresh data."))
        curve = extras.get("curve", [])
        if curve:
            every = extras.get("curve_every", 1)
            plots.append(LinePlot("training_loss", "Training loss (ε, summed over dimensions)",
                                  "step", "loss", [Series("loss", [float(i * every) for i in
                                                                   range(len(curve))], curve)]))
        return plots

    def notes(self, results: Results) -> str:
        return ("Every sampler starts from the same prior draw of each seed; the energy "
                "distances are comparable within a seed, and the margins of the claims are "
                "multiples of the spread of fresh data's energy distance measured in the same "
                "run. Wall times depend on the machine's load at the time of the run.")

    def report_title(self, config: Diffusion2DConfig, preset: str) -> str:
        return f"Diffusion samplers on {config.dataset} ({preset} preset)"
