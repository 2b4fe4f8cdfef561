"""The relative-position theoretical flaw (kexue.fm/archives/9105).

Identical inputs + any relative PE that only touches the logits + row-normalised softmax give
identical output rows, so positions are indistinguishable. Built from torch primitives only.
"""

from __future__ import annotations

import pytest
import torch

from formerlab.position import alibi_bias, alibi_slopes, apply_rope, rope_cos_sin, rope_frequencies

F64 = torch.float64
D, N = 16, 9
INV, _ = rope_frequencies(D, base=100.0, dtype=F64)


def weights(seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(D, D, generator=g, dtype=F64) / D**0.5 for _ in range(5)]


def attend(x, w, *, normalization="softmax", causal=False, rope=True, bias=None, gate=None):
    wq, wk, wv = w[:3]  # independent W_q, W_k (q = k would make rows reflection-symmetric)
    n = x.shape[0]
    q, k, v = x @ wq, x @ wk, x @ wv
    if rope:
        cos, sin = rope_cos_sin(torch.arange(n), INV)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    s = q @ k.T / D**0.5
    if bias is not None:
        s = s + bias
    keep = torch.ones(n, n, dtype=torch.bool).tril() if causal else torch.ones(n, n, dtype=torch.bool)
    e = torch.exp(s).masked_fill(~keep, 0.0)
    if normalization == "softmax":
        a = e / e.sum(-1, keepdim=True)
    elif normalization == "l2":
        a = e / e.pow(2).sum(-1, keepdim=True).sqrt()
    else:  # "none": no denominator
        a = e
    if gate is not None:
        a = a * gate
    return a @ v


def block(x, w, **kw):
    """Attention + token-wise FFN with residuals."""
    h = x + attend(x, w, **kw)
    return h + torch.relu(h @ w[3]) @ w[4]


def rows_equal(o):
    return torch.allclose(o, o[:1].expand_as(o), atol=1e-6, rtol=0)


@pytest.mark.parametrize("causal", [False, True])
def test_identical_inputs_give_identical_rows_with_softmax(causal):
    x = torch.randn(1, D, generator=torch.Generator().manual_seed(5), dtype=F64).expand(N, D)
    w = weights()
    assert rows_equal(attend(x, w, causal=causal))
    rel = torch.arange(N)[:, None] - torch.arange(N)[None]
    toeplitz = torch.sin(rel.to(F64)) * 2.0
    assert rows_equal(attend(x, w, causal=causal, rope=False, bias=toeplitz))
    alibi = alibi_bias(torch.arange(N), torch.arange(N), alibi_slopes(1))[0].to(F64)
    assert rows_equal(attend(x, w, causal=causal, bias=alibi))
    # through a 2-layer block with FFN
    h = block(block(x, w, causal=causal), weights(1), causal=causal)
    assert rows_equal(h)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("normalization", ["l2", "none"])
def test_l2_and_no_denominator_break_the_symmetry(causal, normalization):
    x = torch.randn(1, D, generator=torch.Generator().manual_seed(5), dtype=F64).expand(N, D)
    assert not rows_equal(attend(x, weights(), causal=causal, normalization=normalization))


def test_boundary_tokens_and_toeplitz_gate_break_the_symmetry():
    g = torch.Generator().manual_seed(6)
    zero = torch.randn(1, D, generator=g, dtype=F64)
    cls, sep = torch.randn(1, D, generator=g, dtype=F64), torch.randn(1, D, generator=g, dtype=F64)
    x = torch.cat([cls, zero.expand(N, D), sep])
    out = block(x, weights())[1:-1]  # the rows of the identical tokens
    assert not rows_equal(out)
    rel = (torch.arange(N)[:, None] - torch.arange(N)[None]).clamp(-3, 3)
    gate = 1.0 + 0.5 * torch.tanh(rel.to(F64))  # non-constant g(clip(i - j))
    assert not rows_equal(attend(zero.expand(N, D), weights(), gate=gate))
