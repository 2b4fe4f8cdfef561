"""Hubness: k-occurrence against brute force and scikit-learn, the measures against scipy, the
post's claims on Gaussian points and on real MiniLM sentence embeddings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from formerlab.analysis import (
    HUBNESS_METRICS,
    hub_filtered_normal,
    hubness_skewness,
    hubness_stats,
    k_nearest,
    k_occurrence,
    robin_hood_index,
    unit_ball_cube_ratio,
)

F64 = torch.float64


def test_every_registered_metric_is_covered():
    assert set(HUBNESS_METRICS) == {"sqeuclidean", "cosine", "csls"}


def _brute(X, k, metric):
    if metric == "sqeuclidean":
        d = torch.cdist(X, X) ** 2
    else:
        u = X / X.norm(dim=-1, keepdim=True)
        d = 1 - u @ u.T
    d.fill_diagonal_(math.inf)
    return torch.bincount(d.topk(k, largest=False).indices.reshape(-1), minlength=len(X))


@pytest.mark.parametrize("metric", ["sqeuclidean", "cosine"])
def test_chunked_equals_brute_force_and_sklearn(metric):
    neighbors = pytest.importorskip("sklearn.neighbors")
    g = torch.Generator().manual_seed(0)
    X = torch.randn(300, 16, generator=g, dtype=F64)
    ref = _brute(X, 5, metric)
    for chunk in (1, 7, 300, None):
        nk = k_occurrence(X, 5, metric=metric, chunk_size=chunk)
        assert torch.equal(nk, ref)
        assert int(nk.sum()) == 300 * 5
    nn = neighbors.NearestNeighbors(n_neighbors=6, metric="euclidean" if metric == "sqeuclidean"
                                    else "cosine").fit(X.numpy())
    ind = nn.kneighbors(X.numpy(), return_distance=False)[:, 1:]
    assert torch.equal(ref, torch.bincount(torch.tensor(ind.reshape(-1)), minlength=300))


def test_csls_and_centering_options():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(200, 8, generator=g, dtype=F64) + 3.0
    # csls ranks by 2cos − r(y): check against a direct computation
    u = X / X.norm(dim=-1, keepdim=True)
    cos = u @ u.T
    cos.fill_diagonal_(-math.inf)
    radius = cos.topk(4, dim=1).values.mean(1)
    score = 2 * cos - radius[None]
    ref = torch.bincount(score.topk(5, dim=1).indices.reshape(-1), minlength=200)
    assert torch.equal(k_occurrence(X, 5, metric="csls", csls_k=4, chunk_size=33), ref)
    centered = k_occurrence(X, 5, metric="cosine", center=True)
    assert torch.equal(centered, _brute(X - X.mean(0), 5, "cosine"))
    assert k_nearest(X, 3).shape == (200, 3)


def test_measures_against_scipy_and_known_arrays():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(2)
    nk = k_occurrence(torch.randn(500, 32, generator=g), 5)
    assert hubness_skewness(nk) == pytest.approx(float(stats.skew(nk.numpy())), rel=1e-10)
    assert robin_hood_index(torch.full((10,), 3)) == 0.0
    assert robin_hood_index(torch.tensor([0, 0, 0, 12])) == pytest.approx(0.75)
    assert robin_hood_index(torch.tensor([1, 3])) == pytest.approx(0.25)
    s = hubness_stats(torch.tensor([0, 0, 2, 8]), k=2)
    assert s["antihub_occurrence"] == 0.5 and s["max_over_k"] == 4.0


def test_hubness_grows_with_dimension_on_gaussians():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(3)
    low = k_occurrence(torch.randn(2000, 2, generator=g), 5)
    z = torch.randn(2000, 512, generator=g)
    high = k_occurrence(z, 5)
    assert hubness_skewness(high) > hubness_skewness(low) + 3
    assert robin_hood_index(high) > robin_hood_index(low) + 0.1
    # hubs sit near the centre: N_k falls with the norm
    rho = stats.spearmanr(high.numpy(), (-z.norm(dim=1)).numpy()).correlation
    assert rho > 0.5


def test_hub_filtered_latents_are_nearer_the_centre():
    g = torch.Generator().manual_seed(4)
    kept = hub_filtered_normal(64, 64, pool=1500, k=5, threshold=15, chunk=500, generator=g)
    raw = torch.randn(2000, 64, generator=torch.Generator().manual_seed(5))
    assert kept.shape == (64, 64)
    assert float(kept.norm(dim=1).mean()) < float(raw.norm(dim=1).mean()) - 0.3
    again = hub_filtered_normal(64, 64, pool=1500, k=5, threshold=15, chunk=500,
                                generator=torch.Generator().manual_seed(4))
    assert torch.equal(kept, again)


def test_unit_ball_cube_ratio():
    assert unit_ball_cube_ratio(2) == pytest.approx(math.pi / 4)
    assert unit_ball_cube_ratio(3) == pytest.approx(math.pi / 6)
    assert unit_ball_cube_ratio(1) == pytest.approx(1.0)
    assert unit_ball_cube_ratio(20) < 1e-7


@pytest.mark.slow
def test_real_sentence_embeddings_hubness_grows_with_dimension_csls_reduces_it(
        sentence_embeddings):
    """MiniLM (mean-pooled) embeddings of 256 standard-library docstrings: projected onto their
    top principal directions, the skewness of N_5 grows with the number of directions kept;
    CSLS lowers it at full dimension."""
    e = sentence_embeddings.double()
    ec = e - e.mean(0)
    _, _, vh = torch.linalg.svd(ec, full_matrices=False)
    skew = {d: hubness_skewness(k_occurrence(ec @ vh[:d].T, 5)) for d in (2, 8, 32, 384)}
    assert skew[2] < skew[8] < skew[32] < skew[384]
    assert skew[384] > skew[2] + 1.5
    cosine = hubness_skewness(k_occurrence(e, 5, metric="cosine"))
    csls = hubness_skewness(k_occurrence(e, 5, metric="csls"))
    assert csls < cosine - 0.3
    print(f"skewness by dimension {skew}; cosine {cosine:.2f}, csls {csls:.2f}")


def test_bad_input_names_the_argument():
    X = torch.randn(10, 3)
    with pytest.raises(ValueError, match="k must be an int in \\[1, 9\\]"):
        k_occurrence(X, 10)
    with pytest.raises(ValueError, match="X must be"):
        k_occurrence(X[0], 2)
    with pytest.raises(TypeError, match="X must be a floating-point"):
        k_occurrence(X.long(), 2)
    with pytest.raises(ValueError, match="sqeuclidean, cosine, csls"):
        k_occurrence(X, 2, metric="manhattan")
    with pytest.raises(ValueError, match="chunk_size"):
        k_occurrence(X, 2, chunk_size=0)
    with pytest.raises(ValueError, match="Nk"):
        hubness_skewness(torch.tensor([]))
    with pytest.raises(RuntimeError, match="passed"):
        hub_filtered_normal(5, 2, pool=20, k=2, threshold=100, max_pools=2)
    np.testing.assert_equal(k_occurrence(X, 2).sum().item(), 20)
