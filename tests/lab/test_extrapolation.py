"""The extrapolation experiment: exact identities on the rows of a micro run, every method and
trained variant at micro size, claims, table and figures."""

from __future__ import annotations

import json

import pytest
import torch

from formerlab import ModelConfig, TrainConfig
from formerlab.lab import EXPERIMENTS, LinePlot, Results, list_experiments
from formerlab.lab.base import RunContext
from formerlab.lab.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED
from formerlab.lab.experiments.extrapolation import (
    METHODS,
    MODEL_VARIANTS,
    PRESETS,
    ExtrapolationConfig,
    identity_pairs,
    method_styles,
    preset_config,
    schedule_names,
)

STATUSES = {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED}


def _run(cfg, tmp, seed=0, cache=None):
    """One seed of the experiment as the lab runs it (forked RNG, single thread)."""
    exp = EXPERIMENTS.get("extrapolation")
    ctx = RunContext(preset="micro", out_dir=tmp, device=torch.device("cpu"), seed=seed,
                     progress=False, cache_dir=cache or tmp / "cache")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            rows, extras = exp.run(cfg, ctx)
    finally:
        torch.set_num_threads(threads)
    return [{**r, "seed": seed} for r in rows], extras


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extrapolation")
    cfg = preset_config("micro")
    rows, extras = _run(cfg, tmp)
    return Results(rows, {0: extras}), cfg, tmp


def _value(results, method, **where):
    (row,) = results.select(method=method, **where)
    return row


def test_schedules_and_logn_dagger_equal_the_baseline_at_the_training_length(micro):
    """k = 1 and log n† = 1 at L: every schedule row (± log n†) and ReRoPE with w = L is the
    baseline's, bit for bit, on both sets."""
    results, cfg, _ = micro
    L = cfg.train_len
    pairs = identity_pairs(results.distinct("method"), L)
    names = {m for m, _ in pairs}
    assert names >= {"baseline-logn_dagger", "pi", "ntk_old", "ntk_old-logn_dagger", "yarn",
                     "dynamic", "ntk_mixed-logn_dagger", "rerope-w_full"}
    for method, ref in pairs:
        for set_name in ("repeated", "non_repeated"):
            a = _value(results, method, set=set_name, length=L)
            b = _value(results, ref, set=set_name, length=L)
            assert (a["accuracy"], a["loss"]) == (b["accuracy"], b["loss"]), (method, set_name)


def test_windows_below_the_length_change_the_rows(micro):
    """The identity can fail: ReRoPE / Leaky with w < L clip distances at L and change the loss."""
    results, cfg, _ = micro
    L = cfg.train_len
    base = _value(results, "baseline", set="non_repeated", length=L)["loss"]
    for name in ("rerope", "rerope-w_quarter", "leaky-logn_dagger"):
        assert _value(results, name, set="non_repeated", length=L)["loss"] != base, name
    top = max(cfg.lengths)
    assert _value(results, "pi", set="non_repeated", length=top)["loss"] != \
        _value(results, "baseline", set="non_repeated", length=top)["loss"]


def test_dynamic_ntk_is_ntk_aware_on_whole_sequences(micro):
    """By construction (the table says so): equal at every length, different in the last-L loss
    at a context shorter than the longest (the static schedule keeps the longest's factor)."""
    results, cfg, _ = micro
    assert METHODS.get("dynamic").same_as == "ntk_aware"
    for n in cfg.lengths:
        for set_name in ("repeated", "non_repeated"):
            a = _value(results, "dynamic", set=set_name, length=n)
            b = _value(results, "ntk_aware", set=set_name, length=n)
            assert (a["accuracy"], a["loss"]) == (b["accuracy"], b["loss"])
    L = cfg.train_len
    dyn = _value(results, "dynamic", set="last_n", length=L)["loss"]
    assert dyn != _value(results, "ntk_aware", set="last_n", length=L)["loss"]


def test_covering_window_is_plain_rope(tiny_config):
    """ReRoPE and Leaky ReRoPE with w >= n are plain RoPE (identical logits); w < n is not."""
    from formerlab.models import CausalLM

    m = CausalLM(tiny_config)
    m.reset_parameters(torch.Generator().manual_seed(0))
    m.eval()
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
    base = m(x).logits
    with torch.no_grad():
        # train_len 32: the method's window L/2 = 16 covers the 16 tokens; log n† is 1 below L
        for name in ("rerope", "rerope-logn_dagger", "rerope-w_full"):
            METHODS.get(name).configure(m, 32, 16)
            torch.testing.assert_close(m(x).logits, base, rtol=1e-5, atol=1e-5)
        m.set_position_method(relpos={"name": "leaky", "window": 16, "factor": 16.0})
        torch.testing.assert_close(m(x).logits, base, rtol=1e-5, atol=1e-5)
        for name in ("rerope-w_quarter", "leaky"):  # w = 8 < 16: a different function
            METHODS.get(name).configure(m, 32, 16)
            assert not torch.allclose(m(x).logits, base, atol=1e-4), name
    m.reset_position_method()


def test_rows_are_tidy(micro):
    results, cfg, _ = micro
    assert {r["set"] for r in results.rows} == {"repeated", "non_repeated", "last_n"}
    assert set(results.distinct("method")) == set(cfg.methods)
    for r in results.rows:
        assert r["k"] * cfg.train_len == r["length"]
        if r["set"] == "last_n":
            assert "accuracy" not in r and r["longest"] == (r["k"] == max(cfg.last_n_multipliers))
        else:
            assert 0.0 <= r["accuracy"] <= 1.0 and r["longest"] == (r["length"] == 128)
    json.dumps(results.rows)  # results.json needs plain data


def test_entropy_rows_equal_the_library_on_the_attention_probabilities(micro):
    """Oracle: one cell's ``entropy`` is ``attention_entropy`` of the cached model's attention
    probabilities (NTK-RoPE-old at 4L, repeated set), averaged over the first sequences, layers,
    heads and the last query rows; every other cell has one, the last-L rows have none."""
    from formerlab.analysis.entropy import attention_entropy
    from formerlab.data.corpora import load_corpus
    from formerlab.data.evalsets import repeated_set
    from formerlab.lab.experiments.extrapolation.experiment import _train_variants

    results, cfg, tmp = micro
    L, n = cfg.train_len, max(cfg.lengths)
    for r in results.rows:
        if r["set"] == "last_n":
            assert "entropy" not in r
        else:
            assert 0.0 < r["entropy"] <= torch.log(torch.tensor(float(r["length"]))) + 1e-6
    ctx = RunContext(preset="micro", out_dir=tmp, device=torch.device("cpu"), seed=0,
                     progress=False, cache_dir=tmp / "cache")
    corpus = load_corpus(None)
    method = METHODS.get("ntk_old")
    models, info = _train_variants(cfg, [method], ctx, corpus.tokens("train"), corpus.provenance)
    assert info["rope"]["cached"] is True  # the very model the micro run evaluated
    model = models["rope"]
    tokens = repeated_set(corpus.tokens("test"), n, cfg.num_samples, train_len=L,
                          seed=0).tokens[:cfg.entropy_samples]
    method.configure(model, L, n)
    try:
        with torch.no_grad():
            attentions = model(tokens, output_attentions=True).attentions
    finally:
        model.reset_position_method()
    per_row = torch.stack([attention_entropy(a) for a in attentions])  # (layers, B, heads, n)
    want = float(per_row[..., -cfg.entropy_rows:].mean())
    got = _value(results, "ntk_old", set="repeated", length=n)["entropy"]
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    # the oracle can tell cells apart: the baseline at 4L attends differently
    assert _value(results, "baseline", set="repeated", length=n)["entropy"] != \
        pytest.approx(want, rel=1e-5, abs=1e-6)


def test_claims_evaluate_to_a_verdict(micro):
    results, *_ = micro
    exp = EXPERIMENTS.get("extrapolation")
    verdicts = {c.id: c.evaluate(results) for c in exp.claims}
    assert len(verdicts) == len(exp.claims) >= 10
    for v in verdicts.values():
        assert v["status"] in STATUSES and v["evidence"] and "check failed" not in v["evidence"]
        assert v["post"].startswith("https://kexue.fm/archives/")
    assert verdicts["identity-at-train-length"]["status"] == REPRODUCED
    assert verdicts["hwfa-beats-baseline"]["status"] == NOT_TESTED  # a full-preset claim


def test_identity_claim_fails_on_a_changed_row(micro):
    results, cfg, _ = micro
    rows = [dict(r) for r in results.rows]
    for r in rows:
        if r["method"] == "yarn" and r["length"] == cfg.train_len and r["set"] == "repeated":
            r["loss"] += 1e-7
    claim = next(c for c in EXPERIMENTS.get("extrapolation").claims
                 if c.id == "identity-at-train-length")
    verdict = claim.evaluate(Results(rows))
    assert verdict["status"] == NOT_REPRODUCED and "yarn" in verdict["evidence"]


def test_table_figures_and_notes(micro):
    results, *_ = micro
    exp = EXPERIMENTS.get("extrapolation")
    table = exp.table(results)
    assert "| method | 32 (train) | 128 rep. | 128 non-rep. | blog:" in table
    assert "Dynamic NTK ‡" in table and "‡ Equal to another row by construction" in table
    assert "not comparable" in table and "| method | context 32 | context 64 |" in table
    main, entropy = table.split("Mean attention entropy (nats)")
    assert "entropy" not in main.split("\n\n")[1]  # the headline table stays accuracy only
    assert "the last 8 query rows of the first 2 sequences" in entropy
    assert "| method | 32 (train) | 128 rep. | 128 non-rep. |" in entropy
    plots = exp.figures(results)
    assert {p.name for p in plots} == {"accuracy_repeated", "accuracy_non_repeated",
                                       "last_n_loss", "loss_by_position"}
    for p in plots:
        assert LinePlot.from_dict(json.loads(json.dumps(p.to_dict()))) == p
        assert len(p.series) == len(results.distinct("method"))
    notes = exp.notes(results)
    assert "parameters" in notes and "reproduced" not in notes


def test_styles_one_colour_per_family_dagger_dashed():
    styles = method_styles(["ntk_old", "ntk_old-logn_dagger", "ntk_old-logn_pretrain", "rerope"])
    assert styles["ntk_old"]["color"] == styles["ntk_old-logn_dagger"]["color"] \
        == styles["ntk_old-logn_pretrain"]["color"] != styles["rerope"]["color"]
    assert [styles[n]["linestyle"] for n in ("ntk_old", "ntk_old-logn_dagger",
                                              "ntk_old-logn_pretrain")] == ["-", "--", ":"]


def test_presets_configs_and_errors():
    assert set(PRESETS) >= {"micro", "quick", "full"}
    assert "extrapolation" in [e["name"] for e in list_experiments()]
    quick = preset_config("quick")
    assert (quick.train_len, quick.lengths, quick.num_samples, quick.train.steps) == \
        (128, [128, 512, 1024], 16, 800)
    assert set(preset_config("full").methods) == set(METHODS)
    back = ExtrapolationConfig.from_dict(quick.to_dict())
    assert back == quick and isinstance(back.model, ModelConfig)
    with pytest.raises(ValueError, match="valid extrapolation method names"):
        ExtrapolationConfig(methods=["baseline", "magic"])
    with pytest.raises(ValueError, match="unknown preset 'huge'; valid presets: micro"):
        preset_config("huge")
    with pytest.raises(ValueError, match="test_multipliers"):
        ExtrapolationConfig(test_multipliers=[0])
    assert schedule_names() >= {"baseline", "pi", "dynamic-logn_dagger", "ntk_old-logn_pretrain"}


@pytest.mark.slow
def test_every_method_and_trained_variant_builds_trains_and_evaluates(tmp_path):
    """Every registered method (and so every trained variant of the full preset), at micro size:
    a wiring bug must not wait for a multi-hour run to surface."""
    cfg = ExtrapolationConfig(
        train_len=16, test_multipliers=[2], num_samples=2, eval_batch_size=2,
        last_n_multipliers=[1, 2], methods=list(METHODS), curve_points=8,
        model=ModelConfig(hidden_size=16, num_layers=4, num_heads=2),
        train=TrainConfig(steps=2, batch_size=2, seq_len=16, warmup_steps=1),
    )
    rows, extras = _run(cfg, tmp_path)
    assert set(extras["training"]) == set(MODEL_VARIANTS)
    assert {r["method"] for r in rows} == set(METHODS)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in rows if "accuracy" in r)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert set(extras["per_position_loss"]) == set(METHODS)


@pytest.mark.slow
def test_cached_models_give_the_same_rows_and_train_with_the_run_seed(micro):
    results, cfg, tmp = micro
    rows, extras = _run(cfg, tmp / "again", cache=tmp / "cache")
    info = extras["training"]["rope"]
    assert info["cached"] is True
    assert rows == results.rows
    from pathlib import Path

    saved = json.loads((Path(info["run_dir"]) / "final" / "train_config.json").read_text())
    assert saved["seed"] == 0 and saved["seq_len"] == cfg.train_len
