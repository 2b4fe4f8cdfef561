"""Recompute / activation checkpointing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from formerlab.models import CausalLM
from formerlab.models.presets import gau_alpha, llama
from formerlab.nn.recompute import (
    disable_recompute,
    enable_recompute,
    recompute,
    recompute_mode,
    saved_activation_bytes,
)


class Block(nn.Module):
    def __init__(self, d: int, p: float = 0.0) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.drop = nn.Dropout(p)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x + self.fc2(self.drop(torch.tanh(self.fc1(x))))


class Stack(nn.Module):
    def __init__(self, d=16, L=6, p=0.0):
        super().__init__()
        self.layers = nn.ModuleList(Block(d, p) for _ in range(L))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def _grads(model, x, seed=0):
    model.zero_grad()
    torch.manual_seed(seed)
    model(x).pow(2).sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("p", [0.0, 0.3])
def test_gradients_identical(p):
    torch.manual_seed(0)
    plain = Stack(p=p).double()
    ckpt = Stack(p=p).double()
    ckpt.load_state_dict(plain.state_dict())
    enable_recompute(ckpt)
    x = torch.randn(4, 8, 16, dtype=torch.float64)
    for a, b in zip(_grads(plain, x), _grads(ckpt, x)):
        assert torch.equal(a, b)  # exact: same ops, RNG replayed for dropout


def test_each_segment_runs_twice_per_step():
    model = enable_recompute(Stack())
    x = torch.randn(2, 3, 16)
    model(x).sum().backward()
    assert [layer.calls for layer in model.layers] == [2] * 6
    with torch.no_grad():
        model(x)
    assert [layer.calls for layer in model.layers] == [3] * 6  # no grad: runs once
    with recompute_mode(False):
        model(x).sum().backward()
    assert [layer.calls for layer in model.layers] == [4] * 6
    disable_recompute(model)
    model(x).sum().backward()
    assert model.layers[0].calls == 5


def test_saved_activation_bytes_drop_by_the_expected_factor():
    torch.manual_seed(0)
    x = torch.randn(8, 64, 32, requires_grad=True)
    plain, ckpt = Stack(32, 8), Stack(32, 8)
    ckpt.load_state_dict(plain.state_dict())
    enable_recompute(ckpt)
    full = saved_activation_bytes(lambda: plain(x).sum())
    low = saved_activation_bytes(lambda: ckpt(x).sum())
    assert low <= full / 8  # the checkpointed segments save nothing through autograd


def test_state_dict_names_unchanged_and_every_n():
    model = Stack()
    names = list(model.state_dict())
    enable_recompute(model, checkpoint_every=2)
    assert list(model.state_dict()) == names
    x = torch.randn(2, 3, 16)
    model(x).sum().backward()
    assert [layer.calls for layer in model.layers] == [2, 1, 2, 1, 2, 1]


def test_decorator_env_switch_and_flags(monkeypatch):
    calls = []

    @recompute(checkpoint=None)  # follows the global switch
    def f(x):
        calls.append(1)
        return torch.sin(x) * 2

    x = torch.randn(5, requires_grad=True)
    monkeypatch.delenv("RECOMPUTE", raising=False)
    monkeypatch.delenv("FORMERLAB_RECOMPUTE", raising=False)
    f(x).sum().backward()
    assert len(calls) == 1
    monkeypatch.setenv("RECOMPUTE", "1")
    f(x).sum().backward()
    assert len(calls) == 3
    with recompute_mode(False):
        f(x).sum().backward()
    assert len(calls) == 4

    @recompute
    def g(x):
        calls.append(2)
        return torch.cos(x)

    g(x).sum().backward()
    assert calls.count(2) == 2


def test_warns_on_whole_model():
    with pytest.warns(UserWarning, match="each layer"):
        recompute(Stack())


def test_causal_lm_gradient_checkpointing_saves_two_thirds():
    torch.manual_seed(0)
    cfg = llama("tiny", vocab_size=256, num_layers=8)
    model = CausalLM(cfg).train()
    ids = torch.randint(0, 256, (2, 64))
    full = saved_activation_bytes(lambda: model(ids, labels=ids).loss)
    g_full = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing_enable()
    low = saved_activation_bytes(lambda: model(ids, labels=ids).loss)
    g_low = [p.grad.clone() for p in model.parameters()]
    assert low <= full / 3, (low, full)
    for a, b in zip(g_full, g_low):
        torch.testing.assert_close(a, b)


def test_gau_lm_gradient_checkpointing():
    cfg = gau_alpha(vocab_size=64, hidden_size=32, num_layers=4, expansion=64, key_size=16,
                    dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    model = CausalLM(cfg).double().train()
    ids = torch.randint(0, 64, (2, 32))

    def grads():
        model.zero_grad()
        torch.manual_seed(1)
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters()]

    ref = grads()
    full = saved_activation_bytes(lambda: model(ids, labels=ids).loss)
    model.gradient_checkpointing_enable()
    for a, b in zip(ref, grads()):
        assert torch.equal(a, b)
    assert saved_activation_bytes(lambda: model(ids, labels=ids).loss) <= full / 3
