"""extend_context on tiny random transformers Llama models (no downloads).

The cache keyword of transformers' forward changed (``past_key_values`` → ``cache`` in 5.24); the
functions below pass it under the installed spelling so the file runs on 5.0 … 5.24.
"""

from __future__ import annotations

import inspect
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from formerlab.interop.hf import SUPPORTED_MODEL_TYPES, extend_context  # noqa: E402
from formerlab.position.relative import (  # noqa: E402
    IdentityMap,
    LeakyReRoPEMap,
    ReRoPEMap,
    naive_relpos_attention,
)

N = 40  # > max_position_embeddings = 16, so every schedule is active


def step(m, ids, out=None, **kw):
    """One forward continuing ``out``'s cache (whatever the installed keyword is called)."""
    name = "cache" if "cache" in inspect.signature(type(m).forward).parameters else "past_key_values"
    if out is not None:
        kw[name] = out[name]
    return m(ids, use_cache=True, **kw)


def prefill_then_decode(m, ids, start):
    with torch.no_grad():
        out = step(m, ids[:, :start])
        steps = [out.logits]
        for t in range(start, ids.shape[1]):
            out = step(m, ids[:, t:t + 1], out)
            steps.append(out.logits)
    return torch.cat(steps, 1)


def config(attn="eager", **kw):
    kw.setdefault("num_hidden_layers", 2)
    kw.setdefault("max_position_embeddings", 16)
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, **kw,
    )
    cfg._attn_implementation = attn
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config()).eval()


@pytest.fixture(scope="module")
def ids():
    return torch.randint(0, 97, (2, N), generator=torch.Generator().manual_seed(1))


def logits(m, ids, **kw):
    with torch.no_grad():
        return m(ids, **kw).logits


def twin(model, attn="eager", **rope):
    m = transformers.LlamaForCausalLM(config(attn, rope_parameters={"rope_theta": 10000.0, **rope})).eval()
    m.load_state_dict(model.state_dict())
    return m


@pytest.mark.parametrize("method,params,hf", [
    ("linear", {"factor": 4.0}, {"rope_type": "linear", "factor": 4.0}),
    ("dynamic", {"factor": 2.0}, {"rope_type": "dynamic", "factor": 2.0}),
    ("yarn", {"factor": 4.0}, {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}),
    ("yarn", {"factor": 8.0, "beta_fast": 16}, {"rope_type": "yarn", "factor": 8.0, "beta_fast": 16,
                                                "original_max_position_embeddings": 16}),
])
def test_schedule_patch_equals_transformers_scaling(model, ids, method, params, hf):
    base = logits(model, ids)
    with extend_context(model, method, **params):
        ours = logits(model, ids)
    ref = logits(twin(model, **hf), ids)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(ours, base, atol=1e-4)
    assert torch.equal(logits(model, ids), base)


def _state(m):
    rot = m.model.rotary_emb
    return (rot.inv_freq.clone(), rot.original_inv_freq.clone(), rot.attention_scaling, rot.rope_type,
            [("forward" in a.self_attn.__dict__) for a in m.model.layers],
            len(rot._forward_pre_hooks), [len(a.self_attn.q_proj._forward_hooks) for a in m.model.layers])


def test_remove_restores_exactly(model, ids):
    before, base = _state(model), logits(model, ids)
    handles = [extend_context(model, "yarn", factor=4.0, logn_train_len=8),
               extend_context(model, "dynamic", factor=2.0, replace_scaling=True),
               extend_context(model, "leaky", window=4, factor=8.0)]
    with pytest.raises(RuntimeError, match="reverse"):
        handles[0].remove()
    for h in reversed(handles):
        h.remove()
    after = _state(model)
    assert all(torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b for a, b in zip(before, after))
    assert torch.equal(logits(model, ids), base)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_rerope_window_covering_sequence_is_unpatched(model, ids, attn):
    m = twin(model, attn)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding in row 1
    base = logits(m, ids, attention_mask=mask)
    for window in (N, 10 * N):
        with extend_context(m, "rerope", window=window):
            out = logits(m, ids, attention_mask=mask)
        torch.testing.assert_close(out[0], base[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out[1, 5:], base[1, 5:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method,params", [
    ("rerope", {"window": 5}),
    ("leaky", {"window": 4, "factor": 8.0}),
    ("rerope", {"window": 6, "logn_train_len": 8}),
])
def test_prefill_then_decode_equals_full_forward(model, ids, method, params):
    with extend_context(model, method, **params):
        full = logits(model, ids)
        decoded = prefill_then_decode(model, ids, 27)
    torch.testing.assert_close(decoded, full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, logits(model, ids), atol=1e-4)


def test_logn_dagger_identity_within_train_len_and_cache(model, ids):
    base = logits(model, ids)
    with extend_context(model, "logn", train_len=N):
        torch.testing.assert_close(logits(model, ids), base, rtol=0, atol=0)
    with extend_context(model, "logn", train_len=8):
        full = logits(model, ids)
        torch.testing.assert_close(full[:, :8], base[:, :8], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(prefill_then_decode(model, ids, 10), full, rtol=1e-5, atol=1e-5)


def _decode_errors(m, ids, start=20, stop=30):
    errs = []
    with torch.no_grad():
        out = step(m, ids[:, :start])
        for t in range(start, stop):
            out = step(m, ids[:, t:t + 1], out)
            errs.append((out.logits[:, -1] - m(ids[:, :t + 1]).logits[:, -1]).abs().max().item())
    return max(errs)


def test_dynamic_ntk_exact_under_cache_with_raw_keys(model, ids):
    # One attention layer: with the raw-key cache (ReRoPE patch, window covering everything) every
    # decode step equals the full forward of the prefix; transformers' rotated cache is stale (#25104).
    # With more layers the cached K/V of deeper layers depend on hidden states computed under the
    # earlier bases, so no K/V cache can make dynamic NTK match the full forward there.
    one = transformers.LlamaForCausalLM(config(num_hidden_layers=1)).eval()
    hf = transformers.LlamaForCausalLM(
        config(num_hidden_layers=1, rope_parameters={"rope_type": "dynamic", "factor": 8.0, "rope_theta": 10000.0})
    ).eval()
    hf.load_state_dict(one.state_dict())
    with extend_context(one, "dynamic", factor=8.0), extend_context(one, "rerope", window=10 * N):
        assert _decode_errors(one, ids) < 1e-5
    assert _decode_errors(hf, ids) > 1e-4


def test_generate_runs_and_matches_unpatched_when_window_covers(model, ids):
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        base = model.generate(ids[:, :12], **kw)
        with extend_context(model, "rerope", window=64):
            out = model.generate(ids[:, :12], **kw)
    assert torch.equal(out, base)


def test_bad_input(model):
    with pytest.raises(TypeError, match="llama"):
        extend_context(torch.nn.Linear(2, 2), "linear", factor=2.0)
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=11))
    with pytest.raises(TypeError, match=str(list(SUPPORTED_MODEL_TYPES))[1:-1].split(",")[0]):
        extend_context(gpt2, "linear", factor=2.0)
    with pytest.raises(ValueError, match="ntk_mixed"):
        extend_context(model, "ntk_magic", factor=2.0)
    with pytest.raises(ValueError, match="factor"):
        extend_context(model, "linear")
    with pytest.raises(ValueError, match="factor"):
        extend_context(model, "linear", factor=0.5)
    with pytest.raises(ValueError, match="window"):
        extend_context(model, "rerope")
    with pytest.raises(ValueError, match="window"):
        extend_context(model, "rerope", window=0)
    with pytest.raises(ValueError, match="unknown parameter"):
        extend_context(model, "rerope", window=4, size=3)
    assert "forward" not in model.model.layers[0].self_attn.__dict__  # failed patches leave no trace
    assert not getattr(model, "_formerlab_extend_handles", [])


def test_qwen2_family(ids):
    cfg = transformers.Qwen2Config(vocab_size=97, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    m = transformers.Qwen2ForCausalLM(cfg).eval()
    base = logits(m, ids)
    with extend_context(m, "rerope", window=10 * N):
        torch.testing.assert_close(logits(m, ids), base, rtol=1e-5, atol=1e-5)
    with extend_context(m, "linear", factor=2.0):
        patched = logits(m, ids)
    cfg2 = transformers.Qwen2Config(**{**cfg.to_dict(), "rope_parameters": {"rope_type": "linear", "factor": 2.0,
                                                                             "rope_theta": 10000.0}})
    cfg2._attn_implementation = "sdpa"
    m2 = transformers.Qwen2ForCausalLM(cfg2).eval()
    m2.load_state_dict(m.state_dict())
    torch.testing.assert_close(patched, logits(m2, ids), rtol=1e-5, atol=1e-5)
    assert torch.equal(logits(m, ids), base)


# --- ReRoPE against the per-pair oracle on the HF layer's own projections ---------------------
def _record_attention(m):
    """Forward hooks collecting every attention call's input hidden states and output."""
    calls = {i: ([], []) for i in range(len(m.model.layers))}

    def hook(i):
        def fn(module, args, kwargs, out):
            calls[i][0].append(kwargs["hidden_states"] if "hidden_states" in kwargs else args[0])
            calls[i][1].append(out[0])
        return fn

    handles = [layer.self_attn.register_forward_hook(hook(i), with_kwargs=True)
               for i, layer in enumerate(m.model.layers)]
    return calls, handles


def _oracle(m, attn, h, relpos, key_keep=None):
    """``o_proj(naive_relpos_attention(q, k, v))`` with q/k/v from the layer's projections."""
    b, n, _ = h.shape
    split = lambda x: x.view(b, n, -1, attn.head_dim).transpose(1, 2)  # noqa: E731
    q, k, v = split(attn.q_proj(h)), split(attn.k_proj(h)), split(attn.v_proj(h))
    pos = torch.arange(n)
    mask = (pos[None, :] <= pos[:, None])[None, None]
    if key_keep is not None:
        mask = mask & key_keep[:, None, None, :]
    out = naive_relpos_attention(q, k, v, q_positions=pos, k_positions=pos, relpos=relpos, mask=mask,
                                 inv_freq=m.model.rotary_emb.inv_freq, scale=attn.scaling)
    return attn.o_proj(out.to(h.dtype).transpose(1, 2).reshape(b, n, -1))


@pytest.fixture(scope="module")
def sharp():
    """Larger weights than the default init: peaked attention, so the window visibly matters."""
    torch.manual_seed(2)
    return transformers.LlamaForCausalLM(config(initializer_range=0.25)).eval()


@pytest.mark.parametrize("method,params,relpos", [
    ("rerope", {"window": 5}, ReRoPEMap(5)),
    ("leaky", {"window": 4, "factor": 8.0}, LeakyReRoPEMap(4, 8.0)),
])
@pytest.mark.parametrize("mode", ["full", "padded", "decode"])
def test_window_below_length_matches_naive_oracle(sharp, ids, method, params, relpos, mode):
    model = sharp
    keep = torch.ones_like(ids, dtype=torch.bool)
    if mode == "padded":
        keep[1, :3] = False  # left padding in row 1: the general masked path
    calls, hooks = _record_attention(model)
    try:
        with extend_context(model, method, **params), torch.no_grad():
            if mode == "decode":
                prefill_then_decode(model, ids, 27)
            else:
                model(ids, attention_mask=keep.long())
    finally:
        for hk in hooks:
            hk.remove()
    rows = keep[:, :, None].expand(-1, -1, model.config.hidden_size)  # padded queries are undefined
    for i, layer in enumerate(model.model.layers):
        h, got = torch.cat(calls[i][0], 1), torch.cat(calls[i][1], 1)
        assert h.shape[1] == N
        with torch.no_grad():
            ref = _oracle(model, layer.self_attn, h, relpos, keep)
            plain = _oracle(model, layer.self_attn, h, IdentityMap(), keep)
        torch.testing.assert_close(got[rows], ref[rows], rtol=1e-5, atol=1e-5)
        assert (plain - ref)[rows].abs().max() > 0.1  # the window is active


def test_cache_found_under_either_keyword(model, ids):
    # the attention module called directly, with the cache under the current keyword and under the
    # deprecated one (which the replaced forward receives in **kwargs)
    attn, rot = model.model.layers[0].self_attn, model.model.rotary_emb
    h = torch.randn(2, 9, model.config.hidden_size, generator=torch.Generator().manual_seed(3))
    names = [n for n in ("cache", "past_key_values") if n in inspect.signature(type(attn).forward).parameters]
    assert len(names) == 1
    outs = []
    with extend_context(model, "rerope", window=3), torch.no_grad():
        for name in ("cache", "past_key_values"):
            cache = transformers.DynamicCache()
            pieces = []
            for lo, hi in ((0, 6), (6, 7), (7, 9)):
                pos = torch.arange(lo, hi)[None]
                pieces.append(attn(hidden_states=h[:, lo:hi], position_embeddings=rot(h, pos),
                                   attention_mask=None, position_ids=pos, **{name: cache})[0])
            assert cache.get_seq_length(0) == 9
            outs.append(torch.cat(pieces, 1))
        full = attn(hidden_states=h, position_embeddings=rot(h, torch.arange(9)[None]), attention_mask=None,
                    position_ids=torch.arange(9)[None])[0]
    torch.testing.assert_close(outs[0], full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outs[1], full, rtol=1e-5, atol=1e-5)


def test_static_cache_is_refused(model, ids):
    cache = transformers.StaticCache(config=model.config, max_cache_len=64)
    with extend_context(model, "rerope", window=5), torch.no_grad():
        name = "cache" if "cache" in inspect.signature(type(model).forward).parameters else "past_key_values"
        with pytest.raises(ValueError, match="DynamicCache"):
            model(ids[:, :8], use_cache=True, **{name: cache})


# --- YaRN and friends on a model that already scales its rope ---------------------------------
LLAMA31 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
           "original_max_position_embeddings": 16, "rope_theta": 10000.0}


def test_existing_scaling_refused_unless_replaced(model, ids):
    # a Llama-3.1-style config: max_position_embeddings = 8 × the training length L0 = 16
    m = transformers.LlamaForCausalLM(config(max_position_embeddings=128, rope_parameters=dict(LLAMA31))).eval()
    m.load_state_dict(model.state_dict())
    base = logits(m, ids)
    with pytest.raises(ValueError, match=r"llama3.*replace_scaling=True"):
        extend_context(m, "yarn", factor=4.0)
    assert torch.equal(logits(m, ids), base)  # untouched
    with extend_context(m, "yarn", factor=4.0, replace_scaling=True):
        ours = logits(m, ids)
    ref = transformers.LlamaForCausalLM(config(max_position_embeddings=128, rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 10000.0,
    })).eval()
    ref.load_state_dict(model.state_dict())
    torch.testing.assert_close(ours, logits(ref, ids), rtol=1e-5, atol=1e-5)  # L0 = 16, not 128
    with pytest.raises(TypeError, match="replace_scaling"):
        extend_context(m, "yarn", factor=4.0, replace_scaling="yes")
    with extend_context(model, "linear", factor=2.0), pytest.raises(ValueError, match="active handle"):
        extend_context(model, "ntk_mixed", factor=4.0)


def test_original_length_from_config_without_replacing(model, ids):
    # L0 stated by the config but no scaling in force: yarn uses L0 = 16, not Lmax = 128
    cfg = config(max_position_embeddings=128)
    cfg.original_max_position_embeddings = 16
    m = transformers.LlamaForCausalLM(cfg).eval()
    m.load_state_dict(model.state_dict())
    with extend_context(m, "yarn", factor=4.0):
        ours = logits(m, ids)
    ref = twin(model, rope_type="yarn", factor=4.0, original_max_position_embeddings=16)
    torch.testing.assert_close(ours, logits(ref, ids), rtol=1e-5, atol=1e-5)
