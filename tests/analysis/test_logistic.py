"""Closed-form logistic / softmax regression against scikit-learn's LDA and LogisticRegression
on its bundled datasets, plus the identities of the post."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from formerlab.analysis import (
    fit_gaussian_binary_classifier,
    fit_gaussian_linear_classifier,
    fit_gaussian_linear_regression,
    shared_covariance,
)

sklearn = pytest.importorskip("sklearn")
from sklearn import datasets  # noqa: E402
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis  # noqa: E402
from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

F64 = torch.float64
DATASETS = ["iris", "wine", "breast_cancer", "digits"]
#: the analytic classifier's held-out accuracy is at least LogisticRegression's minus this
MARGIN = 0.03


def _load(name):
    X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
    return torch.tensor(X, dtype=F64), torch.tensor(y)


@pytest.mark.parametrize("name", DATASETS)
def test_equals_sklearn_lda_lsqr(name):
    X, y = _load(name)
    lda = LinearDiscriminantAnalysis(solver="lsqr").fit(X.numpy(), y.numpy())
    for whiten in (True, False):
        if name == "breast_cancer":
            w, b = fit_gaussian_binary_classifier(X, y, whiten=whiten)
            w, b = w[None], b[None]
        else:
            w, b = fit_gaussian_linear_classifier(X, y, whiten=whiten)
        np.testing.assert_allclose(w.numpy(), lda.coef_, rtol=1e-6,
                                   atol=1e-8 * np.abs(lda.coef_).max())
        np.testing.assert_allclose(b.numpy(), lda.intercept_, rtol=1e-6, atol=1e-6)


def test_accuracy_within_margin_of_logistic_regression():
    for name in DATASETS:
        X, y = _load(name)
        ours, theirs = [], []
        for seed in range(3):
            xtr, xte, ytr, yte = train_test_split(X.numpy(), y.numpy(), test_size=0.5,
                                                  random_state=seed, stratify=y.numpy())
            w, b = fit_gaussian_linear_classifier(torch.tensor(xtr), torch.tensor(ytr))
            pred = (torch.tensor(xte) @ w.T + b).argmax(1).numpy()
            ours.append(float((pred == yte).mean()))
            lr = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
            theirs.append(lr.fit(xtr, ytr).score(xte, yte))
        assert np.mean(ours) >= np.mean(theirs) - MARGIN, (name, ours, theirs)


def test_binary_is_the_two_class_softmax_and_whitening_changes_nothing():
    X, y = _load("breast_cancer")
    w2, b2 = fit_gaussian_linear_classifier(X, y)
    w, b = fit_gaussian_binary_classifier(X, y)
    torch.testing.assert_close(w, w2[1] - w2[0])
    torch.testing.assert_close(b, b2[1] - b2[0])
    for ridge in (0.0, 0.3):
        pw = torch.softmax(X @ fit_gaussian_linear_classifier(X, y, ridge=ridge)[0].T, -1)
        pr = torch.softmax(X @ fit_gaussian_linear_classifier(X, y, whiten=False,
                                                              ridge=ridge)[0].T, -1)
        torch.testing.assert_close(pw, pr, rtol=1e-6, atol=1e-9)


def test_shared_covariance_moment_formula_is_pooled_within_class():
    X, y = _load("wine")
    pooled = sum((y == c).sum() * torch.cov(X[y == c].T, correction=0) for c in range(3)) / len(y)
    torch.testing.assert_close(shared_covariance(X, y), pooled, rtol=1e-10, atol=1e-10)


def test_large_sample_recovers_bayes_parameters_like_mle():
    g = torch.Generator().manual_seed(0)
    cov = torch.tensor([[1.0, 0.4, 0.0], [0.4, 0.8, -0.2], [0.0, -0.2, 0.5]], dtype=F64)
    mu0, mu1, p1 = torch.tensor([0.0, 0.5, -0.5], dtype=F64), torch.tensor([1.0, -0.5, 0.5],
                                                                          dtype=F64), 0.3
    n = 40_000
    y = (torch.rand(n, generator=g) < p1).long()
    X = torch.where(y[:, None] == 1, mu1, mu0) + torch.randn(n, 3, generator=g, dtype=F64) @ \
        torch.linalg.cholesky(cov).T
    prec = torch.linalg.inv(cov)
    w_bayes = (mu1 - mu0) @ prec
    b_bayes = 0.5 * (mu0 @ prec @ mu0 - mu1 @ prec @ mu1) + np.log(p1 / (1 - p1))
    w, b = fit_gaussian_binary_classifier(X, y)
    assert float((w - w_bayes).norm()) < 0.1 and abs(float(b - b_bayes)) < 0.1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mle = LogisticRegression(C=1e6, max_iter=2000).fit(X.numpy(), y.numpy())
    assert np.linalg.norm(mle.coef_[0] - w_bayes.numpy()) < 0.1


def test_few_samples_need_shrinkage():
    """Fewer samples per class than features: without shrinkage the closed form overfits; with
    ridge = 1 it matches scikit-learn's (L2-regularised) logistic regression."""
    d, n = 64, 30
    plain, shrunk, lr = [], [], []
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        a = torch.randn(d, d, generator=g, dtype=F64) / d**0.5
        chol = torch.linalg.cholesky(a @ a.T + 0.5 * torch.eye(d, dtype=F64))
        mus = 0.35 * torch.randn(3, d, generator=g, dtype=F64)

        def sample(m, g=g, mus=mus, chol=chol):
            y = torch.arange(3).repeat_interleave(m)
            return mus[y] + torch.randn(len(y), d, generator=g, dtype=F64) @ chol.T, y

        (xtr, ytr), (xte, yte) = sample(n), sample(500)
        for out, ridge in ((plain, 0.0), (shrunk, 1.0)):
            w, b = fit_gaussian_linear_classifier(xtr, ytr, ridge=ridge)
            out.append(float(((xte @ w.T + b).argmax(1) == yte).double().mean()))
        lr.append(LogisticRegression(max_iter=3000).fit(xtr.numpy(), ytr.numpy())
                  .score(xte.numpy(), yte.numpy()))
    assert np.mean(shrunk) >= np.mean(lr) - 0.02
    assert np.mean(plain) < np.mean(shrunk) - 0.05


def test_linear_regression_is_least_squares():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 4, generator=g, dtype=F64)
    Y = X @ torch.randn(4, 2, generator=g, dtype=F64) + 0.1 * torch.randn(200, 2, generator=g,
                                                                         dtype=F64) + 3.0
    weight, bias = fit_gaussian_linear_regression(X, Y)
    design = torch.cat([X, torch.ones(200, 1, dtype=F64)], 1)
    sol = torch.linalg.lstsq(design, Y).solution
    torch.testing.assert_close(weight, sol[:4].T)
    torch.testing.assert_close(bias, sol[4])
    w1, b1 = fit_gaussian_linear_regression(X, Y[:, 0])
    torch.testing.assert_close(w1, weight[0])
    torch.testing.assert_close(b1, bias[0])


def test_bad_input_names_the_argument():
    X = torch.randn(10, 3, dtype=F64)
    y = torch.tensor([0, 1] * 5)
    with pytest.raises(TypeError, match="y must hold integer"):
        fit_gaussian_linear_classifier(X, y.double())
    with pytest.raises(ValueError, match="classes \\[2\\] have no samples"):
        fit_gaussian_linear_classifier(X, y, num_classes=3)
    with pytest.raises(ValueError, match="X must be"):
        fit_gaussian_linear_classifier(X[0], y)
    with pytest.raises(ValueError, match="y must be a \\(10,\\)"):
        fit_gaussian_linear_classifier(X, y[:5])
    with pytest.raises(ValueError, match="ridge"):
        fit_gaussian_linear_classifier(X, y, ridge=-1.0)
    with pytest.raises(ValueError, match="at least two classes"):
        fit_gaussian_linear_classifier(X, torch.zeros(10, dtype=torch.long))
