"""lra-spt at micro size: every arm and baseline is measured, the baselines are what they claim,
the arms are reproducible from their seed, and the gap verdict follows its rule."""

from __future__ import annotations

import pytest
import torch

from formerlab.data.listops import listops_dataset
from formerlab.lab import EXPERIMENTS, list_experiments
from formerlab.lab.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED, Results
from formerlab.lab.experiments.lra_spt import _data, _gap_closed, run_arm
from formerlab.models import Encoder, SequenceClassifier

list_experiments()
EXP = EXPERIMENTS.get("lra-spt")


@pytest.fixture(scope="module")
def micro(tmp_path_factory):
    from formerlab.lab import run_experiment

    data, _ = run_experiment("lra-spt", preset="micro", device="cpu", progress=False,
                             out_dir=tmp_path_factory.mktemp("lra-spt"))
    return data


@pytest.mark.slow
def test_micro_rows_cover_every_arm_and_the_baselines(micro):
    rows = {(r["arch"], r["arm"]): r for r in micro["rows"]}
    assert set(rows) == {("mha", "scratch"), ("mha", "spt"), ("lru", "scratch"), ("lru", "spt"),
                         ("baseline", "majority"), ("baseline", "chance")}
    cfg = EXP.preset("micro")
    test = listops_dataset(cfg.n_train + cfg.n_test, cfg.max_depth, cfg.max_args, cfg.min_len,
                           cfg.max_len, cfg.data_seed).split(cfg.n_train, cfg.n_test)[1]
    counts = torch.bincount(test.labels, minlength=10)
    assert rows["baseline", "majority"]["accuracy"] == float(counts.max()) / cfg.n_test
    assert rows["baseline", "chance"]["accuracy"] == 0.1
    for key in [("mha", "spt"), ("lru", "spt")]:
        assert "spt_loss" in rows[key] and 0 <= rows[key]["accuracy"] <= 1
    # equal architectures in both arms (the SPT arm only adds a pre-training phase)
    assert rows["mha", "spt"]["params"] == rows["mha", "scratch"]["params"]
    assert {c["id"] for c in micro["claims"]} == {c.id for c in EXP.claims}


@pytest.mark.slow
def test_an_arm_is_a_function_of_its_initialisation_and_generator():
    cfg = EXP.preset("micro")
    train, test = _data(cfg.n_train, cfg.n_test, cfg.max_depth, cfg.max_args, cfg.min_len,
                        cfg.max_len, cfg.data_seed)
    from formerlab.lab.experiments.lra_spt import _model_config

    torch.manual_seed(0)
    init = SequenceClassifier(Encoder(_model_config(cfg, "lru")), 10).state_dict()
    a = run_arm(cfg, "lru", "spt", init, train, test, torch.Generator().manual_seed(1),
                torch.device("cpu"))
    b = run_arm(cfg, "lru", "spt", init, train, test, torch.Generator().manual_seed(1),
                torch.device("cpu"))
    assert a["row"] == b["row"] and a["curves"] == b["curves"]


def _results(acc):
    rows = [{"arch": a, "arm": m, "accuracy": v, "seed": s}
            for s, table in acc.items() for (a, m), v in table.items()]
    return Results(rows)


def test_gap_verdict_rule():
    def seeds(lru_s, mha_s, lru_p, mha_p):
        return {s: {("lru", "scratch"): lru_s, ("mha", "scratch"): mha_s, ("lru", "spt"): lru_p,
                    ("mha", "spt"): mha_p} for s in (0, 1)}

    assert _gap_closed(_results(seeds(0.50, 0.30, 0.55, 0.50))).status == REPRODUCED
    assert _gap_closed(_results(seeds(0.50, 0.30, 0.55, 0.38))).status == NOT_REPRODUCED
    assert _gap_closed(_results(seeds(0.32, 0.30, 0.40, 0.40))).status == INCONCLUSIVE  # no gap
    assert _gap_closed(Results([{"arch": "mha", "arm": "spt", "accuracy": 0.3, "seed": 0}])
                       ).status == NOT_TESTED
