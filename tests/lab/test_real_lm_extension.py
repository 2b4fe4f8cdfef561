"""real-lm-extension at micro size: the native CausalLM and the transformers model patched by
extend_context give the same loss for every method (transformers' own model is the oracle of
the unpatched rows), and beyond the window the methods differ."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def rows(micro_run):
    data, _ = micro_run("real-lm-extension")
    return data["rows"]


def test_both_backends_agree_on_every_shared_method(rows):
    ours = {(r["method"], r["context"]): r["loss"] for r in rows if r["backend"] == "formerlab"}
    theirs = {(r["method"], r["context"]): r["loss"] for r in rows if r["backend"] == "transformers"}
    shared = set(ours) & set(theirs)
    assert {m for m, _ in shared} >= {"none", "ntk_mixed", "rerope", "leaky-logn"}
    for key in shared:
        assert ours[key] == pytest.approx(theirs[key], abs=1e-4), key


def test_inside_the_window_the_schedules_are_the_model_itself(rows):
    """k = context / window = 1: NTK schedules and transformers' dynamic NTK change nothing."""
    inside = [r for r in rows if r["context"] <= r["window"]]
    base = {(r["backend"], r["context"]): r["loss"] for r in inside if r["method"] == "none"}
    checked = 0
    for r in inside:
        if r["method"] in ("ntk_aware", "ntk_mixed", "hf_dynamic"):
            assert r["loss"] == pytest.approx(base[r["backend"], r["context"]], abs=1e-6), r
            checked += 1
    assert checked >= 4


def test_pairs_choose_the_runs_and_are_validated():
    from formerlab.lab.experiments.real_lm_extension import RealLMConfig, RealLMExtension, _plan

    quick = RealLMExtension.presets["quick"]()
    assert _plan(quick) == [("none", "formerlab"), ("ntk_mixed", "formerlab"),
                            ("rerope", "formerlab"), ("rerope-logn", "formerlab"),
                            ("hf_yarn", "transformers")]
    assert ("none", "transformers") in _plan(RealLMConfig(backends=["formerlab", "transformers"]))
    with pytest.raises(ValueError, match="pair 'hf_yarn:formerlab' must be 'method:backend'"):
        RealLMConfig(methods=["hf_yarn"], backends=["formerlab", "transformers"],
                     pairs=["hf_yarn:formerlab"])
