"""The decoder-only LM: outputs, loss, positions, norms, causality, cache, persistence."""

import pytest
import torch
import torch.nn.functional as F

from formerlab import ModelConfig
from formerlab.models import CausalLM, CheckpointError


def ids(b=2, n=12, vocab=64, seed=0):
    return torch.randint(0, vocab, (b, n), generator=torch.Generator().manual_seed(seed))


def test_output_object_and_loss(tiny_config):
    torch.manual_seed(0)
    m = CausalLM(tiny_config)
    x = ids()
    out = m(x, labels=x, output_hidden_states=True)
    assert out.logits.shape == (2, 12, 64)
    ref = F.cross_entropy(out.logits[:, :-1].reshape(-1, 64), x[:, 1:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)
    assert out["logits"] is out.logits and out[0] is out.loss
    assert len(out.hidden_states) == tiny_config.num_layers + 1
    labels = x.clone()
    labels[:, :6] = -100
    part = m(x, labels=labels).loss
    ref = F.cross_entropy(out.logits[:, 5:-1].reshape(-1, 64), x[:, 6:].reshape(-1))
    torch.testing.assert_close(part, ref)


def test_tied_and_untied(tiny_config):
    m = CausalLM(tiny_config)
    assert m.lm_head.weight is m.embed_tokens.weight
    u = CausalLM(tiny_config.replace(tie_word_embeddings=False))
    assert u.lm_head.weight is not u.embed_tokens.weight
    assert u.num_parameters() == m.num_parameters() + 64 * 32


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"norm_position": "post"},
        {"norm": "layernorm"},
        {"norm_affine": False},
        {"ffn": "gelu"},
        {"position": "sinusoidal"},
        {"position": "learned", "max_position_embeddings": 32},
        {"position": "nope"},
        {"rope_layout": "interleaved"},
        {"partial_rotary_factor": 0.5},
        {"num_kv_heads": 2},
        {"qk_bias": True},
        {"window": 4},
    ],
)
def test_variants_are_causal_and_cache_exact(tiny_config, changes):
    torch.manual_seed(0)
    m = CausalLM(tiny_config.replace(**changes)).double().eval()
    x = ids()
    full = m(x).logits
    x2 = x.clone()
    x2[:, 7:] = (x2[:, 7:] + 1) % 64
    torch.testing.assert_close(m(x2).logits[:, :7], full[:, :7], rtol=1e-12, atol=1e-12)
    first = m(x[:, :7], use_cache=True)
    rest = m(x[:, 7:], past_key_values=first.past_key_values)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full,
                               rtol=1e-10, atol=1e-10)


def test_learned_positions_beyond_table_raise(tiny_config):
    m = CausalLM(tiny_config.replace(position="learned", max_position_embeddings=8))
    with pytest.raises(ValueError, match="positions < 8"):
        m(ids(n=9))


def test_rope_model_is_shift_invariant(tiny_config):
    """RoPE + NoPE-free stack: shifting every position by s leaves the logits unchanged."""
    torch.manual_seed(0)
    m = CausalLM(tiny_config).double().eval()
    x = ids()
    a = m(x).logits
    b = m(x, position_ids=torch.arange(12) + 37).logits
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    s = CausalLM(tiny_config.replace(position="sinusoidal")).double().eval()
    assert not torch.allclose(s(x).logits, s(x, position_ids=torch.arange(12) + 37).logits)


def test_set_position_method_changes_only_beyond_train(tiny_config):
    torch.manual_seed(0)
    m = CausalLM(tiny_config).eval()
    x = ids(n=16)
    base = m(x).logits
    m.set_position_method("linear", rope_params={"factor": 1.0})
    torch.testing.assert_close(m(x).logits, base)
    m.set_position_method("ntk_old", rope_params={"factor": 4.0})
    assert not torch.allclose(m(x).logits, base)
    m.reset_position_method()
    torch.testing.assert_close(m(x).logits, base)
    nope = CausalLM(tiny_config.replace(position="nope"))
    with pytest.raises(ValueError, match="need rotary layers"):
        nope.set_position_method("linear", rope_params={"factor": 2})


def test_attention_mask_shape_error(tiny_config):
    m = CausalLM(tiny_config)
    with pytest.raises(ValueError, match="attention_mask must be"):
        m(ids(), attention_mask=torch.ones(2, 5))
    with pytest.raises(ValueError, match="input_ids must be"):
        m(torch.zeros(5, dtype=torch.long))


def test_save_load_round_trip(tmp_path, tiny_config):
    m = CausalLM(tiny_config)
    m.save_pretrained(tmp_path / "m")
    back = CausalLM.from_pretrained(tmp_path / "m")
    x = ids()
    torch.testing.assert_close(back(x).logits, m(x).logits, rtol=0, atol=0)


def test_labels_of_the_wrong_shape_name_both_shapes(tiny_config):
    m = CausalLM(tiny_config)
    with pytest.raises(ValueError, match=r"labels must be \(batch, seq\) = \(2, 12\).*got \(2, 11\)"):
        m(ids(), labels=ids()[:, :11])


def test_float64_checkpoints_load_without_rounding(tmp_path, tiny_config):
    m = CausalLM(tiny_config).double()
    with torch.no_grad():  # values float32 cannot hold
        for p in m.parameters():
            p.add_(torch.randn(p.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 1e-9)
    m.save_pretrained(tmp_path / "m")
    for dtype in (None, torch.float64):
        back = CausalLM.from_pretrained(tmp_path / "m", dtype=dtype)
        for (name, a), b in zip(m.state_dict().items(), back.state_dict().values(), strict=True):
            assert b.dtype == a.dtype and torch.equal(a, b), name
    assert CausalLM.from_pretrained(tmp_path / "m", dtype=torch.float32).lm_head.weight.dtype == torch.float32


def test_corrupted_and_mismatched_checkpoints(tmp_path, tiny_config):
    m = CausalLM(tiny_config)
    m.save_pretrained(tmp_path / "m")
    w = tmp_path / "m" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model.safetensors is corrupted"):
        CausalLM.from_pretrained(tmp_path / "m")
    m.save_pretrained(tmp_path / "m2")
    other = CausalLM(tiny_config.replace(num_layers=1))
    from safetensors.torch import load_file

    with pytest.raises(CheckpointError, match=r"unexpected \['layers.1"):
        other.load_weights(load_file(str(tmp_path / "m2" / "model.safetensors")))
    with pytest.raises(CheckpointError, match="does not exist"):
        CausalLM.from_pretrained(tmp_path / "nowhere")


def test_explicit_4d_mask_prefix_lm(tiny_config):
    """A prefix mask lets early tokens see later prefix tokens; the causal default does not."""
    torch.manual_seed(0)
    m = CausalLM(tiny_config).double().eval()
    x = ids(n=8)
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    torch.testing.assert_close(m(x, attention_mask=causal[None, None]).logits, m(x).logits)
    prefix = causal.clone()
    prefix[:, :4] = True
    a = m(x, attention_mask=prefix[None, None]).logits
    x2 = x.clone()
    x2[:, 3] = (x2[:, 3] + 1) % 64
    b = m(x2, attention_mask=prefix[None, None]).logits
    assert not torch.allclose(a[:, 0], b[:, 0]), "token 0 must see prefix token 3"
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        m(x, attention_mask=prefix[None, None].float())


def test_gradient_checkpointing_gives_identical_gradients(tiny_config):
    torch.manual_seed(0)
    m = CausalLM(tiny_config).double()
    x = ids()
    m(x, labels=x).loss.backward()
    ref = {k: p.grad.clone() for k, p in m.named_parameters()}
    m.zero_grad()
    m.gradient_checkpointing_enable()
    m(x, labels=x).loss.backward()
    for k, p in m.named_parameters():
        torch.testing.assert_close(p.grad, ref[k], rtol=0, atol=0, msg=k)


def test_inputs_embeds_equals_input_ids(tiny_config):
    torch.manual_seed(0)
    model = CausalLM(tiny_config).eval()
    ids = torch.randint(0, tiny_config.vocab_size, (2, 9))
    ref = model(ids).logits
    out = model(inputs_embeds=model.embed_tokens(ids)).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=model.embed_tokens(ids))
    with pytest.raises(ValueError, match="inputs_embeds must be"):
        model(inputs_embeds=torch.zeros(2, 9, tiny_config.hidden_size + 1))


def test_bad_token_ids_name_the_id_and_vocabulary(tiny_config):
    model = CausalLM(tiny_config)
    ids = torch.randint(0, tiny_config.vocab_size, (1, 5))
    with pytest.raises(TypeError, match="integer token ids"):
        model(ids.float())
    bad = ids.clone()
    bad[0, 3] = tiny_config.vocab_size + 7
    with pytest.raises(ValueError, match=rf"token id {tiny_config.vocab_size + 7}.*\[0, 64\)"):
        model(bad)
    with pytest.raises(ValueError, match="token id -1"):
        model(ids * 0 - 1)


@pytest.mark.slow
def test_torch_compile_has_no_graph_breaks_and_gives_the_eager_outputs():
    """fullgraph=True fails on any graph break (host syncs such as int(tensor.max()))."""
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=4)).eval()
    ids = torch.randint(0, 64, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    mask[0, :3] = 0  # left padding: position ids derived from the mask inside the graph
    compiled = torch.compile(model, fullgraph=True)
    with torch.no_grad():
        for kw in ({}, {"attention_mask": mask}):
            torch.testing.assert_close(compiled(ids, **kw).logits, model(ids, **kw).logits,
                                       rtol=1e-5, atol=1e-5)
