"""Every registered token mixer behind one model: cached decoding equals the full forward, ragged
left-padded batches equal their rows alone, the state protocol (reorder, batch_select, crop),
save/load, hybrid stacks (attention + recurrent layers), auxiliary losses and the errors users
meet."""

from __future__ import annotations

import pytest
import torch

from formerlab import ModelConfig
from formerlab.losses.lm import causal_lm_loss
from formerlab.models import MIXERS, CausalLM, Encoder, auxiliary_loss
from formerlab.nn import StateMismatchError

BASE = dict(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64)

#: one small model per registered mixer (a new mixer must add its case here)
CASES: dict[str, dict] = {
    "mha": {},
    "gau": {"mixer": "gau", "mixer_options": {"expansion": 48, "key_size": 16}, "ffn": "none",
            "normalization": "softmax_plus"},
    "synthesizer": {"mixer": "synthesizer", "mixer_options": {"kind": ["dense", "random", "vanilla"]}},
    "lru": {"mixer": "lru", "mixer_options": {"d_state": 12, "scan": "associative"}},
    "slru": {"mixer": "slru", "mixer_options": {"d_state": 12, "r_min": 0.5}},
    "linear": {"mixer": "linear", "mixer_options": {"chunk_size": 4}},
    # ℓ = 4: the 14-token tests cross several blocks, so the code cache is exercised
    "vq": {"mixer": "vq", "mixer_options": {"key_size": 8, "num_codes": 16, "block_len": 4,
                                            "num_heads": 2, "expansion": 32}},
}


def test_every_registered_mixer_has_a_case():
    assert set(MIXERS) <= set(CASES), f"mixers without a test case: {set(MIXERS) - set(CASES)}"


def _model(name: str, **extra) -> CausalLM:
    torch.manual_seed(0)
    return _perturbed(CausalLM(ModelConfig(**{**BASE, **CASES[name], **extra})).double().eval())


def _perturbed(model):
    """Zero-initialised parameters (VQ's window bias ...) get random values, so every test sees
    them at work."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if not bool(p.any()):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)  # float32 values: saved exactly
    return model


def _ids(b=2, n=14, seed=0):
    return torch.randint(0, 61, (b, n), generator=torch.Generator().manual_seed(seed))


def _decode(model, ids, split, **kw):
    """Prefill ``ids[:, :split]``, then one token at a time; returns the logits of all."""
    out = model(ids[:, :split], use_cache=True, **kw)
    logits, cache = [out.logits], out.past_key_values
    for t in range(split, ids.shape[1]):
        out = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True)
        logits.append(out.logits)
        cache = out.past_key_values
    return torch.cat(logits, 1), cache


@pytest.mark.parametrize("name", sorted(CASES))
def test_cached_decoding_equals_full_forward(name):
    model = _model(name)
    ids = _ids()
    full = model(ids).logits
    inc, cache = _decode(model, ids, 5)
    torch.testing.assert_close(inc, full, rtol=1e-10, atol=1e-10)
    assert cache.length == ids.shape[1] and len(cache) == BASE["num_layers"]
    # a chunk of several tokens at once
    first = model(ids[:, :6], use_cache=True)
    rest = model(ids[:, 6:], past_key_values=first.past_key_values, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full,
                               rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("method", [
    {"relpos": {"name": "rerope", "window": 4}},
    {"relpos": {"name": "leaky", "window": 4, "factor": 4.0}},
    {"rope_type": "ntk_old", "rope_params": {"factor": 2.0}},
    {"logn": "dagger", "train_len": 6},
])
@pytest.mark.parametrize("name", [n for n in sorted(CASES) if MIXERS.get(n).positional])
def test_cached_decoding_under_position_methods(name, method):
    model = _model(name)
    model.set_position_method(**method)
    ids = _ids(n=16)
    full = model(ids).logits
    inc, _ = _decode(model, ids, 7)
    torch.testing.assert_close(inc, full, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_ragged_left_padded_batch_equals_each_row_alone(name):
    model = _model(name)
    lengths = [9, 6, 3]
    rows = [_ids(1, n, seed=i) for i, n in enumerate(lengths)]
    n = max(lengths)
    ids = torch.zeros(len(rows), n, dtype=torch.long)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - r.shape[1]:] = r[0]
        mask[i, n - r.shape[1]:] = 1
    out = model(ids, attention_mask=mask, use_cache=True)
    cache, logits = out.past_key_values, [out.logits]
    nxt = _ids(3, 3, seed=9)
    for t in range(3):  # decode three more tokens for the whole batch
        mask = torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)
        o = model(nxt[:, t:t + 1], attention_mask=mask, past_key_values=cache, use_cache=True)
        cache = o.past_key_values
        logits.append(o.logits)
    batched = torch.cat(logits, 1)
    for i, r in enumerate(rows):
        alone = model(torch.cat([r, nxt[i:i + 1]], 1)).logits
        k = r.shape[1]
        torch.testing.assert_close(batched[i, n - k:], alone[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CASES))
def test_state_protocol_reorder_select_repeat_crop(name):
    model = _model(name)
    ids = _ids(3, 10)
    full = model(ids).logits
    out = model(ids[:, :8], use_cache=True)
    cache = out.past_key_values
    # beam-search style reordering: row order [2, 0, 0]
    index = torch.tensor([2, 0, 0])
    cache.reorder(index)
    step = model(ids[index, 8:9], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(step.logits[:, 0], full[index, 8], rtol=1e-10, atol=1e-10)
    # drop finished rows
    cache = model(ids[:, :8], use_cache=True).past_key_values
    cache.batch_select(torch.tensor([1]))
    step = model(ids[1:2, 8:9], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(step.logits[:, 0], full[1:2, 8], rtol=1e-10, atol=1e-10)
    # a prompt expanded to 2 beams
    cache = model(ids[:1, :8], use_cache=True).past_key_values
    cache.batch_repeat_interleave(2)
    step = model(ids[:1, 8:9].repeat(2, 1), past_key_values=cache, use_cache=True)
    torch.testing.assert_close(step.logits[:, 0], full[:1, 8].repeat(2, 1), rtol=1e-10, atol=1e-10)
    # crop back and decode again (speculative decoding rolls back like this); how far back a
    # state can crop is its declared min_crop_length: 0 for a KV cache, the current length for a
    # pure recurrence (it keeps no history), the current block's start for Transformer-VQ
    cache = model(ids[:, :8], use_cache=True).past_key_values
    floor = max(getattr(s, "min_crop_length", 0) for s in cache)
    target = max(floor, 5)
    if target > 5:
        with pytest.raises(NotImplementedError, match="crop"):
            cache.crop(5)
    cache.crop(target)
    assert cache.length == target
    again = model(ids[:, target:], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(again.logits, full[:, target:], rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="crop length"):
        cache.crop(99)
    with pytest.raises(ValueError, match="index"):
        cache.reorder(torch.tensor([7]))


@pytest.mark.parametrize("name", sorted(CASES))
def test_save_and_load_round_trip(name, tmp_path):
    model = _model(name)
    model.save_pretrained(tmp_path / name)
    back = CausalLM.from_pretrained(tmp_path / name, dtype=torch.float64)
    assert back.config == model.config and not back.training
    ids = _ids()
    torch.testing.assert_close(back(ids).logits, model(ids).logits, rtol=0, atol=0)


def test_hybrid_stack_chooses_a_mixer_per_layer():
    specs = [{"mixer": "mha"}, {"mixer": "gau", "mixer_options": {"expansion": 48, "key_size": 16}},
             {"mixer": "synthesizer"}]
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(**{**BASE, "num_layers": 3, "layer_specs": specs})).double().eval()
    assert [b.mixer_name for b in model.layers] == ["mha", "gau", "synthesizer"]
    assert sorted(model.rotaries) == ["16", "8"]  # one rotary per positional head size
    ids = _ids()
    inc, _ = _decode(model, ids, 4)
    torch.testing.assert_close(inc, model(ids).logits, rtol=1e-10, atol=1e-10)
    enc = Encoder(ModelConfig(**{**BASE, "num_layers": 3, "layer_specs": specs}))
    assert enc(ids).last_hidden_state.shape == (2, 14, 32)


def test_bad_mixers_and_states_are_named():
    with pytest.raises(ValueError, match="unknown token mixer 'lstm'; valid token mixer names: mha"):
        ModelConfig(**BASE, layer_specs=[{"mixer": "lstm"}, {}])
    with pytest.raises(ValueError, match="allowed keys: expansion, key_size"):
        ModelConfig(**BASE, mixer="gau", mixer_options={"heads": 2})
    with pytest.raises(ValueError, match="takes no options"):
        ModelConfig(**BASE, mixer_options={"expansion": 2})
    mha, gau = _model("mha"), _model("gau")
    ids = _ids()
    cache = mha(ids[:, :4], use_cache=True).past_key_values
    with pytest.raises(StateMismatchError, match="'mha' layer was handed to a 'gau' layer"):
        gau(ids[:, 4:5], past_key_values=cache)
    with pytest.raises(StateMismatchError, match="past_key_values has 1 layer states"):
        mha(ids[:, 4:5], past_key_values=cache[:1])
    synth = _model("synthesizer", max_position_embeddings=8)
    cache = synth(ids[:, :8], use_cache=True).past_key_values
    with pytest.raises(ValueError, match="8 cached \\+ 1 new tokens exceed the synthesizer's max_len 8"):
        synth(ids[:, 8:9], past_key_values=cache)


def test_hybrid_recurrent_and_attention_stack_decodes_from_its_cache():
    specs = [{"mixer": "lru", "mixer_options": {"d_state": 8}}, {"mixer": "mha"},
             {"mixer": "vq", "mixer_options": CASES["vq"]["mixer_options"]},
             {"mixer": "linear"}, {"mixer": "slru"}]
    torch.manual_seed(0)
    cfg = ModelConfig(**{**BASE, "num_layers": 5, "layer_specs": specs})
    model = _perturbed(CausalLM(cfg).double().eval())
    assert [b.mixer_name for b in model.layers] == ["lru", "mha", "vq", "linear", "slru"]
    assert sorted(model.rotaries) == ["8"]  # only the attention layer is positional
    ids = _ids()
    full = model(ids).logits
    inc, cache = _decode(model, ids, 3)
    torch.testing.assert_close(inc, full, rtol=1e-10, atol=1e-10)
    assert [s.owner for s in cache] == ["lru", "mha", "vq", "linear", "slru"]
    # a left-padded row equals itself alone, through every kind of layer
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[1, :5] = 0
    padded = model(ids, attention_mask=mask).logits
    torch.testing.assert_close(padded[1, 5:], model(ids[1:, 5:]).logits[0], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", ["lru", "slru", "linear", "vq"])
@torch.no_grad()
def test_linear_time_mixers_as_encoders(name):
    torch.manual_seed(0)
    enc = _perturbed(Encoder(ModelConfig(**{**BASE, **CASES[name]})).double().eval())
    ids = _ids()
    out = enc(ids).last_hidden_state
    # bidirectional: changing the last token changes the first position's output
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % 61
    assert float((enc(ids2).last_hidden_state[:, 0] - out[:, 0]).abs().max()) > 1e-6
    # right padding leaves the real tokens' outputs as without it
    mask = torch.ones(2, 14, dtype=torch.long)
    mask[0, 10:] = 0
    padded = enc(ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(padded[0, :10], enc(ids[:1, :10]).last_hidden_state[0],
                               rtol=1e-9, atol=1e-9)


def test_commitment_loss_reaches_the_training_loss():
    model = _model("vq")
    ids = _ids()
    model.eval()
    assert model(ids, labels=ids).loss == causal_lm_loss(model(ids).logits, ids)
    assert auxiliary_loss(model) is None  # eval mode: no commitment term
    model.train()
    before = model.layers[0].mixer.codebook.clone()
    out = model(ids, labels=ids)
    aux = auxiliary_loss(model)
    assert aux is not None and float(aux.detach()) > 0
    torch.testing.assert_close(out.loss, causal_lm_loss(out.logits, ids) + aux, rtol=1e-12, atol=0)
    out.loss.backward()
    assert model.layers[0].mixer.kvg_proj.weight.grad.abs().sum() > 0
    assert not torch.equal(before, model.layers[0].mixer.codebook)  # the EMA moved the codes


def test_mixer_init_follows_the_generator():
    cfg = ModelConfig(**{**BASE, "layer_specs": [{"mixer": "lru"}, CASES["vq"]]})
    a, b = CausalLM(cfg), CausalLM(cfg)
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    a.reset_parameters(torch.Generator().manual_seed(4))
    assert not torch.equal(a.layers[0].mixer.fwd.nu_log, b.layers[0].mixer.fwd.nu_log)
    assert not torch.equal(a.layers[1].mixer.codebook, b.layers[1].mixer.codebook)


def test_bad_options_and_states_of_linear_time_mixers():
    def cfg(name, **opts):
        return ModelConfig(**BASE, mixer=name, mixer_options=opts)

    with pytest.raises(ValueError, match="r_min must be smaller than r_max"):
        cfg("lru", r_min=0.9, r_max=0.5)
    with pytest.raises(ValueError, match="unknown scan 'fast'.*valid scan names: sequential"):
        cfg("slru", scan="fast")
    with pytest.raises(ValueError, match="max_phase"):
        cfg("lru", max_phase=-1.0)
    with pytest.raises(ValueError, match="allowed keys: d_state"):
        cfg("slru", max_phase=1.0)  # SLRU has no phase
    with pytest.raises(ValueError, match="vq num_codes must be a positive int, got 0"):
        cfg("vq", num_codes=0)
    with pytest.raises(ValueError, match="vq block_len must be a positive int"):
        cfg("vq", block_len=0)
    with pytest.raises(ValueError, match="expansion \\(30\\) must be divisible by num_heads"):
        cfg("vq", expansion=30, num_heads=4)
    with pytest.raises(ValueError, match="unknown feature map 'tanh'"):
        cfg("linear", feature_map="tanh")
    ids = _ids()
    # a block length that does not divide the sequence is padded inside: any length works
    vq = _model("vq")
    assert vq(ids[:, :7]).logits.shape == (2, 7, 61)
    # states of another shape or kind are named
    small, big = _model("lru"), _model("lru", mixer_options={"d_state": 16})
    cache = small(ids[:, :4], use_cache=True).past_key_values
    with pytest.raises(ValueError, match="state.hidden must have shape \\(2, 16\\)"):
        big(ids[:, 4:5], past_key_values=cache)
    with pytest.raises(StateMismatchError, match="'lru' layer was handed to a 'slru' layer"):
        _model("slru")(ids[:, 4:5], past_key_values=cache)
    cache = _model("vq")(ids[:, :4], use_cache=True).past_key_values
    with pytest.raises(ValueError, match="cache holds counts"):
        _model("vq", mixer_options={**CASES["vq"]["mixer_options"], "num_codes": 8})(
            ids[:, 4:5], past_key_values=cache)
    with pytest.raises(ValueError, match="takes no explicit"):
        small(ids, attention_mask=torch.ones(1, 1, 14, 14, dtype=torch.bool))
    with pytest.raises(ValueError, match="takes no explicit"):
        vq(ids, attention_mask=torch.ones(1, 1, 14, 14, dtype=torch.bool))
