"""Science checks of the emo-vs-ce experiment: its held-out statistics against independent
computations (formerlab's LM evaluation, ``emo_loss``, brute-force loops), and identities of the
micro run (the EMO + MLE objective's value is the cross-entropy, so from the same weights and
batch its first training loss equals MLE's)."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab import ModelConfig
from formerlab.lab.claims import INCONCLUSIVE, NOT_REPRODUCED, REPRODUCED
from formerlab.lab.experiments.emo_vs_ce import ARMS, EMOConfig, EMOvsCE, evaluate_distribution
from formerlab.losses import emo_loss
from formerlab.models import CausalLM
from formerlab.train.eval import evaluate_tokens

NAME = "emo-vs-ce"


@pytest.fixture(scope="module")
def run(micro_run):
    data, _ = micro_run(NAME)
    return data


@pytest.fixture(scope="module")
def tiny():
    lm = CausalLM(ModelConfig(hidden_size=16, num_layers=1, num_heads=2))
    lm.reset_parameters(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    windows = [torch.randint(0, 256, (2, 12), generator=g) for _ in range(2)]
    reference = torch.randn(256, 8, generator=g)
    return lm, windows, reference


def test_loss_and_accuracy_match_the_lm_evaluation(tiny):
    lm, windows, reference = tiny
    got = evaluate_distribution(lm, windows, reference, neighbours=4, bins=10)
    want = evaluate_tokens(lm, torch.cat(windows), batch_size=2)
    assert got["tokens"] == 4 * 11
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5)
    assert got["accuracy"] == pytest.approx(want["accuracy"], abs=1e-9)


def test_transport_cost_is_emo_with_the_reference_embedding(tiny):
    lm, windows, reference = tiny
    got = evaluate_distribution(lm, windows, reference, neighbours=4, bins=10)
    with torch.no_grad():
        ids = torch.cat(windows)
        want = emo_loss(lm(ids).logits[:, :-1], ids[:, 1:], reference)
    assert got["transport_cost"] == pytest.approx(float(want), rel=1e-5)


def test_near_share_and_calibration_by_brute_force(tiny):
    lm, windows, reference = tiny
    k, bins = 4, 10
    got = evaluate_distribution(lm, windows, reference, neighbours=k, bins=bins)
    e = reference / reference.norm(dim=-1, keepdim=True)
    near_mass = off_mass = 0.0
    conf_by_bin: dict[int, list[tuple[float, float]]] = {}
    with torch.no_grad():
        for ids in windows:
            p = lm(ids).logits[:, :-1].softmax(-1).reshape(-1, 256)
            for row, t in zip(p, ids[:, 1:].reshape(-1).tolist()):
                sims = [(float(e[t] @ e[j]), j) for j in range(256) if j != t]
                nearest = [j for _, j in sorted(sims, reverse=True)[:k]]
                near_mass += float(row[nearest].sum())
                off_mass += 1 - float(row[t])
                c = float(row.max())
                conf_by_bin.setdefault(min(int(c * bins), bins - 1), []).append(
                    (c, float(int(row.argmax()) == t)))
    n = sum(len(v) for v in conf_by_bin.values())
    ece = sum(len(v) / n * abs(sum(a for _, a in v) / len(v) - sum(c for c, _ in v) / len(v))
              for v in conf_by_bin.values())
    assert got["near_share"] == pytest.approx(near_mass / off_mass, rel=1e-5)
    assert got["ece"] == pytest.approx(ece, abs=1e-6)


@pytest.mark.parametrize("bad", [{"arms": ["ce", "kl"]}, {"arms": []}, {"neighbours": 256},
                                 {"scratch_lr": 0.0}])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        EMOConfig(**bad)


@pytest.mark.slow
def test_every_arm_is_measured_from_its_start(run):
    rows = {r["arm"]: r for r in run["rows"]}
    assert set(rows) == {"pretrained", *(a.name for a in ARMS)}
    for r in rows.values():
        assert 0 <= r["accuracy"] <= 1 and 0 <= r["near_share"] <= 1 and 0 <= r["ece"] <= 1
        assert r["entropy"] <= math.log(256) + 1e-6


@pytest.mark.slow
def test_emo_ce_value_is_the_cross_entropy(run):
    """Same pre-trained weights, same first batch: the first training loss of the EMO + MLE arm
    is MLE's (its value is CE; only the gradient mixes in EMO)."""
    (curves,) = [e["curves"] for e in run["extras"].values()]
    assert curves["emo_ce"][0] == pytest.approx(curves["ce"][0], rel=1e-6)
    assert curves["emo_ce"][1] != curves["ce"][1]  # after one step the gradients told apart


@pytest.mark.slow
def test_claims_evaluate(run):
    statuses = {c["id"]: c["status"] for c in run["claims"]}
    assert len(statuses) == len(EMOvsCE.claims)
    assert set(statuses.values()) <= {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE}
