"""Linear attention baseline."""

from __future__ import annotations

import pytest
import torch

from formerlab.attention.linear import (
    FEATURE_MAPS,
    LinearAttentionState,
    linear_attention,
    linear_attention_matrix,
)


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
