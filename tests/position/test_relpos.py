"""ReRoPE / Leaky ReRoPE: the properties of the two-pass form, GQA, decode, bad input."""

from __future__ import annotations

import pytest
import torch

from formerlab.position import (
    RELPOS_MAPS,
    LeakyReRoPEMap,
    ReRoPECache,
    apply_rope,
    make_relpos,
    naive_relpos_attention,
    relative,
    relpos_attention,
    relpos_scores,
    rerope,
    rerope_attention,
    rerope_decode_step,
    rope_cos_sin,
    rope_frequencies,
)

F64 = torch.float64
D = 16
INV, _ = rope_frequencies(D, base=100.0, dtype=F64)


def qkv(b=2, h=4, hkv=2, n=24, d=D, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, n, d, generator=g, dtype=dtype),
            torch.randn(b, hkv, n, d, generator=g, dtype=dtype))


def causal(n):
    return torch.ones(n, n, dtype=torch.bool).tril()


def rope_attention(q, k, v, layout="half"):
    """Plain RoPE + SDPA reference (GQA by repetition)."""
    n = q.shape[2]
    cos, sin = rope_cos_sin(torch.arange(n), INV, layout=layout)
    rep = q.shape[1] // k.shape[1]
    qr, kr = apply_rope(q, cos, sin, layout), apply_rope(k, cos, sin, layout)
    kr, vr = kr.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    return torch.nn.functional.scaled_dot_product_attention(qr, kr, vr, is_causal=True)


def pos(n):
    return torch.arange(n)


MAPS = [("identity", {}), ("rerope", {"window": 1}), ("rerope", {"window": 5}), ("rerope", {"window": 9}),
        ("leaky", {"window": 4, "factor": 3.0}), ("leaky", {"window": 7, "factor": 16.0}),
        ("leaky", {"window": 6, "factor": 0.25}), ("leaky", {"window": 3, "factor": 1 / 16})]


# 1 / 12: ReRoPE with w >= N equals RoPE; bit-identical to the identity map on the same path
@pytest.mark.parametrize("impl", ["two_pass", "lse_merge"])
def test_rerope_large_window_is_rope(impl):
    q, k, v = qkv()
    ref = rope_attention(q, k, v)
    for w in (24, 25, 1000):
        out = rerope_attention(q, k, v, inv_freq=INV, window=w, impl=impl)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        assert torch.equal(out, rerope_attention(q, k, v, inv_freq=INV, window=None, impl=impl))
        for fast in (False, True):
            full = relpos_attention(q, k, v, q_positions=pos(24), k_positions=pos(24), inv_freq=INV,
                                    relpos=make_relpos("rerope", window=w), mask=causal(24), fast=fast)
            torch.testing.assert_close(full, ref, rtol=1e-12, atol=1e-12)
            assert torch.equal(full, relpos_attention(q, k, v, q_positions=pos(24), k_positions=pos(24),
                                                      inv_freq=INV, relpos=None, mask=causal(24), fast=fast))


# 2: Leaky with k = 1 equals RoPE
def test_leaky_factor_one_is_rope():
    q, k, v = qkv()
    out = rerope_attention(q, k, v, inv_freq=INV, window=3, leaky_factor=1.0)
    torch.testing.assert_close(out, rope_attention(q, k, v), rtol=1e-12, atol=1e-12)


# 3: Leaky tends to ReRoPE as k grows
def test_leaky_large_factor_tends_to_rerope():
    q, k, v = qkv()
    re = rerope_attention(q, k, v, inv_freq=INV, window=4)
    errs = [(rerope_attention(q, k, v, inv_freq=INV, window=4, leaky_factor=f) - re).abs().max().item()
            for f in (1e2, 1e4, 1e6)]
    assert errs[0] > errs[1] > errs[2] and errs[2] < 1e-5


def _scores(q, k, relpos, qpos=None, kpos=None):
    n = q.shape[2]
    return relpos_scores(q, k, q_positions=pos(n) if qpos is None else qpos,
                         k_positions=pos(k.shape[2]) if kpos is None else kpos, inv_freq=INV, relpos=relpos)


# 4: inside the window ReRoPE scores equal RoPE scores; 5: beyond it they do not depend on distance
def test_scores_inside_and_beyond_window():
    q, k, _ = qkv(hkv=4)
    w = 6
    s_re, s_rope = _scores(q, k, make_relpos("rerope", window=w)), _scores(q, k, None)
    rel = pos(24)[:, None] - pos(24)[None, :]
    inside = rel < w
    assert torch.equal(s_re[..., inside], s_rope[..., inside])
    # one fixed (q, k) pair at growing distances
    qq = q[:, :, :1].expand(-1, -1, 40, -1)
    kk = k[:, :, :1].expand(-1, -1, 40, -1)
    s = _scores(qq, kk, make_relpos("rerope", window=w))
    far = torch.stack([s[..., i, 0] for i in range(w, 40)], -1)
    torch.testing.assert_close(far, far[..., :1].expand_as(far), rtol=1e-12, atol=1e-12)


# 6: two-pass prefill equals the naive per-pair oracle; 11: LSE merge equals two-pass
@pytest.mark.parametrize("name,params", MAPS)
@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_prefill_matches_oracle(name, params, layout):
    q, k, v = qkv(n=20)
    relpos = make_relpos(name, **params)
    ref = naive_relpos_attention(q, k, v, q_positions=pos(20), k_positions=pos(20), inv_freq=INV,
                                 relpos=relpos, mask=causal(20), layout=layout)
    for fast in (False, True):
        full = relpos_attention(q, k, v, q_positions=pos(20), k_positions=pos(20), inv_freq=INV, relpos=relpos,
                                mask=causal(20), layout=layout, fast=fast)
        torch.testing.assert_close(full, ref, rtol=1e-12, atol=1e-12)
    window, factor = params.get("window"), params.get("factor")
    for impl, bs in [("two_pass", 1), ("two_pass", 6), ("two_pass", 64), ("lse_merge", 5), ("auto", 64)]:
        out = rerope_attention(q, k, v, inv_freq=INV, window=window, leaky_factor=factor, layout=layout,
                               impl=impl, block_size=bs)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,params", MAPS)
def test_explicit_lse_merge_off_cpu_kernel(name, params, monkeypatch):
    monkeypatch.setattr(rerope, "_fused_kernel", lambda *t: None)  # the path used off CPU
    q, k, v = qkv(n=20)
    # the oracle builds every rotation explicitly (relpos_attention would dispatch to this very path)
    ref = naive_relpos_attention(q, k, v, q_positions=pos(20), k_positions=pos(20), inv_freq=INV,
                                 relpos=make_relpos(name, **params), mask=causal(20))
    for bs in (5, 64):
        out = rerope_attention(q, k, v, inv_freq=INV, window=params.get("window"),
                               leaky_factor=params.get("factor"), impl="lse_merge", block_size=bs)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_oracle_general_positions_batch_and_partial_rotary():
    q, k, v = qkv(b=2, h=2, hkv=1, n=10, d=12)
    inv, _ = rope_frequencies(12, base=50.0, partial_rotary_factor=2 / 3, dtype=F64)
    qpos, kpos = torch.tensor([3.5, 7, 8, 20, 21, 22, 40, 41, 42, 43.25]), torch.arange(10) * 4.0
    mask = torch.rand(2, 1, 10, 10, generator=torch.Generator().manual_seed(1)) > 0.3
    for relpos in (make_relpos("rerope", window=6), make_relpos("leaky", window=5, factor=0.5)):
        ref = naive_relpos_attention(q, k, v, q_positions=qpos, k_positions=kpos, inv_freq=inv, relpos=relpos,
                                     mask=mask, rotary_dim=8)
        out = relpos_attention(q, k, v, q_positions=qpos.expand(2, -1), k_positions=kpos, inv_freq=inv,
                               relpos=relpos, mask=mask, rotary_dim=8)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


# 7: prefill then token-by-token decoding with the raw-key cache equals the full forward
@pytest.mark.parametrize("name,params", MAPS)
@pytest.mark.parametrize("chunk", [1, 3])
def test_decode_with_raw_key_cache(name, params, chunk):
    q, k, v = qkv(n=30)
    window, factor = params.get("window"), params.get("factor")
    full = rerope_attention(q, k, v, inv_freq=INV, window=window, leaky_factor=factor)
    cache = ReRoPECache(INV)
    cache.update(k[:, :, :11], v[:, :, :11])
    outs = [rerope_decode_step(q[:, :, :11], cache, window, factor)]
    for t in range(11, 30, chunk):
        cache.update(k[:, :, t:t + chunk], v[:, :, t:t + chunk])
        outs.append(rerope_decode_step(q[:, :, t:t + chunk], cache, window, factor))
    torch.testing.assert_close(torch.cat(outs, 2), full, rtol=1e-12, atol=1e-12)
    assert len(cache) == 30 and torch.equal(cache.keys, k)  # keys are stored un-rotated


@pytest.mark.parametrize("name,params", MAPS[1:])
def test_decode_at_shifted_and_gapped_positions_matches_oracle(name, params):
    # the reference is the per-pair oracle on the same un-rotated q/k/v and positions
    # (relpos_attention's fast path would dispatch to rerope_decode_step itself)
    q, k, v = qkv(n=12)
    relpos = make_relpos(name, **params)
    window, factor = params["window"], params.get("factor")
    shifted = torch.arange(12) + 100
    gapped = torch.tensor([0, 1, 2, 5, 6, 9, 10, 11, 15, 16, 17, 20])
    for kpos in (shifted, gapped):
        cache = ReRoPECache(INV)
        cache.update(k, v, positions=kpos)
        for m in (1, 3):  # one query at the last position (two-pass LSE), several (explicit merge)
            qpos = kpos[-m:]
            out = rerope_decode_step(q[:, :, -m:], cache, window, factor)
            ref = naive_relpos_attention(q[:, :, -m:], k, v, q_positions=qpos, k_positions=kpos, inv_freq=INV,
                                         relpos=relpos, mask=kpos[None, :] <= qpos[:, None])
            torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
        # queries at explicit positions inside the cached range (later keys are masked)
        qpos = kpos[[4, 7, 9]].double() + 0.5
        out = rerope_decode_step(q[:, :, :3], cache, window, factor, q_positions=qpos)
        ref = naive_relpos_attention(q[:, :, :3], k, v, q_positions=qpos, k_positions=kpos, inv_freq=INV,
                                     relpos=relpos, mask=kpos[None, :] <= qpos[:, None])
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


# 8: Leaky's fractional rotations equal apply_rope at non-integer positions
def test_leaky_fractional_rotation_is_rope_at_fractional_position():
    q, k, _ = qkv(b=1, h=1, hkv=1, n=1)
    relpos = make_relpos("leaky", window=4, factor=3.0)
    for i in (8, 9, 15):
        s = relpos_scores(q, k, q_positions=torch.tensor([i]), k_positions=torch.tensor([0]), inv_freq=INV,
                          relpos=relpos)
        f = 4 + (i - 4) / 3  # fractional relative position
        cq, sq = rope_cos_sin(torch.tensor([f], dtype=F64), INV)
        ck, sk = rope_cos_sin(torch.tensor([0.0], dtype=F64), INV)
        expected = (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()
        torch.testing.assert_close(s.squeeze(), expected, rtol=1e-12, atol=1e-12)
        assert f != int(f)


# 9: masking is applied after the merge: no future key receives weight
def test_mask_applied_after_merge():
    q, k, v = qkv(n=16)
    for relpos in (make_relpos("rerope", window=3), make_relpos("leaky", window=3, factor=0.5)):
        _, p = relpos_attention(q, k, v, q_positions=pos(16), k_positions=pos(16), inv_freq=INV, relpos=relpos,
                                mask=causal(16), return_weights=True)
        assert torch.equal(p[..., ~causal(16)], torch.zeros_like(p[..., ~causal(16)]))
        torch.testing.assert_close(p.sum(-1), torch.ones_like(p.sum(-1)))
        # masking pass 2 only, then merging, would let pass 1 leak future keys (r < 0 < w)
        s1 = relpos_scores(q, k, q_positions=pos(16), k_positions=pos(16), inv_freq=INV, relpos=None)
        s2 = relpos_scores(q, k, q_positions=pos(16), k_positions=pos(16), inv_freq=INV, relpos=relpos)
        wrong = torch.where(pos(16)[:, None] - pos(16)[None] < 3, s1, s2.masked_fill(~causal(16), -torch.inf))
        assert (torch.softmax(wrong, -1)[..., ~causal(16)] > 0).any()


# 10: the decode max-shortcut raises for k < 1; the explicit form matches the oracle
def test_shortcut_invalid_for_invleaky():
    r = torch.arange(0, 30, dtype=F64)
    ok = LeakyReRoPEMap(5, 4.0)
    torch.testing.assert_close(ok.f_shortcut(r), ok.f(r))
    inv = LeakyReRoPEMap(5, 0.25)
    with pytest.raises(ValueError, match="shortcut"):
        inv.f_shortcut(r)
    wrong = -torch.maximum(-r, -(5 + (r - 5) / 0.25))
    assert not torch.equal(wrong, inv.f(r))  # the shortcut would pick the wrong branch
    q, k, v = qkv(n=16)
    cache = ReRoPECache(INV)
    cache.update(k, v)
    out = rerope_decode_step(q, cache, 5, 0.25)
    ref = naive_relpos_attention(q, k, v, q_positions=pos(16), k_positions=pos(16), inv_freq=INV, relpos=inv,
                                 mask=causal(16))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_gqa_equals_repeated_heads_and_float32():
    q, k, v = qkv(hkv=2)
    rep = rerope_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), inv_freq=INV, window=5)
    torch.testing.assert_close(rerope_attention(q, k, v, inv_freq=INV, window=5), rep, rtol=1e-12, atol=1e-12)
    out32 = rerope_attention(q.float(), k.float(), v.float(), inv_freq=INV.float(), window=5, leaky_factor=8.0)
    ref = rerope_attention(q, k, v, inv_freq=INV, window=5, leaky_factor=8.0)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("factor", [None, 4.0, 0.25])
def test_gradients_agree_across_impls(factor):
    q, k, v = qkv(n=20)
    grads = []
    for impl in ("two_pass", "lse_merge"):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        out = rerope_attention(*leaves, inv_freq=INV, window=6, leaky_factor=factor, impl=impl, block_size=7)
        (out * torch.linspace(-1, 1, D, dtype=F64)).sum().backward()
        grads.append([t.grad for t in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    relpos = relative.make_relpos("rerope", window=6) if factor is None else relative.make_relpos("leaky", window=6, factor=factor)
    out = relpos_attention(*leaves, q_positions=pos(20), k_positions=pos(20), inv_freq=INV, relpos=relpos,
                           mask=causal(20), fast=False)  # the reference two-pass form, not a fast path
    (out * torch.linspace(-1, 1, D, dtype=F64)).sum().backward()
    for a, b in zip(grads[0], [t.grad for t in leaves]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_attention_factor_and_scale():
    q, k, v = qkv()
    a = rerope_attention(q, k, v, inv_freq=INV, window=4, attention_factor=1.5, scale=0.3)
    b = rerope_attention(q * (1.5**2 * 0.3 * D**0.5), k, v, inv_freq=INV, window=4)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_non_causal_uses_reference():
    q, k, v = qkv(n=10)
    out = rerope_attention(q, k, v, inv_freq=INV, window=3, causal=False)
    ref = naive_relpos_attention(q, k, v, q_positions=pos(10), k_positions=pos(10), inv_freq=INV,
                                 relpos=make_relpos("rerope", window=3))
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_registry_and_maps():
    assert {"identity", "rerope", "leaky"} <= set(RELPOS_MAPS)
    m = make_relpos("leaky", window=8, factor=16)
    assert m.window == 8 and not m.is_identity and make_relpos("identity").is_identity
    assert m == make_relpos(**m.to_dict())
    torch.testing.assert_close(m.f(torch.tensor([0.0, 7.0, 8.0, 24.0])), torch.tensor([0.0, 7.0, 8.0, 9.0]))
    torch.testing.assert_close(make_relpos("rerope", window=8).f(torch.tensor([3.0, 9.0])), torch.tensor([3.0, 8.0]))


# ---------------------------------------------------------------------------------- bad input


def test_bad_input():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="relative-position map"):
        make_relpos("rerope2", window=3)
    for w in (0, -1, 2.5):
        with pytest.raises(ValueError, match="window"):
            make_relpos("rerope", window=w)
        with pytest.raises(ValueError, match="window"):
            rerope_attention(q, k, v, inv_freq=INV, window=w)
    with pytest.raises(ValueError, match="factor"):
        make_relpos("leaky", window=3, factor=0)
    with pytest.raises(ValueError, match="bad parameters"):
        make_relpos("rerope", size=3)
    with pytest.raises(ValueError, match="impl"):
        rerope_attention(q, k, v, inv_freq=INV, window=3, impl="flash")
    with pytest.raises(ValueError, match="multiple"):
        rerope_attention(q[:, :3], k, v, inv_freq=INV, window=3)
    with pytest.raises(ValueError, match="batch, heads, seq, head_dim"):
        rerope_attention(q[0], k, v, inv_freq=INV, window=3)
    with pytest.raises(ValueError, match="q_positions"):
        relpos_attention(q, k, v, q_positions=pos(5), k_positions=pos(24), inv_freq=INV)
    with pytest.raises(TypeError, match="bool"):
        relpos_attention(q, k, v, q_positions=pos(24), k_positions=pos(24), inv_freq=INV, mask=causal(24).float())
    with pytest.raises(ValueError, match="rotary_dim"):
        relpos_attention(q, k, v, q_positions=pos(24), k_positions=pos(24), inv_freq=INV, rotary_dim=4)
    cache = ReRoPECache(INV)
    with pytest.raises(ValueError, match="empty"):
        rerope_decode_step(q, cache, 3)
    cache.update(k[:, :, :4], v[:, :, :4])
    with pytest.raises(ValueError, match="increasing"):
        cache.update(k[:, :, :1], v[:, :, :1], positions=torch.tensor([2]))


def test_dynamic_ntk_exact_with_raw_key_cache():
    # one attention layer: re-rotating raw keys with the frequencies of the current length makes every
    # decode step equal the full forward of the prefix (transformers' rotated cache cannot)
    from formerlab.position import RotaryEmbedding

    emb = RotaryEmbedding(D, base=100.0, rope_type="dynamic", factor=4.0, max_position_embeddings=8)
    q, k, v = qkv(n=24)
    cache = ReRoPECache(emb.inv_freq.double())
    for t in range(24):
        inv = emb.frequencies(t + 1)[0].double()
        cache.inv_freq = inv
        cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
        step = rerope_decode_step(q[:, :, t:t + 1], cache, None)
        full = rerope_attention(q[:, :, :t + 1], k[:, :, :t + 1], v[:, :, :t + 1], inv_freq=inv, window=None)
        torch.testing.assert_close(step, full[:, :, -1:], rtol=1e-12, atol=1e-12)
    assert not torch.equal(emb.frequencies(24)[0], emb.frequencies(8)[0])


@pytest.mark.parametrize("name,params", MAPS[1:])
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_single_token_decode_equal_heads(name, params, dtype):
    q, k, v = qkv(hkv=4, n=26, dtype=dtype)  # equal heads (no GQA grouping)
    window, factor = params.get("window"), params.get("factor")
    inv = INV.to(dtype)
    full = rerope_attention(q, k, v, inv_freq=inv, window=window, leaky_factor=factor, impl="two_pass")
    cache = ReRoPECache(inv)
    cache.update(k[:, :, :3], v[:, :, :3])
    outs = [rerope_decode_step(q[:, :, :3], cache, window, factor)]
    with torch.inference_mode():
        for t in range(3, 26):
            cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
            outs.append(rerope_decode_step(q[:, :, t:t + 1], cache, window, factor))
    tol = 1e-12 if dtype == F64 else 1e-5
    torch.testing.assert_close(torch.cat(outs, 2), full, rtol=tol, atol=tol)


@pytest.mark.parametrize("name,params", MAPS[1:])
def test_single_token_decode_partial_rotary(name, params):
    """Channels past ``rotary_dim`` pass through unrotated on both passes of a decoding step."""
    q, k, v = qkv(hkv=2, n=26, d=12)
    inv, _ = rope_frequencies(12, base=50.0, partial_rotary_factor=2 / 3, dtype=F64)
    window, factor = params.get("window"), params.get("factor")
    full = rerope_attention(q, k, v, inv_freq=inv, window=window, leaky_factor=factor,
                            impl="two_pass", rotary_dim=8)
    cache = ReRoPECache(inv, rotary_dim=8)
    outs = []
    with torch.inference_mode():
        for t in range(26):
            cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
            outs.append(rerope_decode_step(q[:, :, t:t + 1], cache, window, factor))
    torch.testing.assert_close(torch.cat(outs, 2), full, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_single_token_decode_half_precision(dtype):
    """Half-precision inputs: scores, softmax and the weighted sum in float32, output in the
    input's dtype, close to the float64 result."""
    q, k, v = qkv(hkv=2, n=20)
    full = rerope_attention(q, k, v, inv_freq=INV, window=5, impl="two_pass")
    cache = ReRoPECache(INV)
    outs = []
    with torch.inference_mode():
        for t in range(20):
            cache.update(k[:, :, t:t + 1].to(dtype), v[:, :, t:t + 1].to(dtype))
            outs.append(rerope_decode_step(q[:, :, t:t + 1].to(dtype), cache, 5))
    out = torch.cat(outs, 2)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), full, rtol=0.05, atol=0.05)


def test_long_decode_trims_recent_keys_and_tracks_frequency_changes():
    q, k, v = qkv(b=1, h=2, hkv=2, n=160)
    full = rerope_attention(q, k, v, inv_freq=INV, window=5, impl="two_pass")
    cache = ReRoPECache(INV)
    outs = []
    with torch.inference_mode():
        for t in range(160):
            cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
            outs.append(rerope_decode_step(q[:, :, t:t + 1], cache, 5))
    torch.testing.assert_close(torch.cat(outs, 2), full, rtol=1e-12, atol=1e-12)
    assert cache._recent is not None and cache._recent[2].n < 80  # trimmed
    # a new frequency tensor (e.g. dynamic NTK) invalidates the rotated copies
    inv2 = INV / 3
    cache.inv_freq = inv2
    with torch.inference_mode():
        out = rerope_decode_step(q[:, :, -1:], cache, 5, 2.0)
    ref = rerope_attention(q, k, v, inv_freq=inv2, window=5, leaky_factor=2.0, impl="two_pass")[:, :, -1:]
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,params", MAPS)
def test_relpos_attention_dispatch_matches_reference(name, params):
    q, k, v = qkv(n=18)
    relpos = make_relpos(name, **params)
    kw = dict(inv_freq=INV, relpos=relpos)
    # decoding-style calls: queries at the end, keys 100..117, mask None (= causal here) or causal
    kpos = torch.arange(18) + 100
    for m in (1, 4):
        for mask in (None, kpos[None, :] <= kpos[-m:, None]):
            a = relpos_attention(q[:, :, -m:], k, v, q_positions=kpos[-m:], k_positions=kpos, mask=mask, **kw)
            b = relpos_attention(q[:, :, -m:], k, v, q_positions=kpos[-m:], k_positions=kpos, mask=mask,
                                 fast=False, **kw)
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # batched identical positions, prefill with a (B, 1, n, n) causal mask
    bpos = pos(18).expand(2, 18)
    mask = causal(18).expand(2, 1, 18, 18)
    a = relpos_attention(q, k, v, q_positions=bpos, k_positions=bpos, mask=mask, **kw)
    b = relpos_attention(q, k, v, q_positions=bpos, k_positions=bpos, mask=mask, fast=False, **kw)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # no mask at all is bidirectional: never dispatched to the causal paths
    a = relpos_attention(q, k, v, q_positions=pos(18), k_positions=pos(18), **kw)
    b = relpos_attention(q, k, v, q_positions=pos(18), k_positions=pos(18), fast=False, **kw)
    assert torch.equal(a, b)


def test_a_map_without_fast_path_raises_instead_of_running_the_reference():
    from formerlab.position.relative import RelPosFn, relpos_attention
    from formerlab.position.rope import rope_frequencies

    class Clamp(RelPosFn):  # a new map that forgot its fast kernels
        name, window = "clamp", 4

        def f(self, r):
            return r.clamp(max=self.window)

        def outer_positions(self, q_pos, k_pos):
            return torch.full_like(q_pos, float(self.window)), torch.zeros_like(k_pos)

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 10, 8, generator=g) for _ in range(3))
    pos = torch.arange(10)
    inv_freq, _ = rope_frequencies(8)
    kw = dict(q_positions=pos, k_positions=pos, inv_freq=inv_freq, relpos=Clamp())
    with pytest.raises(NotImplementedError, match="Clamp has no fast path"):
        relpos_attention(q, k, v, **kw)
    assert relpos_attention(q, k, v, fast=False, **kw).shape == q.shape  # the reference, on request
