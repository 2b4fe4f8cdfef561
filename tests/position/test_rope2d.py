"""Axial 2-D RoPE (kexue.fm/archives/8397)."""

from __future__ import annotations

import pytest
import torch

from formerlab.position import (
    AxialRotaryEmbedding,
    apply_rope,
    grid_positions,
    rope_2d,
    rope_cos_sin,
    rope_nd,
)
from formerlab.position.schedules import default_inv_freq

F64 = torch.float64


def matrix(x, y, d=8, base=10000.0, layout="half"):
    """R_{x,y} as an explicit matrix: rotate the basis vectors."""
    eye = torch.eye(d, dtype=F64)[:, None, :]
    pos = torch.tensor([[float(x), float(y)]], dtype=F64)
    return rope_nd(eye, pos.expand(1, 2), base=base, layout=layout)[:, 0].T


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_orthogonal_and_relative(layout):
    for x, y in [(1, 2), (3.5, -2), (40, 7)]:
        r = matrix(x, y, layout=layout)
        torch.testing.assert_close(r.T @ r, torch.eye(8, dtype=F64))
    for (x1, y1), (x2, y2), (dx, dy) in [((1, 2), (4, -3), (5, 7)), ((0.5, 0), (2, 2.5), (-3, 1.25))]:
        lhs = matrix(x1, y1, layout=layout).T @ matrix(x2, y2, layout=layout)
        torch.testing.assert_close(lhs, matrix(x2 - x1, y2 - y1, layout=layout))
        shifted = matrix(x1 + dx, y1 + dy, layout=layout).T @ matrix(x2 + dx, y2 + dy, layout=layout)
        torch.testing.assert_close(shifted, lhs)


def test_invertible():
    for x, y in [(1.0, 2.0), (-2.5, 3.0), (0.25, -3.1)]:
        r = matrix(x, y)  # half layout, 4 channels per axis: axis-x pair 0 = channels (0, 2), θ_0 = 1
        assert torch.atan2(r[2, 0], r[0, 0]).item() == pytest.approx(x, abs=1e-12)
        assert torch.atan2(r[6, 4], r[4, 4]).item() == pytest.approx(y, abs=1e-12)


def test_matches_matrix_exponential_of_commuting_generators():
    linalg = pytest.importorskip("scipy.linalg")
    theta = 0.7
    b1 = torch.zeros(4, 4, dtype=F64)
    b1[0, 1], b1[1, 0] = -theta, theta
    b2 = torch.zeros(4, 4, dtype=F64)
    b2[2, 3], b2[3, 2] = -theta, theta
    for x, y in [(1, 2), (-0.5, 3.25)]:
        expected = torch.from_numpy(linalg.expm((x * b1 + y * b2).numpy()))
        # interleaved layout, one pair per axis, base chosen so that θ_0 = 1·theta via positions
        got = rope_nd(torch.eye(4, dtype=F64)[:, None], torch.tensor([[x * theta, y * theta]], dtype=F64),
                      layout="interleaved")[:, 0].T
        torch.testing.assert_close(got, expected)


def test_zero_y_is_1d_rope_on_x_half():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(5, 16, generator=g, dtype=F64)
    px = torch.arange(5, dtype=F64) * 3
    out = rope_2d(x, px, torch.zeros(5, dtype=F64))
    cos, sin = rope_cos_sin(px, default_inv_freq(8, 10000.0))
    torch.testing.assert_close(out[:, :8], apply_rope(x[:, :8], cos, sin))
    assert torch.equal(out[:, 8:], x[:, 8:])


def test_grid_and_cached_module():
    grid = grid_positions(3, 4)
    assert grid.shape == (12, 2) and grid[5].tolist() == [1, 1]
    emb = AxialRotaryEmbedding(16, n_axes=2, dims_per_axis=(8, 6))
    x = torch.randn(2, 12, 16)
    torch.testing.assert_close(emb(x, grid), rope_nd(x, grid, (8, 6)))
    assert torch.equal(emb(x, grid)[..., 14:], x[..., 14:])


def test_bad_input():
    with pytest.raises(ValueError, match="dims_per_axis"):
        rope_nd(torch.ones(3, 8), torch.zeros(3, 2), dims_per_axis=(6, 6))
    with pytest.raises(ValueError, match="dims_per_axis"):
        rope_nd(torch.ones(3, 8), torch.zeros(3, 2), dims_per_axis=(3, 4))
    with pytest.raises(ValueError, match="tokens"):
        rope_nd(torch.ones(3, 8), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="match"):
        rope_2d(torch.ones(3, 8), torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="positive"):
        grid_positions(0, 3)
