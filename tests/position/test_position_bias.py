"""ALiBi, RoPE + q/k bias and the Sandwich identity (kexue.fm/archives/9577)."""

from __future__ import annotations

import pytest
import torch

from formerlab.position import (
    GauRopeRelBias,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    rope_cos_sin,
    sandwich_bias,
    sandwich_vector,
)
from formerlab.position.schedules import default_inv_freq

F64 = torch.float64
D = 16
INV = default_inv_freq(D, 10000.0)


def rot(x, positions, layout="half"):
    cos, sin = rope_cos_sin(positions.to(F64), INV, layout=layout)
    return apply_rope(x, cos, sin, layout)


def scores(q, k, layout="half"):
    n = q.shape[-2]
    return rot(q, torch.arange(n), layout) @ rot(k, torch.arange(n), layout).T


def test_four_term_decomposition():
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(10, D, generator=g, dtype=F64), torch.randn(10, D, generator=g, dtype=F64)
    a, b = torch.randn(D, generator=g, dtype=F64), torch.randn(D, generator=g, dtype=F64)
    A, B = a.expand(10, D), b.expand(10, D)
    total = scores(q + A, k + B)
    torch.testing.assert_close(total, scores(q, k) + scores(q, B) + scores(A, k) + scores(A, B))


def test_key_bias_cancels_without_rope_not_with_rope():
    g = torch.Generator().manual_seed(1)
    q, k = torch.randn(8, D, generator=g, dtype=F64), torch.randn(8, D, generator=g, dtype=F64)
    b = torch.randn(D, generator=g, dtype=F64)
    plain = torch.softmax(q @ (k + b).T, -1)
    torch.testing.assert_close(plain, torch.softmax(q @ k.T, -1))
    with_rope = torch.softmax(scores(q, k + b), -1)
    assert not torch.allclose(with_rope, torch.softmax(scores(q, k), -1), atol=1e-6)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_sandwich_identity(layout):
    lam = 0.37
    a = sandwich_vector(D, lam, layout).expand(12, D)
    torch.testing.assert_close(scores(a, a, layout), sandwich_bias(12, D, lam))


def test_cross_terms_average_to_zero():
    g = torch.Generator().manual_seed(2)
    q, k = torch.randn(4000, 6, D, generator=g, dtype=F64), torch.randn(4000, 6, D, generator=g, dtype=F64)
    a = torch.randn(D, generator=g, dtype=F64).expand(6, D)
    b = torch.randn(D, generator=g, dtype=F64).expand(6, D)
    p = torch.arange(6)
    cross = rot(q, p) @ rot(b, p).T + rot(a, p) @ rot(k, p).transpose(-1, -2)  # qᵀRb + aᵀRk
    assert cross.mean(0).abs().max() < 0.15 * scores(a, b).abs().max()


def test_gau_rope_rel_bias_is_toeplitz_and_trainable():
    torch.manual_seed(0)
    mod = GauRopeRelBias(D, init_std=1.0)
    bias = mod(torch.arange(10))
    for s in range(-9, 10):
        diag = torch.diagonal(bias, s)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), rtol=1e-5, atol=1e-5)
    bias.sum().backward()
    assert mod.a.grad is not None and mod.b.grad is not None


def test_alibi():
    s = alibi_slopes(8)
    torch.testing.assert_close(s, torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    # 6 heads: the 4-head slopes 2^-2, 2^-4, 2^-6, 2^-8, then every other 8-head slope 2^-1, 2^-3
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2.0 ** -e for e in (2, 4, 6, 8, 1, 3)]))
    # 12 heads: 2^-1 … 2^-8, then every other 16-head slope 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
    torch.testing.assert_close(alibi_slopes(12), torch.tensor([2.0 ** -e for e in (
        1, 2, 3, 4, 5, 6, 7, 8, 0.5, 1.5, 2.5, 3.5)]))
    bias = alibi_bias(torch.arange(5), torch.arange(5), s)
    assert bias.shape == (8, 5, 5)
    torch.testing.assert_close(bias[2, 4, 1], -s[2] * 3)
    assert alibi_bias(torch.arange(5).expand(3, 5), torch.arange(5).expand(3, 5), s).shape == (3, 8, 5, 5)
    with pytest.raises(ValueError, match="num_heads"):
        alibi_slopes(0)
    with pytest.raises(ValueError, match="even"):
        sandwich_bias(4, 7)
