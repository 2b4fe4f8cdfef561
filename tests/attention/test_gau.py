"""GAU / GAU-α: the unit against einsum and naive-RoPE references, the GAU-α preset."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from formerlab.attention.gau import GatedAttentionUnit, GAULayer, gau_parameter_count
from formerlab.models import Encoder
from formerlab.models.presets import gau_alpha
from formerlab.nn.init import gau_alpha_init_, keras_fan_in


def _x(b=2, n=10, d=32, seed=0):
    return torch.randn(b, n, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_parameter_counts():
    gau = GatedAttentionUnit(768, 1536, 128)
    assert sum(p.numel() for p in gau.parameters()) == 768 * (2 * 1536 + 128) + 1536 * 768 + 256
    two = 2 * gau_parameter_count(768, 1536, 128)
    assert two == 7_275_008 and 12 * 768 ** 2 == 7_077_888
    biased = GatedAttentionUnit(64, 128, 32, use_bias=True)
    assert sum(p.numel() for p in biased.parameters()) == gau_parameter_count(64, 128, 32, True)


def test_matches_einsum_reference_without_rope():
    torch.manual_seed(0)
    gau = GatedAttentionUnit(32, 48, 16, rope=False, normalization="softmax",
                             attention_dropout=0.0).double().eval()
    with torch.no_grad():
        gau.q_scaleoffset.weight.uniform_(0.5, 1.5)
        gau.k_scaleoffset.weight.uniform_(0.5, 1.5)
    x = _x()
    w_i, w_o = gau.i_dense.weight, gau.o_dense.weight
    h = F.silu(torch.einsum("bnd,ed->bne", x, w_i))
    u, v, z = h[..., :48], h[..., 48:96], h[..., 96:]
    q, k = z * gau.q_scaleoffset.weight, z * gau.k_scaleoffset.weight
    a = torch.softmax(torch.einsum("bms,bns->bmn", q, k) / 4.0, dim=-1)
    ref = torch.einsum("bne,de->bnd", u * torch.einsum("bmn,bne->bme", a, v), w_o)
    torch.testing.assert_close(gau(x)[0], ref, rtol=0, atol=1e-12)


def _rotate_interleaved(x, pos, base=10000.0):
    """Naive per-pair rotation (RoFormer/bert4keras layout), the RoPE oracle."""
    s = x.shape[-1]
    out = x.clone()
    for p in range(s // 2):
        theta = pos * base ** (-2 * p / s)
        c, si = torch.cos(theta)[:, None], torch.sin(theta)[:, None]
        x0, x1 = x[..., :, 2 * p:2 * p + 1], x[..., :, 2 * p + 1:2 * p + 2]
        out[..., :, 2 * p:2 * p + 1] = x0 * c - x1 * si
        out[..., :, 2 * p + 1:2 * p + 2] = x0 * si + x1 * c
    return out


def test_gau_alpha_scores_match_naive_rope_softmax_plus_reference():
    torch.manual_seed(1)
    gau = GatedAttentionUnit(32, 48, 16, attention_dropout=0.0).double().eval()
    x = _x(n=12)
    mask = torch.ones(2, 12)
    mask[1, 9:] = 0
    attn = gau(x, key_padding=mask.bool(), return_weights=True)[2][:, 0]
    h = F.silu(gau.i_dense(x))
    z = h[..., 96:]
    pos = torch.arange(12, dtype=torch.float64)
    q = _rotate_interleaved(z * gau.q_scaleoffset.weight, pos)
    k = _rotate_interleaved(z * gau.k_scaleoffset.weight, pos)
    scores = q @ k.transpose(-1, -2) / 4.0
    for b in range(2):
        nv = int(mask[b].sum())  # rows of real tokens: padded query rows are never read
        ref = torch.softmax(scores[b, :nv, :nv] * math.log(nv) / math.log(512), -1)
        torch.testing.assert_close(attn[b, :nv, :nv], ref, rtol=0, atol=1e-8)  # float32 tables
        assert bool((attn[b, :nv, nv:] == 0).all())  # padded keys get exactly zero


def test_causal_gau_and_explicit_mask():
    gau = GatedAttentionUnit(32, 48, 16, causal=True, attention_dropout=0.0).double()
    x = _x()
    y = gau(x)[0]
    x2 = x.clone()
    x2[:, 6:] += 1.0
    torch.testing.assert_close(gau(x2)[0][:, :6], y[:, :6])
    a = gau(x, return_weights=True)[2]
    assert bool((a.triu(1) == 0).all())
    with pytest.raises(ValueError, match="one head"):
        gau(x, mask=torch.ones(1, 2, 10, 10, dtype=torch.bool))


def test_flash_flavour_uses_relu2_over_n():
    f = GatedAttentionUnit.flash(32, key_size=16)
    assert f.normalization == "relu2_n" and f.expansion == 64
    assert f.i_dense.bias is not None and f.q_scaleoffset.bias is not None
    a = f(_x().float(), return_weights=True)[2]
    assert bool((a >= 0).all())


def test_bad_shapes():
    with pytest.raises(ValueError, match="even"):
        GatedAttentionUnit(32, 48, 15)
    with pytest.raises(ValueError, match="softmax_plus"):
        GatedAttentionUnit(32, 48, 16, normalization="softmax+")
    gau = GatedAttentionUnit(32, 48, 16)
    with pytest.raises(ValueError, match=r"\(batch, seq, 32\)"):
        gau(torch.randn(2, 5, 31))
    with pytest.raises(ValueError, match="attention_mask"):
        gau(torch.randn(2, 5, 32), key_padding=torch.ones(2, 6, dtype=torch.bool))


def test_init_std_formula_and_fan_in_rule():
    assert keras_fan_in((30000, 768)) == 768 and keras_fan_in((2, 768)) == 768
    assert keras_fan_in((768, 3200)) == 768
    lin = torch.nn.Linear(500, 2000)
    gau_alpha_init_(lin, num_layers=24, order=3, generator=torch.Generator().manual_seed(0))
    want = 24 ** (-1 / 3) / math.sqrt(500)
    lin.weight.requires_grad_(False)
    assert abs(float(lin.weight.std()) / want - 1) < 0.02
    assert float(lin.weight.abs().max()) <= 2 * 1.13684723 * want + 1e-9
    emb = torch.nn.Embedding(12000, 256)
    gau_alpha_init_(emb, num_layers=8, order=2, generator=torch.Generator().manual_seed(1))
    assert abs(float(emb.weight.detach().std()) / (8 ** -0.5 / math.sqrt(256)) - 1) < 0.02


def test_gau_alpha_preset_shapes_and_layer():
    c = gau_alpha()
    o = c.mixer_options
    assert (c.num_layers, c.hidden_size, o["expansion"], o["key_size"], c.vocab_size) == \
        (24, 768, 1536, 128, 12000)
    assert c.mixer == "gau" and c.ffn == "none" and c.position.rope_layout == "interleaved"
    assert c.attention.normalization == "softmax_plus" and not o.get("use_bias") \
        and c.norm_position == "post"
    layer = GAULayer(32, expansion=48, key_size=16, dropout=0.0, attention_dropout=0.0).double()
    y = layer(_x())
    # post-norm with the parameter-free RMS norm: unit root-mean-square rows
    torch.testing.assert_close(y.pow(2).mean(-1), torch.ones(2, 10, dtype=torch.float64))
    assert sum(p.numel() for p in layer.norm.parameters()) == 0


def test_tiny_gau_alpha_mlm_learns_without_warmup():
    torch.manual_seed(0)
    cfg = gau_alpha(vocab_size=64, hidden_size=64, num_layers=2, expansion=128, key_size=32,
                    dropout=0.0, attention_dropout=0.0)
    model = Encoder(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)  # constant LR: no warmup
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(40):
        base = torch.randint(4, 20, (16, 1), generator=g)
        ids = (base + torch.arange(24)) % 60 + 4  # predictable sequences
        masked = torch.rand(ids.shape, generator=g) < 0.2
        inp = ids.masked_fill(masked, 0)
        logits = model.mlm_logits(model(inp).last_hidden_state)
        loss = F.cross_entropy(logits[masked], ids[masked])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5


@pytest.mark.parametrize("normalization", ["softmax_plus", "softmax"])
@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_fast_path_equals_explicit_path(normalization, causal):
    gau = GatedAttentionUnit(32, 48, 16, normalization=normalization, causal=causal,
                             attention_dropout=0.0, min_len=4).double().eval()
    x = _x(n=12)
    pad = torch.ones(2, 12)
    pad[0, 8:] = 0
    for am in (None, pad.bool()):
        fast = gau(x, key_padding=am)[0]
        attn = gau(x, key_padding=am, return_weights=True)[2][:, 0]  # explicit path: A
        h = F.silu(gau.i_dense(x))
        slow = gau.o_dense(h[..., :48] * (attn @ h[..., 48:96]))
        torch.testing.assert_close(fast, slow, rtol=0, atol=1e-12)
