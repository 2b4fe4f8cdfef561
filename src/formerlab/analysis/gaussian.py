"""Closed-form divergences between Gaussians: KL, Bhattacharyya, Hellinger, 2-Wasserstein.

For ``p = N(μ_p, Σ_p)``, ``q = N(μ_q, Σ_q)`` in ``n`` dimensions (kexue.fm/archives/8512):

==========================  ======================================================================
entropy                     ``H = (n/2)(1 + log 2π) + ½ log det Σ``
``gaussian_kl``             ``½[(μ_p−μ_q)ᵀΣ_q⁻¹(μ_p−μ_q) − log det(Σ_q⁻¹Σ_p) + Tr(Σ_q⁻¹Σ_p) − n]``
``gaussian_bhattacharyya``  ``−log ∫√(pq) = ½ log(det Σ / √(det Σ_p det Σ_q)) + ⅛ Δμᵀ Σ⁻¹ Δμ``,
                            ``Σ = (Σ_p + Σ_q)/2`` (symmetric)
``gaussian_hellinger``      ``½ ∫(√p − √q)² = 1 − e^{−BD}`` (squared Hellinger)
``gaussian_w2``             ``W₂² = ‖Δμ‖² + Tr Σ_p + Tr Σ_q − 2 Tr((Σ_p^{1/2} Σ_q Σ_p^{1/2})^{1/2})``
==========================  ======================================================================

The W₂ trace term equals ``Tr((Σ_p Σ_q)^{1/2})`` (the Fréchet / FID form) because
``(Σ_p^{1/2} (Σ_p^{1/2}Σ_qΣ_p^{1/2})^{1/2} Σ_p^{−1/2})² = Σ_pΣ_q``; for commuting covariances
``W₂² = ‖Δμ‖² + ‖Σ_p^{1/2} − Σ_q^{1/2}‖_F²`` and in one dimension ``(μ₁−μ₂)² + (σ₁−σ₂)²``.

Covariances are full ``(..., n, n)`` matrices or, when they have as many dimensions as the mean
(``(..., n)``), the diagonal variances (a fast path: every formula then costs ``O(n)``). All
arguments broadcast over leading batch dimensions. Log-determinants go through Cholesky factors;
the matrix square root is a symmetric eigendecomposition whose backward solves the Sylvester
equation ``S dX + dX S = dA`` (``dX_ij = dA_ij / (√λ_i + √λ_j)`` in the eigenbasis), which stays
finite for repeated eigenvalues (e.g. an identity covariance), unlike differentiating ``eigh``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "gaussian_bhattacharyya",
    "gaussian_entropy",
    "gaussian_hellinger",
    "gaussian_kl",
    "gaussian_w2",
    "sqrtm_psd",
]


# ------------------------------------------------------------------------------ validation
def _check(mu: Tensor, cov: Tensor, mu_name: str, cov_name: str) -> bool:
    """Validate one Gaussian; return ``True`` for a diagonal (variance-vector) covariance."""
    for name, t in ((mu_name, mu), (cov_name, cov)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {t.dtype}")
    if mu.dim() < 1 or mu.shape[-1] == 0:
        raise ValueError(f"{mu_name} must be (..., n) with n >= 1, got {tuple(mu.shape)}")
    n = mu.shape[-1]
    if cov.dim() == mu.dim():  # diagonal variances (..., n)
        if cov.shape[-1] != n:
            raise ValueError(f"{cov_name} (diagonal variances) must end in {n} to match "
                             f"{mu_name}, got {tuple(cov.shape)}")
        if not bool((cov.detach() > 0).all()):
            raise ValueError(f"{cov_name} (diagonal variances) must be positive")
        return True
    if cov.dim() < 2 or cov.shape[-2:] != (n, n):
        raise ValueError(f"{cov_name} must be ({n}, {n}) (or the {n} diagonal variances) to "
                         f"match {mu_name} of size {n}, got {tuple(cov.shape)}")
    c = cov.detach()
    scale = c.abs().amax((-2, -1), keepdim=True).clamp_min(torch.finfo(c.dtype).tiny)
    if bool(((c - c.transpose(-1, -2)).abs() > 1e-6 * scale).any()):
        raise ValueError(f"{cov_name} must be symmetric")
    _, info = torch.linalg.cholesky_ex(c)
    if bool((info != 0).any()):
        raise ValueError(f"{cov_name} must be positive definite (Cholesky failed)")
    return False


def _pair(mu_p, cov_p, mu_q, cov_q) -> tuple[bool, bool]:
    dp = _check(mu_p, cov_p, "mu_p", "cov_p")
    dq = _check(mu_q, cov_q, "mu_q", "cov_q")
    if mu_p.shape[-1] != mu_q.shape[-1]:
        raise ValueError(f"mu_p and mu_q must have the same dimension, got {mu_p.shape[-1]} and "
                         f"{mu_q.shape[-1]}")
    return dp, dq


def _full(cov: Tensor, diagonal: bool) -> Tensor:
    return torch.diag_embed(cov) if diagonal else cov


def _logdet(cov: Tensor, diagonal: bool) -> Tensor:
    if diagonal:
        return torch.log(cov).sum(-1)
    chol = torch.linalg.cholesky(cov)
    return 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)


def _solve(cov: Tensor, diagonal: bool, rhs: Tensor) -> Tensor:
    """``cov⁻¹ rhs`` for ``rhs`` ``(..., n, k)``."""
    if diagonal:
        return rhs / cov[..., :, None]
    return torch.cholesky_solve(rhs, torch.linalg.cholesky(cov))


def _mahalanobis(delta: Tensor, cov: Tensor, diagonal: bool) -> Tensor:
    return (delta * _solve(cov, diagonal, delta[..., None])[..., 0]).sum(-1)


# ------------------------------------------------------------------------------ matrix sqrt
class _SqrtmPSD(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a):  # type: ignore[override]
        lam, vec = torch.linalg.eigh(a)
        root = lam.clamp_min(0).sqrt()
        ctx.save_for_backward(root, vec)
        return (vec * root[..., None, :]) @ vec.transpose(-1, -2)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        root, vec = ctx.saved_tensors
        g = vec.transpose(-1, -2) @ grad @ vec
        denom = root[..., :, None] + root[..., None, :]
        g = g / denom.clamp_min(torch.finfo(denom.dtype).tiny)
        out = vec @ g @ vec.transpose(-1, -2)
        return 0.5 * (out + out.transpose(-1, -2))


def sqrtm_psd(a: Tensor) -> Tensor:
    """Symmetric PSD square root ``(..., n, n)`` (negative eigenvalues clamped to 0).

    Differentiable with a Sylvester-equation backward that is finite for repeated eigenvalues.
    """
    if not isinstance(a, Tensor) or a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError("a must be a (..., n, n) tensor")
    return _SqrtmPSD.apply(0.5 * (a + a.transpose(-1, -2)))


# --------------------------------------------------------------------------------- formulas
def gaussian_entropy(cov: Tensor) -> Tensor:
    """Differential entropy ``(n/2)(1 + log 2π) + ½ log det Σ`` of ``N(·, Σ)`` in nats.

    ``cov`` is ``(..., n, n)``; pass ``torch.diag_embed(variances)`` for a diagonal one.
    """
    if not isinstance(cov, Tensor) or cov.dim() < 2:
        raise ValueError("cov must be a (..., n, n) tensor")
    _check(torch.zeros(cov.shape[:-1], dtype=cov.dtype, device=cov.device), cov, "mu", "cov")
    n = cov.shape[-1]
    return 0.5 * n * (1 + math.log(2 * math.pi)) + 0.5 * _logdet(cov, False)


def gaussian_kl(mu_p: Tensor, cov_p: Tensor, mu_q: Tensor, cov_q: Tensor) -> Tensor:
    """``KL(N(μ_p, Σ_p) ‖ N(μ_q, Σ_q))`` in nats, batched (equals
    ``torch.distributions.kl_divergence`` for ``MultivariateNormal``)."""
    dp, dq = _pair(mu_p, cov_p, mu_q, cov_q)
    n = mu_p.shape[-1]
    delta = mu_p - mu_q
    if dp and dq:
        trace = (cov_p / cov_q).sum(-1)
    else:
        trace = torch.diagonal(_solve(cov_q, dq, _full(cov_p, dp)), dim1=-2, dim2=-1).sum(-1)
    return 0.5 * (_mahalanobis(delta, cov_q, dq) + trace - n
                  + _logdet(cov_q, dq) - _logdet(cov_p, dp))


def gaussian_bhattacharyya(mu_p: Tensor, cov_p: Tensor, mu_q: Tensor, cov_q: Tensor) -> Tensor:
    """Bhattacharyya distance ``−log ∫ √(p q)`` (symmetric; 0 iff p = q)."""
    dp, dq = _pair(mu_p, cov_p, mu_q, cov_q)
    diagonal = dp and dq
    avg = 0.5 * (cov_p + cov_q) if diagonal else 0.5 * (_full(cov_p, dp) + _full(cov_q, dq))
    delta = mu_p - mu_q
    return (0.125 * _mahalanobis(delta, avg, diagonal)
            + 0.5 * _logdet(avg, diagonal) - 0.25 * (_logdet(cov_p, dp) + _logdet(cov_q, dq)))


def gaussian_hellinger(mu_p: Tensor, cov_p: Tensor, mu_q: Tensor, cov_q: Tensor, *,
                       squared: bool = True) -> Tensor:
    """Hellinger distance: squared ``½ ∫(√p − √q)² = 1 − e^{−BD}`` ∈ [0, 1] (or its root)."""
    h2 = -torch.expm1(-gaussian_bhattacharyya(mu_p, cov_p, mu_q, cov_q))
    return h2 if squared else h2.clamp_min(0).sqrt()


def gaussian_w2(mu_p: Tensor, cov_p: Tensor, mu_q: Tensor, cov_q: Tensor, *,
                squared: bool = True) -> Tensor:
    """2-Wasserstein distance between Gaussians (squared by default), batched, differentiable.

    ``‖Δμ‖² + Tr Σ_p + Tr Σ_q − 2 Tr((Σ_p^{1/2} Σ_q Σ_p^{1/2})^{1/2})``; diagonal covariances
    commute, so there it is ``‖Δμ‖² + ‖σ_p − σ_q‖²``. Equals POT's
    ``ot.gaussian.bures_wasserstein_distance`` (which returns the root).
    """
    dp, dq = _pair(mu_p, cov_p, mu_q, cov_q)
    mean_term = ((mu_p - mu_q) ** 2).sum(-1)
    if dp and dq:
        w2 = mean_term + ((cov_p.sqrt() - cov_q.sqrt()) ** 2).sum(-1)
    else:
        a, b = _full(cov_p, dp), _full(cov_q, dq)
        root_a = torch.diag_embed(cov_p.sqrt()) if dp else sqrtm_psd(a)
        cross = sqrtm_psd(root_a @ b @ root_a)
        trace = lambda m: torch.diagonal(m, dim1=-2, dim2=-1).sum(-1)  # noqa: E731
        w2 = mean_term + trace(a) + trace(b) - 2 * trace(cross)
    w2 = w2.clamp_min(0)
    return w2 if squared else w2.sqrt()
