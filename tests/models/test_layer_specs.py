"""Per-layer attention specs (HWFA, HWFA2) and training-time relative maps (InvLeaky) in CausalLM."""

import pytest
import torch

from formerlab.models import CausalLM
from formerlab.position import hwfa2_specs, hwfa_specs, receptive_field


def ids(n=24, vocab=64, seed=0):
    return torch.randint(0, vocab, (2, n), generator=torch.Generator().manual_seed(seed))


def test_hwfa_layers_are_wired(tiny_config):
    specs = [s.to_dict() for s in hwfa_specs(4, 32, window=4)]
    m = CausalLM(tiny_config.replace(num_layers=4, layer_specs=specs))
    attn = [layer.mixer for layer in m.layers]
    assert [a.window for a in attn] == [4, 4, 4, None]
    assert all(a.rotary is m.rotary for a in attn[:3]) and attn[3].rotary is None
    assert attn[3].query_scale.mode == "pretrain" and attn[0].query_scale is None
    m.set_position_method("default", logn="dagger", train_len=32)
    assert attn[3].query_scale.mode == "pretrain", "a layer's own log-n spec wins"
    assert attn[0].query_scale.mode == "dagger"


def test_window_stack_receptive_field(tiny_config):
    """With only window layers, output t ignores inputs before t - RF + 1 (RF = (w-1)L + 1)."""
    torch.manual_seed(0)
    w, L = 3, 3
    specs = [{"window": w, "pos": "rope"}] * L
    m = CausalLM(tiny_config.replace(num_layers=L, layer_specs=specs)).double().eval()
    rf = receptive_field(w, L)
    x = ids()
    a = m(x).logits
    x2 = x.clone()
    x2[:, 0] = (x2[:, 0] + 1) % 64
    b = m(x2).logits
    torch.testing.assert_close(a[:, rf:], b[:, rf:], rtol=0, atol=0)
    assert not torch.allclose(a[:, rf - 1], b[:, rf - 1])


def test_hwfa_cache_parity(tiny_config):
    torch.manual_seed(0)
    specs = [s.to_dict() for s in hwfa_specs(3, 32, window=4)]
    m = CausalLM(tiny_config.replace(num_layers=3, layer_specs=specs)).double().eval()
    x = ids(n=12)
    full = m(x).logits
    first = m(x[:, :7], use_cache=True)
    rest = m(x[:, 7:], past_key_values=first.past_key_values)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full,
                               rtol=1e-10, atol=1e-10)


def test_hwfa2_rerope_only_on_full_layers(tiny_config):
    specs = [s.to_dict() for s in hwfa2_specs(4, window=4, num_full=1, rerope_window=8)]
    m = CausalLM(tiny_config.replace(num_layers=4, layer_specs=specs))
    m.set_position_method(relpos={"name": "rerope", "window": 8}, relpos_layers="full")
    full = [layer.mixer.window is None for layer in m.layers]
    assert [layer.mixer.relpos is not None for layer in m.layers] == full
    with pytest.raises(ValueError, match="relpos_layers"):
        m.set_position_method(relpos_layers="some")


def test_hwfa2_switches_its_full_layers_to_rerope_at_inference(tiny_config):
    """``pos="rope_train_rerope_infer"`` alone (no set_position_method call) must take effect:
    RoPE while training, ReRoPE with the spec's window in eval mode."""
    torch.manual_seed(0)
    specs = [s.to_dict() for s in hwfa2_specs(4, window=4, num_full=1, rerope_window=6)]
    m = CausalLM(tiny_config.replace(num_layers=4, layer_specs=specs)).double()
    x = ids(n=20)
    m.eval()
    switched = m(x).logits
    m.set_position_method(relpos={"name": "rerope", "window": 6}, relpos_layers="full")
    explicit = m(x).logits
    torch.testing.assert_close(switched, explicit, rtol=1e-9, atol=1e-9)
    m.reset_position_method()
    m.train()  # dropout is 0: train mode differs only by the position treatment
    trained_view = m(x).logits
    m.set_position_method("default", relpos=None)
    for layer in m.layers:  # plain RoPE everywhere
        layer.mixer.position.eval_relpos = None
    m.eval()
    torch.testing.assert_close(trained_view, m(x).logits, rtol=1e-9, atol=1e-9)
    assert not torch.allclose(switched[:, 8:], trained_view[:, 8:])
    torch.testing.assert_close(switched[:, :6], trained_view[:, :6], rtol=1e-9, atol=1e-9)


def test_invleaky_training_relpos(tiny_config):
    """Training with Leaky ReRoPE (factor < 1) runs, gets gradients, and its cache is exact;
    at inference the plain-RoPE model is a different function beyond the window."""
    torch.manual_seed(0)
    cfg = tiny_config.replace(relpos={"name": "leaky", "window": 4, "factor": 1 / 16})
    m = CausalLM(cfg).double()
    x = ids(n=12)
    out = m(x, labels=x)
    out.loss.backward()
    assert m.layers[0].mixer.q_proj.weight.grad.abs().sum() > 0
    m.eval()
    full = m(x).logits
    first = m(x[:, :5], use_cache=True)
    rest = m(x[:, 5:], past_key_values=first.past_key_values)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1), full,
                               rtol=1e-9, atol=1e-9)
    m.set_position_method("default")  # InvLeaky: infer with plain RoPE
    plain = m(x).logits
    torch.testing.assert_close(plain[:, :4], full[:, :4], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(plain[:, 6:], full[:, 6:])


def test_bad_layer_specs(tiny_config):
    with pytest.raises(ValueError, match="layer_specs has 1 entries"):
        tiny_config.replace(layer_specs=[{"window": 4}])
    with pytest.raises(ValueError, match="unknown LayerSpec key"):
        tiny_config.replace(layer_specs=[{"windw": 4}, {}])
    with pytest.raises(ValueError, match="need kind='rope'"):
        tiny_config.replace(position="nope", relpos={"name": "rerope", "window": 4})
