"""RoPE properties (exact, float64) on top of rope.py."""

from __future__ import annotations

import pytest
import torch

from formerlab.position import apply_rope, convert_rope_layout, rope_cos_sin, rope_frequencies
from formerlab.position.relative import _pair_channels, _rotation_matrix

F64 = torch.float64
D = 16
INV, _ = rope_frequencies(D, base=100.0, dtype=F64)


def rot(x, pos, layout="half", inv=INV, rotary_dim=None):
    cos, sin = rope_cos_sin(torch.as_tensor(pos, dtype=F64).reshape(-1), inv, layout=layout)
    return apply_rope(x, cos, sin, layout, rotary_dim)


def matrix(pos, layout="half"):
    """R_n as an explicit d×d matrix (columns = rotated basis vectors)."""
    return rot(torch.eye(D, dtype=F64)[:, None, :], [pos] * 1, layout)[:, 0].T


@pytest.fixture
def qk():
    g = torch.Generator().manual_seed(0)
    return torch.randn(1, D, generator=g, dtype=F64), torch.randn(1, D, generator=g, dtype=F64)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_norm_relativity_group_law(qk, layout):
    q, k = qk
    for n in (0, 1, 7.5, 1000, -3.25):
        torch.testing.assert_close(rot(q, [n], layout).norm(), q.norm())
    for m, n, s in [(2, 9, 3), (2.5, 9.75, -1.125), (0, 500, 1e3)]:
        a = (rot(q, [m], layout) * rot(k, [n], layout)).sum()
        b = (rot(q, [m + s], layout) * rot(k, [n + s], layout)).sum()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for m, n in [(3, 4), (0.5, -2.25)]:
        torch.testing.assert_close(matrix(m, layout) @ matrix(n, layout), matrix(m + n, layout))
        torch.testing.assert_close(matrix(-n, layout), matrix(n, layout).T)


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_explicit_matrix_matches_apply_rope(layout):
    pairs = _pair_channels(D, layout)
    for n in (0.0, 3.0, 17.5):
        torch.testing.assert_close(matrix(n, layout), _rotation_matrix(n * INV, D, pairs))


def test_complex_form_equals_real_form(qk):
    q, _ = qk
    n = 5.5
    x = torch.complex(q[0, 0::2], q[0, 1::2])  # interleaved pairs as complex numbers
    z = x * torch.polar(torch.ones_like(INV), n * INV)
    real = rot(q, [n], "interleaved")[0]
    torch.testing.assert_close(torch.stack([z.real, z.imag], -1).flatten(), real)


def test_layout_permutation_preserves_scores(qk):
    q, k = qk
    perm = convert_rope_layout(torch.arange(D, dtype=F64)[:, None], D, "interleaved", "half")[:, 0].long()
    for m, n in [(1, 8), (4.5, 0.25)]:
        a = (rot(q, [m], "interleaved") * rot(k, [n], "interleaved")).sum()
        b = (rot(q[:, perm], [m], "half") * rot(k[:, perm], [n], "half")).sum()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_partial_rotary(qk):
    q, _ = qk
    inv, _ = rope_frequencies(D, base=100.0, partial_rotary_factor=0.5, dtype=F64)
    out = rot(q, [9.0], inv=inv, rotary_dim=8)
    assert torch.equal(out[:, 8:], q[:, 8:])
    full_inv, _ = rope_frequencies(D, base=100.0, partial_rotary_factor=1.0, dtype=F64)
    torch.testing.assert_close(rot(q, [9.0], inv=full_inv, rotary_dim=D), rot(q, [9.0]))
