"""RWKV's WKV written as two SLRUs divided equals the direct RWKV-4 sums."""

from __future__ import annotations

import pytest
import torch

from formerlab.recurrent import SCANS, rwkv_wkv

F64 = torch.float64


def wkv_direct(k, v, w, u):
    """RWKV-4: wkv_t = (Σ_{i<t} e^{−(t−1−i)w + k_i} v_i + e^{u+k_t} v_t) / (same with v → 1)."""
    n = k.shape[1]
    out = torch.empty_like(v)
    for t in range(n):
        i = torch.arange(t, dtype=F64)
        weight = torch.exp(-(t - 1 - i)[None, :, None] * w + k[:, :t])  # (B, t, C)
        bonus = torch.exp(u + k[:, t])
        out[:, t] = ((weight * v[:, :t]).sum(1) + bonus * v[:, t]) / (weight.sum(1) + bonus)
    return out


@pytest.mark.parametrize("method", sorted(SCANS))
def test_equals_direct_rwkv4(method):
    g = torch.Generator().manual_seed(0)
    k, v = (torch.randn(2, 23, 5, generator=g, dtype=F64) for _ in range(2))
    w = torch.rand(5, generator=g, dtype=F64) * 2 + 0.01
    u = torch.randn(5, generator=g, dtype=F64)
    torch.testing.assert_close(rwkv_wkv(k, v, w, u, method=method), wkv_direct(k, v, w, u),
                               rtol=1e-12, atol=1e-12)


def test_large_keys_stay_finite():
    g = torch.Generator().manual_seed(1)
    k = torch.randn(1, 50, 4, generator=g, dtype=F64) * 5 + 200.0  # e^k overflows float32
    v = torch.randn(1, 50, 4, generator=g, dtype=F64)
    w, u = torch.full((4,), 0.5, dtype=F64), torch.zeros(4, dtype=F64)
    ref = wkv_direct(k - 200.0, v, w, u)  # the ratio is invariant to a common shift of k
    got = rwkv_wkv(k.float(), v.float(), w.float(), u.float())
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, rtol=1e-4, atol=1e-4)


def test_errors():
    k = torch.zeros(1, 3, 4)
    with pytest.raises(ValueError, match=r"w must have shape \(4,\)"):
        rwkv_wkv(k, k, torch.ones(3), torch.zeros(4))
    with pytest.raises(ValueError, match="must be > 0"):
        rwkv_wkv(k, k, torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="k and v"):
        rwkv_wkv(k, k[..., :2], torch.ones(4), torch.zeros(4))
