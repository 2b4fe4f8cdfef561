"""Linear attention: quadratic oracle, parallel, chunked-recurrent and step forms, state, layer."""

from __future__ import annotations

import pytest
import torch

from formerlab.attention.linear import (
    FEATURE_MAPS,
    LinearAttention,
    LinearAttentionState,
    linear_attention,
    linear_attention_matrix,
    linear_attention_recurrent,
    linear_attention_step,
)
from formerlab.recurrent import LayerState


def _qkv(seed=0, b=2, h=3, n=9, d=4, dv=5):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, n, d, generator=g, dtype=torch.float64),
            torch.randn(b, h, n, d, generator=g, dtype=torch.float64),
            torch.randn(b, h, n, dv, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("causal", [False, True])
def test_equals_quadratic_form(causal):
    q, k, v = _qkv()
    ref = linear_attention_matrix(q, k, causal=causal) @ v
    torch.testing.assert_close(linear_attention(q, k, v, causal=causal), ref, rtol=0, atol=1e-12)


def test_recurrent_step_equals_causal_parallel():
    q, k, v = _qkv(1)
    full = linear_attention(q, k, v, causal=True)
    state = LinearAttentionState()
    steps = [state.step(q[..., t, :], k[..., t, :], v[..., t, :]) for t in range(q.shape[-2])]
    torch.testing.assert_close(torch.stack(steps, dim=-2), full, rtol=0, atol=1e-12)
    assert state.length == q.shape[-2]


def test_eps_and_feature_maps():
    q, k, v = _qkv(2)
    a = linear_attention(q, k, v, eps=1e-3)
    b = linear_attention(q, k, v)
    assert float((a - b).abs().max()) > 0
    assert {"elu1", "relu"} <= set(FEATURE_MAPS)
    with pytest.raises(ValueError, match="elu1"):
        linear_attention(q, k, v, feature_map="elu2")


def test_shape_errors():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="expected"):
        linear_attention(q, k[..., :3], v)
    with pytest.raises(ValueError, match="nq == nk"):
        linear_attention(q[..., :4, :], k, v, causal=True)


# --- recurrent (chunked) form, step function, state protocol, layer -------------------------------
@pytest.mark.parametrize("chunk_size", [1, 4, 9, 64])
@pytest.mark.parametrize("feature_map", ["elu1", "softplus"])
def test_recurrent_form_equals_parallel_and_quadratic(chunk_size, feature_map):
    q, k, v = _qkv(3, n=23)
    out, state = linear_attention_recurrent(q, k, v, feature_map=feature_map, chunk_size=chunk_size)
    par = linear_attention(q, k, v, causal=True, feature_map=feature_map)
    ref = linear_attention_matrix(q, k, causal=True, feature_map=feature_map) @ v
    torch.testing.assert_close(out, par, rtol=0, atol=1e-12)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-12)
    assert state.s.shape == (2, 3, 4, 5) and state.z.shape == (2, 3, 4) and state.length == 23
    assert isinstance(state, LayerState)


def test_pieces_and_steps_equal_whole():
    q, k, v = _qkv(4, n=30)
    full = linear_attention(q, k, v, causal=True)
    outs, state = [], None
    for lo, hi in [(0, 7), (7, 8), (8, 8), (8, 30)]:
        o, state = linear_attention_recurrent(q[..., lo:hi, :], k[..., lo:hi, :], v[..., lo:hi, :],
                                              state, chunk_size=4)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, -2), full, rtol=0, atol=1e-12)
    # one-token steps continue a chunked prefix
    _, state = linear_attention_recurrent(q[..., :10, :], k[..., :10, :], v[..., :10, :])
    steps = []
    for t in range(10, 30):
        o, state = linear_attention_step(q[..., t, :], k[..., t, :], v[..., t, :], state)
        steps.append(o)
    torch.testing.assert_close(torch.stack(steps, -2), full[..., 10:, :], rtol=0, atol=1e-12)
    assert state.length == 30


def test_functions_do_not_modify_the_given_state():
    q, k, v = _qkv(5)
    _, s = linear_attention_recurrent(q, k, v)
    before = s.s.clone()
    linear_attention_recurrent(q, k, v, s)
    linear_attention_step(q[..., 0, :], k[..., 0, :], v[..., 0, :], s)
    assert torch.equal(s.s, before) and s.length == q.shape[-2]


def test_state_reorder_batch_select_crop():
    q, k, v = _qkv(6, b=3, n=12)
    full = linear_attention(q, k, v, causal=True)
    _, s = linear_attention_recurrent(q[..., :5, :], k[..., :5, :], v[..., :5, :])
    idx = torch.tensor([2, 0, 2])
    o, _ = linear_attention_recurrent(q[idx, :, 5:], k[idx, :, 5:], v[idx, :, 5:], s.clone().reorder(idx))
    ref = linear_attention(q[idx], k[idx], v[idx], causal=True)[..., 5:, :]
    torch.testing.assert_close(o, ref, rtol=0, atol=1e-12)
    s2 = s.clone().batch_select(torch.tensor([False, True, False]))
    o2, _ = linear_attention_recurrent(q[1:2, :, 5:], k[1:2, :, 5:], v[1:2, :, 5:], s2)
    torch.testing.assert_close(o2, full[1:2, :, 5:], rtol=0, atol=1e-12)
    assert s.crop(5) is s
    with pytest.raises(NotImplementedError, match="crop is not supported for recurrent state"):
        s.crop(2)


def test_layer_in_pieces_equals_whole_and_step_decoding():
    torch.manual_seed(0)
    layer = LinearAttention(12, 3).double()
    x = torch.randn(2, 17, 12, dtype=torch.float64)
    full, none = layer(x)
    assert none is None
    y1, st = layer(x[:, :6], use_cache=True)
    y2, st = layer(x[:, 6:16], state=st)
    y3, st = layer(x[:, 16:], state=st)
    torch.testing.assert_close(torch.cat([y1, y2, y3], 1), full, rtol=0, atol=1e-12)
    assert st.length == 17 and st.s.shape == (2, 3, 4, 4)
    # oracle: the quadratic masked form through the same projections
    h = lambda t: t.view(2, 17, 3, 4).transpose(1, 2)  # noqa: E731
    q, k, v = h(layer.q_proj(x)), h(layer.k_proj(x)), h(layer.v_proj(x))
    o = (linear_attention_matrix(q, k, causal=True) @ v).transpose(1, 2).reshape(2, 17, 12)
    torch.testing.assert_close(full, layer.o_proj(o), rtol=0, atol=1e-12)
    enc = LinearAttention(12, 3, causal=False).double()
    with pytest.raises(ValueError, match="no decoding state"):
        enc(x, use_cache=True)


def test_recurrent_errors():
    q, k, v = _qkv(7)
    _, s = linear_attention_recurrent(q, k, v)
    with pytest.raises(ValueError, match="state.s / state.z must have shapes"):
        linear_attention_recurrent(q[..., :2, :], k[..., :2, :], v[..., :2, :3], s)
    with pytest.raises(ValueError, match="feature_map='relu' differs"):
        linear_attention_recurrent(q, k, v, s, feature_map="relu")
    with pytest.raises(ValueError, match="chunk_size"):
        linear_attention_recurrent(q, k, v, chunk_size=0)
    with pytest.raises(TypeError, match="LinearAttentionState"):
        linear_attention_step(q[..., 0, :], k[..., 0, :], v[..., 0, :], state=(s.s, s.z))


@pytest.mark.parametrize("causal", [False, True])
def test_key_mask_hides_padding_and_equals_the_row_alone(causal):
    q, k, v = _qkv(7, n=12)
    mask = torch.arange(12) >= 4  # left padding (for the encoder: any position works alike)
    out = linear_attention(q, k, v, causal=causal, key_mask=mask)
    alone = linear_attention(q[..., 4:, :], k[..., 4:, :], v[..., 4:, :], causal=causal)
    torch.testing.assert_close(out[..., 4:, :], alone, rtol=0, atol=1e-12)
    if causal:
        assert float(out[..., :4, :].abs().max()) == 0.0  # queries that see no key: zeros
        rec, st = linear_attention_recurrent(q, k, v, key_mask=mask, chunk_size=5)
        torch.testing.assert_close(rec, out, rtol=0, atol=1e-12)
        _, st_alone = linear_attention_recurrent(q[..., 4:, :], k[..., 4:, :], v[..., 4:, :])
        torch.testing.assert_close(st.s, st_alone.s, rtol=0, atol=1e-12)  # padding added nothing
    # padding in the middle of an encoder's row: the oracle drops those keys from the matrix
    mid = torch.ones(12, dtype=torch.bool)
    mid[5:8] = False
    if not causal:
        a = linear_attention_matrix(q, k[..., mid, :]) @ v[..., mid, :]
        torch.testing.assert_close(linear_attention(q, k, v, key_mask=mid), a, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="does not broadcast"):
        linear_attention(q, k, v, causal=causal, key_mask=mask[:5])
    with pytest.raises(TypeError, match="key_mask must be a bool tensor"):
        linear_attention(q, k, v, causal=causal, key_mask=mask.float())
