"""Science checks of the fsq-vs-vq experiment: equal codebook sizes from the paper's level
table, usage statistics against a brute-force count of the codes, and the micro rows' identities
(perplexity never exceeds the number of codes in use, the best-VQ row is the better VQ)."""

from __future__ import annotations

import math
import sys

import pytest
import torch

from formerlab.lab.claims import NOT_TESTED
from formerlab.lab.experiments import fsq_vs_vq
from formerlab.lab.experiments.fsq_vs_vq import (
    FSQvsVQConfig,
    evaluate_autoencoder,
    load_digit_images,
)
from formerlab.quantize import recommended_levels

NAME = "fsq-vs-vq"


@pytest.fixture(scope="module")
def run(micro_run):
    pytest.importorskip("sklearn")
    data, _ = micro_run(NAME)
    return data


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return load_digit_images()


@pytest.mark.slow  # importing scikit-learn takes seconds
def test_digits_are_real_images_in_unit_range(digits):
    train, test = digits
    assert train.shape == (1437, 64) and test.shape == (360, 64)
    assert float(train.min()) == 0.0 and float(train.max()) == 1.0
    assert (train * 16).eq((train * 16).round()).all()  # the 17 grey levels of the data set


@pytest.mark.slow
@pytest.mark.parametrize("method", ["fsq", "vq"])
def test_usage_statistics_match_a_brute_force_count(method, digits):
    train, test = digits
    cfg = FSQvsVQConfig(codebook_sizes=[256], tokens=4, hidden=16, steps=1)
    g = torch.Generator().manual_seed(0)
    model = fsq_vs_vq._build(method, 256, cfg, train, g)
    stats = evaluate_autoencoder(model, train, test)
    with torch.no_grad():
        _, idx, _ = model(train)
        mse = float(((model(test)[0] - test) ** 2).mean())
    counts = torch.bincount(idx.reshape(-1), minlength=240).double()
    u = counts[counts > 0] / counts.sum()
    assert stats["vectors"] == train.shape[0] * 4
    assert stats["active_fraction"] == pytest.approx(int((counts > 0).sum()) / 240)
    assert stats["perplexity"] == pytest.approx(math.exp(float(-(u * u.log()).sum())), rel=1e-9)
    assert stats["test_mse"] == pytest.approx(mse, rel=1e-6)


def test_missing_scikit_learn_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        load_digit_images()


@pytest.mark.parametrize("bad", [{"methods": ["vq", "rvq"]}, {"methods": []},
                                 {"codebook_sizes": [1000]}, {"tokens": 0}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        FSQvsVQConfig(**bad)


@pytest.mark.slow
def test_every_method_has_the_same_codebook_size(run):
    for k in {r["target_k"] for r in run["rows"]}:
        rows = [r for r in run["rows"] if r["target_k"] == k]
        assert {r["codebook_size"] for r in rows} == {math.prod(recommended_levels(k))}
        assert {r["method"] for r in rows} == {"fsq", "vq", "vq_tricks", "vq_best"}


@pytest.mark.slow
def test_usage_identities_hold_in_every_row(run):
    for r in run["rows"]:
        k, used = r["codebook_size"], r["active_fraction"] * r["codebook_size"]
        assert used == pytest.approx(round(used)) and 1 <= round(used) <= min(k, r["vectors"])
        assert r["perplexity"] <= round(used) * (1 + 1e-9)  # exp(entropy) <= support size
        assert r["usage"] == pytest.approx(r["perplexity"] / k)


@pytest.mark.slow
def test_best_vq_row_is_the_better_vq(run):
    for k in {r["codebook_size"] for r in run["rows"]}:
        by = {r["method"]: r for r in run["rows"] if r["codebook_size"] == k}
        best = min(by["vq"], by["vq_tricks"], key=lambda r: r["test_mse"])
        assert by["vq_best"]["test_mse"] == best["test_mse"]
        assert by["vq_best"]["best_of"] == best["method"]


@pytest.mark.slow
def test_claims_evaluate_and_untested_sizes_say_so(run):
    statuses = {c["id"]: c["status"] for c in run["claims"]}
    assert len(statuses) == len(fsq_vs_vq.FSQvsVQ.claims)
    assert statuses["fsq-better-for-large-k"] == NOT_TESTED  # micro stops at K = 1000
