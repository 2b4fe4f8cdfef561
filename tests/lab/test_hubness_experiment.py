"""The hubness experiment: its PCA coordinates against scikit-learn, the consistency of its micro
rows (real MiniLM when installed, else a tiny random encoder), its claims, the docstring pool."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.analysis import k_occurrence
from formerlab.lab import EXPERIMENTS, Results
from formerlab.lab.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED
from formerlab.lab.experiments import _minilm
from formerlab.lab.experiments.hubness import METRICS, HubnessConfig, pca_coordinates

NAME = "hubness"


@pytest.fixture(scope="module")
def run(micro_run):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data, _ = micro_run(NAME)
    finally:
        torch.set_num_threads(before)
    return Results(data["rows"]), data


def test_pca_coordinates_equal_scikit_learn_up_to_sign():
    decomposition = pytest.importorskip("sklearn.decomposition")
    g = torch.Generator().manual_seed(0)
    X = torch.randn(200, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g,
                                                                             dtype=torch.float64)
    X = X + 3.0
    ours = pca_coordinates(X, [2, 5, 12])
    ref = torch.from_numpy(decomposition.PCA(5).fit_transform(X.numpy()))
    centred = ours[5] - ours[5].mean(0)
    signs = torch.sign((centred * ref).sum(0))
    torch.testing.assert_close(centred * signs, ref, rtol=1e-9, atol=1e-9)
    # the mean stays inside the subspace: at full rank the coordinates are a rotation of X
    exact = "donot_use_mm_for_euclid_dist"
    torch.testing.assert_close(torch.cdist(ours[12], ours[12], compute_mode=exact),
                               torch.cdist(X, X, compute_mode=exact))
    assert torch.equal(k_occurrence(ours[12], 5), k_occurrence(X, 5))


@pytest.mark.slow
def test_micro_rows_are_consistent(run):
    results, _ = run
    hub = results.select(kind="hubness", data="minilm")
    n = hub[0]["n"]
    full = max(r["dim"] for r in hub)
    dims = sorted({r["dim"] for r in hub})
    assert dims[-1] == full and all(r["space"] == ("full" if r["dim"] == full else "pca")
                                    for r in hub)
    for d in dims:  # one row per dimension and distance
        assert sorted(r["distance"] for r in hub if r["dim"] == d) == sorted(METRICS)
    for r in hub:
        assert r["n"] == n and r["k"] == 5 and math.isfinite(r["skewness"])
        assert 0 <= r["robin_hood"] < 1 and 0 <= r["antihub_occurrence"] <= 1
        assert r["max_over_k"] >= 1  # the largest N_k is at least the mean k
    for r in results.select(kind="centre"):
        assert -1 <= r["rho"] <= 1 and r["rho_z"] == pytest.approx(r["rho"] * math.sqrt(n - 1))
    gauss = {r["dim"]: r["skewness"] for r in results.select(kind="hubness", data="gaussian")}
    assert set(gauss) == set(dims) and gauss[full] > gauss[2] + 1  # the post's setting, seed 0


@pytest.mark.slow
def test_claims_evaluate(run):
    _, data = run
    statuses = {c["id"]: c["status"] for c in data["claims"]}
    assert set(statuses) == {c.id for c in EXPERIMENTS.get(NAME).claims}
    assert set(statuses.values()) <= {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED}
    assert not any(c["evidence"].startswith("the check failed") for c in data["claims"])
    if data["rows"][0]["encoder"] != _minilm.MINILM_KIND:
        assert statuses["csls-reduces-hubness"] == NOT_TESTED
    assert statuses["gaussian-control"] == REPRODUCED
    assert "skewness_vs_dimension" in [p["name"] for p in data["plots"]]


def test_docstring_pool_is_real_varied_and_stable():
    pool = _minilm.stdlib_docstrings()
    assert len(pool) > 2000 and len(set(pool)) == len(pool)
    assert all(len(t) >= 20 and "\n" not in t for t in pool)
    assert pool == _minilm.stdlib_docstrings()  # a fixed order


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="texts"):
        HubnessConfig(texts=4)
    with pytest.raises(ValueError, match="dims"):
        HubnessConfig(dims=[0])
    with pytest.raises(ValueError, match="k and csls_k"):
        HubnessConfig(k=0)
    with pytest.raises(ValueError, match="encoder"):
        HubnessConfig(encoder="random")
