"""The Transformer-VQ layer: quadratic oracle with a Toeplitz bias, the shared VectorQuantizer
(nearest codes, commitment loss in the official form, EMA in training), decoding, errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from formerlab.attention.vq_layer import TransformerVQLayer
from formerlab.quantize import VectorQuantizer

F64 = torch.float64


def layer(causal=True, heads=2, ell=4, seed=0, **kw):
    torch.manual_seed(seed)
    m = TransformerVQLayer(16, key_size=6, expansion=12, num_heads=heads, num_codes=9,
                           block_len=ell, causal=causal, **kw).double().eval()
    with torch.no_grad():
        if m.window_bias is not None:
            m.window_bias.normal_(generator=torch.Generator().manual_seed(seed + 1))
    return m


def x_of(b=2, n=19, seed=3):
    return torch.randn(b, n, 16, generator=torch.Generator().manual_seed(seed), dtype=F64)


def parts(m, x):
    """q, k, v, gate of the layer, (B, H, n, ·), from its own projections."""
    b, n, _ = x.shape
    h, dk = m.num_heads, m.key_size
    q = F.layer_norm(m.q_proj(x).view(b, n, h, dk), (dk,)) * dk**-0.25
    k, v, g = m.kvg_proj(x).split([h * dk, m.expansion, m.expansion], -1)
    k = F.layer_norm(k.view(b, n, h, dk), (dk,)) * dk**-0.25
    return q.transpose(1, 2), k.transpose(1, 2), F.silu(v).view(b, n, h, -1).transpose(1, 2), g


def brute_nearest(k, codebook):
    """Nearest code per head by enumeration: k (B, H, n, d), codebook (H, S, d)."""
    d2 = ((k[..., :, None, :] - codebook[None, :, None, :, :]) ** 2).sum(-1)
    return d2.argmin(-1)


def quadratic(m, x):
    """softmax(q·k̂ + g(i − j)[i − j ≤ ℓ] + causal mask) v, every pair explicitly."""
    q, k, v, g = parts(m, x)
    cb = m.codebook if m.num_heads > 1 else m.codebook[None]
    k_hat = torch.gather(cb[None].expand(k.shape[0], -1, -1, -1), 2,
                         brute_nearest(k, cb)[..., None].expand(*k.shape))
    logits = q @ k_hat.transpose(-1, -2)
    n = x.shape[1]
    r = torch.arange(n)[:, None] - torch.arange(n)[None, :]
    if m.causal:
        bias = torch.where((r >= 0) & (r <= m.block_len),
                           m.window_bias[:, r.clamp(0, m.block_len)], 0.0)
        logits = (logits + bias[None]).masked_fill(r < 0, float("-inf"))
    o = torch.softmax(logits, -1) @ v
    return m.o_proj(o.transpose(1, 2).reshape(x.shape[0], n, -1) * F.silu(g))


@pytest.mark.parametrize("heads, ell, causal", [(2, 4, True), (1, 5, True), (2, 3, False)])
def test_layer_equals_quadratic_attention_with_a_toeplitz_bias(heads, ell, causal):
    m = layer(causal, heads, ell)
    x = x_of()
    with torch.no_grad():
        torch.testing.assert_close(m(x)[0], quadratic(m, x), rtol=0, atol=1e-10)


def test_cached_decoding_equals_the_full_forward():
    m = layer()
    x = x_of(n=15)
    with torch.no_grad():
        full = m(x)[0]
        y, state, _ = m(x[:, :6], use_cache=True)
        outs = [y]
        for t in range(6, 15):
            y, state, _ = m(x[:, t:t + 1], state=state, use_cache=True)
            outs.append(y)
    torch.testing.assert_close(torch.cat(outs, 1), full, rtol=0, atol=1e-10)
    assert state.length == 15 and state.owner == "vq"


def test_the_quantizer_is_the_shared_vector_quantizer_and_codes_are_nearest():
    m = layer()
    assert isinstance(m.quantizer, VectorQuantizer) and m.quantizer.num_codebooks == 2
    x = x_of()
    _, k, _, _ = parts(m, x)
    with torch.no_grad():
        idx, _ = m.quantizer.nearest(k.transpose(1, 2))
    assert torch.equal(idx.transpose(1, 2), brute_nearest(k, m.codebook))


def test_commitment_loss_is_the_official_form_and_only_in_training():
    m = layer(commitment_weight=1e-4)
    x = x_of()
    m(x)
    assert m.aux_loss is None  # eval mode
    m.train()
    _, k, _, _ = parts(m, x)
    cb = m.codebook.detach().clone()
    m(x)
    err = (k - torch.gather(cb[None].expand(2, -1, -1, -1), 2,
                            brute_nearest(k, cb)[..., None].expand(*k.shape))) ** 2
    official = 1e-4 * err.sum(-1).sum(1).mean()  # c_beta · mean over tokens of Σ_heads Σ_dims
    torch.testing.assert_close(m.aux_loss, official, rtol=1e-10, atol=0)
    m.aux_loss.backward()
    assert m.kvg_proj.weight.grad.abs().sum() > 0 and m.q_proj.weight.grad is None
    assert not torch.equal(cb, m.codebook)  # the EMA update ran


def test_padding_is_excluded_from_the_commitment_loss():
    m, ref = layer().train(), layer().train()  # equal weights and codebooks
    x = x_of(b=1, n=12)
    pad = torch.ones(1, 12, dtype=torch.bool)
    pad[0, :5] = False
    m(x, key_padding=pad)
    masked = m.aux_loss
    ref(x[:, 5:])
    torch.testing.assert_close(masked, ref.aux_loss, rtol=1e-10, atol=0)
    torch.testing.assert_close(m.codebook, ref.codebook, rtol=1e-12, atol=0)  # EMA skips padding


def test_errors_name_the_argument():
    m = layer()
    x = x_of()
    with pytest.raises(ValueError, match="key_padding must be \\(batch, past \\+ seq\\)"):
        m(x, key_padding=torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="takes no explicit attention mask"):
        m(x, mask=torch.ones(1, 1, 19, 19, dtype=torch.bool))
    with pytest.raises(ValueError, match="keeps no decoding state"):
        layer(causal=False)(x, use_cache=True)
    with pytest.raises(ValueError, match="num_codes must be a positive int, got 0"):
        TransformerVQLayer(16, num_codes=0)
    with pytest.raises(ValueError, match="block_len must be a positive int"):
        TransformerVQLayer(16, block_len=-2)
    with pytest.raises(ValueError, match="expansion \\(10\\) must be divisible by num_heads"):
        TransformerVQLayer(16, expansion=10, num_heads=4)
    with pytest.raises(TypeError, match="state must be a VQAttentionState"):
        m(x, state=object())
