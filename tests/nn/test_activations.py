"""GELU approximations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from formerlab.nn.activations import (
    GELU_TANH_C_TAYLOR,
    fit_gelu_sigmoid_coefficient,
    fit_gelu_tanh_coefficient,
    gelu,
    gelu_error_table,
    get_activation,
)


def test_minimax_tanh_coefficient():
    c, err = fit_gelu_tanh_coefficient()
    assert abs(c - 0.044714911) < 1e-6
    assert abs(err - 3.578e-4) < 0.05 * 3.578e-4
    assert abs(GELU_TANH_C_TAYLOR - 0.0455399) < 1e-7


def test_minimax_sigmoid_coefficient():
    lam, err = fit_gelu_sigmoid_coefficient()
    assert abs(lam - 1.70174490) < 1e-6
    assert abs(err - 9.4573e-3) < 0.01 * 9.4573e-3


# the published error table (grid [−10, 10], step 1e-4): (vs Φ, vs GELU)
TABLE = {
    "tanh c=0.044715": (1.789e-4, 4.73e-4),
    "tanh c=0.0455399 (Taylor)": (3.13e-4, 7.46e-4),
    "sigmoid 1.702": (9.49e-3, 2.03e-2),
    "sigmoid 1.7017449": (9.46e-3, 2.04e-2),
}


def test_error_table_within_ten_percent():
    got = gelu_error_table()
    assert set(got) == set(TABLE)
    for name, (phi, g) in TABLE.items():
        assert 0.9 * phi <= got[name]["vs_phi"] <= 1.1 * phi, (name, got[name])
        assert 0.9 * g <= got[name]["vs_gelu"] <= 1.1 * g, (name, got[name])


def test_gelu_matches_torch():
    x = torch.linspace(-8, 8, 2001, dtype=torch.float64)
    torch.testing.assert_close(gelu(x, "tanh"), F.gelu(x, approximate="tanh"))
    torch.testing.assert_close(gelu(x), x * 0.5 * (1 + torch.erf(x / math.sqrt(2))))
    torch.testing.assert_close(gelu(x, "tanh", coefficient=0.044715), F.gelu(x, approximate="tanh"))
    torch.testing.assert_close(gelu(x, "sigmoid"), x * torch.sigmoid(1.702 * x))
    with pytest.raises(ValueError, match="sigmoid"):
        gelu(x, "erf")


def test_erf_surrogates_odd_and_monotone():
    x = torch.linspace(-6, 6, 4001, dtype=torch.float64)
    a = math.sqrt(2 / math.pi)
    for c in (0.044715, GELU_TANH_C_TAYLOR):
        f = torch.tanh(a * (x + c * x ** 3))
        torch.testing.assert_close(f, -torch.tanh(a * (-x + c * (-x) ** 3)))
        assert bool((f[1:] >= f[:-1]).all())
    s = 2 * torch.sigmoid(1.702 * x) - 1
    torch.testing.assert_close(s, -(2 * torch.sigmoid(-1.702 * x) - 1))
    assert bool((s[1:] >= s[:-1]).all())


def test_activation_registry():
    assert isinstance(get_activation("swish"), torch.nn.SiLU)
    with pytest.raises(ValueError, match="gelu_tanh"):
        get_activation("gelu_fast")
