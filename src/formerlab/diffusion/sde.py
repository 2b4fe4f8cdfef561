"""The SDE view of diffusion: define the marginal, back out the SDE; reverse SDE and ODE samplers.

Su's recipe (kexue.fm/archives/9209, following DDIM's spirit): choose the marginal
``p(x_t | x_0) = N(ᾱ_t x_0, β̄_t² I)`` on ``t ∈ [0, 1]`` (``ᾱ_0 = 1, β̄_0 = 0``), then the linear
SDE ``dx = f_t x dt + g_t dw`` with the same marginals has

    f_t  = d ln ᾱ_t / dt,        g_t² = ᾱ_t² · d(β̄_t² / ᾱ_t²)/dt = 2 ᾱ_t β̄_t · d(β̄_t / ᾱ_t)/dt

(:class:`MarginalSDE` computes both by autograd; presets override them in closed form). The
reverse SDE (Anderson 1982) ``dx = [f_t x − g_t² ∇log p_t(x)] dt + g_t dw̄`` and the
probability-flow ODE (kexue.fm/archives/9228; Song et al., arXiv 2011.13456)
``dx/dt = f_t x − ½ g_t² ∇log p_t(x)`` share the marginals ``p_t``. The score and the noise
predictor are one object: ``s(x_t, t) = −ε(x_t, t) / β̄_t``.

Presets (:data:`SDE_PRESETS`):

===============  ===========================================================================
``vp``           Song's VP-SDE: ``β(t) = β_min + t(β_max − β_min)``,
                 ``ᾱ = exp(−¼t²(β_max − β_min) − ½tβ_min)``, ``β̄ = √(1 − ᾱ²)``; ``f = −β/2``,
                 ``g² = β`` (defaults 0.1, 20)
``ddpm_like``    ``ᾱ = e^{−5t²}`` (``vp`` with β_min = 0, β_max = 20): ``f = −10t``, ``g² = 20t``;
                 Su's discrete schedule ``α_k = √(1 − 0.02k/T)`` satisfies
                 ``|ln ᾱ_k + 5(k/T)²| ≤ 0.039``
``ve``           ``ᾱ = 1``, ``β̄ = σ_min √(r^{2t} − 1)``, ``r = σ_max/σ_min`` (Song's VE-SDE with
                 the exact ``β̄_0 = 0``): ``f = 0``, ``g² = 2σ_min² ln r · r^{2t}``; the prior has
                 variance ``β̄_1² ≈ σ_max²``, not 1
===============  ===========================================================================

Sampler integration runs on a uniform time grid from 1 down to ``t_end`` (default ``t_min``);
ODE steps (:data:`ODE_SOLVERS`): Euler, and Heun ``x_E = x + h D(x, t)``,
``x' = x + ½h (D(x, t) + D(x_E, t'))`` with ``D = f x − ½ g² s``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry
from .ddpm import _bcast, _call, randn

__all__ = [
    "ODE_SOLVERS",
    "SDE_PRESETS",
    "VE",
    "VP",
    "DDPMLike",
    "MarginalSDE",
    "dsm_loss",
    "eps_to_score",
    "make_sde",
    "probability_flow",
    "probability_flow_sample",
    "reverse_sde_sample",
    "score_to_eps",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
#: name -> MarginalSDE subclass (constructed with its own keyword parameters)
SDE_PRESETS: Registry[type] = Registry("SDE preset")
#: name -> fn(drift, x, t, t_next) -> x_next
ODE_SOLVERS: Registry[Callable[..., Tensor]] = Registry("ODE solver")


def _time(t: Tensor | float) -> Tensor:
    t = torch.as_tensor(t)
    if not t.dtype.is_floating_point:
        t = t.to(torch.float64)
    return t


class MarginalSDE:
    """The linear SDE whose marginals are ``N(ᾱ(t) x_0, β̄(t)² I)``.

    Args:
        bar_alpha: ``t -> ᾱ(t)`` on tensors (``ᾱ(0) = 1``), differentiable.
        bar_beta: ``t -> β̄(t)`` on tensors (``β̄(0) = 0``), differentiable.
        t_min: Smallest time the samplers and losses use (the score blows up at 0).
    """

    def __init__(self, bar_alpha: Callable[[Tensor], Tensor], bar_beta: Callable[[Tensor], Tensor],
                 t_min: float = 1e-3) -> None:
        if not callable(bar_alpha) or not callable(bar_beta):
            raise TypeError("bar_alpha and bar_beta must be callables of t")
        if not 0 <= t_min < 1:
            raise ValueError(f"t_min must be in [0, 1), got {t_min}")
        self._bar_alpha, self._bar_beta, self.t_min = bar_alpha, bar_beta, float(t_min)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t_min={self.t_min})"

    def bar_alpha(self, t: Tensor | float) -> Tensor:
        return self._bar_alpha(_time(t))

    def bar_beta(self, t: Tensor | float) -> Tensor:
        return self._bar_beta(_time(t))

    def coefficients(self, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(ᾱ(t), β̄(t))``."""
        t = _time(t)
        return self.bar_alpha(t), self.bar_beta(t)

    def marginal(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """Mean ``ᾱ(t) x_0`` and standard deviation ``β̄(t)`` of ``p(x_t | x_0)``."""
        a, b = self.coefficients(t)
        return _bcast(a, x0) * x0, b

    def _derivative(self, fn: Callable[[Tensor], Tensor], t: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            tt = t.detach().to(torch.float64).requires_grad_()
            val = fn(tt)
            if not val.requires_grad:  # a constant schedule (e.g. ᾱ ≡ 1)
                return val.detach().to(t.dtype), torch.zeros_like(t)
            (d,) = torch.autograd.grad(val.sum(), tt)
        return val.detach().to(t.dtype), d.to(t.dtype)

    def f(self, t: Tensor | float) -> Tensor:
        """Drift coefficient ``f_t = d ln ᾱ_t / dt`` (autograd of the schedule)."""
        t = _time(t)
        return self._derivative(lambda s: torch.log(self.bar_alpha(s)), t)[1]

    def g2(self, t: Tensor | float) -> Tensor:
        """Squared diffusion ``g_t² = 2 ᾱ_t β̄_t d(β̄_t/ᾱ_t)/dt`` (autograd of the schedule)."""
        t = _time(t)
        ratio, d = self._derivative(lambda s: self.bar_beta(s) / self.bar_alpha(s), t)
        return 2 * self.bar_alpha(t) ** 2 * ratio * d

    def prior_sample(self, shape: tuple[int, ...], *, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32, device: Any = None) -> Tensor:
        """Draw from ``N(0, β̄(1)² I)`` (the ``ᾱ(1) x_0`` term is neglected)."""
        return float(self.bar_beta(1.0)) * randn(shape, generator, dtype, device)


@SDE_PRESETS.register("vp")
class VP(MarginalSDE):
    """Song's variance-preserving SDE, ``β(t) = β_min + t (β_max − β_min)``."""

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, t_min: float = 1e-3):
        if not 0 <= beta_min < beta_max:
            raise ValueError(f"need 0 <= beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

        def log_a(t: Tensor) -> Tensor:
            return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

        super().__init__(lambda t: torch.exp(log_a(t)),
                         lambda t: torch.sqrt(-torch.expm1(2 * log_a(t))), t_min)

    def _beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def f(self, t: Tensor | float) -> Tensor:
        return -0.5 * self._beta(_time(t))

    def g2(self, t: Tensor | float) -> Tensor:
        return self._beta(_time(t))


@SDE_PRESETS.register("ddpm_like")
class DDPMLike(VP):
    """``ᾱ(t) = e^{−5t²}``: the continuous limit of DDPM's schedules (``f = −10t``, ``g² = 20t``)."""

    def __init__(self, t_min: float = 1e-3):
        super().__init__(0.0, 20.0, t_min)


@SDE_PRESETS.register("ve")
class VE(MarginalSDE):
    """Variance exploding: ``ᾱ = 1``, ``β̄(t) = σ_min √(r^{2t} − 1)``, ``r = σ_max / σ_min``."""

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, t_min: float = 1e-3):
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = float(sigma_min), float(sigma_max)
        self._log_r = math.log(self.sigma_max / self.sigma_min)
        super().__init__(lambda t: torch.ones_like(t),
                         lambda t: self.sigma_min * torch.sqrt(torch.expm1(2 * self._log_r * t)),
                         t_min)

    def f(self, t: Tensor | float) -> Tensor:
        return torch.zeros_like(_time(t))

    def g2(self, t: Tensor | float) -> Tensor:
        t = _time(t)
        return 2 * self.sigma_min**2 * self._log_r * torch.exp(2 * self._log_r * t)


def make_sde(name: str, **params: Any) -> MarginalSDE:
    """Build a preset of :data:`SDE_PRESETS` (``vp``, ``ddpm_like``, ``ve``)."""
    return SDE_PRESETS.get(name)(**params)


# ------------------------------------------------------------------------- score ↔ noise
def eps_to_score(eps: Tensor, t: Tensor | float, sde: Any) -> Tensor:
    """``s(x_t, t) = −ε(x_t, t) / β̄_t``."""
    return -eps / _bcast(sde.coefficients(t)[1], eps)


def score_to_eps(score: Tensor, t: Tensor | float, sde: Any) -> Tensor:
    """``ε(x_t, t) = −β̄_t s(x_t, t)``."""
    return -score * _bcast(sde.coefficients(t)[1], score)


def dsm_loss(model: Callable[[Tensor, Tensor], Tensor], x0: Tensor, sde: MarginalSDE,
             param: str = "eps", weighting: Callable[[Tensor], Tensor] | None = None, *,
             t_min: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Denoising score matching with ``t ~ U(t_min, 1)`` and ``x_t = ᾱ x_0 + β̄ ε``.

    ``param="eps"``: ``w(t) ‖ε_θ(x_t, t) − ε‖²`` (``w = 1`` is DDPM's loss; ``w = 1/β̄²`` is
    score matching). ``param="score"``: ``w(t) ‖s_θ(x_t, t) + ε/β̄‖²`` with default
    ``w = β̄²`` (Song's weighting; equal to the ``eps`` loss). Squared errors are summed over
    the non-batch dimensions and averaged over the batch.

    Args:
        model: ``(x_t, t) -> ε̂`` or ``ŝ``; ``t`` is a ``(batch,)`` float tensor.
        x0: ``(batch, ...)`` data.
        sde: The process.
        param: ``eps`` or ``score``.
        weighting: Optional ``w(t) -> (batch,)``.
        t_min: Smallest time (default ``sde.t_min``).
        generator: For ``t`` and ``ε``.
    """
    if param not in ("eps", "score"):
        raise ValueError(f"param must be 'eps' or 'score', got {param!r}")
    lo = sde.t_min if t_min is None else float(t_min)
    b = x0.shape[0]
    gen_device = generator.device if generator is not None else x0.device
    u = torch.rand((b,), generator=generator, dtype=x0.dtype, device=gen_device).to(x0.device)
    t = lo + (1 - lo) * u
    eps = randn(x0.shape, generator, like=x0)
    a, s = sde.coefficients(t)
    xt = _bcast(a, x0) * x0 + _bcast(s, x0) * eps
    out = _call(model, xt, t)
    if param == "eps":
        per = ((out - eps) ** 2).reshape(b, -1).sum(-1)
        w = torch.ones_like(per) if weighting is None else weighting(t)
    else:
        per = ((out + eps / _bcast(s, eps)) ** 2).reshape(b, -1).sum(-1)
        w = s.to(per) ** 2 if weighting is None else weighting(t)
    return (w.to(per) * per).mean()


# ----------------------------------------------------------------------------------- samplers
@ODE_SOLVERS.register("euler")
def _euler(drift: Callable[[Tensor, float], Tensor], x: Tensor, t: float, s: float) -> Tensor:
    return x + (s - t) * drift(x, t)


@ODE_SOLVERS.register("heun")
def _heun(drift: Callable[[Tensor, float], Tensor], x: Tensor, t: float, s: float) -> Tensor:
    d = drift(x, t)
    x_e = x + (s - t) * d
    return x + (s - t) * 0.5 * (d + drift(x_e, s))


def _grid(t_start: float, t_end: float, steps: int) -> list[float]:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    return torch.linspace(t_start, t_end, steps + 1, dtype=torch.float64).tolist()


def _score(score_fn: ScoreFn, x: Tensor, t: float) -> Tensor:
    return _call(score_fn, x, torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device),
                 "score_fn")


@torch.no_grad()
def probability_flow(score_fn: ScoreFn, sde: MarginalSDE, x: Tensor, t_start: float,
                     t_end: float, steps: int, method: str = "heun") -> Tensor:
    """Integrate ``dx/dt = f_t x − ½ g_t² s(x, t)`` from ``t_start`` to ``t_end`` (either way).

    Deterministic; integrating data → noise and back recovers the points up to the
    discretisation error (Heun's is ``O(h²)``, Euler's ``O(h)``).
    """
    step = ODE_SOLVERS.get(method)

    def drift(y: Tensor, t: float) -> Tensor:
        return float(sde.f(t)) * y - 0.5 * float(sde.g2(t)) * _score(score_fn, y, t)

    grid = _grid(t_start, t_end, steps)
    for t, s in itertools.pairwise(grid):
        x = step(drift, x, t, s)
    return x


def probability_flow_sample(score_fn: ScoreFn, sde: MarginalSDE, shape: tuple[int, ...],
                            steps: int, method: str = "heun", *,
                            generator: torch.Generator | None = None, x_T: Tensor | None = None,
                            t_end: float | None = None, dtype: torch.dtype = torch.float32,
                            device: Any = None) -> Tensor:
    """Samples by the probability-flow ODE from the prior at ``t = 1`` to ``t_end``.

    Args:
        score_fn: ``s(x, t)``, ``t`` a ``(batch,)`` float tensor.
        sde: The process.
        shape: ``(batch, ...)``.
        steps: ODE steps.
        method: ``euler`` or ``heun`` (:data:`ODE_SOLVERS`).
        generator: For the prior draw (the only randomness).
        x_T: Start from these points instead (e.g. exact samples of ``p_1``).
        t_end: Final time (default ``sde.t_min``).
    """
    x = x_T.clone() if x_T is not None else sde.prior_sample(shape, generator=generator,
                                                             dtype=dtype, device=device)
    end = sde.t_min if t_end is None else float(t_end)
    return probability_flow(score_fn, sde, x, 1.0, end, steps, method)


@torch.no_grad()
def reverse_sde_sample(score_fn: ScoreFn, sde: MarginalSDE, shape: tuple[int, ...], steps: int,
                       *, generator: torch.Generator | None = None, x_T: Tensor | None = None,
                       t_end: float | None = None, noise_at_last_step: bool = False,
                       dtype: torch.dtype = torch.float32, device: Any = None) -> Tensor:
    """Euler–Maruyama on the reverse SDE: ``x ← x − [f x − g² s] Δt + g √Δt ξ``.

    Args:
        score_fn: ``s(x, t)``.
        sde: The process.
        shape: ``(batch, ...)``.
        steps: Number of steps from 1 to ``t_end``.
        generator: For the prior draw and every ``ξ``.
        x_T: Start from these points instead of a prior draw.
        t_end: Final time (default ``sde.t_min``).
        noise_at_last_step: Add the noise on the final step too (default: the last step is the
            noiseless mean, as in DDPM).
    """
    x = x_T.clone() if x_T is not None else sde.prior_sample(shape, generator=generator,
                                                             dtype=dtype, device=device)
    grid = _grid(1.0, sde.t_min if t_end is None else float(t_end), steps)
    for k, (t, s) in enumerate(itertools.pairwise(grid)):
        dt = t - s
        f, g2 = float(sde.f(t)), float(sde.g2(t))
        x = x - (f * x - g2 * _score(score_fn, x, t)) * dt
        if k < steps - 1 or noise_at_last_step:
            x = x + math.sqrt(g2 * dt) * randn(x.shape, generator, like=x)
    return x
