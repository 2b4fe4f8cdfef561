"""The sequence-classification head: every pooling against its definition, padding on either
side, a head over every registered mixer, the loss with auxiliary terms, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from formerlab import ModelConfig
from formerlab.models import MIXERS, POOLINGS, CausalLM, Encoder, SequenceClassifier

BASE = dict(vocab_size=30, hidden_size=16, num_layers=2, num_heads=2, max_position_embeddings=32)
OPTIONS = {"gau": {"expansion": 24, "key_size": 8}, "vq": {"key_size": 8, "num_codes": 8,
                                                           "block_len": 4}}


def _hidden():
    x = torch.arange(2 * 4 * 3, dtype=torch.float64).reshape(2, 4, 3)
    mask = torch.tensor([[True, True, True, False], [False, True, True, True]])
    return x, mask


#: what each pooling must return for _hidden() (written out by hand)
EXPECTED = {
    "mean": lambda x, m: torch.stack([x[0, :3].mean(0), x[1, 1:].mean(0)]),
    "cls": lambda x, m: x[:, 0],
    "last": lambda x, m: torch.stack([x[0, 2], x[1, 3]]),
}


def test_every_pooling_has_a_test():
    assert set(POOLINGS) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_pooling(name):
    x, m = _hidden()
    torch.testing.assert_close(POOLINGS.get(name)(x, m), EXPECTED[name](x, m), rtol=0, atol=0)


@pytest.mark.parametrize("mixer", sorted(MIXERS))
@torch.no_grad()
def test_head_over_every_mixer_ignores_padding(mixer):
    torch.manual_seed(0)
    cfg = ModelConfig(**BASE, mixer=mixer, mixer_options=OPTIONS.get(mixer),
                      ffn="none" if mixer == "gau" else "swiglu")
    clf = SequenceClassifier(cfg, 5, generator=torch.Generator().manual_seed(0)).double().eval()
    assert isinstance(clf.backbone, Encoder)
    ids = torch.randint(3, 30, (2, 11), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, 7:] = 0  # right padding
    out = clf(ids, attention_mask=mask)
    alone = clf(ids[1:, :7]).logits
    torch.testing.assert_close(out.logits[1:], alone, rtol=1e-9, atol=1e-9)
    assert out.logits.shape == (2, 5) and out.loss is None


def test_loss_is_cross_entropy_plus_auxiliary_losses_in_training():
    torch.manual_seed(0)
    cfg = ModelConfig(**BASE, mixer="vq", mixer_options=OPTIONS["vq"])
    clf = SequenceClassifier(CausalLM(cfg), 3, pooling="last").double()
    ids = torch.randint(3, 30, (4, 9), generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([0, 2, 1, 1])
    clf.eval()
    out = clf(ids, labels=labels)
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels), rtol=0, atol=0)
    clf.train()
    out = clf(ids, labels=labels)
    commit = sum(b.mixer.aux_loss for b in clf.backbone.layers)
    assert float(commit.detach()) > 0
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits, labels) + commit,
                               rtol=1e-12, atol=0)


def test_head_init_is_seeded_and_errors_are_named():
    cfg = ModelConfig(**BASE)
    a = SequenceClassifier(cfg, 4, generator=torch.Generator().manual_seed(5))
    b = SequenceClassifier(cfg, 4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.head.weight, b.head.weight) and not a.head.bias.any()
    assert isinstance(SequenceClassifier(cfg, 4, causal=True).backbone, CausalLM)
    with pytest.raises(ValueError, match="unknown pooling 'max'; valid pooling names: mean"):
        SequenceClassifier(cfg, 4, pooling="max")
    with pytest.raises(ValueError, match="num_labels must be an int >= 2"):
        SequenceClassifier(cfg, 1)
    with pytest.raises(ValueError, match="labels must be \\(batch,\\)"):
        a(torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(3, dtype=torch.long))
