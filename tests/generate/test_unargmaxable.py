"""Unargmaxable classes: every method against scipy's ConvexHull (no bias, d ≤ 3) and a full
HiGHS LP per class (with bias), on random heads and on heads built with known unargmaxable rows;
certificates, Monte-Carlo sampling, hull distances by hand, normalisation."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.generate.unargmaxable import (
    UNARGMAXABLE_METHODS,
    find_unargmaxable,
    hull_distance,
    normalize_classifier_,
)

F64 = torch.float64
METHODS = sorted(UNARGMAXABLE_METHODS)
NEEDS_SCIPY = {"lp"}


def run(W, b=None, method="hull", **kw):
    if method in NEEDS_SCIPY:
        pytest.importorskip("scipy")
    if method == "frank_wolfe":  # undecided classes go to the exact solver sooner
        kw.setdefault("max_iter", 200)
    return find_unargmaxable(W, b, method=method, **kw)


def gauss(n, d, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


ORACLE: dict = {}


def lp_oracle(W, b):
    """Per class, the full LP max t s.t. ⟨w_k − w_j, z⟩ + b_k − b_j ≥ t, t ≤ 1 (HiGHS)."""
    opt = pytest.importorskip("scipy.optimize")
    import numpy as np

    key = (W.numpy().tobytes(), b.numpy().tobytes())
    if key in ORACLE:
        return ORACLE[key]
    W, b = W.numpy(), b.numpy()
    n, d = W.shape
    out = []
    for k in range(n):
        o = [j for j in range(n) if j != k]
        A = np.c_[-(W[k] - W[o]), np.ones(n - 1)]
        res = opt.linprog(np.r_[np.zeros(d), -1.0], A_ub=A, b_ub=b[k] - b[o],
                          bounds=[(None, None)] * d + [(None, 1.0)], method="highs")
        assert res.status == 0
        if res.x[d] <= 1e-7:
            out.append(k)
    ORACLE[key] = out
    return out


def test_every_registered_method_is_covered():
    assert set(UNARGMAXABLE_METHODS) == {"lp", "hull", "frank_wolfe"}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("screen", [True, False])
def test_the_origin_of_the_diamond_is_the_only_unargmaxable_class(method, screen):
    W = torch.tensor([[1.0, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], dtype=F64)
    idx, certs = run(W, method=method, screen=screen)
    assert idx.tolist() == [4]
    lam_idx, lam = certs.combination[4]
    torch.testing.assert_close(lam @ W[lam_idx], W[4], atol=1e-9, rtol=0)
    assert certs.verify(W)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("d, n, seed", [(2, 30, 0), (2, 80, 1), (3, 60, 2), (3, 150, 3)])
def test_agrees_with_scipy_convex_hull(method, d, n, seed):
    spatial = pytest.importorskip("scipy.spatial")
    W = gauss(n, d, seed)
    inside = sorted(set(range(n)) - set(spatial.ConvexHull(W.numpy()).vertices.tolist()))
    idx, certs = run(W, method=method)
    assert idx.tolist() == inside and len(inside) > 0
    assert certs.verify(W)


@pytest.mark.parametrize("method", METHODS)
def test_agrees_with_a_full_lp_per_class_with_bias(method):
    W, b = gauss(40, 3, seed=5), gauss(40, 1, seed=6).flatten()
    idx, certs = run(W, b, method=method)
    assert idx.tolist() == lp_oracle(W, b)
    assert certs.verify(W, b)
    assert certs.solved_by["screen"] > 0  # the biased screen settles some classes itself
    assert run(W, b, method=method, screen=False)[0].tolist() == idx.tolist()


def constructed_head(n=160, d=6, seed=7):
    """Gaussian rows plus rows known to be unargmaxable: convex combinations of others, a
    duplicate, and (with the bias) a copy of a row with a smaller bias."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, d, generator=g, dtype=F64)
    b = torch.randn(n, generator=g, dtype=F64) * 0.1
    known = []
    for k in (10, 50, 120):  # strict interior: average of 40 random rows
        src = torch.randperm(n, generator=g)[:40]
        src = src[src != k]
        W[k] = W[src].mean(0)
        b[k] = b[src].mean() - 0.05
        known.append(k)
    W[n - 30], b[n - 30] = W[17], b[17]  # duplicate: ties are not a strict argmax
    W[n - 10], b[n - 10] = W[33], b[33] - 0.5  # same row, lower bias: dominated
    known += [n - 30, n - 10]
    return W, b, sorted(known)


@pytest.mark.parametrize("method", METHODS)
def test_constructed_head_with_known_unargmaxable_rows(method):
    W, b, known = constructed_head()
    idx, certs = run(W, b, method=method)
    assert set(known) <= set(idx.tolist())
    assert idx.tolist() == lp_oracle(W, b)
    assert certs.verify(W, b)
    for k in known:
        lam_idx, lam = certs.combination[k]
        assert lam.min() >= 0 and abs(float(lam.sum()) - 1) < 1e-9
        torch.testing.assert_close(lam @ W[lam_idx], W[k], atol=1e-7, rtol=0)
        assert float(lam @ b[lam_idx]) >= float(b[k]) - 1e-7
    # without the bias the duplicate stays unargmaxable, the dominated copy becomes a tie too
    idx_nb, _ = run(W, None, method=method)
    assert set(known) <= set(idx_nb.tolist())


def test_monte_carlo_never_selects_a_detected_class():
    W, b, _ = constructed_head(n=200, d=6, seed=11)
    idx, certs = find_unargmaxable(W, b, method="hull")
    z = torch.randn(200_000, 6, generator=torch.Generator().manual_seed(0), dtype=F64) * 3
    top2 = (z @ W.T + b).topk(2, dim=1)
    strict = top2.values[:, 0] > top2.values[:, 1]  # exact ties (the duplicate) are no win
    winners = set(top2.indices[strict, 0].unique().tolist())
    assert winners.isdisjoint(idx.tolist()) and len(winners) > 100
    # every witness makes its class the strict argmax
    ok = certs.argmaxable.nonzero().flatten()
    top = (certs.witness[ok].to(F64) @ W.T + b).argmax(1)
    assert torch.equal(top, ok)


def test_high_dimensional_gaussian_heads_have_none():
    W = gauss(2000, 64, seed=3).float()
    idx, certs = find_unargmaxable(W, method="hull")
    assert idx.numel() == 0 and bool(certs.argmaxable.all())
    assert certs.solved_by["screen"] == 2000  # the whitened screen settles all of them


@pytest.mark.parametrize("method", METHODS)
def test_low_rank_float32_head_all_methods_agree(method):
    W = (gauss(120, 3, seed=9) @ gauss(3, 10, seed=10)).float()  # rank 3 in 10-d
    ref, _ = find_unargmaxable(W, method="hull", screen=False)
    idx, certs = run(W, method=method)
    assert idx.tolist() == ref.tolist() and len(ref) > 0
    assert certs.verify(W)


def test_row_normalised_heads_have_none():
    W, _, known = constructed_head(n=160, d=6)
    W[known[-2:]] += 0.01  # no exact duplicates
    lin = torch.nn.Linear(6, 160, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(W)
    assert len(find_unargmaxable(lin.weight, method="hull")[0]) > 0
    normalize_classifier_(lin)
    norms = lin.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, float(W.norm(dim=1).mean())))
    assert len(find_unargmaxable(lin.weight, method="hull")[0]) == 0


def test_normalize_classifier_bias_and_bad_input():
    lin = torch.nn.Linear(4, 10)
    with pytest.raises(ValueError, match="zero_bias"):
        normalize_classifier_(lin)
    normalize_classifier_(lin, norm=2.0, zero_bias=True)
    assert bool((lin.bias == 0).all())
    torch.testing.assert_close(lin.weight.norm(dim=1), torch.full((10,), 2.0))
    with pytest.raises(ValueError, match="norm"):
        normalize_classifier_(torch.randn(3, 2), norm=-1.0)
    with pytest.raises(ValueError, match="2-D"):
        normalize_classifier_(torch.randn(3))


def test_hull_distance_by_hand():
    W = torch.tensor([[1.0, 1], [1, -1], [-1, 1], [-1, -1], [3, 0], [0, 0.5]], dtype=F64)
    assert hull_distance(W, 4).distance == pytest.approx(2.0, abs=1e-12)
    assert hull_distance(W, 5).distance == pytest.approx(0.0, abs=1e-9)
    h = hull_distance(W[:5], 0)  # (1, 1) to the edge from (-1, 1) to (3, 0)
    assert h.distance == pytest.approx(2 / math.sqrt(17), abs=1e-12)
    assert h.lower_bound == pytest.approx(h.distance, abs=1e-9)
    torch.testing.assert_close(h.weights @ W[h.indices], torch.tensor([15 / 17, 9 / 17], dtype=F64))
    gaps = []
    for iters in (10, 100, 1000):  # Frank–Wolfe: bounds bracket the distance, sublinearly
        fw = hull_distance(W[:5], 0, iters=iters, method="frank_wolfe")
        assert fw.lower_bound <= h.distance + 1e-12 <= fw.distance + 2e-12
        gaps.append(fw.distance - h.distance)
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2


def test_hull_distance_against_a_constrained_least_squares():
    opt = pytest.importorskip("scipy.optimize")
    import numpy as np

    W = gauss(60, 5, seed=4)
    for k in (0, 7, 33):
        o = [j for j in range(60) if j != k]
        big = 1e4  # Σλ = 1 as a heavily weighted extra row of a nonnegative least squares
        A = np.r_[W[o].numpy().T, big * np.ones((1, 59))]
        lam, _ = opt.nnls(A, np.r_[W[k].numpy(), big])
        ref = float(np.linalg.norm(W[k].numpy() - W[o].numpy().T @ lam))
        assert hull_distance(W, k).distance == pytest.approx(ref, abs=1e-5)


@pytest.mark.parametrize("call, match", [
    (lambda: find_unargmaxable(torch.randn(5)), "W must be 2-D"),
    (lambda: find_unargmaxable(torch.randn(2, 3, 4)), r"W must be 2-D.*\(2, 3, 4\)"),
    (lambda: find_unargmaxable(torch.randn(5, 2), torch.randn(4)), r"b must be .* 5, got \(4,\)"),
    (lambda: find_unargmaxable(torch.randn(5, 2), torch.randn(5, 1)), "b must be"),
    (lambda: find_unargmaxable(torch.randn(5, 2), method="simplex"), "lp"),
    (lambda: find_unargmaxable(torch.randn(5, 2), tol=-1.0), "tol"),
    (lambda: find_unargmaxable(torch.full((3, 2), math.nan)), "finite"),
    (lambda: hull_distance(torch.randn(5, 2), 5), "k must be"),
])
def test_bad_input_raises_naming_the_argument(call, match):
    with pytest.raises(ValueError, match=match):
        call()
