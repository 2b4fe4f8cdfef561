"""The ``tokenizer-sampling`` lab experiment (micro preset), its χ² test, and the CLI wiring."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
import torch

from formerlab.lab.base import EXPERIMENTS, RunContext
from formerlab.lab.claims import REPRODUCED, Results
from formerlab.lab.experiments import tokenizer_sampling as exp_mod


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    exp = EXPERIMENTS.get("tokenizer-sampling")
    cfg = exp.preset("micro")
    ctx = RunContext(preset="micro", out_dir=tmp_path_factory.mktemp("tok"),
                     device=torch.device("cpu"), seed=0, progress=False)
    rows, extras = exp.run(cfg, ctx)
    res = Results([{**r, "seed": 0} for r in rows], {0: extras})
    return exp, cfg, res, {c.id: c.evaluate(res) for c in exp.claims}


def test_watching_frequencies(micro):
    _, cfg, res, _ = micro
    tol = 5 * (0.25 / cfg.samples) ** 0.5

    def freq(sampler, order, seg):
        return res.mean("empirical", kind="segmentation", sampler=sampler, order=order,
                        segmentation=seg)

    for order in (exp_mod.LONGEST, exp_mod.SHORTEST):
        for seg in ("watch|ing", "wat|ching", "w|atching"):
            assert abs(freq("perfect", order, seg) - 1 / 3) < tol
    # the legacy sampler's 1/2 goes to the last arrival at the final byte
    assert abs(freq("legacy", exp_mod.LONGEST, "watch|ing") - 0.5) < tol
    assert abs(freq("legacy", exp_mod.SHORTEST, "w|atching") - 0.5) < tol
    tv = {s: res.mean("total_variation", kind="fit", example="rich", sampler=s, alpha=1.0)
          for s in ("perfect", "legacy")}
    assert tv["perfect"] < tv["legacy"]


def test_every_claim_is_reproduced_at_micro(micro):
    exp, _, res, claims = micro
    assert set(claims) == {c.id for c in exp.claims}
    assert {c["status"] for c in claims.values()} == {REPRODUCED}, claims
    assert "| segmentation |" in exp.table(res)
    plots = exp.figures(res)
    assert plots and all(len(p.series) == 3 for p in plots)
    json.dumps({"rows": res.rows, "extras": res.extras, "plots": [p.to_dict() for p in plots]})


def test_legacy_watching_model():
    longest = exp_mod.legacy_watching_model(exp_mod.LONGEST)
    shortest = exp_mod.legacy_watching_model(exp_mod.SHORTEST)
    assert sum(longest.values()) == pytest.approx(1.0)
    assert longest[(b"watch", b"ing")] == 0.5 and longest[(b"w", b"atching")] == 0.25
    assert shortest[(b"w", b"atching")] == 0.5 and shortest[(b"watch", b"ing")] == 0.25


def test_chi_square_p_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    probs = {(b"a",): 0.5, (b"b",): 0.3, (b"c",): 0.15, (b"d",): 0.05}
    for n in (200, 1000):
        keys, weights = list(probs), list(probs.values())
        samples = rng.choices(keys, weights, k=n)
        counts = Counter(samples)
        want = stats.chisquare([counts[k] for k in keys], [p * n for p in weights]).pvalue
        assert exp_mod.chi_square_p(samples, probs) == pytest.approx(want, rel=1e-9)
    # rare bins are pooled; draws outside the support reject
    assert exp_mod.chi_square_p([(b"a",)] * 10, {(b"a",): 1.0}) == 1.0
    assert exp_mod.chi_square_p([(b"z",)] * 10, {(b"a",): 1.0}) == 0.0
    with pytest.raises(ValueError, match="non-empty"):
        exp_mod.chi_square_p([], probs)


def test_config_validation():
    with pytest.raises(ValueError, match="samples"):
        exp_mod.TokenizerSamplingConfig(samples=10)
    with pytest.raises(ValueError, match="alphas"):
        exp_mod.TokenizerSamplingConfig(alphas=[-1.0])


def test_formerlab_cli_runs_the_tokenizer_commands(tmp_path, capsys, toy):
    """``formerlab tokenizer ...`` through the top-level parser and ``formerlab.cli.main``."""
    from formerlab import cli
    from formerlab.tokenize import UnigramTokenizer

    tok = UnigramTokenizer(toy.WATCHING)
    vocab = tok.save(tmp_path / "vocab.json")
    args = cli.build_parser().parse_args(["tokenizer", "stats", "--vocab", str(vocab)])
    assert args.command == "tokenizer" and args.tokenizer_command == "stats"
    assert cli.main(["tokenizer", "stats", "--vocab", str(vocab)]) == 0
    stats = json.loads(capsys.readouterr().out)
    # 256 byte pieces ("w" among them), wat/ing, watch/ching, atching, and 3 special tokens
    assert stats["pieces_by_length"] == {"1": 256, "3": 2, "5": 2, "7": 1}
    assert stats["vocab_size"] == 256 + 5 + 3 == tok.vocab_size
    assert cli.main(["tokenizer", "encode", "--vocab", str(vocab), "watching"]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert ids == tok.encode("watching") and tok.decode(ids) == "watching"
    assert cli.main(["tokenizer", "stats", "--vocab", str(tmp_path / "missing.json")]) == 2
    assert "error" in capsys.readouterr().err
