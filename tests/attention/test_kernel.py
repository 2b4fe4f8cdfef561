"""The single attention entry point: SDPA fast path vs explicit path vs a naive oracle."""

import math

import pytest
import torch

from formerlab.attention import (
    NORMALIZERS,
    build_attention_mask,
    causal_mask,
    scaled_dot_product,
)


def naive_attention(q, k, v, mask=None, bias=None, scale=None):
    """Per-row loop oracle (float64)."""
    B, H, nq, d = q.shape
    g = H // k.shape[1]
    scale = 1 / math.sqrt(d) if scale is None else scale
    out = torch.zeros(B, H, nq, v.shape[-1], dtype=q.dtype)
    for b in range(B):
        for h in range(H):
            kk, vv = k[b, h // g], v[b, h // g]
            for i in range(nq):
                s = (kk @ q[b, h, i]) * scale
                if bias is not None:
                    s = s + bias.expand(B, H, nq, -1)[b, h, i]
                if mask is not None:
                    m = mask.expand(B, H, nq, -1)[b, h, i]
                    s = s.masked_fill(~m, float("-inf"))
                out[b, h, i] = torch.softmax(s, -1) @ vv
    return out


@pytest.fixture
def qkv():
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 4, 7, 8, generator=g, dtype=torch.float64)
    k = torch.randn(2, 2, 7, 8, generator=g, dtype=torch.float64)
    v = torch.randn(2, 2, 7, 5, generator=g, dtype=torch.float64)
    return q, k, v


def test_sdpa_path_equals_explicit_and_naive(qkv):
    q, k, v = qkv
    fast = scaled_dot_product(q, k, v, is_causal=True)
    slow, w = scaled_dot_product(q, k, v, is_causal=True, return_weights=True)
    ref = naive_attention(q, k, v, mask=causal_mask(7))
    torch.testing.assert_close(fast, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(slow, ref, rtol=1e-10, atol=1e-10)
    assert torch.all(w.triu(1) == 0), "future keys must get exactly zero weight"


def test_bias_and_mask_combined(qkv):
    q, k, v = qkv
    bias = torch.randn(1, 4, 7, 7, dtype=torch.float64)
    mask = build_attention_mask(7, 7, window=3)
    out = scaled_dot_product(q, k, v, mask=mask, bias=bias)
    ref = naive_attention(q, k, v, mask=mask, bias=bias)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)


def test_causal_bottom_right_alignment_for_decode(qkv):
    q, k, v = qkv
    full = scaled_dot_product(q, k, v, is_causal=True)
    last = scaled_dot_product(q[:, :, -2:], k, v, is_causal=True)
    torch.testing.assert_close(last, full[:, :, -2:])


def test_future_keys_do_not_change_outputs(qkv):
    q, k, v = qkv
    out = scaled_dot_product(q, k, v, is_causal=True)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 4:] += 10.0
    v2[:, :, 4:] -= 3.0
    out2 = scaled_dot_product(q, k2, v2, is_causal=True)
    torch.testing.assert_close(out[:, :, :4], out2[:, :, :4])
    assert not torch.allclose(out[:, :, 4:], out2[:, :, 4:])


def test_window_mask_counts():
    m = build_attention_mask(6, 6, window=2)[0, 0]
    assert m.sum(-1).tolist() == [1, 2, 2, 2, 2, 2]
    assert m[5, 4] and m[5, 5] and not m[5, 3]


def test_key_padding_keeps_own_key():
    pad = torch.tensor([[0, 0, 1, 1]], dtype=torch.bool)
    m = build_attention_mask(4, 4, key_padding=pad)[0, 0]
    assert m[0].tolist() == [True, False, False, False]  # a pad query keeps itself: no NaN rows
    assert m[3].tolist() == [False, False, True, True]


@pytest.mark.parametrize(
    "shapes, match",
    [
        (((2, 4, 5, 8), (2, 3, 5, 8), (2, 3, 5, 8)), "multiple of key/value heads"),
        (((2, 4, 5, 8), (2, 4, 5, 6), (2, 4, 5, 8)), "shapes do not fit"),
        (((4, 5, 8), (4, 5, 8), (4, 5, 8)), "must be 4-D"),
    ],
)
def test_shape_errors_name_shapes(shapes, match):
    q, k, v = (torch.randn(*s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        scaled_dot_product(q, k, v)


def test_unknown_normalizer_lists_valid(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="valid attention normalization names: .*softmax"):
        scaled_dot_product(q, k, v, normalization="sofmax")
    assert "softmax" in NORMALIZERS


def test_non_bool_mask_rejected(qkv):
    q, k, v = qkv
    with pytest.raises(TypeError, match="bool"):
        scaled_dot_product(q, k, v, mask=torch.ones(7, 7))


@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("heads", [1, 2])
def test_wide_values_through_the_fused_kernel_equal_the_explicit_path(causal, heads):
    """GAU: values 4× wider than q/k are served as extra heads of the fused CPU kernel."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, heads, 9, 8, dtype=torch.float64, generator=g)
    k = torch.randn(2, heads, 9, 8, dtype=torch.float64, generator=g)
    mask = torch.rand(2, 1, 9, 9, generator=g) > 0.3
    mask |= torch.eye(9, dtype=torch.bool)
    for width in (32, 30):  # a multiple of the key width, and one completed by zero columns
        v = torch.randn(2, heads, 9, width, dtype=torch.float64, generator=g)
        for m in (None, mask):
            fast = scaled_dot_product(q, k, v, mask=m, is_causal=causal, split_values=True)
            ref, _ = scaled_dot_product(q, k, v, mask=m, is_causal=causal, return_weights=True)
            torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("width", [32, 30])
def test_wide_values_never_fall_back_to_the_math_kernel(width):
    from torch.profiler import ProfilerActivity, profile

    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(1, 2, 64, 8, generator=g) for _ in range(2))
    v = torch.randn(1, 2, 64, width, generator=g)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        scaled_dot_product(q, k, v, is_causal=True, split_values=True)
    ops = {e.key for e in prof.key_averages()}
    assert "aten::_scaled_dot_product_attention_math" not in ops, sorted(ops)
