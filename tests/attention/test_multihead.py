"""MHA/GQA: cached decoding equals the full forward; padding; hooks."""

import pytest
import torch

from formerlab.attention import MultiHeadAttention
from formerlab.position import RotaryEmbedding


def make(num_kv=2, **kw):
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, 4, num_kv, **kw).double()
    attn.rotary = RotaryEmbedding(8, layout=kw.pop("layout", "half"))
    return attn


@pytest.mark.parametrize("num_kv", [4, 2, 1])
def test_cache_parity(num_kv):
    attn = make(num_kv)
    x = torch.randn(2, 9, 32, dtype=torch.float64)
    pos = torch.arange(9)
    full, _, _ = attn(x, pos)
    out1, cache, _ = attn(x[:, :5], pos[:5], use_cache=True)
    outs = [out1]
    for t in range(5, 9):
        o, cache, _ = attn(x[:, t : t + 1], pos[t : t + 1], state=cache, use_cache=True)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=1e-12, atol=1e-12)


def test_left_padding_matches_unpadded():
    attn = make(2)
    x = torch.randn(1, 5, 32, dtype=torch.float64)
    pad = torch.randn(1, 3, 32, dtype=torch.float64)
    ref, _, _ = attn(x, torch.arange(5))
    xp = torch.cat([pad, x], 1)
    keep = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]], dtype=torch.bool)
    # positions restart at the first real token, as Hugging Face generate() does
    pos = torch.tensor([[0, 0, 0, 0, 1, 2, 3, 4]])
    out, _, _ = attn(xp, pos, key_padding=keep)
    torch.testing.assert_close(out[:, 3:], ref, rtol=1e-12, atol=1e-12)


def test_query_scale_hook_is_applied():
    attn = make(4)
    x = torch.randn(1, 6, 32, dtype=torch.float64)
    base, _, _ = attn(x, torch.arange(6))

    class Double:
        def query_factor(self, q_positions, counts):
            return torch.full(q_positions.shape, 2.0)

    attn.query_scale = Double()
    scaled, _, _ = attn(x, torch.arange(6))
    assert not torch.allclose(base, scaled)
    # doubling every query equals doubling the score scale
    attn.query_scale = None
    q = attn._split(attn.q_proj(x), 4)
    k = attn._split(attn.k_proj(x), attn.num_kv_heads)
    v = attn._split(attn.v_proj(x), attn.num_kv_heads)
    q, k = attn.rotary.rotate(q, torch.arange(6)), attn.rotary.rotate(k, torch.arange(6))
    from formerlab.attention import scaled_dot_product

    o = scaled_dot_product(q, k, v, is_causal=True, scale=2 / 8**0.5)
    ref = attn.o_proj(o.transpose(1, 2).reshape(1, 6, 32))
    torch.testing.assert_close(scaled, ref, rtol=1e-12, atol=1e-12)


def test_cache_mismatch_after_method_change_is_an_error():
    attn = make(4)
    attn.rotary.set_schedule("default")
    x = torch.randn(1, 4, 32, dtype=torch.float64)
    _, cache, _ = attn(x, torch.arange(4), use_cache=True)

    class Identity:
        is_identity = False

    attn.relpos = Identity()
    with pytest.raises(ValueError, match="position method"):
        attn(x[:, :1], torch.tensor([4]), state=cache)


def test_switching_static_schedules_with_a_live_cache_is_an_error():
    """Keys rotated under PI and read under NTK would mix frequencies silently."""
    attn = make(4)
    attn.rotary.set_schedule("linear", factor=2.0)
    x = torch.randn(1, 4, 32, dtype=torch.float64)
    _, cache, _ = attn(x, torch.arange(4), use_cache=True)
    attn.rotary.set_schedule("ntk_old", factor=2.0)
    with pytest.raises(ValueError, match="rotated with schedule"):
        attn(x[:, :1], torch.tensor([4]), state=cache)
    attn.rotary.set_schedule("linear", factor=2.0)  # back to the cache's schedule: fine
    attn(x[:, :1], torch.tensor([4]), state=cache)


def test_kv_cache_grows_by_doubling_not_by_copying_every_step():
    attn = make(4)
    x = torch.randn(1, 40, 32, dtype=torch.float64)
    _, cache, _ = attn(x[:, :1], torch.arange(1), use_cache=True)
    reallocations, ptr = 0, cache.keys.data_ptr()
    for t in range(1, 40):
        _, cache, _ = attn(x[:, t:t + 1], torch.arange(t, t + 1), state=cache, use_cache=True)
        if cache.keys.data_ptr() != ptr:
            reallocations, ptr = reallocations + 1, cache.keys.data_ptr()
    assert cache.length == 40
    assert reallocations <= 2  # 16 -> 32 -> 64 slots, not one copy per token


def test_bad_heads():
    with pytest.raises(ValueError, match="divisible by num_heads"):
        MultiHeadAttention(30, 4)
    with pytest.raises(ValueError, match="divisible by num_kv_heads"):
        MultiHeadAttention(32, 4, 3)


def test_relative_maps_keep_the_normaliser_and_attention_dropout():
    """A ReRoPE map must not silently switch the layer back to softmax without dropout."""
    from formerlab.position import make_relpos

    x = torch.randn(2, 12, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    pos = torch.arange(12)
    # a window covering every distance makes ReRoPE plain RoPE: compare with the RoPE path
    for norm in ("l2", "squared_relu", "softmax_plus"):
        attn = make(4, normalization=norm).eval()
        plain, _, _ = attn(x, pos)
        attn.relpos = make_relpos("rerope", window=64)
        wide, _, _ = attn(x, pos)
        torch.testing.assert_close(wide, plain, rtol=1e-6, atol=1e-7)  # float32 RoPE tables
        attn.relpos = make_relpos("rerope", window=3)
        narrow, _, w = attn(x, pos, return_weights=True)
        assert not torch.allclose(narrow, plain)
        if norm == "l2":  # rows of an l2-normalised matrix have unit norm
            torch.testing.assert_close(w.norm(dim=-1), torch.ones_like(w[..., 0]))
    soft = make(4).eval()
    soft.relpos = make_relpos("rerope", window=3)
    l2 = make(4, normalization="l2").eval()
    l2.relpos = make_relpos("rerope", window=3)
    assert not torch.allclose(soft(x, pos)[0], l2(x, pos)[0])
    drop = make(4, attention_dropout=0.5)
    drop.relpos = make_relpos("leaky", window=3, factor=1 / 16)  # InvLeaky training
    drop.train()
    torch.manual_seed(0)
    a = drop(x, pos)[0]
    torch.manual_seed(1)
    b = drop(x, pos)[0]
    assert not torch.allclose(a, b), "attention dropout must act under a relative map"
    drop.eval()
    torch.testing.assert_close(drop(x, pos)[0], drop(x, pos)[0], rtol=0, atol=0)
