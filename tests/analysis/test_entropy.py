"""Attention entropy: the identities, and the recorder on formerlab and Hugging Face models
through their public attention outputs (real MiniLM weights included)."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.analysis import EntropyRecorder, attention_entropy

F64 = torch.float64


def test_uniform_one_hot_and_masked_rows():
    n = 7
    uniform = torch.full((2, n), 1 / n, dtype=F64)
    torch.testing.assert_close(attention_entropy(uniform), torch.full((2,), math.log(n),
                                                                     dtype=F64))
    torch.testing.assert_close(attention_entropy(uniform, normalized=True),
                               torch.ones(2, dtype=F64))
    one_hot = torch.zeros(3, n, dtype=F64)
    one_hot[:, 2] = 1
    assert float(attention_entropy(one_hot).abs().max()) == 0.0
    # masked keys are excluded: uniform over 3 visible keys
    mask = torch.tensor([True, False, True, True, False, False, False])
    p = torch.tensor([1 / 3, 0.5, 1 / 3, 1 / 3, 0.0, 0.0, 0.0], dtype=F64)
    assert float(attention_entropy(p, mask)) == pytest.approx(math.log(3))
    assert float(attention_entropy(p, mask, normalized=True)) == pytest.approx(1.0)
    # no visible key: 0, not NaN
    assert float(attention_entropy(p, torch.zeros(7, dtype=torch.bool))) == 0.0
    assert float(attention_entropy(torch.zeros(7, dtype=F64), from_logits=True,
                                   mask=torch.zeros(7, dtype=torch.bool))) == 0.0


def test_logits_identity_matches_probabilities():
    g = torch.Generator().manual_seed(0)
    z = 3 * torch.randn(2, 4, 5, 9, generator=g, dtype=F64)
    mask = torch.rand(1, 1, 5, 9, generator=g) > 0.3
    mask[..., 0] = True
    p = torch.softmax(z.masked_fill(~mask, -math.inf), -1)
    for normalized in (False, True):
        a = attention_entropy(z, mask, from_logits=True, normalized=normalized)
        b = attention_entropy(p, mask, normalized=normalized)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # extreme logits: still finite, exactly 0 for a saturated row
    big = torch.tensor([[1e4, 0.0, -1e4]], dtype=F64)
    assert float(attention_entropy(big, from_logits=True)) == pytest.approx(0.0, abs=1e-12)
    assert bool(torch.isfinite(attention_entropy(torch.softmax(big, -1))).all())


def _manual(out_attn, valid_keys, query_ok):
    """Mean entropy per layer over valid query rows, computed directly."""
    rows = []
    for w in out_attn:
        h = attention_entropy(w.double(), valid_keys)
        rows.append(float((h * query_ok[:, None]).sum() / (query_ok.sum() * w.shape[1])))
    return torch.tensor(rows, dtype=F64)


def test_recorder_on_formerlab_causal_lm_with_padding(tiny_config):
    from formerlab.models import CausalLM

    torch.manual_seed(0)
    model = CausalLM(tiny_config).eval()
    ids = torch.randint(1, 64, (3, 9))
    mask = torch.ones(3, 9, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 4:] = 0
    with EntropyRecorder(model) as rec, torch.no_grad():
        out = model(ids, attention_mask=mask)
    s = rec.summary()
    assert out.attentions is not None and s.per_head.shape == (2, 4)
    visible = mask.bool()[:, None, None, :] & torch.ones(9, 9, dtype=torch.bool).tril()
    torch.testing.assert_close(s.per_layer.double(), _manual(out.attentions, visible,
                                                             mask.double()), rtol=1e-5, atol=1e-6)
    assert s.queries == int(mask.sum())
    # each sequence alone gives the same per-position statistics where it has tokens
    rec2 = EntropyRecorder(model)
    with rec2, torch.no_grad():
        for b in range(3):
            n = int(mask[b].sum())
            model(ids[b : b + 1, :n])
    s2 = rec2.summary()
    torch.testing.assert_close(s2.per_layer, s.per_layer, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s2.by_position, s.by_position, rtol=1e-5, atol=1e-6,
                               equal_nan=True)
    # the causal structure was detected: the first position has entropy 0 everywhere
    assert float(s.by_position[:, 0].abs().max()) < 1e-6


def test_recorder_normalized_and_kv_cache(tiny_config):
    from formerlab.models import CausalLM

    torch.manual_seed(1)
    model = CausalLM(tiny_config).eval()
    ids = torch.randint(1, 64, (2, 6))
    with torch.no_grad():
        first = model(ids[:, :4], use_cache=True)
        step = model(ids[:, 4:], past_key_values=first.past_key_values, output_attentions=True)
    rec = EntropyRecorder(normalized=True)
    rec.update(step.attentions)
    s = rec.summary()
    assert s.by_position.shape == (2, 2)
    assert bool((s.per_head >= 0).all() & (s.per_head <= 1).all())
    # same as the full forward's last two positions
    with torch.no_grad():
        full = model(ids, output_attentions=True)
    ref = EntropyRecorder(normalized=True)
    ref.update(full.attentions)
    torch.testing.assert_close(s.by_position, ref.summary().by_position[:, 4:], rtol=1e-4,
                               atol=1e-5)


@pytest.mark.slow
def test_recorder_real_minilm_formerlab_equals_transformers_eager(minilm_dir, minilm_encoder,
                                                                  docstrings):
    transformers = pytest.importorskip("transformers")
    hf = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    tok = transformers.AutoTokenizer.from_pretrained(minilm_dir)
    batch = tok(docstrings[:6], padding=True, truncation=True, max_length=32, return_tensors="pt")
    records = []
    for model in (minilm_encoder, hf):
        with EntropyRecorder(model, normalized=True) as rec, torch.no_grad():
            model(batch["input_ids"], attention_mask=batch["attention_mask"])
        records.append(rec.summary())
    torch.testing.assert_close(records[0].per_head, records[1].per_head, rtol=1e-4, atol=1e-5)
    assert records[0].queries == int(batch["attention_mask"].sum())
    assert 0 < float(records[0].per_layer.min()) and float(records[0].per_layer.max()) < 1
    assert records[0].to_dict()["normalized"] is True


def test_recorder_errors():
    with pytest.raises(RuntimeError, match="nothing recorded"):
        EntropyRecorder().summary()
    with pytest.raises(ValueError, match="needs a model"):
        with EntropyRecorder():
            pass

    class NoAttn(torch.nn.Module):
        def forward(self, x, output_attentions=False):
            return {"last_hidden_state": x}

    m = NoAttn()
    with pytest.raises(RuntimeError, match="eager"), EntropyRecorder(m):
        m(torch.ones(1, 2))
    with pytest.raises(ValueError, match="attention_mask must be"):
        EntropyRecorder().update([torch.full((1, 1, 2, 2), 0.5)], torch.ones(1, 3))
    with pytest.raises(ValueError, match="negative"):
        attention_entropy(torch.tensor([0.5, -0.5]))
    with pytest.raises(TypeError, match="mask must be a bool"):
        attention_entropy(torch.ones(2) / 2, torch.ones(2))


def test_recorder_on_hugging_face_decoder_eager_and_sdpa_refusal():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = dict(vocab_size=50, n_embd=16, n_layer=2, n_head=2, n_positions=16)
    eager = transformers.GPT2Model(transformers.GPT2Config(**cfg, attn_implementation="eager"))
    ids = torch.randint(0, 50, (2, 7))
    with EntropyRecorder(eager.eval()) as rec, torch.no_grad():
        out = eager(ids)
    s = rec.summary()
    visible = torch.ones(7, 7, dtype=torch.bool).tril()
    torch.testing.assert_close(s.per_layer.double(), _manual(out.attentions, visible,
                                                             torch.ones(2, 7, dtype=F64)),
                               rtol=1e-5, atol=1e-6)
    assert float(s.by_position[:, 0].abs().max()) < 1e-6  # causal: detected
    sdpa = transformers.GPT2Model(transformers.GPT2Config(**cfg, attn_implementation="sdpa"))
    with pytest.raises(RuntimeError, match="attn_implementation='eager'"), \
            EntropyRecorder(sdpa.eval()), torch.no_grad():
        sdpa(ids)
