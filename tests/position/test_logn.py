"""log-n scaling (kexue.fm/archives/8823, 9706)."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.position import (
    LogNScale,
    ReRoPECache,
    logn_dagger_factor,
    logn_pretrain_factor,
    rerope_attention,
    rerope_decode_step,
    rope_frequencies,
    visible_key_counts,
)
from formerlab.position._ops import _rotate


def test_pretrain_factor_properties():
    n = torch.arange(1, 5000)
    f = logn_pretrain_factor(n)
    assert f.dtype == torch.float32 and f.shape == n.shape
    assert f[511].item() == 1.0  # n = 512
    assert bool((f[1:] > f[:-1]).all())  # monotone
    assert f[63].item() < 1.0  # not clipped below base_len
    floored = logn_pretrain_factor(n, min_len=16)
    assert bool((floored[:16] == floored[15]).all()) and floored[16] > floored[15]
    torch.testing.assert_close(floored[16:], f[16:])


def test_pretrain_rows_use_visible_counts():
    scale = LogNScale("pretrain", base_len=8)
    positions = torch.arange(6)
    causal = torch.ones(6, 6, dtype=torch.bool).tril()
    torch.testing.assert_close(scale.query_factor(positions), scale.query_factor(positions, visible_key_counts(causal)))
    torch.testing.assert_close(scale.query_factor(positions), torch.log(positions + 1.0) / math.log(8))
    # left padding of 2 tokens in row 1 reduces its visible counts
    mask = causal.expand(2, 6, 6).clone()
    mask[1, :, :2] = False
    counts = visible_key_counts(mask)
    f = scale.query_factor(positions.expand(2, 6), counts)
    assert torch.equal(counts[1], torch.tensor([0, 0, 1, 2, 3, 4]))
    assert f.shape == (2, 6) and bool((f[1, 2:] < f[0, 2:]).all())


def test_dagger_factor():
    pos = torch.arange(0, 4096)
    f = logn_dagger_factor(pos, 512)
    assert bool((f[:512] == 1).all())
    torch.testing.assert_close(f[512:], (torch.log(pos[512:] + 1.0) / math.log(512)).float())
    scale = LogNScale("dagger", train_len=512)
    torch.testing.assert_close(scale.query_factor(pos), f)


def test_dagger_pre_and_post_rope_identical_and_cache():
    inv, _ = rope_frequencies(16, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 20, 16, generator=g, dtype=torch.float64) for _ in range(3))
    scale = LogNScale("dagger", train_len=8)
    pos = torch.arange(20)
    pre = _rotate(scale(q, pos), pos, inv, "half", 16)
    post = scale(_rotate(q, pos, inv, "half", 16), pos)
    torch.testing.assert_close(pre, post, rtol=1e-14, atol=1e-14)
    # incremental decoding with a cache equals the full forward (only queries are scaled)
    full = rerope_attention(scale(q, pos), k, v, inv_freq=inv, window=None)
    cache = ReRoPECache(inv)
    outs = []
    for t in range(20):
        cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
        outs.append(rerope_decode_step(scale(q[:, :, t:t + 1], pos[t:t + 1]), cache, None))
    torch.testing.assert_close(torch.cat(outs, 2), full, rtol=1e-12, atol=1e-12)


def _entropy(scores):
    p = torch.softmax(scores, -1)
    return -(p * torch.log(p.clamp_min(1e-30))).sum(-1)


def test_monte_carlo_entropy_variance_smaller_with_logn():
    g = torch.Generator().manual_seed(0)
    d, lengths = 64, [64, 128, 256, 512, 1024, 2048, 4096]
    plain, scaled = [], []
    for n in lengths:
        q = torch.nn.functional.normalize(torch.randn(32, 1, d, generator=g), dim=-1) * d**0.5
        k = torch.nn.functional.normalize(torch.randn(32, n, d, generator=g), dim=-1) * d**0.5
        s = (q @ k.transpose(-1, -2)) / d**0.5
        plain.append(_entropy(s).mean())
        scaled.append(_entropy(s * logn_pretrain_factor(torch.tensor(n))).mean())
    assert torch.stack(scaled).var() < torch.stack(plain).var()


def test_module_and_round_trip():
    scale = LogNScale("pretrain", base_len=512, min_len=16)
    assert LogNScale.from_dict(scale.to_dict()).to_dict() == scale.to_dict()
    q = torch.ones(2, 3, 4, 8)
    out = scale(q, torch.arange(4).expand(2, 4))
    assert out.shape == q.shape


def test_bad_input():
    with pytest.raises(ValueError, match="mode"):
        LogNScale("softmax_plus")
    with pytest.raises(ValueError, match="train_len"):
        LogNScale("dagger")
    with pytest.raises(ValueError, match="train_len"):
        logn_dagger_factor(torch.arange(3), 1)
    with pytest.raises(ValueError, match="base_len"):
        LogNScale("pretrain", base_len=0)
    with pytest.raises(TypeError, match="Tensor"):
        logn_pretrain_factor([1, 2])
    with pytest.raises(TypeError, match="bool"):
        visible_key_counts(torch.ones(2, 2))
    with pytest.raises(ValueError, match="unknown"):
        LogNScale.from_dict({"mode": "dagger", "train_len": 8, "L": 3})
