"""Layer schedules and sliding windows (kexue.fm/archives/9603, 9731)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from formerlab.position import (
    LayerSpec,
    apply_rope,
    hwfa2_specs,
    hwfa_specs,
    max_window,
    receptive_field,
    rope_cos_sin,
    rope_frequencies,
    sliding_window_mask,
    to_hf_layer_types,
)

F64 = torch.float64


def test_hwfa_specs_and_max_window():
    assert max_window(24, 512, 0.75) == 17
    assert receptive_field(17, 23) == 369 <= 384 < receptive_field(18, 23)
    specs = hwfa_specs(24, 512)
    assert len(specs) == 24 and sum(s.window is not None for s in specs) == 23
    assert specs[-1] == LayerSpec(window=None, pos="nope", logn="pretrain")
    assert all(s.window == 17 and s.pos == "rope" for s in specs[:-1])
    assert all(s.window == 16 for s in hwfa_specs(24, 512, window=16)[:-1])
    assert receptive_field(16, 23) == 346
    assert to_hf_layer_types(specs)[-2:] == ["sliding_attention", "full_attention"]


def test_hwfa2_specs():
    one = hwfa2_specs(24, 64, num_full=1)
    two = hwfa2_specs(24, 64, num_full=2)
    assert [i for i, s in enumerate(one) if s.is_full] == [12]
    assert [i for i, s in enumerate(two) if s.is_full] == [8, 16]
    full = two[8]
    assert full.pos == "rope_train_rerope_infer" and full.rerope_window == 256 and full.logn is None


def test_layer_spec_round_trip_and_validation():
    spec = LayerSpec(window=8, pos="rope", logn="dagger", rerope_window=128)
    assert LayerSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ValueError, match="pos"):
        LayerSpec(pos="alibi")
    with pytest.raises(ValueError, match="logn"):
        LayerSpec(logn="yes")
    with pytest.raises(ValueError, match="window"):
        LayerSpec(window=0)
    with pytest.raises(ValueError, match="unknown"):
        LayerSpec.from_dict({"window": 3, "heads": 2})
    with pytest.raises(ValueError, match="num_full"):
        hwfa2_specs(24, 64, num_full=3)
    with pytest.raises(ValueError, match="window"):
        hwfa_specs(24, 512, window=-1)


def test_sliding_window_mask_semantics_and_sdpa():
    m = sliding_window_mask(torch.arange(6), torch.arange(6), 3)
    assert m[5].tolist() == [False, False, False, True, True, True]
    assert torch.equal(sliding_window_mask(torch.arange(6), torch.arange(6), None), torch.ones(6, 6).tril().bool())
    # every (query, key) pair, at shifted and gapped positions, against 0 <= i - j < w
    qpos, kpos = torch.tensor([3, 4, 9, 10, 15]), torch.tensor([0, 2, 3, 7, 8, 9, 12, 14])
    for w in (1, 2, 5):
        got = sliding_window_mask(qpos, kpos, w)
        for a, i in enumerate(qpos.tolist()):
            for b, j in enumerate(kpos.tolist()):
                assert bool(got[a, b]) == (0 <= i - j < w), (w, i, j)
    batched = torch.stack([torch.arange(6), torch.arange(6) + 2])
    mb = sliding_window_mask(batched, batched, 3)
    assert mb.shape == (2, 1, 6, 6) and torch.equal(mb[0, 0], m) and torch.equal(mb[1, 0], m)
    q = torch.randn(2, 3, 6, 8, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = F.scaled_dot_product_attention(q, q, q, attn_mask=mb)  # ready for SDPA as documented
    ref = torch.empty_like(out)
    for i in range(6):  # row i attends to keys i-2 … i only
        keys = q[:, :, max(0, i - 2):i + 1]
        ref[:, :, i] = (torch.softmax(keys @ q[:, :, i, :, None] / 8**0.5, -2) * keys).sum(-2)
    torch.testing.assert_close(out, ref)
    with pytest.raises(ValueError, match="window"):
        sliding_window_mask(torch.arange(3), torch.arange(3), 0)


class WindowStack(torch.nn.Module):
    """Tiny RoPE sliding-window attention stack (residual), built from torch primitives."""

    def __init__(self, layers, window, d=8, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = [torch.randn(3, d, d, generator=g, dtype=F64) / d**0.5 for _ in range(layers)]
        self.window = window
        self.inv, _ = rope_frequencies(d, base=100.0, dtype=F64)

    def forward(self, x, nope_full=False):
        n = x.shape[0]
        pos = torch.arange(n)
        cos, sin = rope_cos_sin(pos, self.inv)
        for wq, wk, wv in self.w:
            q, k, v = x @ wq, x @ wk, x @ wv
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
            mask = sliding_window_mask(pos, pos, self.window)
            x = x + F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask)[0]
        return x


def test_receptive_field_of_window_stack():
    layers, w, n = 3, 4, 30
    stack = WindowStack(layers, w)
    rf = receptive_field(w, layers)  # (w-1)·layers + 1 = 10
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 8, generator=g, dtype=F64)
    t = 25
    base = stack(x)[t]
    for src in (0, t - rf - 1, t - rf, t - rf + 1, t - rf + 2, t, t + 1):  # both edges of the field
        y = x.clone()
        y[src] += 1.0
        changed = not torch.allclose(stack(y)[t], base, atol=1e-12, rtol=0)
        assert changed == (t - rf + 1 <= src <= t), src


def test_window_stack_shift_equivariance():
    layers, w = 3, 4
    stack = WindowStack(layers, w)
    rf = receptive_field(w, layers)
    g = torch.Generator().manual_seed(2)
    x = torch.randn(20, 8, generator=g, dtype=F64)
    y = torch.cat([torch.randn(7, 8, generator=g, dtype=F64), x])
    torch.testing.assert_close(stack(y)[7 + rf - 1:], stack(x)[rf - 1:], rtol=1e-12, atol=1e-12)


def test_nope_full_layer_depends_on_positions_only_through_features():
    # the full layer of HWFA is NoPE: the last token's output ignores the order of the tokens it
    # sees; the same layer with RoPE does not
    from formerlab.models import CausalLM, ModelConfig

    g = torch.Generator().manual_seed(3)
    n = 12
    ids = torch.randint(0, 32, (1, n), generator=g)
    perm = torch.cat([torch.randperm(n - 1, generator=g), torch.tensor([n - 1])])
    cfg = ModelConfig(vocab_size=32, hidden_size=32, num_layers=1, num_heads=4, initializer_range=0.2)
    for pos in ("nope", "rope"):
        torch.manual_seed(0)
        model = CausalLM(cfg.replace(layer_specs=[{"window": None, "pos": pos}])).double().eval()
        with torch.no_grad():
            a, b = model(ids).logits[0, -1], model(ids[:, perm]).logits[0, -1]
        if pos == "nope":
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        else:
            assert float((a - b).abs().max()) > 1e-4
