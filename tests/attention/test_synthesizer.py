"""Synthesizer attention."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from formerlab.attention.synthesizer import SynthesizerAttention, factorized_expand

D, H, N = 16, 2, 12


def _x(seed=0, b=2, n=N):
    return torch.randn(b, n, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _make(kind, **kw):
    g = torch.Generator().manual_seed(0)
    return SynthesizerAttention(D, H, N, kind, generator=g, **kw).double()


def test_random_attention_is_input_independent():
    m = _make("random")
    w1 = m(_x(0), return_weights=True)[2]
    w2 = m(_x(1), return_weights=True)[2]
    assert torch.equal(w1, w2)


def test_fixed_random_gets_no_gradient_trainable_does():
    fixed, train = _make("random", fixed=True), _make("random")
    for m in (fixed, train):
        m(_x())[0].sum().backward()
    assert fixed.random.grad is None and not fixed.random.requires_grad
    assert train.random.grad is not None and float(train.random.grad.abs().sum()) > 0


def test_dense_row_depends_only_on_own_token():
    m = _make("dense")
    x = _x()
    b0 = m.logits(x)
    x2 = x.clone()
    x2[:, 5] += 1.0
    b1 = m.logits(x2)
    rows = [i for i in range(N) if i != 5]
    torch.testing.assert_close(b0[:, :, rows], b1[:, :, rows], rtol=0, atol=0)
    assert float((b0[:, :, 5] - b1[:, :, 5]).abs().max().detach()) > 0


def test_factorized_random_rank_at_most_k():
    m = _make("factorized_random", k=3)
    b = m.logits(_x())
    for h in range(H):
        assert int(torch.linalg.matrix_rank(b[0, h])) <= 3


def test_factorized_dense_expansion_structure():
    b1 = torch.randn(5, 3, dtype=torch.float64)
    b2 = torch.randn(5, 4, dtype=torch.float64)
    e = factorized_expand(b1, b2)
    assert e.shape == (5, 12)
    for c in range(12):
        torch.testing.assert_close(e[:, c], b1[:, c % 3] * b2[:, c // 3])
    m = _make("factorized_dense", a=3)
    assert (m.a, m.b) == (3, 4)
    with pytest.raises(ValueError, match="divisor"):
        _make("factorized_dense", a=5)


@pytest.mark.parametrize("kind", ["dense", "random", "factorized_dense", "factorized_random",
                                  "vanilla", ["dense", "random", "vanilla"]])
def test_causal_masking_blocks_the_future(kind):
    m = _make(kind, causal=True)
    x = _x()
    y = m(x)[0]
    x2 = x.clone()
    x2[:, 7:] = torch.randn_like(x2[:, 7:])
    torch.testing.assert_close(m(x2)[0][:, :7], y[:, :7])


def test_one_hot_mixture_on_vanilla_equals_sdpa():
    m = _make(["dense", "random", "vanilla"])
    m.set_mixture_weights([0.0, 0.0, 1.0])
    x = _x()
    q = m._split(m.q_proj(x))
    k = m._split(m.k_proj(x))
    v = m._split(m.v_proj(x))
    ref = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(2, N, D)
    torch.testing.assert_close(m(x)[0], m.o_proj(ref))
    mix = _make(["dense", "random", "vanilla"])  # uniform α: differs from vanilla
    mix.load_state_dict(m.state_dict(), strict=False)
    with torch.no_grad():
        mix.mixture_logits.zero_()
    assert float((mix(x)[0] - m(x)[0]).abs().max().detach()) > 1e-3


def test_shorter_inputs_use_top_left_slice():
    m = _make("random")
    w = m(_x(n=5), return_weights=True)[2]
    torch.testing.assert_close(w[0], torch.softmax(m.random[:, :5, :5], -1))


def test_parameter_counts():
    def count(m):
        return sum(p.numel() for p in m.parameters())

    base = 2 * (D * D + D)  # v and o projections
    dh = D // H
    assert count(_make("dense")) == base + (D * D + D) + H * dh * N + H * N
    assert count(_make("random")) == base + H * N * N
    assert count(_make("factorized_random", k=3)) == base + 2 * H * N * 3
    assert count(_make("factorized_dense", a=3)) == base + (D * D + D) + H * dh * (3 + 4)
    assert count(_make("vanilla")) == base + 2 * (D * D + D)
    assert count(_make(["random", "vanilla"])) == base + H * N * N + 2 * (D * D + D) + 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        SynthesizerAttention(10, 3, 8)
    with pytest.raises(ValueError, match="valid kinds"):
        SynthesizerAttention(8, 2, 8, "dens")
    m = _make("dense")
    with pytest.raises(ValueError, match="max_len"):
        m(_x(n=N + 1))


def test_random_synthesizer_learns_a_fixed_permutation():
    torch.manual_seed(0)
    n, d = 8, 16
    perm = torch.randperm(n)
    m = SynthesizerAttention(d, 1, n, "random", generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(m.parameters(), lr=5e-2)
    for _ in range(80):
        x = torch.randn(8, n, d)
        loss = F.mse_loss(m(x)[0], x[:, perm])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05
