"""Closed-form ("analytic") logistic and softmax regression from Gaussian class models.

If every class is Gaussian with one **shared** covariance, ``p(x | i) = N(μ_i, Σ)``, the log-odds
are exactly linear in ``x`` and Bayes' rule gives the classifier in closed form — no gradient
descent (kexue.fm/archives/8578; the same model as linear discriminant analysis). Row vectors,
class frequencies ``p_i``:

==============================  =================================================================
softmax (k classes)             ``w_i = μ_i Σ⁻¹``, ``b_i = ln p_i − ½ μ_i Σ⁻¹ μ_iᵀ``
binary (logistic)               ``w = (μ₁ − μ₀) Σ⁻¹``,
                                ``b = ½(μ₀Σ⁻¹μ₀ᵀ − μ₁Σ⁻¹μ₁ᵀ) + ln(p₁/p₀)``
shared covariance from moments  ``Σ = Σ̃ + μ̃ᵀμ̃ − Σ_i p_i μ_iᵀμ_i`` (``μ̃, Σ̃``: mean and
                                covariance of all data) = the frequency-weighted pooled
                                within-class covariance with ``1/N`` moments
after whitening                 ``μ̃ = 0, Σ̃ = I``: ``Σ = I − Σ_i p_i μ_iᵀμ_i`` (recommended:
                                better conditioned in high dimension, same classifier)
linear regression               ``W = Σ_xx⁻¹ Σ_xy``, ``b = μ_y − μ_x W`` (ordinary least squares)
==============================  =================================================================

Results are shaped for ``torch.nn.Linear`` (``weight (classes, features)``, ``bias (classes,)``);
logits are shift-invariant, so this is one solution among many. Singular covariances (constant
features, more features than samples) are handled by dropping the null directions (a
pseudo-inverse); ``ridge`` shrinks the shared covariance towards ``(Tr Σ / d)·I``. The post
reports that on sentence vectors the closed form generalises as well as gradient descent; with
fewer samples than features it needs that shrinkage (see the tests and docs).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "fit_gaussian_binary_classifier",
    "fit_gaussian_linear_classifier",
    "fit_gaussian_linear_regression",
    "shared_covariance",
]


def _check_xy(X: Tensor, y: Tensor, num_classes: int | None) -> tuple[Tensor, Tensor, int]:
    if not isinstance(X, Tensor) or X.dim() != 2:
        raise ValueError(f"X must be a (samples, features) tensor, got "
                         f"{tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__}")
    if not X.dtype.is_floating_point:
        raise TypeError(f"X must be a floating-point tensor, got dtype {X.dtype}")
    if X.shape[0] == 0:
        raise ValueError("X has no samples")
    if not isinstance(y, Tensor) or y.shape != X.shape[:1]:
        raise ValueError(f"y must be a ({X.shape[0]},) tensor of class ids")
    if y.dtype.is_floating_point or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer class ids, got dtype {y.dtype}")
    if bool((y < 0).any()):
        raise ValueError("y holds negative class ids")
    k = int(y.max()) + 1 if num_classes is None else int(num_classes)
    if int(y.max()) >= k:
        raise ValueError(f"y holds class {int(y.max())} but num_classes is {k}")
    if k < 2:
        raise ValueError(f"need at least two classes, got {k}")
    return X, y.long(), k


def _keep(lam: Tensor) -> Tensor:
    """Eigenvalues above ``d·eps·max`` (the cutoff of least squares solvers)."""
    rtol = lam.shape[0] * torch.finfo(lam.dtype).eps
    return lam > rtol * lam.abs().max().clamp_min(torch.finfo(lam.dtype).tiny)


def _inverse_apply(sym: Tensor, rhs: Tensor) -> Tensor:
    """``sym⁺ rhs`` by a symmetric eigendecomposition (null directions dropped)."""
    lam, vec = torch.linalg.eigh(sym)
    keep = _keep(lam)
    inv = torch.where(keep, 1 / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam))
    return vec @ (inv[:, None] * (vec.T @ rhs))


def _moments(X: Tensor, y: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Class frequencies ``(k,)``, class means ``(k, d)``, overall mean and covariance (1/N)."""
    n = X.shape[0]
    counts = torch.bincount(y, minlength=k).to(X.dtype)
    if bool((counts == 0).any()):
        missing = (counts == 0).nonzero()[:, 0].tolist()
        raise ValueError(f"classes {missing} have no samples in y")
    onehot = torch.nn.functional.one_hot(y, k).to(X.dtype)
    means = onehot.T @ X / counts[:, None]
    mu = X.mean(0)
    xc = X - mu
    return counts / n, means, mu, xc.T @ xc / n


def shared_covariance(X: Tensor, y: Tensor, num_classes: int | None = None) -> Tensor:
    """The shared class covariance ``Σ̃ + μ̃ᵀμ̃ − Σ_i p_i μ_iᵀμ_i`` (pooled within-class, 1/N)."""
    X, y, k = _check_xy(X, y, num_classes)
    pri, means, mu, cov = _moments(X, y, k)
    return cov + torch.outer(mu, mu) - (pri[:, None] * means).T @ means


def fit_gaussian_linear_classifier(X: Tensor, y: Tensor, num_classes: int | None = None,
                                   whiten: bool = True, ridge: float = 0.0
                                   ) -> tuple[Tensor, Tensor]:
    """Closed-form softmax regression ``(W, b)``: logits ``X Wᵀ + b``.

    Args:
        X: ``(samples, features)`` data.
        y: ``(samples,)`` integer class ids ``0 … k−1``.
        num_classes: ``k`` (default ``max(y) + 1``); every class needs a sample.
        whiten: Fit in PCA-whitened coordinates (same classifier, better conditioned).
        ridge: Shrinkage: the shared covariance becomes ``Σ + ridge·(Tr Σ / d)·I`` (the same
            classifier with or without whitening). Needed when a class has fewer samples than
            features: without it the closed form overfits.

    Returns:
        ``W`` ``(k, features)`` and ``b`` ``(k,)``, for ``nn.Linear``.
    """
    X, y, k = _check_xy(X, y, num_classes)
    if ridge < 0:
        raise ValueError(f"ridge must be non-negative, got {ridge}")
    pri, means, mu, cov = _moments(X, y, k)
    # shrinkage Σ + ridge·(Tr Σ / d)·I; Tr Σ = Tr Σ̃ − Σ_i p_i ‖μ_i − μ̃‖²
    shrink = ridge * float(torch.trace(cov) - (pri * ((means - mu) ** 2).sum(-1)).sum()) / X.shape[1]
    if not whiten:
        sigma = cov + torch.outer(mu, mu) - (pri[:, None] * means).T @ means
        sigma = sigma + shrink * torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
        w = _inverse_apply(sigma, means.T).T
        b = torch.log(pri) - 0.5 * (w * means).sum(-1)
        return w, b
    lam, vec = torch.linalg.eigh(cov)
    keep = _keep(lam)
    proj = vec[:, keep] / lam[keep].sqrt()  # (d, r): x̃ = (x − μ̃) P
    m = (means - mu) @ proj
    # Σ_w = I − Σ p_i m_iᵀ m_i; the raw shrinkage s·I reads s·PᵀP = s·diag(1/λ) here
    sigma = torch.diag(1 + shrink / lam[keep]) - (pri[:, None] * m).T @ m
    # fit the uncentred means m + z (z = μ̃P) so that (W, b) equal the raw-coordinate solution,
    # not one shifted by a class-independent term
    mz = m + mu @ proj
    wt = _inverse_apply(sigma, mz.T).T
    bt = torch.log(pri) - 0.5 * (wt * mz).sum(-1)
    return wt @ proj.T, bt


def fit_gaussian_binary_classifier(X: Tensor, y: Tensor, whiten: bool = True, ridge: float = 0.0
                                   ) -> tuple[Tensor, Tensor]:
    """Closed-form logistic regression: ``P(y=1 | x) = σ(x·w + b)``; returns ``(w, b)``.

    ``w = (μ₁ − μ₀)Σ⁻¹``, ``b = ½(μ₀Σ⁻¹μ₀ᵀ − μ₁Σ⁻¹μ₁ᵀ) + ln(p₁/p₀)``: the difference of the two
    rows of :func:`fit_gaussian_linear_classifier`.
    """
    w, b = fit_gaussian_linear_classifier(X, y, num_classes=2, whiten=whiten, ridge=ridge)
    return w[1] - w[0], b[1] - b[0]


def fit_gaussian_linear_regression(X: Tensor, Y: Tensor, ridge: float = 0.0
                                   ) -> tuple[Tensor, Tensor]:
    """Least squares from joint-Gaussian moments: ``W = Σ_xx⁻¹ Σ_xy``, ``b = μ_y − μ_x W``.

    Args:
        X: ``(samples, in_features)``.
        Y: ``(samples, out_features)`` or ``(samples,)``.
        ridge: Added to ``Σ_xx``.

    Returns:
        ``weight`` ``(out_features, in_features)`` and ``bias`` ``(out_features,)``.
    """
    if not isinstance(X, Tensor) or X.dim() != 2 or not X.dtype.is_floating_point:
        raise ValueError("X must be a floating-point (samples, features) tensor")
    if not isinstance(Y, Tensor) or Y.shape[0] != X.shape[0]:
        raise ValueError(f"Y must have {X.shape[0]} rows like X")
    Y2 = Y[:, None] if Y.dim() == 1 else Y
    mx, my = X.mean(0), Y2.mean(0)
    xc, yc = X - mx, Y2 - my
    n = X.shape[0]
    sxx = xc.T @ xc / n + ridge * torch.eye(X.shape[1], dtype=X.dtype, device=X.device)
    w = _inverse_apply(sxx, xc.T @ yc / n)
    weight, bias = w.T, my - mx @ w
    return (weight[0], bias[0]) if Y.dim() == 1 else (weight, bias)
