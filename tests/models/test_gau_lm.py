"""GAU models through the one model: the GAU-α encoder, a GAU causal LM, presets, old configs."""

from __future__ import annotations

import pytest
import torch

from formerlab.attention.gau import gau_parameter_count
from formerlab.models import CausalLM, CausalLMOutput, Encoder
from formerlab.models.presets import PRESETS, bert, build_preset, gau_alpha, llama

TINY = dict(vocab_size=64, hidden_size=32, num_layers=2, expansion=64, key_size=16,
            dropout=0.0, attention_dropout=0.0)


def test_full_gau_alpha_parameter_count():
    with torch.device("meta"):  # shapes only: no 96M-parameter initialisation
        model = Encoder(gau_alpha())
    per_layer = gau_parameter_count(768, 1536, 128)
    assert model.num_parameters() == 24 * per_layer + 12000 * 768 + 2 * 768


def test_causal_lm_is_causal_and_returns_loss():
    torch.manual_seed(0)
    lm = CausalLM(gau_alpha(**TINY)).eval()
    ids = torch.randint(0, 64, (2, 12))
    out = lm(ids, labels=ids)
    assert isinstance(out, CausalLMOutput) and out.logits.shape == (2, 12, 64)
    assert float(out.loss.detach()) == pytest.approx(
        float(torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, 64).detach(),
                                                ids[:, 1:].reshape(-1))), rel=1e-5)
    ids2 = ids.clone()
    ids2[:, 8:] = (ids2[:, 8:] + 1) % 64
    with torch.no_grad():
        torch.testing.assert_close(lm(ids2).logits[:, :8], out.logits[:, :8].detach())


def test_causal_lm_softmax_plus_counts_causal_rows():
    lm = CausalLM(gau_alpha(**TINY)).eval()
    out = lm(torch.randint(0, 64, (1, 6)), output_attentions=True, output_hidden_states=True)
    a = out.attentions[0][0, 0]  # (B, 1 head, n, n)
    assert bool((a.triu(1) == 0).all())
    assert float(a[0, 0].detach()) == 1.0  # a single visible key
    assert len(out.hidden_states) == 3


def test_padding_mask_in_encoder():
    enc = Encoder(gau_alpha(**TINY)).eval()
    ids = torch.randint(0, 64, (2, 8))
    mask = torch.ones(2, 8)
    mask[1, 5:] = 0
    with torch.no_grad():
        full = enc(ids[1:, :5]).last_hidden_state
        padded = enc(ids, attention_mask=mask).last_hidden_state[1:, :5]
    torch.testing.assert_close(padded, full)


def test_pre_norm_untied_variant_trains():
    torch.manual_seed(0)
    cfg = gau_alpha(**{**TINY, "norm_position": "pre", "norm_affine": True,
                       "tie_word_embeddings": False, "init": "normal"})
    lm = CausalLM(cfg)
    opt = torch.optim.Adam(lm.parameters(), lr=1e-2)
    ids = torch.arange(16).repeat(4, 2) % 64
    first = None
    for _ in range(30):
        loss = lm(ids, labels=ids).loss
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first


def test_presets_registry_and_validation():
    assert {"gau_alpha", "llama", "bert"} <= set(PRESETS)
    assert build_preset("llama", size="small").hidden_size == 256
    assert bert("base").hidden_size == 768 and llama("smollm2-135m").num_kv_heads == 3
    with pytest.raises(ValueError, match="tiny"):
        llama("huge")
    with pytest.raises(ValueError, match="gau_alpha"):
        build_preset("gau")
    with pytest.raises(ValueError, match="allowed keys"):
        gau_alpha(hidden=3)
    with pytest.raises(ValueError, match="softmax_plus"):
        gau_alpha(normalization="softmax++")
    with pytest.raises(ValueError, match="allowed keys: expansion"):
        gau_alpha(mixer_options={"width": 3})
    cfg = gau_alpha(**TINY)
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_old_gau_config_and_weights_load(tmp_path):
    """A folder written by the former GAUCausalLM (GAUConfig keys, ``layers.i.gau.*`` names)."""
    import json

    from safetensors.torch import save_file

    torch.manual_seed(0)
    new = CausalLM(gau_alpha(**TINY)).eval()
    old_config = {"vocab_size": 64, "hidden_size": 32, "num_layers": 2, "expansion": 64,
                  "key_size": 16, "dropout": 0.0, "attention_dropout": 0.0, "init_order": 3,
                  "normalization": "softmax_plus", "base_len": 512, "min_len": None,
                  "rope": True, "rope_layout": "interleaved", "norm_position": "post"}
    old_names = {k.replace(".mixer.", ".gau.").replace(".attn_norm.", ".norm."): v
                 for k, v in new.weights_state_dict().items()}
    (tmp_path / "config.json").write_text(json.dumps(old_config))
    save_file(old_names, str(tmp_path / "model.safetensors"))
    loaded = CausalLM.from_pretrained(tmp_path)
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, new(ids).logits, rtol=0, atol=0)
    with pytest.raises(ValueError, match="init_order"):
        from formerlab.models import convert_gau_config

        convert_gau_config({**old_config, "init_order": 2})
