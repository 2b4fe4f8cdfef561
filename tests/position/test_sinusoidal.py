"""Sinusoidal position embedding properties (kexue.fm/archives/8231)."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.position import (
    SinusoidalPositionEmbedding,
    pe_inner_product_profile,
    sinusoidal_position_embedding,
)


@pytest.mark.parametrize("layout", ["interleave", "concat"])
def test_gram_toeplitz_and_constant_norm(layout):
    p = sinusoidal_position_embedding(40, 32, layout=layout, dtype=torch.float64)
    gram = p @ p.T
    torch.testing.assert_close(torch.diagonal(gram), torch.full((40,), 16.0, dtype=torch.float64))
    prof = pe_inner_product_profile(32, 10000.0, 39)
    idx = torch.arange(40)
    torch.testing.assert_close(gram, prof[(idx[:, None] - idx[None]).abs()])


def test_reference_table_and_decay():
    prof = pe_inner_product_profile(128, 10000.0, 1024)
    for r, v in {0: 64, 1: 62.09, 8: 45.72, 64: 30.52, 256: 20.52, 1024: 13.08}.items():
        assert prof[r].item() == pytest.approx(v, abs=1e-2)
    near, far = prof[1:11].abs().mean().item(), prof[500:1001].abs().mean().item()
    assert near == pytest.approx(49.4, abs=0.05) and far == pytest.approx(13.5, abs=0.05) and near > far
    far_1000 = pe_inner_product_profile(128, 1000.0, 1024)[500:1001].abs().mean().item()
    assert far_1000 == pytest.approx(3.65, abs=0.01) and far_1000 < far


def test_normalised_sum_approximates_integral():
    integrate = pytest.importorskip("scipy.integrate")
    d = 128
    prof = pe_inner_product_profile(d, 10000.0, 128) / (d / 2)
    for r in (1, 4, 8, 16):
        val, _ = integrate.quad(lambda t, r=r: math.cos(r * 10000.0 ** (-t)), 0, 1, limit=200)
        assert abs(prof[r].item() - val) < 0.02
    val128, _ = integrate.quad(lambda t: math.cos(128 * 10000.0 ** (-t)), 0, 1, limit=200)
    val16, _ = integrate.quad(lambda t: math.cos(16 * 10000.0 ** (-t)), 0, 1, limit=200)
    assert prof[16].item() == pytest.approx(0.620, abs=1e-3) and val16 == pytest.approx(0.635, abs=1e-3)
    assert prof[128].item() == pytest.approx(0.333, abs=1e-3) and val128 == pytest.approx(0.411, abs=1e-3)


def test_diagonal_h_identity():
    g = torch.Generator().manual_seed(0)
    d = 16
    h = torch.rand(d // 2, generator=g, dtype=torch.float64).repeat_interleave(2)  # h_{2i} = h_{2i+1}
    p = sinusoidal_position_embedding(30, d, layout="interleave", dtype=torch.float64)
    form = p @ torch.diag(h) @ p.T
    for s in range(-20, 21):
        diag = torch.diagonal(form, offset=s)
        torch.testing.assert_close(diag, diag[:1].expand_as(diag))
    bad = h.clone()
    bad[1] += 1.0  # unequal pair: an absolute cos((m+n)θ) term survives
    form = p @ torch.diag(bad) @ p.T
    assert not torch.allclose(torch.diagonal(form, 1), torch.diagonal(form, 1)[:1].expand(29))


def test_trainable_theta():
    emb = SinusoidalPositionEmbedding(8, base=1000.0, trainable_theta=True)
    torch.testing.assert_close(emb(torch.arange(5)), sinusoidal_position_embedding(5, 8, base=1000.0))
    emb(torch.arange(5)).sum().backward()
    assert emb.theta.grad is not None and emb.theta.grad.abs().sum() > 0
    fixed = SinusoidalPositionEmbedding(8)
    assert not any(True for _ in fixed.parameters())


def test_bad_input():
    with pytest.raises(ValueError, match="even"):
        pe_inner_product_profile(7, 10000.0, 3)
    with pytest.raises(ValueError, match="max_r"):
        pe_inner_product_profile(8, 10000.0, -1)
    with pytest.raises(ValueError, match="theta"):
        sinusoidal_position_embedding(3, 8, theta=torch.ones(3))
