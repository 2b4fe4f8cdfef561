"""Verdicts from rows over seeds: orderings need every seed (or separated intervals), a difference
inside the margin or the spread is a tie, thresholds and trends per seed."""

from __future__ import annotations

import pytest

from formerlab.lab import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    AllOf,
    Chain,
    Claim,
    Ordering,
    Results,
    Threshold,
    Trend,
)


def results(table: dict[str, list[float]], metric: str = "loss") -> Results:
    rows = [{"method": m, "seed": s, metric: v} for m, vs in table.items() for s, v in enumerate(vs)]
    return Results(rows)


def test_ordering_needs_every_seed():
    better = Ordering("loss", {"method": "a"}, {"method": "b"}, higher_is_better=False)
    assert better(results({"a": [1.0, 1.1, 0.9], "b": [1.2, 1.3, 1.15]})).status == REPRODUCED
    assert better(results({"a": [1.3, 1.4], "b": [1.2, 1.3]})).status == NOT_REPRODUCED
    mixed = better(results({"a": [1.0, 1.3, 1.1], "b": [1.2, 1.2, 1.2]}))
    assert mixed.status == INCONCLUSIVE and "tie" in mixed.evidence


def test_a_single_seed_inside_the_margin_is_a_tie():
    """The first release called 1.516 vs 1.517 a win."""
    check = Ordering("loss", {"method": "gau"}, {"method": "mha"}, higher_is_better=False,
                     margin=0.01)
    v = check(results({"gau": [1.516], "mha": [1.517]}))
    assert v.status == INCONCLUSIVE and "1 seed" in v.evidence
    assert check(results({"gau": [1.40], "mha": [1.517]})).status == REPRODUCED


def test_separated_intervals_reproduce_even_if_one_pair_flips():
    check = Ordering("acc", {"method": "a"}, {"method": "b"})
    r = results({"a": [0.90, 0.91, 0.50], "b": [0.10, 0.11, 0.60]}, "acc")
    assert check(r).status == INCONCLUSIVE  # one seed flips and the intervals overlap
    r = results({"a": [0.90, 0.91, 0.60], "b": [0.10, 0.11, 0.61]}, "acc")
    assert check(r).status == REPRODUCED  # one seed flips, but mean ± std separate


def test_chain_threshold_trend_allof_and_not_tested():
    r = results({"rerope": [0.6, 0.62], "ntk": [0.5, 0.52], "base": [0.4, 0.41]}, "acc")
    chain = Chain("acc", [{"method": "rerope"}, {"method": "ntk"}, {"method": "base"}])
    assert chain(r).status == REPRODUCED
    assert Chain("acc", [{"method": "base"}, {"method": "ntk"}])(r).status == NOT_REPRODUCED
    assert Threshold("acc", {"method": "rerope"}, 0.55)(r).status == REPRODUCED
    assert Threshold("acc", {"method": "base"}, 0.405)(r).status == INCONCLUSIVE
    assert Threshold("acc", {"method": "missing"}, 0.5)(r).status == NOT_TESTED
    rows = [{"method": "rerope", "context": c, "seed": s, "loss": v}
            for s, curve in enumerate([[1.35, 1.33, 1.34], [1.36, 1.35, 1.30]])
            for c, v in zip((128, 256, 512), curve)]
    flat = Trend("loss", {"method": "rerope"}, over="context", tolerance=0.02)
    assert flat(Results(rows)).status == REPRODUCED
    strict = Trend("loss", {"method": "rerope"}, over="context", tolerance=0.0)
    assert strict(Results(rows)).status == INCONCLUSIVE  # one seed rises by 0.01
    both = AllOf([chain, Threshold("acc", {"method": "missing"}, 0.5)])
    assert both(r).status == INCONCLUSIVE


def test_claims_serialise_with_their_evidence_and_survive_broken_checks():
    r = results({"a": [1.0], "b": [2.0]})
    claim = Claim("a-beats-b", "a is lower than b", "https://kexue.fm/archives/1",
                  Ordering("loss", {"method": "a"}, {"method": "b"}, higher_is_better=False))
    out = claim.evaluate(r)
    assert out["status"] == REPRODUCED and out["post"].endswith("/1") and out["values"]
    broken = Claim("x", "x", "p", lambda res: res.values("loss", method="a")[7])
    assert broken.evaluate(r)["status"] == NOT_TESTED
    with pytest.raises(ValueError, match="several rows"):
        Results([{"seed": 0, "m": 1.0}, {"seed": 0, "m": 2.0}]).values("m")


def test_not_tested_says_which_selector_value_the_run_lacks():
    rows = Results([{"method": m, "beyond": False, "seed": 0, "acc": 0.5} for m in ("a", "b")])
    v = Ordering("acc", {"method": "a", "beyond": True}, {"method": "b", "beyond": True},
                 labels=("A", "B"))(rows)
    assert v.status == NOT_TESTED
    assert v.evidence == "A was not measured: no row of this run has beyond=True (it has False)"
    v = Threshold("acc", {"method": "c"}, 0.1)(rows)
    assert v.status == NOT_TESTED and "no row of this run has method='c' (it has 'a', 'b')" in v.evidence
    v = Threshold("loss", {"method": "a"}, 0.1, label="A's loss")(rows)
    assert v.evidence == "A's loss was not measured: its rows have no 'loss'"
