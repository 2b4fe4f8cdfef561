"""Inverse-frequency schedules, their Hugging Face parity and bad input."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.position import (
    ROPE_SCHEDULES,
    RotaryEmbedding,
    apply_rope,
    default_inv_freq,
    rope_cos_sin,
    rope_frequencies,
)

F64 = torch.float64
STATIC = {
    "default": {},
    "linear": {"factor": 4.0},
    "ntk_old": {"factor": 8.0},
    "ntk_aware": {"factor": 8.0},
    "ntk_fixed": {"factor": 8.0},
    "ntk_mixed": {"factor": 8.0, "b": 0.625},
    "dynamic": {"factor": 2.0, "max_position_embeddings": 64},
    "yarn": {"factor": 4.0, "original_max_position_embeddings": 64},
    "llama3": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64},
    "longrope": {"short_factor": [1.0] * 16, "long_factor": [float(1 + i) for i in range(16)],
                 "original_max_position_embeddings": 64, "factor": 4.0},
}


def freqs(head_dim=32, **kw):
    return rope_frequencies(head_dim, dtype=F64, **kw)


def test_every_registered_schedule_is_covered():
    assert set(ROPE_SCHEDULES) == set(STATIC)


@pytest.mark.parametrize("name", sorted(set(STATIC) - {"default", "longrope"}))
def test_factor_one_is_default(name):
    params = dict(STATIC[name], factor=1.0)
    # dynamic NTK with factor 1 still grows the base beyond Lmax (base·(L/Lmax)^(r/(r-2)), the
    # ntk_aware identity), so "factor 1 = default" holds for it only up to Lmax
    seq_len = 64 if name == "dynamic" else 1000
    inv, att = freqs(rope_type=name, seq_len=seq_len, **params)
    torch.testing.assert_close(inv, default_inv_freq(32, 10000.0), rtol=0, atol=1e-15)
    assert att == 1.0


def test_longrope_unit_factors_are_default():
    inv, att = freqs(rope_type="longrope", short_factor=[1.0] * 16, long_factor=[1.0] * 16,
                     original_max_position_embeddings=64, factor=1.0)
    torch.testing.assert_close(inv, default_inv_freq(32, 10000.0))
    assert att == 1.0


def test_pi_alias_and_division():
    inv, _ = freqs(rope_type="pi", factor=4.0)
    torch.testing.assert_close(inv, default_inv_freq(32, 10000.0) / 4)


@pytest.mark.parametrize("k", [2.0, 8.0, 16.0])
def test_ntk_aware_equals_dynamic_at_k_lmax_and_lowest_frequency(k):
    r = 32
    inv, _ = freqs(rope_type="ntk_aware", factor=k)
    dyn, _ = freqs(rope_type="dynamic", factor=1.0, max_position_embeddings=100, seq_len=int(k * 100))
    torch.testing.assert_close(inv, dyn, rtol=1e-12, atol=0)
    theta = default_inv_freq(r, 10000.0)
    assert math.isclose(inv[-1].item(), theta[-1].item() / k, rel_tol=1e-12)
    torch.testing.assert_close(inv, theta * k ** (-2 * torch.arange(r // 2, dtype=F64) / (r - 2)))
    alias, _ = freqs(rope_type="ntk", factor=k)
    torch.testing.assert_close(alias, inv)


def test_ntk_old_is_base_times_k():
    inv, _ = freqs(rope_type="ntk_old", factor=8.0)
    torch.testing.assert_close(inv, default_inv_freq(32, 80000.0), rtol=1e-13, atol=0)


def test_ntk_fixed_closed_form():
    r, k = 32, 8.0
    inv, _ = freqs(rope_type="ntk_fixed", factor=k)
    lam = k ** (2 / r)
    m = torch.arange(1, r // 2 + 1, dtype=F64)
    beta = 10000.0 ** (2 / r)
    # θ_m = 1/(λ (βλ)^(m-1)), post 9706
    torch.testing.assert_close(inv, 1 / (lam * (beta * lam) ** (m - 1)), rtol=1e-12, atol=0)
    assert math.isclose(inv[-1].item(), default_inv_freq(r, 10000.0)[-1].item() / k, rel_tol=1e-12)


def test_ntk_mixed_limits_and_digit_factors():
    r, k = 32, 8.0
    theta = default_inv_freq(r, 10000.0)
    fixed, _ = freqs(rope_type="ntk_fixed", factor=k)
    one, _ = freqs(rope_type="ntk_mixed", factor=k, b=1.0)
    torch.testing.assert_close(one, fixed, rtol=1e-12, atol=0)
    near_pi, _ = freqs(rope_type="ntk_mixed", factor=k, b=1e-9)
    torch.testing.assert_close(near_pi, theta / k, rtol=1e-7, atol=0)
    default_b, _ = freqs(rope_type="ntk_mixed", factor=k)
    explicit, _ = freqs(rope_type="ntk_mixed", factor=k, mix_b=0.625)
    torch.testing.assert_close(default_b, explicit)
    for b in (0.25, 0.625, 0.75, 1.0):
        inv, _ = freqs(rope_type="ntk_mixed", factor=k, b=b)
        cumulative = theta / inv  # exp(a m^b): cumulative scaling of digit m
        lam = torch.cat([cumulative[:1], cumulative[1:] / cumulative[:-1]])
        assert math.isclose(lam.prod().item(), k, rel_tol=1e-10)
        assert bool((lam[1:] <= lam[:-1] + 1e-12).all()) and bool((lam >= 1 - 1e-12).all())
        assert math.isclose(inv[-1].item(), theta[-1].item() / k, rel_tol=1e-12)


def test_ntk_mixed_matches_bojone_recipe():
    # re-derived closed form of bojone/rerope ntk_patch.py: k = 12, b = 0.75
    dim, k, b = 128, 12.0, 0.75
    a = math.log(k) / (dim / 2) ** b
    expected = 10000.0 ** (-torch.arange(0, dim, 2, dtype=F64) / dim)
    expected = expected * torch.exp(-a * torch.arange(1, dim // 2 + 1, dtype=F64) ** b)
    inv, _ = rope_frequencies(dim, rope_type="ntk_mixed", factor=k, b=b, dtype=F64)
    torch.testing.assert_close(inv, expected, rtol=1e-12, atol=0)


def test_dynamic_below_lmax_is_default_and_grows():
    inv, _ = freqs(rope_type="dynamic", factor=4.0, max_position_embeddings=64, seq_len=10)
    torch.testing.assert_close(inv, default_inv_freq(32, 10000.0))
    inv2, _ = freqs(rope_type="dynamic", factor=4.0, max_position_embeddings=64, seq_len=256)
    assert bool((inv2[1:] < inv[1:]).all())
    assert ROPE_SCHEDULES.meta("dynamic")["dynamic"] and ROPE_SCHEDULES.meta("longrope")["dynamic"]


def test_longrope_switches_on_length():
    p = STATIC["longrope"]
    short, att = freqs(rope_type="longrope", seq_len=64, **p)
    long, att2 = freqs(rope_type="longrope", seq_len=65, **p)
    theta = default_inv_freq(32, 10000.0)
    torch.testing.assert_close(short, theta)
    torch.testing.assert_close(long, theta / torch.arange(1, 17, dtype=F64))
    assert att == att2 == pytest.approx(math.sqrt(1 + math.log(4) / math.log(64)))


@pytest.mark.parametrize("name", sorted(STATIC))
def test_relativity_and_norm_for_every_schedule(name):
    g = torch.Generator().manual_seed(1)
    inv, _ = freqs(rope_type=name, seq_len=300, **STATIC[name])
    q, k = torch.randn(2, 32, generator=g, dtype=F64), torch.randn(2, 32, generator=g, dtype=F64)

    def rot(x, p):
        cos, sin = rope_cos_sin(torch.tensor([p], dtype=F64), inv)
        return apply_rope(x[:, None], cos, sin)[:, 0]

    for m, n, s in [(3, 11, 5), (0.5, 7.25, 2.5), (100, 40, -17.75)]:
        a = (rot(q, m) * rot(k, n)).sum(-1)
        b = (rot(q, m + s) * rot(k, n + s)).sum(-1)
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(rot(q, m).norm(dim=-1), q.norm(dim=-1))


@pytest.mark.parametrize("name", ["linear", "ntk_mixed", "dynamic", "yarn", "llama3", "longrope"])
def test_rotary_embedding_hf_dict_round_trip(name):
    params = {k: v for k, v in STATIC[name].items() if k != "max_position_embeddings"}
    emb = RotaryEmbedding(32, base=5000.0, rope_type=name, max_position_embeddings=64, **params)
    cfg = {"rope_parameters": emb.to_hf_dict(), "head_dim": 32, "max_position_embeddings": 64}
    emb2 = RotaryEmbedding.from_hf_config(cfg)
    torch.testing.assert_close(emb2.inv_freq, emb.inv_freq, rtol=0, atol=0)
    torch.testing.assert_close(emb2.frequencies(500)[0], emb.frequencies(500)[0], rtol=0, atol=0)


# ---------------------------------------------------------------------------------- bad input


def test_unknown_rope_type_lists_valid_names():
    with pytest.raises(ValueError, match="ntk_mixed"):
        rope_frequencies(32, rope_type="ntk_magic")


@pytest.mark.parametrize("name,params,missing", [
    ("linear", {}, "factor"),
    ("yarn", {}, "factor"),
    ("yarn", {"factor": 2.0}, "original_max_position_embeddings"),
    ("llama3", {"factor": 8.0, "original_max_position_embeddings": 64}, "low_freq_factor"),
    ("longrope", {"short_factor": [1.0] * 16}, "long_factor"),
    ("dynamic", {"factor": 2.0}, "max_position_embeddings"),
])
def test_missing_keys_are_named(name, params, missing):
    with pytest.raises(ValueError, match=missing):
        rope_frequencies(32, rope_type=name, **params)


def test_unknown_key_is_named():
    with pytest.raises(ValueError, match="beta_fats"):
        rope_frequencies(32, rope_type="yarn", factor=2.0, original_max_position_embeddings=64, beta_fats=3)


@pytest.mark.parametrize("name", ["linear", "ntk_old", "ntk_aware", "ntk_fixed", "ntk_mixed", "dynamic", "yarn"])
def test_factor_below_one_rejected(name):
    params = dict(STATIC[name], factor=0.5)
    with pytest.raises(ValueError, match="factor"):
        rope_frequencies(32, rope_type=name, **params)


def test_other_bad_values():
    with pytest.raises(ValueError, match="beta_fast"):
        rope_frequencies(32, rope_type="yarn", factor=2.0, original_max_position_embeddings=64,
                         beta_fast=1.0, beta_slow=4.0)
    with pytest.raises(ValueError, match="even"):
        rope_frequencies(31)
    with pytest.raises(ValueError, match="high_freq_factor"):
        rope_frequencies(32, rope_type="llama3", factor=8.0, low_freq_factor=4.0, high_freq_factor=1.0,
                         original_max_position_embeddings=64)
    with pytest.raises(ValueError, match="entries"):
        rope_frequencies(32, rope_type="longrope", short_factor=[1.0] * 3, long_factor=[1.0] * 16,
                         original_max_position_embeddings=64, factor=2.0)
    with pytest.raises(ValueError, match="b"):
        rope_frequencies(32, rope_type="ntk_mixed", factor=2.0, b=1.5)


# ------------------------------------------------------------------------- transformers parity


def _hf_config(head_dim_total=64, heads=4, max_pos=256, **rope):
    transformers = pytest.importorskip("transformers")
    rope.setdefault("rope_theta", 10000.0)
    return transformers.LlamaConfig(
        hidden_size=head_dim_total, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_pos, rope_parameters=rope,
    )


def _hf(config, rope_type, seq_len=None):
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    return ROPE_INIT_FUNCTIONS[rope_type](config, "cpu", seq_len=seq_len)


def _ours(config, rope_type, seq_len=None, **params):
    rope = dict(config.rope_parameters)
    rope.pop("rope_type")
    base = rope.pop("rope_theta")
    return rope_frequencies(config.head_dim, base=base, rope_type=rope_type, seq_len=seq_len,
                            max_position_embeddings=config.max_position_embeddings, **rope, **params)


def _close(a, b):
    torch.testing.assert_close(a[0].float(), b[0].float(), rtol=1e-6, atol=1e-6)
    assert a[1] == pytest.approx(b[1], rel=1e-6)


def test_transformers_version_pinned_for_parity():
    transformers = pytest.importorskip("transformers")
    assert transformers.__version__.split(".")[0] == "5"


@pytest.mark.parametrize("factor", [1.0, 2.0, 4.0, 8.0, 16.0])
@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_hf_parity_linear_dynamic(factor, base):
    cfg = _hf_config(rope_type="linear", factor=factor, rope_theta=base)
    _close(_ours(cfg, "linear"), _hf(cfg, "linear"))
    cfg = _hf_config(rope_type="dynamic", factor=factor, rope_theta=base)
    for seq_len in (None, 100, 256, 1000, 4096):
        _close(_ours(cfg, "dynamic", seq_len), _hf(cfg, "dynamic", seq_len))


@pytest.mark.parametrize("factor", [1.0, 2.0, 4.0, 8.0, 32.0])
@pytest.mark.parametrize("extra", [
    {},
    {"beta_fast": 16, "beta_slow": 2},
    {"truncate": False},
    {"mscale": 0.707, "mscale_all_dim": 1.0},
    {"attention_factor": 1.3},
])
def test_hf_parity_yarn(factor, extra):
    cfg = _hf_config(rope_type="yarn", factor=factor, original_max_position_embeddings=64, **extra)
    _close(_ours(cfg, "yarn"), _hf(cfg, "yarn"))


@pytest.mark.parametrize("factor", [1.0, 2.0, 8.0, 32.0])
@pytest.mark.parametrize("l0", [16, 64, 8192])
def test_hf_parity_llama3(factor, l0):
    cfg = _hf_config(max_pos=4 * l0, rope_type="llama3", factor=factor, low_freq_factor=1.0,
                     high_freq_factor=4.0, original_max_position_embeddings=l0)
    _close(_ours(cfg, "llama3"), _hf(cfg, "llama3"))


@pytest.mark.parametrize("factor", [None, 2.0, 8.0])
def test_hf_parity_longrope(factor):
    g = torch.Generator().manual_seed(0)
    short = (1 + torch.rand(8, generator=g)).tolist()
    long = (1 + 10 * torch.rand(8, generator=g)).tolist()
    kw = {} if factor is None else {"factor": factor}
    cfg = _hf_config(rope_type="longrope", short_factor=short, long_factor=long,
                     original_max_position_embeddings=64, **kw)
    for seq_len in (None, 64, 65, 1000):
        _close(_ours(cfg, "longrope", seq_len), _hf(cfg, "longrope", seq_len))


@pytest.mark.parametrize("partial", [0.5, 0.75])
def test_hf_parity_partial_rotary_and_default(partial):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    cfg = _hf_config(rope_type="linear", factor=3.0, partial_rotary_factor=partial)
    _close(_ours(cfg, "linear"), _hf(cfg, "linear"))
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        heads = int(torch.randint(1, 5, (1,), generator=g))
        base = float(torch.randint(100, 1_000_000, (1,), generator=g))
        cfg = _hf_config(head_dim_total=16 * heads, heads=heads, rope_theta=base, rope_type="default")
        hf_inv, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(cfg)
        ours, _ = rope_frequencies(16, base=base)
        torch.testing.assert_close(ours, hf_inv, rtol=1e-6, atol=0)


def test_register_into_transformers():
    transformers = pytest.importorskip("transformers")
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from formerlab.position import register_into_transformers

    register_into_transformers()
    assert {"ntk_old", "ntk_fixed", "ntk_mixed"} <= set(ROPE_INIT_FUNCTIONS)
    assert "linear" in ROPE_INIT_FUNCTIONS  # never overwritten
    cfg = transformers.LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=64,
                                   rope_parameters={"rope_type": "ntk_mixed", "factor": 8.0, "b": 0.75,
                                                    "rope_theta": 10000.0})
    inv, att = ROPE_INIT_FUNCTIONS["ntk_mixed"](cfg, "cpu")
    assert att == 1.0
    ours, _ = rope_frequencies(16, rope_type="ntk_mixed", factor=8.0, b=0.75)
    torch.testing.assert_close(inv, ours)
    rot = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(cfg)
    torch.testing.assert_close(rot.inv_freq, ours)
