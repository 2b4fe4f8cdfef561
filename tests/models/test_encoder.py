"""The BERT-family Encoder against transformers' BertModel (tiny random configs)."""

from __future__ import annotations

import json

import pytest
import torch

from formerlab.models import BaseModelOutput
from formerlab.models.encoder import Encoder
from formerlab.models.presets import bert

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=4, intermediate_size=64,
                                  max_position_embeddings=40, type_vocab_size=2)
    model = transformers.BertModel(cfg).eval()
    with torch.no_grad():  # non-trivial norms and biases
        for name, p in model.named_parameters():
            if "LayerNorm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    path = tmp_path_factory.mktemp("tiny-bert")
    model.save_pretrained(path)
    return path, model


def test_from_pretrained_matches_bert_model(hf_folder):
    path, hf = hf_folder
    ours = Encoder.from_pretrained(path)
    ids = torch.randint(1, 99, (2, 17), generator=torch.Generator().manual_seed(1))
    tt = torch.zeros_like(ids)
    tt[:, 9:] = 1
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=tt,
                 output_hidden_states=True)
        out = ours(ids, attention_mask=mask, token_type_ids=tt, output_hidden_states=True)
    assert isinstance(out, BaseModelOutput)
    keep = mask.bool()
    for a, b in zip(ref.hidden_states, out.hidden_states):
        torch.testing.assert_close(b[keep], a[keep], rtol=0, atol=1e-5)


def test_errors_list_missing_and_unexpected(hf_folder, tmp_path):
    path, _ = hf_folder
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path / "model.safetensors"))
    tensors.pop("encoder.layer.1.output.dense.bias")
    tensors["encoder.layer.1.extra.weight"] = torch.zeros(2)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    with pytest.raises(ValueError, match=r"missing tensors \['layers.1.mlp.down_proj.bias'\]"):
        Encoder.from_pretrained(tmp_path)
    cfg = json.loads((path / "config.json").read_text())
    cfg["model_type"] = "roberta"
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="supported: bert"):
        Encoder.from_pretrained(tmp_path)


def test_bert_preset_builds_and_validates():
    enc = Encoder(bert("tiny", vocab_size=50))
    out = enc(torch.randint(0, 50, (2, 9)), output_attentions=True)
    assert out.last_hidden_state.shape == (2, 9, 64) and len(out.attentions) == 2
    roformer = Encoder(bert("tiny", vocab_size=50, position="rope"))  # RoPE encoders work too
    assert roformer.embed_positions is None and roformer.rotary is not None
    assert roformer(torch.randint(0, 50, (2, 9))).last_hidden_state.shape == (2, 9, 64)
    with pytest.raises(ValueError, match="cover positions < 512"):
        enc(torch.zeros(1, 600, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        enc(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 6))


def test_encoder_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    enc = Encoder(bert("tiny", vocab_size=50, dropout=0.1, attention_dropout=0.0)).double()
    ids = torch.randint(0, 50, (2, 9))

    def grads():
        enc.zero_grad()
        torch.manual_seed(1)
        enc(ids).last_hidden_state.pow(2).sum().backward()
        return [p.grad.clone() for p in enc.parameters()]

    ref = grads()
    enc.gradient_checkpointing_enable()
    for a, b in zip(ref, grads()):
        assert torch.equal(a, b)


def test_encoder_inputs_embeds_equals_input_ids():
    from formerlab.models import Encoder
    from formerlab.models.presets import bert

    torch.manual_seed(0)
    enc = Encoder(bert(vocab_size=50, hidden_size=32, num_layers=2, num_heads=4,
                       max_position_embeddings=16)).eval()
    ids = torch.randint(0, 50, (2, 7))
    ref = enc(ids).last_hidden_state
    out = enc(inputs_embeds=enc.embed_tokens(ids)).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_own_format_round_trip(hf_folder, tmp_path):
    path, _ = hf_folder
    enc = Encoder.from_pretrained(path)  # non-trivial weights
    enc.save_pretrained(tmp_path / "enc")
    back = Encoder.from_pretrained(tmp_path / "enc")
    assert (tmp_path / "enc" / "model.safetensors").is_file()
    ids = torch.randint(1, 99, (2, 9), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(back(ids).last_hidden_state, enc(ids).last_hidden_state,
                               rtol=0, atol=0)
