"""Self-pretraining: MLM masking statistics and rules, both objectives lower their loss on ListOps
inputs, backbone transfer (every weight copied, head fresh, nothing unmatched), fine-tuning."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab import ModelConfig, TrainConfig
from formerlab.data.listops import CLS_ID, MASK_ID, PAD_ID, listops_dataset
from formerlab.models import CausalLM, Encoder, SequenceClassifier
from formerlab.train.pretrain import (
    evaluate_classifier,
    mlm_mask,
    self_pretrain,
    train_classifier,
    transfer_backbone,
)

SPECIALS = (PAD_ID, CLS_ID, MASK_ID)


def tokens(b=64, n=200, seed=0):
    ids = torch.randint(3, 18, (b, n), generator=torch.Generator().manual_seed(seed))
    ids[:, 0] = CLS_ID
    ids[:, -30:] = PAD_ID
    return ids


def test_mlm_mask_rate_specials_and_labels():
    ids = tokens()
    inputs, labels = mlm_mask(ids, 0.5, MASK_ID, SPECIALS, torch.Generator().manual_seed(1))
    maskable = ~torch.isin(ids, torch.tensor(SPECIALS))
    chosen = labels != -100
    # rate: 64·169 maskable tokens, binomial std of the rate ≈ 0.0047; allow 4 std
    rate = float(chosen.sum()) / float(maskable.sum())
    assert abs(rate - 0.5) < 4 * math.sqrt(0.25 / float(maskable.sum()))
    assert not bool((chosen & ~maskable).any())  # specials are never masked
    assert torch.equal(inputs[chosen], torch.full_like(inputs[chosen], MASK_ID))
    assert torch.equal(inputs[~chosen], ids[~chosen])  # everything else untouched
    assert torch.equal(labels[chosen], ids[chosen])  # labels only at masked positions
    again = mlm_mask(ids, 0.5, MASK_ID, SPECIALS, torch.Generator().manual_seed(1))
    assert torch.equal(again[0], inputs) and torch.equal(again[1], labels)
    low = mlm_mask(ids, 0.15, MASK_ID, SPECIALS, torch.Generator().manual_seed(1))[1]
    assert abs(float((low != -100).sum()) / float(maskable.sum()) - 0.15) < 0.02
    with pytest.raises(ValueError, match="mask probability p must lie in \\[0, 1\\]"):
        mlm_mask(ids, 1.5, MASK_ID)


@pytest.fixture(scope="module")
def data():
    return listops_dataset(300, max_depth=4, max_args=5, min_len=8, max_len=40, seed=0)


def tiny(mixer="mha", **kw):
    base = dict(vocab_size=18, hidden_size=32, num_layers=2, num_heads=4, mixer=mixer,
                max_position_embeddings=64, pad_token_id=PAD_ID)
    return ModelConfig(**{**base, **kw})


@pytest.mark.slow
@pytest.mark.parametrize("objective, backbone, mixer", [("mlm", Encoder, "mha"),
                                                        ("causal", CausalLM, "lru")])
def test_self_pretraining_lowers_the_loss(data, objective, backbone, mixer):
    torch.manual_seed(0)
    model = SequenceClassifier(backbone(tiny(mixer, num_layers=1)), 10)
    before = {k: v.clone() for k, v in model.head.state_dict().items()}
    fit = self_pretrain(model, data, objective, mask_prob=0.5, steps=40,
                        train=TrainConfig(lr=1e-2, warmup_steps=4, batch_size=16),
                        generator=torch.Generator().manual_seed(0))
    assert len(fit.losses) == 40
    # from ≈ log(18) = 2.9 nats towards the token statistics (a drop of ≈ 0.5 at these settings)
    first, last = sum(fit.losses[:5]) / 5, fit.final_loss
    assert last < first - 0.2, (first, last)
    assert all(torch.equal(v, before[k]) for k, v in model.head.state_dict().items())


def test_causal_objective_needs_a_causal_backbone(data):
    with pytest.raises(ValueError, match="needs a causal backbone"):
        self_pretrain(Encoder(tiny()), data, "causal", steps=1)
    with pytest.raises(ValueError, match="objective must be one of mlm, causal"):
        self_pretrain(Encoder(tiny()), data, "span", steps=1)


def test_transfer_copies_the_backbone_and_keeps_the_fresh_head():
    torch.manual_seed(0)
    src = SequenceClassifier(Encoder(tiny("lru")), 10)
    dst = SequenceClassifier(Encoder(tiny("lru")), 10, generator=torch.Generator().manual_seed(7))
    head = {k: v.clone() for k, v in dst.head.state_dict().items()}
    report = transfer_backbone(src, dst)
    assert report["skipped"] == ["head.weight", "head.bias"]
    assert len(report["copied"]) == len(dst.state_dict()) - 2
    for k, v in dst.state_dict().items():
        if k.startswith("head."):
            assert torch.equal(v, head[k.split(".", 1)[1]])
        else:
            assert torch.equal(v, src.state_dict()[k]), k
    # a bare backbone (or its state dict) transfers into a classifier too
    bare = Encoder(tiny("lru"))
    transfer_backbone(bare.state_dict(), dst)
    assert torch.equal(dst.backbone.layers[0].mixer.fwd.nu_log, bare.layers[0].mixer.fwd.nu_log)
    # nothing may be left unmatched
    with pytest.raises(ValueError, match="keys missing from the source"):
        transfer_backbone(Encoder(tiny("lru", num_layers=1)), dst)
    with pytest.raises(ValueError, match="unmatched source keys \\['backbone.layers.2"):
        transfer_backbone(Encoder(tiny("lru", num_layers=3)), dst)
    with pytest.raises(ValueError, match="shape mismatches"):
        transfer_backbone(Encoder(tiny("lru", mixer_options={"d_state": 8})), dst)


@pytest.mark.slow
def test_fine_tuning_learns_the_training_set(data):
    torch.manual_seed(0)
    model = SequenceClassifier(Encoder(tiny(num_layers=1)), 10, pooling="cls")
    train, test = data.split(64, 100)
    start = evaluate_classifier(model, train)
    fit = train_classifier(model, train, 60, generator=torch.Generator().manual_seed(0),
                           train=TrainConfig(lr=1e-2, warmup_steps=5, batch_size=32))
    assert fit.final_loss < fit.losses[0]
    acc = evaluate_classifier(model, train)
    assert acc > max(start, train.majority_accuracy()) + 0.05, (start, acc)
    assert 0.0 <= evaluate_classifier(model, test) <= 1.0 and not model.training
