"""Mask builders and the decoder-only low-rank facts."""

from __future__ import annotations

import pytest
import torch

from formerlab.attention import MultiHeadAttention
from formerlab.attention.linear import linear_attention_matrix
from formerlab.attention.masks import MASKS, build_mask, pcw_position_ids, prefix_segment_ids


def test_causal_and_bidirectional():
    m = build_mask("causal", 5)
    assert m.shape == (1, 1, 5, 5) and m.dtype == torch.bool
    assert torch.equal(m[0, 0], torch.ones(5, 5, dtype=torch.bool).tril())
    assert bool(build_mask("bidirectional", 4).all())


def test_unilm_equals_prefix_mask_and_rule():
    src, tgt = 3, 4
    n = src + tgt
    m = build_mask("unilm", n, segment_ids=prefix_segment_ids(src, tgt))[0, 0]
    i = torch.arange(n)[:, None]
    j = torch.arange(n)[None, :]
    prefix = (j < src) | (j <= i)  # prefix-LM with prefix length src
    assert torch.equal(m, prefix)
    assert not bool(m[:src, src:].any())  # sources see no targets
    assert bool(m[src:, :src].all())  # targets see every source
    # batched segment ids, alias "prefix"
    seg = torch.stack([prefix_segment_ids(2, 5), prefix_segment_ids(5, 2)])
    mb = build_mask("prefix", n, segment_ids=seg)
    assert mb.shape == (2, 1, n, n)
    assert torch.equal(mb[1, 0], build_mask("unilm", n, segment_ids=[0] * 5 + [1] * 2)[0, 0])


def test_sliding_window_counts():
    n, w = 10, 3
    m = build_mask("sliding", n, window=w)[0, 0]
    assert m.sum(-1).tolist() == [min(i + 1, w) for i in range(n)]
    mb = build_mask("sliding_bidirectional", n, window=w)[0, 0]
    assert mb.sum(-1).tolist() == [min(i, w - 1) + min(n - 1 - i, w - 1) + 1 for i in range(n)]


def test_fwd_bwd_masks_are_transposes():
    h = build_mask("fwd_bwd_heads", 6, num_heads=4)
    assert h.shape == (1, 4, 6, 6)
    assert torch.equal(h[0, 0], h[0, 1]) and torch.equal(h[0, 2], h[0, 0].T)
    l0, l1 = (build_mask("fwd_bwd_layers", 6, layer_idx=i)[0, 0] for i in (0, 1))
    assert torch.equal(l1, l0.T) and torch.equal(l0, build_mask("causal", 6)[0, 0])


def test_pcw_mask_and_positions():
    m = build_mask("pcw", 8, context_lengths=[3, 2])[0, 0]
    # context 1 (positions 3, 4) never sees context 0
    assert not bool(m[3:5, :3].any())
    assert torch.equal(m[:3, :3], torch.ones(3, 3, dtype=torch.bool).tril())
    # task tokens 5..7 see every context and themselves causally
    assert bool(m[5:, :5].all())
    assert torch.equal(m[5:, 5:], torch.ones(3, 3, dtype=torch.bool).tril())
    assert pcw_position_ids([3, 2], 3).tolist() == [0, 1, 2, 0, 1, 3, 4, 5]
    assert pcw_position_ids([3, 2], 3, align="right").tolist() == [0, 1, 2, 1, 2, 3, 4, 5]


def test_bad_inputs():
    with pytest.raises(ValueError, match="causal"):
        build_mask("casual", 4)
    with pytest.raises(ValueError, match="segment_ids"):
        build_mask("unilm", 4)
    with pytest.raises(ValueError, match=r"\(n,\)"):
        build_mask("unilm", 4, segment_ids=[0, 1])
    with pytest.raises(ValueError, match="even"):
        build_mask("fwd_bwd_heads", 4, num_heads=3)
    with pytest.raises(ValueError, match="sum"):
        build_mask("pcw", 4, context_lengths=[3, 3])
    assert {"causal", "unilm", "pcw", "sliding"} <= set(MASKS)


def test_masks_plug_into_multihead_attention():
    torch.manual_seed(0)
    attn = MultiHeadAttention(16, 4, causal=False).eval()
    x = torch.randn(2, 7, 16)
    pos = torch.arange(7)
    mask = build_mask("unilm", 7, segment_ids=prefix_segment_ids(3, 4))
    out, _, w = attn(x, pos, mask=mask, return_weights=True)
    assert bool((w.masked_select(~mask.expand_as(w)) == 0).all())
    # a target token is unaffected by later targets
    x2 = x.clone()
    x2[:, 6] += 1.0
    out2, _, _ = attn(x2, pos, mask=mask)
    torch.testing.assert_close(out[:, :6], out2[:, :6])


def test_causal_softmax_attention_is_full_rank_even_for_d1():
    g = torch.Generator().manual_seed(0)
    n = 256
    causal = build_mask("causal", n)[0, 0]
    for scale in (1.0, 0.5):
        q, k = (scale * torch.randn(n, 1, generator=g, dtype=torch.float64) for _ in range(2))
        a = torch.softmax((q @ k.T).masked_fill(~causal, float("-inf")), -1)
        # exact certificate: lower triangular with a positive diagonal, det = Π diag > 0
        assert bool((a.masked_select(~causal) == 0).all())
        assert torch.isfinite(torch.log(torch.diagonal(a)).sum())
    # numerically: with unit-variance logits σ_min is ~1e-19 (below SVD resolution), so the
    # rank is certified numerically on logits of std 0.25
    assert int(torch.linalg.matrix_rank(a)) == n
    bi = torch.softmax(q @ k.T, -1)  # bidirectional with d = 1: numerically low rank
    assert int(torch.linalg.matrix_rank(bi)) < n // 2


def test_bidirectional_linear_attention_rank_at_most_feature_dim():
    g = torch.Generator().manual_seed(1)
    n, d = 64, 4
    q, k = (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(2))
    a = linear_attention_matrix(q, k, causal=False)
    assert int(torch.linalg.matrix_rank(a)) <= d
    c = linear_attention_matrix(q, k, causal=True)
    assert int(torch.linalg.matrix_rank(c)) == n  # causal: triangular, positive diagonal
