"""GELU and its elementary approximations (kexue.fm/archives/7309; Hendrycks & Gimpel, arXiv
1606.08415).

``GELU(x) = x·Φ(x)`` with ``Φ(x) = ½[1 + erf(x/√2)]``. Two elementary surrogates of ``Φ``:

- ``tanh``: ``Φ(x) ≈ ½[1 + tanh(√(2/π)(x + c·x³))]``, ``c = 0.044715``. Matching the Taylor series
  of ``erf(x/√2)`` and ``tanh(ax + bx³)`` gives ``a = √(2/π)`` and ``c = b/a = 0.0455399``; keeping
  ``a`` and choosing ``b`` by **minimax** (``min_b max_x |erf(x/√2) − tanh(ax + bx³)|``) gives
  ``c = 0.044714911``, the published constant (:func:`fit_gelu_tanh_coefficient`).
- ``sigmoid``: ``Φ(x) ≈ σ(λx)``, ``λ = 1.702``; the minimax ``λ`` is ``1.7017449``
  (:func:`fit_gelu_sigmoid_coefficient`).

Measured maximum errors on ``[−10, 10]`` (step 1e-4) are asserted in ``tests/nn``.
scipy is imported lazily by the fitting functions only.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry

__all__ = [
    "ACTIVATIONS",
    "GELU_SIGMOID_LAMBDA",
    "GELU_TANH_C",
    "GELU_TANH_C_TAYLOR",
    "GELU",
    "fit_gelu_sigmoid_coefficient",
    "fit_gelu_tanh_coefficient",
    "gelu",
    "gelu_error_table",
    "get_activation",
    "normal_cdf",
]

#: the published tanh coefficient (minimax optimum ≈ 0.044714911)
GELU_TANH_C = 0.044715
#: the local (Taylor) match ``c = b/a`` with ``b = (4 − π)/(3√2 π^{3/2})`` (≈ 0.0455399)
GELU_TANH_C_TAYLOR = (4.0 - math.pi) / (3.0 * math.sqrt(2.0) * math.pi ** 1.5) / math.sqrt(2 / math.pi)
#: the usual sigmoid coefficient (minimax optimum ≈ 1.7017449)
GELU_SIGMOID_LAMBDA = 1.702

_APPROX = ("none", "tanh", "sigmoid")


def normal_cdf(x: Tensor) -> Tensor:
    """``Φ(x) = ½[1 + erf(x/√2)]``."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def _phi_tanh(x: Tensor, c: float) -> Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + c * x ** 3)))


def gelu(x: Tensor, approximate: str = "none", *, coefficient: float | None = None) -> Tensor:
    """GELU, exact (``"none"``) or approximated (``"tanh"``, ``"sigmoid"``).

    Args:
        x: Input tensor.
        approximate: ``"none"`` (erf), ``"tanh"`` or ``"sigmoid"``.
        coefficient: Override ``c`` (tanh) or ``λ`` (sigmoid); default 0.044715 / 1.702.
    """
    if approximate not in _APPROX:
        raise ValueError(f"approximate must be one of {list(_APPROX)}, got {approximate!r}")
    if approximate == "none":
        return F.gelu(x) if coefficient is None else x * normal_cdf(x)
    if approximate == "tanh":
        if coefficient is None:
            return F.gelu(x, approximate="tanh")
        return x * _phi_tanh(x, coefficient)
    lam = GELU_SIGMOID_LAMBDA if coefficient is None else coefficient
    return x * torch.sigmoid(lam * x)


class GELU(nn.Module):
    """Module form of :func:`gelu`."""

    def __init__(self, approximate: str = "none", coefficient: float | None = None) -> None:
        super().__init__()
        if approximate not in _APPROX:
            raise ValueError(f"approximate must be one of {list(_APPROX)}, got {approximate!r}")
        self.approximate, self.coefficient = approximate, coefficient

    def forward(self, x: Tensor) -> Tensor:
        return gelu(x, self.approximate, coefficient=self.coefficient)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


#: name -> activation module class/factory
ACTIVATIONS: Registry[type[nn.Module] | object] = Registry("activation")
ACTIVATIONS.add("gelu", lambda: GELU("none"))
ACTIVATIONS.add("gelu_tanh", lambda: GELU("tanh"), aliases=("gelu_new", "gelu_pytorch_tanh"))
ACTIVATIONS.add("gelu_sigmoid", lambda: GELU("sigmoid"), aliases=("quick_gelu",))
ACTIVATIONS.add("relu", nn.ReLU)
ACTIVATIONS.add("silu", nn.SiLU, aliases=("swish",))
ACTIVATIONS.add("tanh", nn.Tanh)
ACTIVATIONS.add("sigmoid", nn.Sigmoid)
ACTIVATIONS.add("identity", nn.Identity, aliases=("linear",))


def get_activation(name: str) -> nn.Module:
    """A fresh activation module by name (unknown names raise ``ValueError`` listing them)."""
    return ACTIVATIONS.get(name)()


# --- fitting the coefficients (scipy, lazily) ------------------------------------------------
def _grid(lo: float = -10.0, hi: float = 10.0, step: float = 1e-4):
    import numpy as np

    return np.linspace(lo, hi, round((hi - lo) / step) + 1)


def fit_gelu_tanh_coefficient(
    lo: float = -10.0, hi: float = 10.0, step: float = 1e-4
) -> tuple[float, float]:
    """Minimax ``b`` of ``max_x |erf(x/√2) − tanh(ax + bx³)|`` with ``a = √(2/π)`` fixed.

    Returns:
        ``(c, err)`` with ``c = b/a`` (≈ 0.044714911) and the max erf error (≈ 3.578e-4).
    """
    import numpy as np
    from scipy.optimize import minimize_scalar
    from scipy.special import erf

    x = _grid(lo, hi, step)
    a = math.sqrt(2.0 / math.pi)
    target = erf(x / math.sqrt(2.0))

    def worst(b: float) -> float:
        return float(np.max(np.abs(target - np.tanh(a * x + b * x ** 3))))

    res = minimize_scalar(worst, bounds=(0.02, 0.05), method="bounded",
                          options={"xatol": 1e-12, "maxiter": 500})
    return float(res.x / a), float(res.fun)


def fit_gelu_sigmoid_coefficient(
    lo: float = -10.0, hi: float = 10.0, step: float = 1e-4
) -> tuple[float, float]:
    """Minimax ``λ`` of ``max_x |Φ(x) − σ(λx)|``.

    Returns:
        ``(λ, err)`` (≈ 1.7017449, ≈ 9.4573e-3).
    """
    import numpy as np
    from scipy.optimize import minimize_scalar
    from scipy.special import expit, ndtr

    x = _grid(lo, hi, step)
    target = ndtr(x)

    def worst(lam: float) -> float:
        return float(np.max(np.abs(target - expit(lam * x))))

    res = minimize_scalar(worst, bounds=(1.5, 1.9), method="bounded",
                          options={"xatol": 1e-12, "maxiter": 500})
    return float(res.x), float(res.fun)


def gelu_error_table(lo: float = -10.0, hi: float = 10.0, step: float = 1e-4) -> dict[str, dict]:
    """Max abs errors of the surrogates vs ``Φ`` and vs GELU on a float64 grid."""
    x = torch.linspace(lo, hi, round((hi - lo) / step) + 1, dtype=torch.float64)
    phi = normal_cdf(x)
    exact = x * phi
    cands = {
        f"tanh c={GELU_TANH_C}": _phi_tanh(x, GELU_TANH_C),
        f"tanh c={GELU_TANH_C_TAYLOR:.7f} (Taylor)": _phi_tanh(x, GELU_TANH_C_TAYLOR),
        "sigmoid 1.702": torch.sigmoid(1.702 * x),
        "sigmoid 1.7017449": torch.sigmoid(1.7017449 * x),
    }
    return {
        name: {"vs_phi": float((p - phi).abs().max()), "vs_gelu": float((x * p - exact).abs().max())}
        for name, p in cands.items()
    }
