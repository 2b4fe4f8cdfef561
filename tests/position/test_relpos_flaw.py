"""The relative-position flaw (kexue.fm/archives/9105) on formerlab's own attention code.

Identical inputs make every value ``v_j`` the same vector ``v``. Any relative position encoding
that only changes the logits (RoPE, the ReRoPE / Leaky maps, ALiBi, Sandwich, the RoPE Toeplitz
bias) followed by a normaliser whose rows sum to 1 gives ``Σ_j a_ij v = v`` for every row: the
output *is* ``v`` although the weights depend on the position. That closed form is the oracle.
The post's remedies break it, and with constant logits ``c`` their causal rows have closed forms
too: ``l2`` gives ``√l_i · v`` and no denominator ``l_i · e^c · v`` (``l_i`` visible keys).
"""

from __future__ import annotations

import pytest
import torch

from formerlab.attention import scaled_dot_product
from formerlab.lab.experiments.position_probe import PROBE_VARIANTS, probe_inputs, train_probe
from formerlab.models import CausalLM, ModelConfig
from formerlab.position import (
    GauRopeRelBias,
    ReRoPECache,
    alibi_bias,
    alibi_slopes,
    apply_rope,
    make_relpos,
    relpos_attention,
    rerope_attention,
    rerope_decode_step,
    rope_cos_sin,
    rope_frequencies,
    sandwich_bias,
)

F64 = torch.float64
B, H, N, D = 2, 4, 12, 16
INV, _ = rope_frequencies(D, base=100.0, dtype=F64)
MAPS = [("identity", {}), ("rerope", {"window": 3}), ("leaky", {"window": 3, "factor": 4.0}),
        ("leaky", {"window": 5, "factor": 0.25})]


def identical_qkv(seed=0):
    """One query, key and value row per head, repeated at every position."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, 1, D, generator=g, dtype=F64).expand(B, H, N, D) for _ in range(3)]


def causal(n=N):
    return torch.ones(n, n, dtype=torch.bool).tril()


def rows_differ(w):
    """The attention weights do depend on the position (else the flaw would be trivial)."""
    return float((w - w[..., :1, :]).abs().amax()) > 1e-3


@pytest.mark.parametrize("name,params", MAPS)
@pytest.mark.parametrize("is_causal", [False, True])
def test_relative_maps_give_the_value_row_at_every_position(name, params, is_causal):
    q, k, v = identical_qkv()
    relpos, pos = make_relpos(name, **params), torch.arange(N)
    mask = causal() if is_causal else None
    kw = dict(q_positions=pos, k_positions=pos, inv_freq=INV, relpos=relpos, mask=mask)
    for fast in (False, True):
        torch.testing.assert_close(relpos_attention(q, k, v, fast=fast, **kw), v, rtol=0, atol=1e-12)
    _, w = relpos_attention(q, k, v, return_weights=True, **kw)
    assert rows_differ(w)
    if is_causal and name != "identity":
        window, factor = params["window"], params.get("factor")
        for impl in ("two_pass", "lse_merge"):
            out = rerope_attention(q, k, v, inv_freq=INV, window=window, leaky_factor=factor, impl=impl,
                                   block_size=5)
            torch.testing.assert_close(out, v, rtol=0, atol=1e-12)
        cache = ReRoPECache(INV)
        for t in range(N):  # token-by-token decoding from the raw-key cache
            cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
            out = rerope_decode_step(q[:, :, t:t + 1], cache, window, factor)
            torch.testing.assert_close(out, v[:, :, :1], rtol=0, atol=1e-12)


def _biases():
    pos = torch.arange(N)
    toeplitz = GauRopeRelBias(D, base=100.0, init_std=1.0).double()
    return {"none": None,
            "alibi": alibi_bias(pos, pos, alibi_slopes(H)).to(F64),
            "sandwich": sandwich_bias(N, D, lam=2.0, base=100.0),
            "gau_toeplitz": toeplitz(pos.double()).detach().to(F64)}


@pytest.mark.parametrize("bias", ["none", "alibi", "sandwich", "gau_toeplitz"])
@pytest.mark.parametrize("normalization", ["softmax", "softmax_plus"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_rope_and_additive_biases_give_the_value_row(bias, normalization, is_causal):
    q, k, v = identical_qkv(1)
    cos, sin = rope_cos_sin(torch.arange(N), INV)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    kw = dict(is_causal=is_causal, bias=_biases()[bias], normalization=normalization)
    torch.testing.assert_close(scaled_dot_product(q, k, v, **kw), v, rtol=0, atol=1e-12)
    out, w = scaled_dot_product(q, k, v, return_weights=True, **kw)
    torch.testing.assert_close(out, v, rtol=0, atol=1e-12)
    assert rows_differ(w)


def test_l2_and_no_denominator_rows_follow_the_visible_count():
    q, k, v = identical_qkv(2)  # no position at all: every logit of a row is the same c
    c = (q[..., :1, :] * k[..., :1, :]).sum(-1, keepdim=True) / D**0.5
    visible = torch.arange(1, N + 1, dtype=F64)[:, None]  # causal row i sees i + 1 keys
    l2 = scaled_dot_product(q, k, v, is_causal=True, normalization="l2")
    torch.testing.assert_close(l2, visible.sqrt() * v, rtol=1e-12, atol=1e-12)
    none = scaled_dot_product(q, k, v, is_causal=True, normalization="none")
    torch.testing.assert_close(none, visible * torch.exp(c) * v, rtol=1e-12, atol=1e-12)
    # bidirectional: every row sees all keys; RoPE makes the logits, hence the rows, differ
    cos, sin = rope_cos_sin(torch.arange(N), INV)
    qr, kr = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    for normalization in ("l2", "none"):
        flat = scaled_dot_product(q, k, v, normalization=normalization)
        torch.testing.assert_close(flat, flat[..., :1, :].expand_as(flat), rtol=1e-12, atol=1e-12)
        out = scaled_dot_product(qr, kr, v, normalization=normalization)
        assert float((out - out[..., :1, :]).abs().amax()) > 1e-3


def _model_rows(ids, mask=None, **cfg):
    torch.manual_seed(0)
    model = CausalLM(ModelConfig(vocab_size=8, hidden_size=32, num_layers=2, num_heads=4, initializer_range=0.2,
                                 max_position_embeddings=16, **cfg)).double().eval()
    with torch.no_grad():
        return model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1][0]


@pytest.mark.parametrize("is_causal", [False, True])
def test_model_rows_identical_unless_a_remedy_is_used(is_causal):
    ids, _, sl = probe_inputs(N)
    mask = None if is_causal else torch.ones(1, 1, N, N, dtype=torch.bool)
    flawed = [dict(position="rope"), dict(position="alibi"), dict(position="nope"),
              dict(position="rope", normalization="softmax_plus"),
              dict(position={"kind": "rope", "relpos": {"name": "leaky", "window": 3, "factor": 4.0}})]
    for cfg in flawed:  # attention + FFN + norms, two layers: the rows stay identical
        rows = _model_rows(ids, mask, **cfg)[sl]
        torch.testing.assert_close(rows, rows[:1].expand_as(rows), rtol=0, atol=1e-10, msg=str(cfg))
    for cfg in (dict(position="rope", normalization="l2"), dict(position="rope", normalization="none"),
                dict(position="learned")):
        rows = _model_rows(ids, mask, **cfg)[sl]
        assert float((rows - rows[:1]).abs().max()) > 1e-4, cfg
    ids_b, _, sl_b = probe_inputs(N, boundary=True)  # [CLS] 0 … 0 [SEP] breaks the input symmetry
    mask_b = None if is_causal else torch.ones(1, 1, N + 2, N + 2, dtype=torch.bool)
    rows = _model_rows(ids_b, mask_b, position="rope")[sl_b]
    assert float((rows - rows[:1]).abs().max()) > 1e-4


def test_probe_training_cannot_leave_chance_with_softmax_rope():
    # identical output rows give identical logits: exactly one of the n targets is the argmax
    n = 6
    for variant in PROBE_VARIANTS:
        if variant.name not in ("softmax_rope", "boundary_rope"):
            continue
        r = train_probe(variant, n, steps=3, hidden=16, layers=1)
        if variant.expect_solvable:
            assert r["row_spread"] > 1e-4
        else:
            assert r["accuracy"] == pytest.approx(1 / n, abs=1e-6) and r["row_spread"] < 1e-5
