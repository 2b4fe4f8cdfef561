"""Toy data with exact scores: Gaussian mixtures diffused in closed form, and sample metrics.

For data ``Σ_k π_k N(μ_k, Σ_k)`` and the marginal ``x_t = ᾱ_t x_0 + β̄_t ε`` the time-``t``
distribution is again a mixture, ``Σ_k π_k N(ᾱ_t μ_k, C_k)`` with ``C_k = ᾱ_t² Σ_k + β̄_t² I``,
so (kexue.fm/archives/9209)

    ∇log p_t(x) = Σ_k r_k(x) · [−C_k⁻¹ (x − ᾱ_t μ_k)],     ε*(x, t) = −β̄_t ∇log p_t(x),

with ``r_k`` the posterior responsibilities under the time-``t`` mixture. These oracles let every
sampler be tested without training. Standard 2-D sets (:data:`TOY_DATASETS`): eight Gaussians on
a circle of radius 2, a 5 × 5 grid, two anisotropic blobs, and a 1-D Gaussian.

:func:`energy_distance` (Székely & Rizzo) ``2E‖X − Y‖ − E‖X − X'‖ − E‖Y − Y'‖`` (within-sample
terms without the diagonal) is 0 in expectation for equal laws and positive otherwise.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry
from .ddpm import randn

__all__ = ["TOY_DATASETS", "GaussianMixture", "energy_distance", "gaussian_mixture",
           "make_toy", "mode_frequencies"]

#: name -> fn(**params) -> GaussianMixture
TOY_DATASETS: Registry[Callable[..., GaussianMixture]] = Registry("toy dataset")


class GaussianMixture:
    """``Σ_k π_k N(μ_k, Σ_k)`` with exact scores and noise predictors of its diffused marginals.

    Args:
        pis: ``(K,)`` weights summing to one.
        mus: ``(K, d)`` means.
        covs: ``(K, d, d)`` covariances, ``(K, d)`` diagonal variances, or ``(K,)`` one isotropic
            variance per component.
    """

    def __init__(self, pis: Tensor, mus: Tensor, covs: Tensor) -> None:
        pis = torch.as_tensor(pis, dtype=torch.float64)
        mus = torch.as_tensor(mus, dtype=torch.float64)
        covs = torch.as_tensor(covs, dtype=torch.float64)
        if mus.dim() != 2:
            raise ValueError(f"mus must be (components, dim), got {tuple(mus.shape)}")
        k, d = mus.shape
        if pis.shape != (k,):
            raise ValueError(f"pis must have {k} entries (one per mean), got {tuple(pis.shape)}")
        if bool((pis < 0).any()) or abs(float(pis.sum()) - 1) > 1e-6:
            raise ValueError("pis must be non-negative and sum to one")
        if covs.shape == (k,):
            covs = covs[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif covs.shape == (k, d):
            covs = torch.diag_embed(covs)
        if covs.shape != (k, d, d):
            raise ValueError(f"covs must be ({k}, {d}, {d}), ({k}, {d}) or ({k},), got "
                             f"{tuple(covs.shape)}")
        if bool((torch.linalg.cholesky_ex(covs)[1] != 0).any()):
            raise ValueError("every covariance in covs must be positive definite")
        self.pis, self.mus, self.covs = pis, mus, covs
        self._chol = torch.linalg.cholesky(covs)

    @property
    def dim(self) -> int:
        return self.mus.shape[1]

    def __repr__(self) -> str:
        return f"GaussianMixture(components={len(self.pis)}, dim={self.dim})"

    def sample(self, n: int, *, generator: torch.Generator | None = None,
               return_labels: bool = False, dtype: torch.dtype = torch.float32
               ) -> Tensor | tuple[Tensor, Tensor]:
        """``n`` samples ``(n, d)`` (and their component labels)."""
        gen_device = generator.device if generator is not None else "cpu"
        labels = torch.multinomial(self.pis.to(gen_device), n, replacement=True,
                                   generator=generator).cpu()
        z = randn((n, self.dim), generator, torch.float64, "cpu")
        x = self.mus[labels] + (self._chol[labels] @ z[..., None])[..., 0]
        return (x.to(dtype), labels) if return_labels else x.to(dtype)

    def at(self, t: Tensor | float | int, process: Any) -> GaussianMixture:
        """The diffused marginal ``p_t`` at one time (a mixture) for a schedule or SDE."""
        a, b = (float(v) for v in process.coefficients(torch.as_tensor(t)))
        eye = torch.eye(self.dim, dtype=torch.float64)
        return GaussianMixture(self.pis, a * self.mus, a * a * self.covs + b * b * eye)

    def _terms(self, x: Tensor, t: Any, process: Any) -> tuple[Tensor, Tensor, Tensor]:
        """Log component densities ``(B, K)``, ``C⁻¹(x − ᾱμ)`` ``(B, K, d)``."""
        if x.dim() != 2 or x.shape[1] != self.dim:
            raise ValueError(f"x must be (batch, {self.dim}), got {tuple(x.shape)}")
        xd = x.to(torch.float64)
        if isinstance(t, Tensor) and t.dim() > 0 and bool((t == t.reshape(-1)[0]).all()):
            t = t.reshape(-1)[0]  # one time for the whole batch: one factorisation
        if process is None:
            a = torch.ones((), dtype=torch.float64)
            b = torch.zeros((), dtype=torch.float64)
        else:
            a, b = (v.to(torch.float64) for v in process.coefficients(t))
        a = a.reshape(-1, 1, 1, 1) if a.dim() else a
        b = b.reshape(-1, 1, 1, 1) if b.dim() else b
        eye = torch.eye(self.dim, dtype=torch.float64)
        cov = (a * a) * self.covs + (b * b) * eye  # (B|1, K, d, d)
        if cov.dim() == 3:
            cov = cov[None]
        chol = torch.linalg.cholesky(cov)
        prec = torch.cholesky_inverse(chol)
        mean = a[..., 0] * self.mus if a.dim() else a * self.mus  # (B|1, K, d)
        diff = xd[:, None, :] - mean  # (B, K, d)
        if prec.shape[0] > 1:
            prec_diff = (prec @ diff[..., None])[..., 0]
        else:  # one time for the batch: (K, d, d) against (B, K, d), d unrolled when small
            p0 = prec[0]
            prec_diff = torch.stack([_rowdot(diff, p0[:, i][None]) for i in range(self.dim)], -1) \
                if self.dim <= 4 else torch.einsum("kij,bkj->bki", p0, diff)
        logdet = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
        maha = _rowdot(diff, prec_diff)
        logn = -0.5 * maha - 0.5 * logdet - 0.5 * self.dim * math.log(2 * math.pi)
        return logn + torch.log(self.pis), prec_diff, b

    def log_prob(self, x: Tensor, t: Any = None, process: Any = None) -> Tensor:
        """``log p_t(x)`` ``(B,)`` (the data density when ``process`` is ``None``)."""
        logw, _, _ = self._terms(x, t, process)
        return torch.logsumexp(logw, -1).to(x.dtype)

    def score(self, x: Tensor, t: Any = None, process: Any = None) -> Tensor:
        """Exact ``∇_x log p_t(x)`` ``(B, d)``; ``t`` a scalar or ``(B,)`` (steps or times)."""
        logw, prec_diff, _ = self._terms(x, t, process)
        r = torch.softmax(logw, -1)
        return -torch.bmm(r[:, None, :], prec_diff)[:, 0].to(x.dtype)

    def eps(self, x: Tensor, t: Any, process: Any) -> Tensor:
        """Exact noise predictor ``ε*(x, t) = −β̄_t ∇log p_t(x)`` ``(B, d)``."""
        _, bb = process.coefficients(t)
        bb = bb.to(torch.float64)
        s = self.score(x, t, process).to(torch.float64)
        return (-(bb.reshape(-1, 1) if bb.dim() else bb) * s).to(x.dtype)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities ``(B, K)`` under the data mixture."""
        return torch.softmax(self._terms(x, None, None)[0], -1)


def _rowdot(u: Tensor, v: Tensor) -> Tensor:
    """``(u * v).sum(-1)``; unrolled for a small last dimension (much faster on CPU)."""
    if u.shape[-1] > 4:
        return (u * v).sum(-1)
    out = u[..., 0] * v[..., 0]
    for i in range(1, u.shape[-1]):
        out = out + u[..., i] * v[..., i]
    return out


def gaussian_mixture(pis: Tensor, mus: Tensor, covs: Tensor) -> GaussianMixture:
    """Build a :class:`GaussianMixture` (exact ``score`` / ``eps`` oracles at every time)."""
    return GaussianMixture(pis, mus, covs)


@TOY_DATASETS.register("eight_gaussians")
def eight_gaussians(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    """Eight equal components on a circle."""
    ang = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    mus = radius * torch.stack([ang.cos(), ang.sin()], 1)
    return GaussianMixture(torch.full((8,), 1 / 8), mus, torch.full((8,), std**2))


@TOY_DATASETS.register("grid")
def grid(size: int = 5, spacing: float = 1.0, std: float = 0.05) -> GaussianMixture:
    """A ``size × size`` grid of equal components, centred at the origin."""
    c = (torch.arange(size, dtype=torch.float64) - (size - 1) / 2) * spacing
    mus = torch.cartesian_prod(c, c)
    k = len(mus)
    return GaussianMixture(torch.full((k,), 1 / k), mus, torch.full((k,), std**2))


@TOY_DATASETS.register("two_blobs")
def two_blobs() -> GaussianMixture:
    """Two anisotropic, correlated components of unequal weight."""
    covs = torch.tensor([[[0.30, 0.20], [0.20, 0.25]], [[0.05, -0.03], [-0.03, 0.40]]],
                        dtype=torch.float64)
    return GaussianMixture(torch.tensor([0.35, 0.65]), torch.tensor([[-1.5, 0.5], [1.2, -0.3]]),
                           covs)


@TOY_DATASETS.register("gaussian_1d")
def gaussian_1d(mean: float = 1.5, std: float = 0.5) -> GaussianMixture:
    """One 1-D Gaussian: exact score ``−(x − ᾱμ)/(ᾱ²s² + β̄²)``."""
    return GaussianMixture(torch.ones(1), torch.tensor([[mean]]), torch.tensor([std**2]))


def make_toy(name: str, **params: Any) -> GaussianMixture:
    """Build a dataset of :data:`TOY_DATASETS`."""
    return TOY_DATASETS.get(name)(**params)


def _mean_dist(a: Tensor, b: Tensor, exclude_diagonal: bool, chunk: int = 2048) -> float:
    total = 0.0
    for i in range(0, len(a), chunk):
        d = torch.cdist(a[i:i + chunk], b)
        total += float(d.sum())
    n, m = len(a), len(b)
    return total / (n * (n - 1) if exclude_diagonal else n * m)


def energy_distance(x: Tensor, y: Tensor) -> float:
    """Squared energy distance ``2E‖X−Y‖ − E‖X−X'‖ − E‖Y−Y'‖`` between two samples ``(n, d)``."""
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1]:
        raise ValueError("x and y must be (n, d) and (m, d) samples of the same dimension")
    if len(x) < 2 or len(y) < 2:
        raise ValueError("energy_distance needs at least two points per sample")
    x, y = x.double(), y.double()
    return (2 * _mean_dist(x, y, False) - _mean_dist(x, x, True) - _mean_dist(y, y, True))


def mode_frequencies(x: Tensor, mixture: GaussianMixture) -> Tensor:
    """Share of samples whose most probable component is ``k`` ``(K,)``."""
    r = mixture.responsibilities(x)
    return torch.bincount(r.argmax(-1), minlength=len(mixture.pis)).double() / len(x)
