"""Discrete DDPM noise schedules in Su's notation, with converters to and from the DDPM paper's.

Su (kexue.fm/archives/9152) writes the forward step as ``x_t = α_t x_{t−1} + β_t ε_t`` with
``α_t² + β_t² = 1``, so the marginal is ``x_t = ᾱ_t x_0 + β̄_t ε`` with ``ᾱ_t = Π_{i≤t} α_i`` and
``β̄_t = √(1 − ᾱ_t²)``. **The same letters mean other things in the DDPM paper** (Ho et al.,
arXiv 2006.11239), which uses variances:

==================  ===============================  ==========================================
quantity            Su (this module)                 DDPM paper / diffusers
==================  ===============================  ==========================================
one step            ``α_t x_{t−1} + β_t ε``          ``√(1−β_t) x_{t−1} + √β_t ε``
per-step            ``α_t = √(1 − β_t^DDPM)``,        ``β_t^DDPM`` (``betas``),
                    ``β_t = √β_t^DDPM``               ``α_t^DDPM = 1 − β_t^DDPM`` (``alphas``)
marginal            ``ᾱ_t x_0 + β̄_t ε``              ``√ᾱ_t^DDPM x_0 + √(1−ᾱ_t^DDPM) ε``
relation            ``ᾱ_t = √ᾱ_t^DDPM``,              ``alphas_cumprod``
                    ``β̄_t = √(1 − ᾱ_t^DDPM)``
time index          ``t = 1 … T`` (``t = 0``: data)   ``0 … T−1`` (diffusers' ``timesteps``)
==================  ===============================  ==========================================

Also "forward" and "reverse" swap letters: Su calls the encoder ``p`` and the generator ``q``
(DDPM: ``q`` and ``p_θ``). :meth:`DDPMSchedule.to_ddpm` / :meth:`DDPMSchedule.from_ddpm`
convert both ways.

Schedules (:data:`DDPM_SCHEDULES`, values of ``β_t^DDPM``, ``t = 1 … T``):

- ``su_linear``: ``0.02 t / T`` (Su's ``α_t = √(1 − 0.02 t/T)``; ``ᾱ_T ≈ e^{−5}`` at T = 1000);
- ``ddpm_linear``: linear from ``1e-4`` to ``0.02`` (the DDPM paper);
- ``cosine``: Nichol & Dhariwal (arXiv 2102.09672), ``ᾱ^DDPM ∝ cos²((t/T + s)/(1 + s)·π/2)``,
  ``s = 0.008``, each ``β^DDPM`` clipped at 0.999.

Generator variances (:data:`SIGMA_CHOICES`): ``beta`` (``σ_t = β_t``, optimal for N(0, I) data;
Su's code) and ``posterior`` (``σ_t = β̄_{t−1} β_t / β̄_t``, optimal for a single data point;
the exact posterior's standard deviation).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..registry import Registry

__all__ = ["DDPM_SCHEDULES", "SIGMA_CHOICES", "DDPMSchedule"]

#: name -> fn(T) -> β^DDPM (T,) float64 for t = 1 … T
DDPM_SCHEDULES: Registry[Callable[[int], Tensor]] = Registry("DDPM schedule")
#: name -> fn(schedule) -> σ (T + 1,) (index 0 unused)
SIGMA_CHOICES: Registry[Callable[[DDPMSchedule], Tensor]] = Registry("DDPM sigma")


@DDPM_SCHEDULES.register("su_linear")
def su_linear(T: int) -> Tensor:
    """``β_t^DDPM = 0.02 t / T`` (Su's ``α_t = √(1 − 0.02 t/T)``)."""
    return 0.02 * torch.arange(1, T + 1, dtype=torch.float64) / T


@DDPM_SCHEDULES.register("ddpm_linear")
def ddpm_linear(T: int) -> Tensor:
    """Linear ``β^DDPM`` from 1e-4 to 0.02 (Ho et al.)."""
    return torch.linspace(1e-4, 0.02, T, dtype=torch.float64)


@DDPM_SCHEDULES.register("cosine")
def cosine(T: int, s: float = 0.008) -> Tensor:
    """Nichol & Dhariwal's cosine schedule (``β^DDPM`` clipped at 0.999)."""
    t = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=0.999)


@SIGMA_CHOICES.register("beta")
def _sigma_beta(s: DDPMSchedule) -> Tensor:
    """``σ_t = β_t`` (optimal for N(0, I) data)."""
    return s.beta.clone()


@SIGMA_CHOICES.register("posterior")
def _sigma_posterior(s: DDPMSchedule) -> Tensor:
    """``σ_t = β̄_{t−1} β_t / β̄_t`` (the exact posterior's standard deviation)."""
    out = torch.zeros_like(s.beta)
    out[1:] = s.bar_beta[:-1] * s.beta[1:] / s.bar_beta[1:]
    return out


class DDPMSchedule:
    """A discrete schedule in Su's notation; every tensor has ``T + 1`` entries, index = ``t``.

    ``alpha[t], beta[t]`` (``t = 1 … T``; index 0 holds 1 and 0), ``bar_alpha[t], bar_beta[t]``
    (``t = 0 … T``; ``ᾱ_0 = 1, β̄_0 = 0``) and ``sigma[t]`` are float64.

    Args:
        T: Number of steps.
        kind: A name of :data:`DDPM_SCHEDULES` (``su_linear``, ``ddpm_linear``, ``cosine``).
        sigma: ``beta`` or ``posterior`` (:data:`SIGMA_CHOICES`).
        betas: Instead of ``kind``: the DDPM paper's ``β_t^DDPM`` ``(T,)`` (see :meth:`from_ddpm`).
    """

    def __init__(self, T: int = 1000, kind: str = "su_linear", sigma: str = "beta",
                 *, betas: Tensor | None = None) -> None:
        if betas is None:
            if not isinstance(T, int) or T < 1:
                raise ValueError(f"T must be a positive int, got {T!r}")
            betas = DDPM_SCHEDULES.get(kind)(T)
        else:
            betas = torch.as_tensor(betas, dtype=torch.float64).reshape(-1)
            kind = "custom"
            T = betas.numel()
            if T == 0:
                raise ValueError("betas is empty")
        if not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError("every β_t^DDPM (betas) must lie in (0, 1)")
        self.T, self.kind = T, kind
        self.sigma_kind = SIGMA_CHOICES.canonical(sigma)
        one = torch.ones(1, dtype=torch.float64)
        self.alpha = torch.cat([one, torch.sqrt(1 - betas)])
        self.beta = torch.cat([0 * one, torch.sqrt(betas)])
        self.bar_alpha = torch.cumprod(self.alpha, 0)
        self.bar_beta = torch.sqrt((1 - self.bar_alpha**2).clamp_min(0))
        self.sigma = SIGMA_CHOICES.get(self.sigma_kind)(self)

    def __repr__(self) -> str:
        return f"DDPMSchedule(T={self.T}, kind={self.kind!r}, sigma={self.sigma_kind!r})"

    # -- conversions ---------------------------------------------------------------------------
    def to_ddpm(self) -> dict[str, Tensor]:
        """The DDPM paper's (and diffusers') quantities, indexed ``0 … T−1`` for Su's ``1 … T``:
        ``betas = β_t²``, ``alphas = α_t²``, ``alphas_cumprod = ᾱ_t²``."""
        return {"betas": self.beta[1:] ** 2, "alphas": self.alpha[1:] ** 2,
                "alphas_cumprod": self.bar_alpha[1:] ** 2}

    @classmethod
    def from_ddpm(cls, betas: Tensor, sigma: str = "beta") -> DDPMSchedule:
        """Build from the DDPM paper's ``β_t^DDPM`` (diffusers' ``betas``)."""
        return cls(sigma=sigma, betas=betas)

    # -- per-step quantities -------------------------------------------------------------------
    def _index(self, t: Tensor | int, name: str = "t") -> Tensor:
        t = torch.as_tensor(t)
        if t.dtype.is_floating_point or t.dtype == torch.bool:
            raise TypeError(f"{name} must hold integer steps 1 … T (Su's indexing), got {t.dtype}")
        if bool((t < 0).any()) or bool((t > self.T).any()):
            raise ValueError(f"{name} must lie in [0, {self.T}]")
        return t.long()

    def coefficients(self, t: Tensor | int) -> tuple[Tensor, Tensor]:
        """``(ᾱ_t, β̄_t)`` for integer steps ``t`` (any shape)."""
        t = self._index(t)
        return self.bar_alpha[t], self.bar_beta[t]

    def posterior(self, t: Tensor | int) -> tuple[Tensor, Tensor, Tensor]:
        """``p(x_{t−1} | x_t, x_0) = N(c_0 x_0 + c_t x_t, σ̃_t²)``: returns ``(c_0, c_t, σ̃_t)``.

        ``c_0 = ᾱ_{t−1} β_t² / β̄_t²``, ``c_t = α_t β̄_{t−1}² / β̄_t²``, ``σ̃_t = β̄_{t−1} β_t / β̄_t``
        (using ``β̄_t² = β_t² + α_t² β̄_{t−1}²``), for ``t = 1 … T``.
        """
        t = self._index(t)
        if bool((t < 1).any()):
            raise ValueError("the posterior is defined for t = 1 … T")
        bb2 = self.bar_beta[t] ** 2
        c0 = self.bar_alpha[t - 1] * self.beta[t] ** 2 / bb2
        ct = self.alpha[t] * self.bar_beta[t - 1] ** 2 / bb2
        return c0, ct, self.bar_beta[t - 1] * self.beta[t] / self.bar_beta[t]
