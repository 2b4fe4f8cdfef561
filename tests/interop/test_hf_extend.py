"""extend_context on tiny random transformers Llama models (no downloads)."""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from formerlab.interop.hf import SUPPORTED_MODEL_TYPES, extend_context  # noqa: E402

N = 40  # > max_position_embeddings = 16, so every schedule is active


def config(attn="eager", **kw):
    kw.setdefault("num_hidden_layers", 2)
    cfg = transformers.LlamaConfig(
        vocab_size=97, hidden_size=64, intermediate_size=128, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=16, **kw,
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
               extend_context(model, "dynamic", factor=2.0),
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
        with torch.no_grad():
            out = model(ids[:, :27], use_cache=True)
            steps = [out.logits]
            for t in range(27, N):
                out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
                steps.append(out.logits)
    torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(full, logits(model, ids), atol=1e-4)


def test_logn_dagger_identity_within_train_len_and_cache(model, ids):
    base = logits(model, ids)
    with extend_context(model, "logn", train_len=N):
        torch.testing.assert_close(logits(model, ids), base, rtol=0, atol=0)
    with extend_context(model, "logn", train_len=8):
        full = logits(model, ids)
        torch.testing.assert_close(full[:, :8], base[:, :8], rtol=1e-6, atol=1e-6)
        with torch.no_grad():
            out = model(ids[:, :10], use_cache=True)
            steps = [out.logits]
            for t in range(10, N):
                out = model(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
                steps.append(out.logits)
        torch.testing.assert_close(torch.cat(steps, 1), full, rtol=1e-5, atol=1e-5)


def _decode_errors(m, ids, start=20, stop=30):
    errs = []
    with torch.no_grad():
        out = m(ids[:, :start], use_cache=True)
        for t in range(start, stop):
            out = m(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
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
