"""DDPM as an autoregressive VAE: forward marginal, ε-prediction loss, ancestral and DDIM sampling.

Su's notation throughout (kexue.fm/archives/9152; see :mod:`formerlab.diffusion.schedule` for
the mapping to the DDPM paper's). The forward ("encoder", Su's ``p``) marginal is
``x_t = ᾱ_t x_0 + β̄_t ε``; :func:`q_sample` keeps the standard name of that function (the
DDPM paper calls the forward process ``q``).

- Loss (the KL between the two joint chains, after merging the two noises; prefactor dropped as
  DDPM does): ``‖ε − ε_θ(ᾱ_t x_0 + β̄_t ε, t)‖²`` **summed** over the non-batch dimensions —
  a mean is too small, its gradients underflow (the post's first practical tip).
- Generator (Su's ``q``): ``x_{t−1} = (x_t − (β_t²/β̄_t) ε_θ(x_t, t)) / α_t + σ_t ξ``; plugging
  ``x̂_0 = (x_t − β̄_t ε̂)/ᾱ_t`` into the exact posterior mean gives exactly this mean.
- DDIM (kexue.fm/archives/9181; Song et al., arXiv 2010.02502), from ``t`` to ``t' < t``:
  ``x̂_0 = (x_t − β̄_t ε̂)/ᾱ_t``, ``σ = η (β̄_{t'}/β̄_t) √(1 − ᾱ_t²/ᾱ_{t'}²)``,
  ``x_{t'} = ᾱ_{t'} x̂_0 + √(β̄_{t'}² − σ²) ε̂ + σ ξ``. For ``t' = t − 1``,
  ``σ = η β̄_{t−1} β_t / β̄_t``: ``η = 1`` is the ancestral sampler with the posterior σ (same
  mean, same variance), ``η = 0`` deterministic. It also accepts a continuous
  :class:`~formerlab.diffusion.sde.MarginalSDE` (times on a uniform grid of ``[t_end, 1]``).

Models are called ``model(x_t, t)`` with ``t`` a ``(batch,)`` tensor: integer steps ``1 … T``
for a :class:`~formerlab.diffusion.schedule.DDPMSchedule`, float times for a ``MarginalSDE``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .schedule import DDPMSchedule

__all__ = ["ddim_sample", "ddpm_loss", "ddpm_sample", "q_sample"]

EpsModel = Callable[[Tensor, Tensor], Tensor]


def _bcast(c: Tensor, x: Tensor) -> Tensor:
    """Per-example coefficients ``(B,)`` (or a scalar) shaped to broadcast against ``x``."""
    c = c.to(device=x.device, dtype=x.dtype)
    return c.reshape(*c.shape, *([1] * (x.dim() - c.dim()))) if c.dim() else c


def randn(shape, generator: torch.Generator | None, dtype: torch.dtype | None = None,
          device: torch.device | str | None = None, like: Tensor | None = None) -> Tensor:
    """Standard normal noise drawn on the generator's device, returned on ``device``."""
    if like is not None:
        dtype, device = like.dtype, like.device
    gen_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, dtype=dtype, device=gen_device).to(device)


def _noise(shape, like: Tensor | None, generator, dtype, device) -> Tensor:
    return randn(shape, generator, dtype, device, like)


def _call(model: EpsModel, x: Tensor, t: Tensor, name: str = "model") -> Tensor:
    out = model(x, t)
    if not isinstance(out, Tensor):
        raise TypeError(f"{name} must return a tensor, got {type(out).__name__}")
    if out.shape != x.shape:
        raise ValueError(f"{name} must return the input's shape {tuple(x.shape)}, got "
                         f"{tuple(out.shape)}")
    return out


def q_sample(x0: Tensor, t: Tensor | int, eps: Tensor | None, schedule: Any, *,
             generator: torch.Generator | None = None) -> Tensor:
    """``x_t = ᾱ_t x_0 + β̄_t ε`` (Su's forward marginal; the DDPM paper's ``q(x_t | x_0)``).

    Args:
        x0: ``(batch, ...)`` data.
        t: Steps (``(batch,)`` or a scalar): integers ``0 … T`` for a ``DDPMSchedule``, times in
            ``[0, 1]`` for a ``MarginalSDE``.
        eps: The noise (same shape as ``x0``), or ``None`` to draw it with ``generator``.
        schedule: A ``DDPMSchedule`` or ``MarginalSDE``.
    """
    if eps is None:
        eps = randn(x0.shape, generator, like=x0)
    elif eps.shape != x0.shape:
        raise ValueError(f"eps must have x0's shape {tuple(x0.shape)}, got {tuple(eps.shape)}")
    a, b = schedule.coefficients(t)
    return _bcast(a, x0) * x0 + _bcast(b, x0) * eps


def ddpm_loss(model: EpsModel, x0: Tensor, schedule: DDPMSchedule, reduction: str = "sum",
              weighting: Callable[[Tensor], Tensor] | None = None, *,
              generator: torch.Generator | None = None) -> Tensor:
    """ε-prediction loss ``E_t,ε w(t) ‖ε − ε_θ(x_t, t)‖²`` with ``t ~ U{1 … T}``.

    Args:
        model: ``ε_θ(x_t, t)``, ``t`` a ``(batch,)`` long tensor of steps ``1 … T``.
        x0: ``(batch, ...)`` data.
        schedule: The schedule.
        reduction: ``sum`` (over non-batch dims, then mean over the batch: Su's advice) or
            ``mean`` (over every element).
        weighting: Optional ``w(t) -> (batch,)`` weights.
        generator: For ``t`` and ``ε``.

    Returns:
        The scalar loss.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    b = x0.shape[0]
    gen_device = generator.device if generator is not None else x0.device
    t = torch.randint(1, schedule.T + 1, (b,), generator=generator, device=gen_device)
    t = t.to(x0.device)
    eps = randn(x0.shape, generator, like=x0)
    xt = q_sample(x0, t, eps, schedule)
    err = (eps - _call(model, xt, t)) ** 2
    per = err.reshape(b, -1).sum(-1) if reduction == "sum" else err.reshape(b, -1).mean(-1)
    if weighting is not None:
        per = per * weighting(t).to(per)
    return per.mean()


@torch.no_grad()
def ddpm_sample(model: EpsModel, shape: tuple[int, ...], schedule: DDPMSchedule, *,
                generator: torch.Generator | None = None, noise_at_last_step: bool = False,
                x_T: Tensor | None = None, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> Tensor:
    """Ancestral sampling ``x_{t−1} = (x_t − (β_t²/β̄_t) ε̂)/α_t + σ_t ξ`` from ``t = T`` to 1.

    Args:
        model: ``ε_θ(x_t, t)``.
        shape: ``(batch, ...)`` of the samples.
        schedule: The schedule (its ``sigma`` choice sets ``σ_t``).
        generator: For the initial noise and every ``ξ``.
        noise_at_last_step: Add ``σ_1 ξ`` at the final step too (the DDPM default: no).
        x_T: Start from this noise instead of drawing it.

    Returns:
        ``shape`` samples.
    """
    x = x_T.clone() if x_T is not None else _noise(shape, None, generator, dtype, device)
    for t in range(schedule.T, 0, -1):
        tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = _call(model, x, tt)
        coef = float(schedule.beta[t] ** 2 / schedule.bar_beta[t])
        x = (x - coef * eps) / float(schedule.alpha[t])
        if t > 1 or noise_at_last_step:
            x = x + float(schedule.sigma[t]) * _noise(x.shape, x, generator, None, None)
    return x


def _ddim_times(process: Any, steps: int, t_end: float | None) -> list:
    if isinstance(process, DDPMSchedule):
        if not 1 <= steps <= process.T:
            raise ValueError(f"steps must be in [1, {process.T}], got {steps}")
        grid = torch.linspace(process.T, 0, steps + 1, dtype=torch.float64).round().long()
        return sorted(set(grid.tolist()), reverse=True)
    end = process.t_min if t_end is None else float(t_end)
    return torch.linspace(1.0, end, steps + 1, dtype=torch.float64).tolist()


@torch.no_grad()
def ddim_sample(eps_fn: EpsModel, schedule: Any, shape: tuple[int, ...], steps: int,
                eta: float = 0.0, *, generator: torch.Generator | None = None,
                x_T: Tensor | None = None, t_end: float | None = None,
                dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
                ) -> Tensor:
    """DDIM sampling on ``steps`` strided steps (``eta = 0``: deterministic).

    Args:
        eps_fn: ``ε_θ(x_t, t)``.
        schedule: A ``DDPMSchedule`` (steps ``T → 0`` rounded to integers) or a ``MarginalSDE``
            (times ``1 → t_end``; default its ``t_min``).
        shape: ``(batch, ...)``.
        steps: Number of steps.
        eta: ``σ = η (β̄_{t'}/β̄_t) √(1 − ᾱ_t²/ᾱ_{t'}²)``; 1 = ancestral with the posterior σ.
        generator: For the initial noise and the ``η > 0`` noise.
        x_T: Start from this noise (for a ``MarginalSDE`` it should follow its prior).
        t_end: Final time for a ``MarginalSDE``.

    Returns:
        ``shape`` samples.
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be in [0, 1], got {eta}")
    times = _ddim_times(schedule, steps, t_end)
    if x_T is not None:
        x = x_T.clone()
    else:
        x = _noise(shape, None, generator, dtype, device)
        x = x * float(schedule.coefficients(torch.tensor(times[0]))[1])
    long_t = isinstance(schedule, DDPMSchedule)
    for t, s in itertools.pairwise(times):
        tt = torch.full((x.shape[0],), t, dtype=torch.long if long_t else x.dtype,
                        device=x.device)
        a_t, b_t = (float(v) for v in schedule.coefficients(torch.tensor(t)))
        a_s, b_s = (float(v) for v in schedule.coefficients(torch.tensor(s)))
        eps = _call(eps_fn, x, tt, "eps_fn")
        x0 = (x - b_t * eps) / a_t
        sigma = 0.0 if b_t == 0 else eta * (b_s / b_t) * max(0.0, 1 - (a_t / a_s) ** 2) ** 0.5
        x = a_s * x0 + max(b_s**2 - sigma**2, 0.0) ** 0.5 * eps
        if sigma > 0:
            x = x + sigma * _noise(x.shape, x, generator, None, None)
    return x
