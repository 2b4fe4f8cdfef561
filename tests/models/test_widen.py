"""Function-preserving widening."""

from __future__ import annotations

import pytest
import torch

from formerlab.models import CausalLM
from formerlab.models.encoder import Encoder
from formerlab.models.presets import bert, llama
from formerlab.models.widen import repeat_axis, widen_transformer


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.no_grad():
        yield


IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def _randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial biases, norm gains/offsets (init leaves them at 0/1, hiding bias errors)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif "norm" in name:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model


def _gpt(**kw):
    torch.manual_seed(0)
    cfg = llama("tiny", **{"position": "learned", **kw})
    return _randomize(CausalLM(cfg).double().eval())


def _bert(**kw):
    torch.manual_seed(0)
    return _randomize(Encoder(bert("tiny", dropout=0.0, attention_dropout=0.0, **kw)).double().eval())


def _max_err(a, b, k, mode="repeat"):
    return float((repeat_axis(a, k, -1, mode) / k ** 0.5 - b).abs().max())


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("ffn", ["swiglu", "gelu", "relu"])
def test_gpt_every_hidden_state_and_logits(k, tied, ffn):
    m = _gpt(tie_word_embeddings=tied, ffn=ffn, mlp_bias=ffn != "swiglu", attention_bias=True,
             norm="layernorm" if ffn == "gelu" else "rmsnorm")
    w = widen_transformer(m, k).eval()
    assert w.config.hidden_size == k * m.config.hidden_size
    a, b = m(IDS, output_hidden_states=True), w(IDS, output_hidden_states=True)
    for h, hw in zip(a.hidden_states, b.hidden_states):
        assert _max_err(h, hw, k) < 1e-12
    torch.testing.assert_close(a.logits, b.logits, rtol=0, atol=1e-12)


@pytest.mark.parametrize("k", [2, 3])
def test_bert_post_ln_exact(k):
    e = _bert()
    w = widen_transformer(e, k)
    a, b = e(IDS, output_hidden_states=True), w(IDS, output_hidden_states=True)
    for h, hw in zip(a.hidden_states, b.hidden_states):
        assert _max_err(h, hw, k) < 1e-12


def test_inner_products_preserved():
    x, y = torch.randn(2, 5, 8, dtype=torch.float64)
    for k in (2, 3):
        xr, yr = (repeat_axis(t, k, -1) / k ** 0.5 for t in (x, y))
        torch.testing.assert_close((xr * yr).sum(-1), (x * y).sum(-1), rtol=0, atol=1e-14)


def test_tiling_breaks_with_more_than_one_head():
    e = _bert()
    a = e(IDS).last_hidden_state
    b = widen_transformer(e, 2, mode="tile")(IDS).last_hidden_state
    assert _max_err(a, b, 2, "tile") > 1e-4
    one = _bert(num_heads=1)
    a1 = one(IDS).last_hidden_state
    b1 = widen_transformer(one, 2, mode="tile")(IDS).last_hidden_state
    assert _max_err(a1, b1, 2, "tile") < 1e-12  # one head: tiling is fine


def test_generic_rule_breaks_gelu_but_not_relu():
    g = _bert()
    assert _max_err(g(IDS).last_hidden_state,
                    widen_transformer(g, 2, ffn_rule="generic")(IDS).last_hidden_state, 2) > 1e-4
    r = _bert(ffn="relu")
    assert _max_err(r(IDS).last_hidden_state,
                    widen_transformer(r, 2, ffn_rule="generic")(IDS).last_hidden_state, 2) < 1e-12


def test_without_corrections_errors_appear():
    """The post's ½·b₂ and unscaled ε break exactness; the size depends on the biases and ε."""
    e = _bert(norm_eps=1e-3)
    a = e(IDS).last_hidden_state
    exact = _max_err(a, widen_transformer(e, 2)(IDS).last_hidden_state, 2)
    no_bias = _max_err(a, widen_transformer(e, 2, bias_correction=False)(IDS).last_hidden_state, 2)
    errs = {k: _max_err(e(IDS).last_hidden_state,
                        widen_transformer(e, k, eps_correction=False)(IDS).last_hidden_state, k)
            for k in (2, 3)}
    assert exact < 1e-12
    assert no_bias > 1e-3
    assert errs[2] > 1e-5 and errs[3] > errs[2]


@pytest.mark.parametrize("layout", ["half", "interleaved"])
def test_rope_is_close_and_exact_with_repeated_frequencies(layout):
    m = _gpt(position="rope", rope_layout=layout)
    for k in (2, 3):
        a = m(IDS).logits
        approx = widen_transformer(m, k)(IDS).logits
        gap = float((a - approx).abs().max())
        assert 1e-6 < gap < 0.05 * float(a.abs().max())  # close, not exact
        exact = widen_transformer(m, k, exact_rope=True)(IDS).logits
        torch.testing.assert_close(a, exact, rtol=0, atol=1e-12)


def test_bad_arguments():
    with pytest.raises(TypeError, match="CausalLM"):
        widen_transformer(torch.nn.Linear(2, 2), 2)
    with pytest.raises(ValueError, match="positive"):
        widen_transformer(_gpt(), 0)
    with pytest.raises(ValueError, match="sinusoidal"):
        widen_transformer(CausalLM(llama("tiny", position="sinusoidal")), 2)


def test_exact_widening_survives_save_load_and_position_methods(tmp_path):
    m = _gpt(position="rope")
    a = m(IDS).logits
    wide = widen_transformer(m, 2, exact_rope=True)
    assert wide.config.position.rope_freq_repeat == 2  # in the config, not a loose buffer
    wide.save_pretrained(tmp_path / "w")
    back = CausalLM.from_pretrained(tmp_path / "w")
    assert back.config.position.rope_freq_repeat == 2
    torch.testing.assert_close(back(IDS).logits, a, rtol=0, atol=1e-12)
    back.set_position_method("ntk_old", rope_params={"factor": 2.0})
    m.set_position_method("ntk_old", rope_params={"factor": 2.0})
    torch.testing.assert_close(back(IDS).logits, m(IDS).logits, rtol=0, atol=1e-12)
