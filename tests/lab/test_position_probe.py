"""Hard asserts of the relative-position flaw."""

import math

import pytest

from formerlab.lab.experiments.position_probe import PROBE_VARIANTS, probe_inputs


@pytest.fixture(scope="module")
def run(micro_run):
    data, paths = micro_run("position-probe")
    return {r["variant"]: r for r in data["rows"]}, data, paths


@pytest.mark.parametrize("name", ["softmax_rope", "softmax_rope_causal"])
def test_softmax_rope_cannot_tell_positions_apart(run, name):
    r = run[0][name]
    n = r["n"]
    assert r["row_spread"] < 1e-4, "identical inputs must give identical output rows"
    assert r["accuracy"] <= 1 / n + 1e-9
    assert r["loss"] == pytest.approx(math.log(n), abs=1e-3)


@pytest.mark.parametrize("name", ["l2_rope", "none_rope", "boundary_rope", "softmax_learned"])
def test_remedies_solve_the_probe(run, name):
    assert run[0][name]["accuracy"] > 0.9


def test_probe_inputs():
    ids, target, sl = probe_inputs(4, boundary=True)
    assert ids.tolist() == [[1, 0, 0, 0, 0, 2]] and target.tolist() == [[0, 1, 2, 3]]
    assert ids[0, sl].tolist() == [0, 0, 0, 0]


def test_experiment_writes_report(run):
    _, data, paths = run
    assert len(data["rows"]) == len(PROBE_VARIANTS)
    assert {c["status"] for c in data["claims"]} == {"reproduced"}
    assert paths["html"].is_file() and paths["probe_loss"].is_file()


def test_table_survives_a_diverged_training():
    """A variant whose metrics are NaN (training diverged) is reported as nan, not a crash."""
    from formerlab.lab import EXPERIMENTS, Results

    exp = EXPERIMENTS.get("position-probe")
    rows = [{"seed": 0, "variant": "softmax_rope", "label": "softmax + RoPE", "n": 8,
             "accuracy": float("nan"), "above_chance": float("nan"), "loss": float("nan"),
             "row_spread": float("nan")}]
    table = exp.table(Results(rows))
    assert "softmax + RoPE" in table and "nan" in table
