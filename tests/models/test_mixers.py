"""Every registered token mixer behind one model: cached decoding equals the full forward, ragged
left-padded batches equal their rows alone, the state protocol (reorder, batch_select, crop),
save/load, hybrid stacks and the errors users meet."""

from __future__ import annotations

import pytest
import torch

from formerlab import ModelConfig
from formerlab.models import MIXERS, CausalLM, Encoder
from formerlab.nn import StateMismatchError

BASE = dict(vocab_size=61, hidden_size=32, num_layers=2, num_heads=4, max_position_embeddings=64)

#: one small model per registered mixer (a new mixer must add its case here)
CASES: dict[str, dict] = {
    "mha": {},
    "gau": {"mixer": "gau", "mixer_options": {"expansion": 48, "key_size": 16}, "ffn": "none",
            "normalization": "softmax_plus"},
    "synthesizer": {"mixer": "synthesizer", "mixer_options": {"kind": ["dense", "random", "vanilla"]}},
}


def test_every_registered_mixer_has_a_case():
    assert set(MIXERS) <= set(CASES), f"mixers without a test case: {set(MIXERS) - set(CASES)}"


def _model(name: str, **extra) -> CausalLM:
    torch.manual_seed(0)
    return CausalLM(ModelConfig(**{**BASE, **CASES[name], **extra})).double().eval()


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
    # crop back to 5 tokens and decode again (speculative decoding rolls back like this)
    cache = model(ids[:, :8], use_cache=True).past_key_values
    cache.crop(5)
    assert cache.length == 5
    again = model(ids[:, 5:], past_key_values=cache, use_cache=True)
    torch.testing.assert_close(again.logits, full[:, 5:], rtol=1e-10, atol=1e-10)
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
