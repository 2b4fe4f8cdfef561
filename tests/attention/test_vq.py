"""Transformer-VQ forms against the quadratic reference (float64): block, bias, step, cache, grads."""

from __future__ import annotations

import itertools

import pytest
import torch

from formerlab.attention.vq import (
    VQAttentionState,
    vq_attention,
    vq_attention_reference,
    vq_attention_step,
    vq_commitment_loss,
    vq_straight_through,
)
from formerlab.recurrent import LayerState

F64 = torch.float64


def nearest(k, codebook):
    """Brute-force nearest code (lowest index on ties), a test-only stand-in for the quantiser."""
    d = ((k[..., :, None, :] - codebook[..., None, :, :]) ** 2).sum(-1)
    return d.argmin(-1)


def problem(seed=0, b=2, h=3, n=29, d=4, dv=5, s=7, per_head=False, q_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, h, n, d, generator=g, dtype=F64) * q_scale
    k = torch.randn(b, h, n, d, generator=g, dtype=F64)
    v = torch.randn(b, h, n, dv, generator=g, dtype=F64)
    cb = torch.randn(*((h,) if per_head else ()), s, d, generator=g, dtype=F64)
    codes = nearest(k, cb)
    return q, k, v, cb, codes


def quantised(k, cb, codes):
    return vq_straight_through(k, cb, codes)


def run(q, k_hat, codes, v, cb, **kw):
    return vq_attention(q, k_hat, codes, v, cb, **kw)[0]


# --- forms equal the reference -------------------------------------------------------------------
@pytest.mark.parametrize("per_head", [False, True])
@pytest.mark.parametrize("s", [1, 7, 64])
def test_bidirectional_form(per_head, s):
    q, k, v, cb, codes = problem(1, s=s, per_head=per_head)
    kh = quantised(k, cb, codes)
    ref = vq_attention_reference(q, kh, v, causal=False)
    torch.testing.assert_close(run(q, kh, codes, v, cb, causal=False), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("n, ell, s", [(29, 5, 7), (30, 5, 7), (3, 8, 4), (17, 1, 3),
                                       (64, 16, 32), (40, 40, 5)])
@pytest.mark.parametrize("bias_kind", [None, "toeplitz", "per_head", "per_query"])
def test_causal_block_form(n, ell, s, bias_kind):
    q, k, v, cb, codes = problem(n + ell, n=n, s=s)
    kh = quantised(k, cb, codes)
    g = torch.Generator().manual_seed(99)
    bias = {None: None,
            "toeplitz": torch.randn(2 * ell, generator=g, dtype=F64),
            "per_head": torch.randn(3, 1, 2 * ell, generator=g, dtype=F64),
            "per_query": torch.randn(2, 3, n, 2 * ell, generator=g, dtype=F64)}[bias_kind]
    ref = vq_attention_reference(q, kh, v, block_len=ell, window_bias=bias)
    out = run(q, kh, codes, v, cb, block_len=ell, window_bias=bias)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-10)


def test_toeplitz_bias_equals_full_bias_iff_it_vanishes_beyond_one_block():
    ell, n = 4, 22
    q, k, v, cb, codes = problem(3, n=n)
    kh = quantised(k, cb, codes)
    i, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
    causal = j <= i

    def full_bias_attention(g):
        logits = q @ kh.transpose(-1, -2) + g[(i - j).clamp(0, 2 * ell - 1)] * causal
        return torch.softmax(logits.masked_fill(~causal, float("-inf")), -1) @ v

    g = torch.randn(2 * ell, generator=torch.Generator().manual_seed(4), dtype=F64)
    g[ell + 1:] = 0.0  # g(r) = 0 for r > ℓ
    torch.testing.assert_close(run(q, kh, codes, v, cb, block_len=ell, window_bias=g),
                               full_bias_attention(g), rtol=0, atol=1e-10)
    g[ell + 1] = 1.0  # a bias at distance ℓ + 1 reaches some keys only in the full form
    diff = run(q, kh, codes, v, cb, block_len=ell, window_bias=g) - full_bias_attention(g)
    assert float(diff.abs().max()) > 1e-3


def test_blocks_processed_in_groups_give_the_same_result(monkeypatch):
    import formerlab.attention.vq as vq

    q, k, v, cb, codes = problem(24, n=37)
    kh = quantised(k, cb, codes)
    bias = torch.randn(2, 3, 37, 8, generator=torch.Generator().manual_seed(3), dtype=F64)
    whole = run(q, kh, codes, v, cb, block_len=4, window_bias=bias)
    monkeypatch.setattr(vq, "_GROUP_ELEMENTS", 1)  # one block at a time
    torch.testing.assert_close(run(q, kh, codes, v, cb, block_len=4, window_bias=bias), whole,
                               rtol=0, atol=1e-12)
    monkeypatch.setattr(vq, "_GROUP_ELEMENTS", 3 * 6 * 4 * 15)  # three blocks per group
    torch.testing.assert_close(run(q, kh, codes, v, cb, block_len=4, window_bias=bias), whole,
                               rtol=0, atol=1e-12)


def test_without_bias_block_length_does_not_matter():
    q, k, v, cb, codes = problem(5, n=33)
    kh = quantised(k, cb, codes)
    ref = vq_attention_reference(q, kh, v)
    for ell in (1, 2, 7, 33, 100):
        torch.testing.assert_close(run(q, kh, codes, v, cb, block_len=ell), ref, rtol=0, atol=1e-10)


# --- recurrent (step) form and caches ------------------------------------------------------------
@pytest.mark.parametrize("ell", [1, 3, 8])
def test_step_form_equals_block_form(ell):
    q, k, v, cb, codes = problem(6, n=26)
    kh = quantised(k, cb, codes)
    bias = torch.randn(2, 3, 26, 2 * ell, generator=torch.Generator().manual_seed(7), dtype=F64)
    full = run(q, kh, codes, v, cb, block_len=ell, window_bias=bias)
    state, outs = None, []
    for t in range(26):
        o, state = vq_attention_step(q[..., t, :], kh[..., t, :], codes[..., t], v[..., t, :], cb,
                                     state, block_len=ell, window_bias=bias[..., t, :])
        outs.append(o)
        assert state.window < 2 * ell and state.length == t + 1
    torch.testing.assert_close(torch.stack(outs, -2), full, rtol=0, atol=1e-10)
    assert isinstance(state, LayerState)


@pytest.mark.parametrize("cuts", [[0, 1, 2, 3, 29], [0, 5, 10, 29], [0, 4, 13, 14, 27, 29],
                                  [0, 29]])
def test_pieces_with_cache_equal_whole(cuts):
    ell = 5
    q, k, v, cb, codes = problem(8, n=29, per_head=True)
    kh = quantised(k, cb, codes)
    bias = torch.randn(2, 3, 29, 2 * ell, generator=torch.Generator().manual_seed(9), dtype=F64)
    full, whole = vq_attention(q, kh, codes, v, cb, block_len=ell, window_bias=bias,
                               use_cache=True)
    outs, state = [], None
    for lo, hi in itertools.pairwise(cuts):
        sl = slice(lo, hi)
        o, state = vq_attention(q[..., sl, :], kh[..., sl, :], codes[..., sl], v[..., sl, :], cb,
                                block_len=ell, window_bias=bias[..., sl, :], cache=state,
                                use_cache=True)
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, -2), full, rtol=0, atol=1e-10)
    for name in ("counts", "means", "keys", "values"):
        torch.testing.assert_close(getattr(state, name), getattr(whole, name), rtol=0, atol=1e-10)
    assert torch.equal(state.codes, whole.codes) and state.length == 29


def test_cache_counts_and_means_are_the_statistics_of_folded_tokens():
    ell = 4
    q, k, v, cb, codes = problem(10, n=19)
    _, st = vq_attention(q, quantised(k, cb, codes), codes, v, cb, block_len=ell, use_cache=True)
    folded = 19 - st.window
    assert folded == 12 and st.window == 7  # blocks 0–2 folded; block 3 and the partial block 4 raw
    onehot = torch.nn.functional.one_hot(codes[..., :folded], 7).to(F64)
    counts = onehot.sum(-2)
    torch.testing.assert_close(st.counts, counts)
    means = (onehot.transpose(-1, -2) @ v[..., :folded, :]) / counts.clamp_min(1)[..., None]
    torch.testing.assert_close(st.means, means, rtol=0, atol=1e-12)


def test_calls_do_not_modify_the_given_cache():
    q, k, v, cb, codes = problem(11, n=12)
    kh = quantised(k, cb, codes)
    _, st = vq_attention(q[..., :6, :], kh[..., :6, :], codes[..., :6], v[..., :6, :], cb,
                         block_len=4, use_cache=True)
    before = (st.length, st.keys.clone(), st.counts.clone())
    vq_attention(q[..., 6:, :], kh[..., 6:, :], codes[..., 6:], v[..., 6:, :], cb, cache=st)
    vq_attention_step(q[..., 6, :], kh[..., 6, :], codes[..., 6], v[..., 6, :], cb, st)
    assert st.length == before[0] and torch.equal(st.keys, before[1])
    assert torch.equal(st.counts, before[2])


def test_reorder_and_batch_select():
    ell = 4
    q, k, v, cb, codes = problem(12, b=3, n=20)
    kh = quantised(k, cb, codes)
    _, st = vq_attention(q[..., :14, :], kh[..., :14, :], codes[..., :14], v[..., :14, :], cb,
                         block_len=ell, use_cache=True)
    idx = torch.tensor([2, 0, 0])
    o, _ = vq_attention(q[idx, :, 14:], kh[idx, :, 14:], codes[idx, :, 14:], v[idx, :, 14:], cb,
                        cache=st.clone().reorder(idx))
    ref = vq_attention_reference(q[idx], kh[idx], v[idx])[..., 14:, :]
    torch.testing.assert_close(o, ref, rtol=0, atol=1e-10)
    sel = st.clone().batch_select(torch.tensor([1]))
    o, _ = vq_attention(q[1:2, :, 14:], kh[1:2, :, 14:], codes[1:2, :, 14:], v[1:2, :, 14:], cb,
                        cache=sel)
    torch.testing.assert_close(o, vq_attention_reference(q[1:2], kh[1:2], v[1:2])[..., 14:, :],
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("length, target, ok", [(14, 12, True), (14, 13, True), (14, 9, False),
                                                (14, 11, False), (7, 2, True), (7, 0, True),
                                                (8, 5, False), (12, 11, False), (12, 12, True)])
def test_crop_is_exact_back_to_the_current_block_start(length, target, ok):
    ell, n = 4, 20
    q, k, v, cb, codes = problem(21, n=n)
    kh = quantised(k, cb, codes)
    bias = torch.randn(2 * ell, generator=torch.Generator().manual_seed(2), dtype=F64)
    _, st = vq_attention(q[..., :length, :], kh[..., :length, :], codes[..., :length],
                         v[..., :length, :], cb, block_len=ell, window_bias=bias, use_cache=True)
    if not ok:
        with pytest.raises(NotImplementedError, match="folded into the code cache"):
            st.clone().crop(target)
        return
    cropped = st.clone().crop(target)
    assert cropped.length == target and st.length == length
    o, _ = vq_attention(q[..., target:, :], kh[..., target:, :], codes[..., target:],
                        v[..., target:, :], cb, window_bias=bias, cache=cropped)
    ref = vq_attention_reference(q, kh, v, block_len=ell, window_bias=bias)[..., target:, :]
    torch.testing.assert_close(o, ref, rtol=0, atol=1e-10)
    if target < length:
        assert st.clone().crop(target - length).length == target  # negative: drop tokens


# --- numerics ------------------------------------------------------------------------------------
def naive_exp_block_form(q, kh, v, cb, codes, ell):
    """The unnormalised exp form of the block recursion (no max subtraction): overflows."""
    n = q.shape[-2]
    out = torch.empty(*q.shape[:-1], v.shape[-1], dtype=q.dtype)
    onehot = torch.nn.functional.one_hot(codes, cb.shape[-2]).to(q.dtype)
    for t in range(-(-n // ell)):
        lo, hi = t * ell, min((t + 1) * ell, n)
        old = max(0, (t - 1) * ell)
        u = onehot[..., :old, :].transpose(-1, -2) @ v[..., :old, :]
        lower = onehot[..., :old, :].sum(-2)
        e = torch.exp(q[..., lo:hi, :] @ kh[..., old:hi, :].transpose(-1, -2))
        e = e * torch.ones(hi - lo, hi - old, dtype=q.dtype).tril(lo - old)
        ec = torch.exp(q[..., lo:hi, :] @ cb.T)
        out[..., lo:hi, :] = (e @ v[..., old:hi, :] + ec @ u) / (e.sum(-1, keepdim=True)
                                                                 + ec @ lower[..., None])
    return out


def test_stable_cache_equals_naive_form_and_survives_huge_logits():
    q, k, v, cb, codes = problem(13, n=21)
    kh = quantised(k, cb, codes)
    naive = naive_exp_block_form(q, kh, v, cb, codes, 4)
    torch.testing.assert_close(run(q, kh, codes, v, cb, block_len=4), naive, rtol=0, atol=1e-10)
    big = q * 300.0  # logits ~ 1e3
    with torch.no_grad():
        assert not torch.isfinite(naive_exp_block_form(big, kh, v, cb, codes, 4)).all()
    out = run(big, kh, codes, v, cb, block_len=4)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, vq_attention_reference(big, kh, v), rtol=0, atol=1e-9)
    for f32 in (run(big.float(), kh.float(), codes, v.float(), cb.float(), block_len=4),):
        assert torch.isfinite(f32).all()


def test_half_precision_inputs_compute_in_float32():
    q, k, v, cb, codes = problem(14, n=16)
    kh = quantised(k, cb, codes)
    out = run(q.bfloat16(), kh.bfloat16(), codes, v.bfloat16(), cb.bfloat16(), block_len=4)
    assert out.dtype == torch.bfloat16
    ref = vq_attention_reference(q, kh, v)
    assert float((out.double() - ref).abs().max()) < 0.05


# --- gradients -----------------------------------------------------------------------------------
def grads(fn, *tensors):
    leaves = [t.clone().requires_grad_() for t in tensors]
    w = torch.randn(2, 3, leaves[0].shape[-2], 5, generator=torch.Generator().manual_seed(0),
                    dtype=F64)
    (fn(*leaves) * w).sum().backward()
    return [t.grad for t in leaves]


def test_gradients_with_constant_keys_match_reference():
    ell = 4
    q, _k, v, cb, codes = problem(15, n=22)
    kh = cb[codes]  # a constant: no path to the codebook
    ref_q, ref_v = grads(lambda q, v: vq_attention_reference(q, kh, v), q, v)
    gq, gv = grads(lambda q, v: run(q, kh, codes, v, cb, block_len=ell, grad_through_cache=True),
                   q, v)
    torch.testing.assert_close(gq, ref_q, rtol=0, atol=1e-10)
    torch.testing.assert_close(gv, ref_v, rtol=0, atol=1e-10)
    # stop-gradient cache: Q still exact; values reach only queries in their own or the next block
    gq, gv = grads(lambda q, v: run(q, kh, codes, v, cb, block_len=ell), q, v)
    torch.testing.assert_close(gq, ref_q, rtol=0, atol=1e-10)
    last_two = slice(4 * ell, 22)  # blocks 4 and 5 never enter any query's cache
    torch.testing.assert_close(gv[..., last_two, :], ref_v[..., last_two, :], rtol=0, atol=1e-10)
    assert float((gv[..., :ell, :] - ref_v[..., :ell, :]).abs().max()) > 1e-4


@pytest.mark.parametrize("per_head", [False, True])
def test_gradients_without_ste_match_reference_for_q_v_and_codebook(per_head):
    ell = 3
    q, _k, v, cb, codes = problem(16, n=17, per_head=per_head)
    bias = torch.randn(2 * ell, generator=torch.Generator().manual_seed(1), dtype=F64)

    def lookup(c):  # K̂ = ΔC as a function of the codebook
        if c.dim() == 2:
            return c[codes]
        return torch.gather(c.expand(2, 3, 7, 4), -2, codes[..., None].expand(2, 3, 17, 4))

    ref = grads(lambda q, v, c: vq_attention_reference(q, lookup(c), v, block_len=ell,
                                                       window_bias=bias), q, v, cb)
    got = grads(lambda q, v, c: run(q, lookup(c), codes, v, c, block_len=ell, window_bias=bias,
                                    grad_through_cache=True), q, v, cb)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize("per_query", [False, True])
def test_window_bias_gradients_match_reference(per_query):
    ell = 4
    q, k, v, cb, codes = problem(25, n=19)
    kh = quantised(k, cb, codes)
    shape = (2, 3, 19, 2 * ell) if per_query else (3, 1, 2 * ell)
    bias = torch.randn(*shape, generator=torch.Generator().manual_seed(5), dtype=F64)
    ref = grads(lambda q, b: vq_attention_reference(q, kh, v, block_len=ell, window_bias=b),
                q, bias)
    got = grads(lambda q, b: run(q, kh, codes, v, cb, block_len=ell, window_bias=b), q, bias)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # the decoding step passes the bias gradient too
    leaf = bias.clone().requires_grad_()
    _, st = vq_attention(q[..., :18, :], kh[..., :18, :], codes[..., :18], v[..., :18, :], cb,
                         block_len=ell, use_cache=True)
    b18 = leaf[..., 18, :] if per_query else leaf[..., 0, :]
    o, _ = vq_attention_step(q[..., 18, :], kh[..., 18, :], codes[..., 18], v[..., 18, :], cb, st,
                             window_bias=b18)
    (o * torch.randn(o.shape, generator=torch.Generator().manual_seed(6), dtype=F64)).sum().backward()
    assert float(leaf.grad.abs().sum()) > 0


def test_straight_through_keys():
    ell = 4
    q, k, v, cb, codes = problem(17, n=18)
    gk_ste, = grads(lambda k: run(q, vq_straight_through(k, cb, codes), codes, v, cb,
                                  block_len=ell), k)
    gk_hat, = grads(lambda kh: run(q, kh, codes, v, cb, block_len=ell), cb[codes])
    torch.testing.assert_close(gk_ste, gk_hat, rtol=0, atol=1e-12)  # the STE is the identity
    ref, = grads(lambda kh: vq_attention_reference(q, kh, v), cb[codes])
    # keys of the last two blocks (12 … 17) are seen by every later query through the window;
    # older keys reach later queries through the codebook only, so their STE path is lost
    torch.testing.assert_close(gk_ste[..., 3 * ell:, :], ref[..., 3 * ell:, :], rtol=0, atol=1e-10)
    assert float((gk_ste[..., :ell, :] - ref[..., :ell, :]).abs().max()) > 1e-4


def test_commitment_loss_value_and_gradient():
    _q, k, _v, cb, codes = problem(18, n=10)
    cb = cb.clone().requires_grad_()
    k = k.clone().requires_grad_()
    mask = torch.ones(2, 1, 10, dtype=torch.bool)
    mask[1, :, 7:] = False
    loss = vq_commitment_loss(k, cb, codes, mask)
    err = ((k - cb[codes]) ** 2).sum(-1)
    m = mask.expand_as(err)
    torch.testing.assert_close(loss, err[m].mean())
    loss.backward()
    expect = 2 * (k - cb[codes]) * m[..., None] / m.sum()
    torch.testing.assert_close(k.grad, expect.detach())
    assert cb.grad is None or float(cb.grad.abs().max()) == 0.0
    torch.testing.assert_close(vq_commitment_loss(k, cb, codes), err.mean())


def test_nearest_codes_reproduce_the_quantised_keys():
    _q, k, _v, cb, codes = problem(19, n=9, per_head=True)
    kh = vq_straight_through(k, cb, codes)
    brute = torch.stack([torch.stack([cb[h][codes[b, h]] for h in range(3)]) for b in range(2)])
    torch.testing.assert_close(kh, brute, rtol=0, atol=1e-15)


# --- errors --------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    q, k, v, cb, codes = problem(20, n=8)
    kh = quantised(k, cb, codes)
    with pytest.raises(ValueError, match=r"codes must lie in \[0, 7\)"):
        run(q, kh, codes + 7, v, cb)
    with pytest.raises(TypeError, match="codes must be an integer tensor"):
        run(q, kh, codes.double(), v, cb)
    with pytest.raises(ValueError, match="codes must have shape"):
        run(q, kh, codes[..., :4], v, cb)
    with pytest.raises(ValueError, match="window_bias must have last dim 2·block_len = 8"):
        run(q, kh, codes, v, cb, block_len=4, window_bias=torch.zeros(7, dtype=F64))
    with pytest.raises(ValueError, match="window_bias must be"):
        run(q, kh, codes, v, cb, block_len=4, window_bias=torch.zeros(2, 3, 5, 8, dtype=F64))
    with pytest.raises(ValueError, match="block_len must be a positive integer"):
        run(q, kh, codes, v, cb, block_len=0)
    with pytest.raises(ValueError, match="needs block_len"):
        vq_attention_reference(q, kh, v, window_bias=torch.zeros(8, dtype=F64))
    with pytest.raises(ValueError, match="codebook must be"):
        run(q, kh, codes, v, cb[:, :3])
    with pytest.raises(ValueError, match="no window_bias and no cache"):
        vq_attention(q, kh, codes, v, cb, causal=False, use_cache=True)
    _, st = vq_attention(q, kh, codes, v, cb, block_len=4, use_cache=True)
    with pytest.raises(ValueError, match="block_len=8 differs from the cache's block_len=4"):
        run(q, kh, codes, v, cb, block_len=8, cache=st)
    with pytest.raises(ValueError, match="cache holds counts"):
        run(q[..., :2], kh[..., :2], codes, v, cb[..., :2], cache=st)
    with pytest.raises(TypeError, match="cache must be a VQAttentionState"):
        run(q, kh, codes, v, cb, cache={"counts": None})
    with pytest.raises(ValueError, match="num_codes"):
        VQAttentionState(block_len=4).update(kh, codes, v)


def test_gradients_through_the_cache_across_pieces_equal_whole():
    ell = 3
    q, _k, v, cb, codes = problem(22, n=14)
    kh = cb[codes]

    def pieces(q, v):
        o1, st = vq_attention(q[..., :8, :], kh[..., :8, :], codes[..., :8], v[..., :8, :], cb,
                              block_len=ell, grad_through_cache=True, use_cache=True)
        o2, _ = vq_attention(q[..., 8:, :], kh[..., 8:, :], codes[..., 8:], v[..., 8:, :], cb,
                             cache=st, grad_through_cache=True)
        return torch.cat([o1, o2], -2)

    got = grads(pieces, q, v)
    ref = grads(lambda q, v: vq_attention_reference(q, kh, v), q, v)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_empty_chunks():
    q, k, v, cb, codes = problem(23, n=6)
    kh = quantised(k, cb, codes)
    o, st = vq_attention(q[..., :0, :], kh[..., :0, :], codes[..., :0], v[..., :0, :], cb,
                         block_len=4, use_cache=True)
    assert o.shape == (2, 3, 0, 5) and st.length == 0
    _, st = vq_attention(q, kh, codes, v, cb, cache=st)
    o, st2 = vq_attention(q[..., :0, :], kh[..., :0, :], codes[..., :0], v[..., :0, :], cb,
                          cache=st)
    assert o.shape == (2, 3, 0, 5) and st2.length == 6


# --- padding (ragged batches) --------------------------------------------------------------------
def ragged_mask(b, n, seed, keep=0.7):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(b, 1, n, generator=g) < keep
    m[0, 0, :3] = False  # a row whose first queries see no key at all
    return m


@pytest.mark.parametrize("bias_kind", [None, "toeplitz", "per_query"])
def test_key_mask_equals_the_masked_reference(bias_kind):
    ell, n = 4, 27
    q, k, v, cb, codes = problem(30, n=n, per_head=True)
    kh = quantised(k, cb, codes)
    g = torch.Generator().manual_seed(31)
    bias = {None: None, "toeplitz": torch.randn(2 * ell, generator=g, dtype=F64),
            "per_query": torch.randn(2, 3, n, 2 * ell, generator=g, dtype=F64)}[bias_kind]
    mask = ragged_mask(2, n, 32)
    out, whole = vq_attention(q, kh, codes, v, cb, block_len=ell, window_bias=bias,
                              key_mask=mask, use_cache=True)
    ref = vq_attention_reference(q, kh, v, block_len=ell, window_bias=bias, key_mask=mask)
    seen = ~torch.isnan(ref[..., 0])
    torch.testing.assert_close(out[seen], ref[seen], rtol=0, atol=1e-10)
    assert not bool(seen.all()) and float(out[~seen].abs().max()) == 0.0  # no key: zeros
    # in pieces (single tokens included) the cache remembers which window tokens are padding
    outs, state = [], None
    for lo, hi in itertools.pairwise([0, 3, 4, 5, 13, 14, 27]):
        sl = slice(lo, hi)
        b_sl = bias if bias is None or bias.dim() == 1 else bias[..., sl, :]
        o, state = vq_attention(q[..., sl, :], kh[..., sl, :], codes[..., sl], v[..., sl, :], cb,
                                block_len=ell, window_bias=b_sl, cache=state, use_cache=True,
                                key_mask=mask[..., sl])
        outs.append(o)
    torch.testing.assert_close(torch.cat(outs, -2), out, rtol=0, atol=1e-10)
    torch.testing.assert_close(state.counts, whole.counts, rtol=0, atol=0)
    # padded tokens are never counted: the folded counts are those of the real tokens
    folded = n - state.window
    real = torch.nn.functional.one_hot(codes[..., :folded], 7).to(F64) * mask[..., :folded, None]
    torch.testing.assert_close(state.counts, real.sum(-2), rtol=0, atol=0)


def test_left_padding_without_bias_equals_the_row_alone():
    """Without a bias the block grid does not matter, so a row after p padding tokens equals the
    same row computed without them (an oracle independent of the reference)."""
    q, k, v, cb, codes = problem(33, b=1, n=23)
    kh = quantised(k, cb, codes)
    alone = run(q[..., 5:, :], kh[..., 5:, :], codes[..., 5:], v[..., 5:, :], cb, block_len=4)
    mask = torch.arange(23) >= 5
    padded = run(q, kh, codes, v, cb, block_len=4, key_mask=mask)
    torch.testing.assert_close(padded[..., 5:, :], alone, rtol=0, atol=1e-12)
    enc = run(q, kh, codes, v, cb, causal=False, key_mask=mask)
    alone = run(q[..., 5:, :], kh[..., 5:, :], codes[..., 5:], v[..., 5:, :], cb, causal=False)
    torch.testing.assert_close(enc[..., 5:, :], alone, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="key_mask of shape \\(22,\\) does not broadcast"):
        run(q, kh, codes, v, cb, key_mask=mask[1:])
    with pytest.raises(TypeError, match="key_mask must be a bool tensor"):
        run(q, kh, codes, v, cb, key_mask=mask.long())
