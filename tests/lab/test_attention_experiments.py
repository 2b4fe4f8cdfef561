"""The attention experiments at micro size: their science against their rows, and their claims.

One micro run per experiment (module-scoped) feeds the checks; ties and margins are checked on
hand-made rows with the numbers that an earlier release called wins.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import math

import pytest
import torch

from formerlab.lab.base import EXPERIMENTS, RunContext
from formerlab.lab.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED, Results
from formerlab.lab.experiments._shared import loss_curve
from formerlab.lab.experiments.decoder_only import DecoderOnly, seq2seq_batch
from formerlab.lab.experiments.entropy_invariance import mean_attention_entropy
from formerlab.lab.experiments.gau_vs_mha import build_models, equal_param_expansion
from formerlab.models import CausalLM, ModelConfig

STATUSES = {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED}


#: one real standard-library file as the corpus (split by byte ranges): cheaper than indexing
#: the whole default corpus for every micro run
CORPUS = inspect.__file__


def _micro(name, tmp_path_factory):
    """Run the micro preset for seed 0 as the lab does; the rows as :class:`Results`."""
    exp = EXPERIMENTS.get(name)
    out = tmp_path_factory.mktemp(name)
    ctx = RunContext(preset="micro", out_dir=out, device=torch.device("cpu"), seed=0,
                     progress=False, cache_dir=out / "cache", corpus=CORPUS)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        rows, extras = exp.run(exp.preset("micro"), ctx)
    res = Results([{**r, "seed": 0} for r in rows], {0: extras})
    return exp, res, {c.id: c.evaluate(res) for c in exp.claims}


@pytest.fixture(scope="module")
def gau(tmp_path_factory):
    return _micro("gau-vs-mha", tmp_path_factory)


@pytest.fixture(scope="module")
def dec(tmp_path_factory):
    return _micro("decoder-only", tmp_path_factory)


@pytest.fixture(scope="module")
def ent(tmp_path_factory):
    return _micro("entropy-invariance", tmp_path_factory)


@pytest.mark.parametrize("fixture", ["gau", "dec", "ent"])
def test_claims_evaluate_and_the_report_is_data(fixture, request):
    exp, res, claims = request.getfixturevalue(fixture)
    for c in claims.values():
        assert c["status"] in STATUSES and "check failed" not in c["evidence"], c
        assert c["post"].startswith("https://kexue.fm/archives/")
    assert set(exp.presets) >= {"micro", "quick", "full"}
    assert "|---" in exp.table(res)
    plots = exp.figures(res)
    assert plots and all(p.series for p in plots)
    json.dumps({"rows": res.rows, "extras": res.extras, "plots": [p.to_dict() for p in plots],
                "notes": exp.notes(res)})


# --- gau-vs-mha ----------------------------------------------------------------------------------
def test_gau_vs_mha_models_have_equal_parameters():
    exp = EXPERIMENTS.get("gau-vs-mha")
    for preset in ("micro", "quick", "full"):
        models = build_models(exp.preset(preset))
        counts = [sum(p.numel() for p in m.parameters()) - m.embed_tokens.weight.numel()
                  for m in models.values()]
        assert abs(counts[0] - counts[1]) / counts[0] < 0.06, (preset, counts)
        assert models["gau"].config.mixer == "gau" and models["gau"].config.ffn == "none"
        assert models["gau"].config.num_layers == 2 * models["mha"].config.num_layers
    assert equal_param_expansion(128, 48, 12 * 128 ** 2) == 240


def test_gau_vs_mha_init_follows_the_generator():
    cfg = EXPERIMENTS.get("gau-vs-mha").preset("micro")
    a = build_models(cfg, torch.Generator().manual_seed(3))
    b = build_models(cfg, torch.Generator().manual_seed(3))
    c = build_models(cfg, torch.Generator().manual_seed(4))
    wa, wb, wc = (m["gau"].layers[0].mixer.i_dense.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_gau_vs_mha_rows(gau):
    _, res, _ = gau
    lengths = sorted(res.distinct("length", kind="speed"))
    assert lengths == [32, 64]
    for n in lengths:
        assert res.mean("time_vs_mha", model="mha", length=n) == 1.0
        ratio = res.mean("activation_MB", model="gau", length=n) / \
            res.mean("activation_MB", model="mha", length=n)
        assert res.mean("memory_vs_mha", model="gau", length=n) == pytest.approx(ratio)
    # the GAU's math-kernel attention saves its n × n matrix: its memory share grows with n
    mem = [res.mean("memory_vs_mha", model="gau", length=n) for n in lengths]
    assert mem[1] > mem[0]
    assert all(math.isfinite(r["valid_loss"]) for r in res.select(kind="quality"))


def test_gau_vs_mha_quality_tie_is_inconclusive():
    exp = EXPERIMENTS.get("gau-vs-mha")
    claim = next(c for c in exp.claims if c.id == "gau-quality")
    margin = exp.preset("quick").quality_margin

    def rows(pairs, margin=margin):
        return Results([{"kind": "quality", "model": m, "valid_loss": v, "seed": s,
                         "margin": margin}
                        for s, (g, h) in enumerate(pairs) for m, v in (("gau", g), ("mha", h))])

    assert claim.evaluate(rows([(1.516, 1.517)]))["status"] == INCONCLUSIVE
    assert claim.evaluate(rows([(1.50, 1.53), (1.55, 1.52)]))["status"] == INCONCLUSIVE
    assert claim.evaluate(rows([(1.40, 1.50)]))["status"] == REPRODUCED
    # the margin is the run's own: the same gap is a tie at the noisier micro preset
    micro = exp.preset("micro").quality_margin
    assert claim.evaluate(rows([(1.40, 1.50)], micro))["status"] == INCONCLUSIVE


def test_loss_curve_windows():
    assert loss_curve([4.0, 2.0, 3.0, 1.0, 5.0], 2) == {"step": [2, 4, 5], "loss": [3.0, 2.0, 5.0]}


# --- decoder-only ----------------------------------------------------------------------------------
def test_seq2seq_batch_labels_and_segments():
    ids, labels, seg = seq2seq_batch("reverse", 3, 4, 10, seed=0, step=0)
    assert ids.shape == (3, 9) and seg[:, :5].sum() == 0 and bool(seg[:, 5:].all())
    assert torch.equal(ids[:, 5:], ids[:, :4].flip(-1))
    assert bool((labels[:, :5] == -100).all()) and torch.equal(labels[:, 5:], ids[:, 5:])
    s_ids, _, _ = seq2seq_batch("sort", 3, 4, 10, seed=0, step=0)
    assert torch.equal(s_ids[:, 5:], s_ids[:, :4].sort(-1).values)
    with pytest.raises(ValueError, match="reverse"):
        seq2seq_batch("copy", 1, 2, 5, seed=0, step=0)


def test_decoder_only_masks_make_the_models_differ(dec):
    _, res, claims = dec
    gpt, uni = res.mean("eval_loss", task="reverse", mask="gpt"), \
        res.mean("eval_loss", task="reverse", mask="unilm")
    assert abs(gpt - uni) > 1e-4
    assert claims["gpt-not-worse-sort"]["status"] == NOT_TESTED  # micro runs 'reverse' only


def test_decoder_only_one_layer_masks_are_the_same_model(tmp_path):
    """A target row sees the same keys under both masks; with one layer those keys are the
    embeddings, so the output-only loss cannot tell the masks apart."""
    exp = DecoderOnly()
    cfg = exp.preset("micro")
    cfg = dataclasses.replace(cfg, model=cfg.model.replace(num_layers=1))
    ctx = RunContext(preset="micro", out_dir=tmp_path, device=torch.device("cpu"), progress=False,
                     corpus=CORPUS)
    rows, _ = exp.run(cfg, ctx)
    loss = {r["mask"]: r["eval_loss"] for r in rows}
    assert loss["gpt"] == pytest.approx(loss["unilm"], abs=1e-5)


def test_decoder_only_small_difference_is_a_tie():
    exp = EXPERIMENTS.get("decoder-only")
    claims = {c.id: c for c in exp.claims}
    margins = exp.preset("quick").loss_margins
    one = Results([{"task": "sort", "mask": "gpt", "eval_loss": 0.208, "seed": 0,
                    "margin": margins["sort"]},
                   {"task": "sort", "mask": "unilm", "eval_loss": 0.202, "seed": 0,
                    "margin": margins["sort"]}])
    assert claims["gpt-not-worse-sort"].evaluate(one)["status"] == INCONCLUSIVE
    overlapping = Results([{"task": "sort", "mask": m, "eval_loss": v, "seed": s}
                           for s, (g, u) in enumerate([(0.206, 0.208), (0.214, 0.214),
                                                       (0.206, 0.221)])
                           for m, v in (("gpt", g), ("unilm", u))])
    assert claims["gpt-not-worse-sort"].evaluate(overlapping)["status"] == INCONCLUSIVE
    worse = Results([{"task": "reverse", "mask": m, "eval_loss": v, "seed": s,
                      "margin": margins["reverse"]}
                     for s in (0, 1) for m, v in (("gpt", 0.30 + s / 100), ("unilm", 0.20))])
    assert claims["gpt-not-worse-reverse"].evaluate(worse)["status"] == NOT_REPRODUCED


# --- entropy-invariance --------------------------------------------------------------------------
def test_entropy_rows_respect_the_uniform_bound(ent):
    _, res, _ = ent
    for r in res.select(kind="length"):
        assert 0.0 < r["entropy"] <= math.log(r["length"]) + 1e-6, r
    for r in res.select(kind="summary"):
        first = res.mean("entropy", kind="length", normalization=r["normalization"],
                         length=r["train_len"])
        last = res.mean("entropy", kind="length", normalization=r["normalization"],
                        length=r["longest"])
        assert r["entropy_growth"] == pytest.approx(last - first)


def test_entropy_grows_with_softmax(ent):
    assert ent[2]["softmax-entropy-grows"]["status"] == REPRODUCED


@pytest.mark.parametrize("normalization", ["softmax", "softmax_plus"])
def test_mean_attention_entropy_of_uniform_attention(normalization):
    """Zero queries make every causal row uniform: entropy log(i + 1) for row i."""
    cfg = ModelConfig(vocab_size=16, hidden_size=16, num_layers=2, num_heads=2,
                      normalization=normalization)
    model = CausalLM(cfg)
    model.reset_parameters(torch.Generator().manual_seed(0))
    with torch.no_grad():
        for layer in model.layers:
            for name, p in layer.mixer.named_parameters():
                if name.startswith(("q_proj", "k_proj")):
                    p.zero_()
    n, rows = 12, 5
    tokens = torch.randint(0, 16, (2, n), generator=torch.Generator().manual_seed(1))
    got = mean_attention_entropy(model.eval(), tokens, rows)
    want = sum(math.log(i + 1) for i in range(n - rows, n)) / rows
    assert got == pytest.approx(want, abs=1e-5)
