"""Initialisation, parameterisation and residual schemes (kexue.fm/archives/8620, 8978, 9052).

- Second-moment preservation: LeCun ``Var(w) = 1/fan_in`` keeps ``E[y²] = E[x²]`` for a linear map
  with zero-mean weights whatever the mean of ``x``; He ``Var(w) = 2/fan_in`` compensates ReLU;
  Xavier averages fan-in and fan-out.
- TF's ``truncated_normal`` cuts at ``±2σ``: its variance is ``γσ²`` with
  ``γ = ∫_{−2}^{2} x² e^{−x²/2} dx / ∫_{−2}^{2} e^{−x²/2} dx = 0.7737413…``; passing
  ``σ/√γ = 1.1368472·σ`` restores the intended variance (:func:`tf_truncated_normal_`).
- GAU-α / RoFormerV2: ``std = 1.13684723/√fan_in · L^(−1/order)`` (``order`` 3 for GAU-α,
  2 for RoFormerV2), with bert4keras' fan-in rule for tables (:func:`gau_alpha_init_`).
- T5 drops the ``1/√d`` attention scale and moves it into the q initialisation
  (:func:`t5_attention_init_`); NTK parameterisation keeps every weight O(1) and scales in the
  forward pass (:class:`NTKLinear`).
- Residuals: Post-Norm, Pre-Norm, ReZero/SkipInit (``α₀ = 0``) and Su's "alpha ramp" (α raised by
  a fixed step per training step, then frozen) in :class:`Residual`; depth scaling of the
  residual branch's last layer (:func:`scale_residual_`).

Every sampler takes an explicit ``generator``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..registry import Registry

__all__ = [
    "INIT_SCHEMES",
    "attach_alpha_ramp",
    "SIGMOID_SECOND_MOMENT",
    "TRUNC_NORMAL_STD_CORRECTION",
    "TRUNC_NORMAL_VARIANCE",
    "NTKLinear",
    "Residual",
    "ScaledActivation",
    "activation_second_moment",
    "gau_alpha_init_",
    "he_",
    "keras_fan_in",
    "lecun_",
    "normal_init_",
    "scale_residual_",
    "t5_attention_init_",
    "tf_truncated_normal_",
    "xavier_",
]

#: variance of a standard normal truncated at ±2: ``γ = 1 − 4φ(2)/(2Φ(2) − 1)``
TRUNC_NORMAL_VARIANCE = 1.0 - 4.0 * math.exp(-2.0) / math.sqrt(2 * math.pi) / math.erf(math.sqrt(2.0))
#: ``1/√γ`` = 1.1368472…: multiply TF truncated-normal stds by it to get the intended variance
TRUNC_NORMAL_STD_CORRECTION = 1.0 / math.sqrt(TRUNC_NORMAL_VARIANCE)
#: ``E[sigmoid(x)²]`` for ``x ~ N(0, 1)``
SIGMOID_SECOND_MOMENT = 0.2933790


def _fans(t: Tensor) -> tuple[int, int]:
    """torch convention: ``(out, in, *kernel)`` → ``(fan_in, fan_out)``."""
    if t.dim() < 2:
        raise ValueError(f"fan-in/out need a tensor with >= 2 dims, got shape {tuple(t.shape)}")
    receptive = math.prod(t.shape[2:]) if t.dim() > 2 else 1
    return t.shape[1] * receptive, t.shape[0] * receptive


def _fill(t: Tensor, std: float, distribution: str, generator: torch.Generator | None) -> Tensor:
    with torch.no_grad():
        if distribution == "normal":
            return t.normal_(0.0, std, generator=generator)
        if distribution == "uniform":
            bound = math.sqrt(3.0) * std  # U[−√3σ, √3σ] has variance σ²
            return t.uniform_(-bound, bound, generator=generator)
        if distribution == "truncated_normal":
            return tf_truncated_normal_(t, std, generator=generator)
    raise ValueError(
        f"distribution must be 'normal', 'uniform' or 'truncated_normal', got {distribution!r}"
    )


def lecun_(t: Tensor, distribution: str = "normal", *, generator: torch.Generator | None = None,
           gain: float = 1.0) -> Tensor:
    """LeCun: ``Var(w) = gain² / fan_in`` (torch weight layout ``(out, in, ...)``)."""
    fan_in, _ = _fans(t)
    return _fill(t, gain / math.sqrt(fan_in), distribution, generator)


def he_(t: Tensor, distribution: str = "normal", *, generator: torch.Generator | None = None) -> Tensor:
    """He/Kaiming for ReLU: ``Var(w) = 2 / fan_in``."""
    return lecun_(t, distribution, generator=generator, gain=math.sqrt(2.0))


def xavier_(t: Tensor, distribution: str = "uniform", *, generator: torch.Generator | None = None,
            gain: float = 1.0) -> Tensor:
    """Xavier/Glorot: ``Var(w) = 2 gain² / (fan_in + fan_out)``."""
    fan_in, fan_out = _fans(t)
    return _fill(t, gain * math.sqrt(2.0 / (fan_in + fan_out)), distribution, generator)


def tf_truncated_normal_(
    t: Tensor, std: float, *, mean: float = 0.0, variance_corrected: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """TF-style truncated normal, cut at ``±2`` (sampling) standard deviations.

    Args:
        std: The **intended** std when ``variance_corrected`` (the sampler then uses
            ``1.1368472·std`` and the result has variance ``std²``); with
            ``variance_corrected=False`` the sampling std as TF takes it (variance ``0.7737·std²``).

    torch's ``trunc_normal_`` takes absolute cut-offs, so ``a, b = mean ∓ 2·s`` are passed.
    """
    if std <= 0:
        raise ValueError(f"std must be positive, got {std}")
    s = std * TRUNC_NORMAL_STD_CORRECTION if variance_corrected else std
    with torch.no_grad():
        return nn.init.trunc_normal_(t, mean=mean, std=s, a=mean - 2 * s, b=mean + 2 * s,
                                     generator=generator)


def keras_fan_in(shape: tuple[int, ...] | torch.Size) -> int:
    """bert4keras' fan-in for a **Keras-layout** shape ``(in, out)``: ``shape[0]``, except
    ``shape[1]`` when ``shape[0] > 10000`` or ``shape[0] < 10`` (token and segment tables)."""
    if len(shape) < 2:
        raise ValueError(f"keras_fan_in needs a 2-D shape, got {tuple(shape)}")
    return int(shape[1]) if (shape[0] > 10000 or shape[0] < 10) else int(shape[0])


def gau_alpha_init_(
    module: nn.Module, num_layers: int, order: int = 3, *,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """GAU-α / RoFormerV2 initialisation of every ``nn.Linear`` and ``nn.Embedding`` weight.

    ``std = 1.13684723/√fan_in · L^(−1/order)`` passed to a ±2σ truncated normal, i.e. a real
    std of ``L^(−1/order)/√fan_in`` (kexue.fm/archives/9052, 8978). ``fan_in`` follows
    :func:`keras_fan_in` on the Keras-layout shape (a Linear's ``(in, out)``, an Embedding's
    ``(vocab, dim)``). Biases are zeroed; norm and scale-offset parameters are left alone.
    """
    if num_layers <= 0 or order <= 0:
        raise ValueError(f"num_layers and order must be positive, got {num_layers}, {order}")
    gain = num_layers ** (-1.0 / order)
    for m in module.modules():
        if isinstance(m, nn.Linear):
            shape = (m.in_features, m.out_features)
        elif isinstance(m, nn.Embedding):
            shape = tuple(m.weight.shape)
        else:
            continue
        std = gain / math.sqrt(keras_fan_in(shape))
        tf_truncated_normal_(m.weight, std, generator=generator)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)
    return module


def t5_attention_init_(
    q: nn.Linear, k: nn.Linear, v: nn.Linear, o: nn.Linear, *, num_heads: int,
    generator: torch.Generator | None = None,
) -> None:
    """T5-style init for unscaled (no ``1/√d``) attention: the whole ``1/√d_kv`` goes into q.

    ``std_q = (d_model·d_kv)^(−1/2)``, ``std_k = std_v = d_model^(−1/2)``,
    ``std_o = (num_heads·d_kv)^(−1/2)``: logits ``q·k`` then have unit variance, as with the
    scaled dot product (kexue.fm/archives/8620 §"attention scale").
    """
    d_model = q.in_features
    if q.out_features % num_heads:
        raise ValueError(f"q width {q.out_features} is not divisible by num_heads {num_heads}")
    d_kv = q.out_features // num_heads
    with torch.no_grad():
        q.weight.normal_(0.0, (d_model * d_kv) ** -0.5, generator=generator)
        k.weight.normal_(0.0, d_model ** -0.5, generator=generator)
        v.weight.normal_(0.0, d_model ** -0.5, generator=generator)
        o.weight.normal_(0.0, (num_heads * d_kv) ** -0.5, generator=generator)
        for lin in (q, k, v, o):
            if lin.bias is not None:
                lin.bias.zero_()


def normal_init_(module: nn.Module, std: float, *, generator: torch.Generator | None = None
                 ) -> nn.Module:
    """``N(0, std)`` for every ``Linear`` and ``Embedding`` weight, zero ``Linear`` biases
    (BERT / GPT-2 style). Returns ``module``."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std, generator=generator)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()
    return module


def scale_residual_(layers: nn.Module, num_layers: int, names: tuple[str, ...] = ("o_proj", "down_proj"),
                    *, power: float = 0.5, factor: float = 2.0) -> int:
    """Divide the weights of residual-branch output layers by ``(factor·L)^power`` (GPT-2 style
    ``1/√(2L)``). Returns the number of rescaled layers."""
    scale = (factor * num_layers) ** (-power)
    count = 0
    with torch.no_grad():
        for name, m in layers.named_modules():
            if isinstance(m, nn.Linear) and name.split(".")[-1] in names:
                m.weight.mul_(scale)
                count += 1
    return count


def activation_second_moment(fn: Callable[[Tensor], Tensor], points: int = 200) -> float:
    """``E[fn(x)²]`` for ``x ~ N(0, 1)`` by Gauss–Hermite quadrature (float64)."""
    import numpy as np

    x, w = np.polynomial.hermite_e.hermegauss(points)
    vals = fn(torch.from_numpy(x)).double().numpy()
    return float((w * vals ** 2).sum() / math.sqrt(2 * math.pi))


class ScaledActivation(nn.Module):
    """``fn(x)/√E[fn(x)²]`` so the output has unit second moment under N(0, 1) input
    (e.g. ``sigmoid(x)/√0.293379``). ``gain=None`` computes it by Gaussian quadrature."""

    def __init__(self, fn: Callable[[Tensor], Tensor], gain: float | None = None) -> None:
        super().__init__()
        self.fn = fn
        self.gain = gain if gain is not None else activation_second_moment(fn) ** -0.5

    def forward(self, x: Tensor) -> Tensor:
        return self.fn(x) * self.gain


class NTKLinear(nn.Module):
    """NTK parameterisation ``y = b + (1/√m)·x W`` with unit-variance ``W`` (kexue.fm/archives/8620
    §"NTK"): every parameter is O(1), so Adam's learning rate is a relative step size."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        with torch.no_grad():
            self.weight.normal_(0.0, 1.0, generator=generator)

    def forward(self, x: Tensor) -> Tensor:
        y = torch.nn.functional.linear(x, self.weight) / math.sqrt(self.in_features)
        return y if self.bias is None else y + self.bias


_RESIDUAL_MODES = ("post", "pre", "rezero", "alpha_ramp")


class Residual(nn.Module):
    """A residual connection around ``fn``.

    - ``post``: ``Norm(x + F(x))``;  ``pre``: ``x + F(Norm(x))``;
    - ``rezero``: ``x + α·F(x)``, trainable ``α`` initialised to 0 (identity at init);
    - ``alpha_ramp``: ``x + α·F(x)`` with a non-trained ``α`` raised by ``alpha_step`` per
      **optimizer step** until it reaches 1 (Su's variant; the step size is not given in the post,
      hence required). The forward pass never changes ``α``, so recompute and gradient
      accumulation cannot advance it twice: call :meth:`ramp_step` after each optimizer step, or
      let :func:`attach_alpha_ramp` do it.
    """

    def __init__(self, fn: nn.Module, mode: str = "pre", norm: nn.Module | None = None, *,
                 alpha_step: float | None = None) -> None:
        super().__init__()
        if mode not in _RESIDUAL_MODES:
            raise ValueError(f"mode must be one of {list(_RESIDUAL_MODES)}, got {mode!r}")
        if mode in ("post", "pre") and norm is None:
            raise ValueError(f"mode {mode!r} needs a norm module")
        if mode == "alpha_ramp" and (alpha_step is None or alpha_step <= 0):
            raise ValueError(f"mode 'alpha_ramp' needs a positive alpha_step, got {alpha_step}")
        self.fn, self.mode, self.norm, self.alpha_step = fn, mode, norm, alpha_step
        if mode == "rezero":
            self.alpha = nn.Parameter(torch.zeros(()))
        elif mode == "alpha_ramp":
            self.register_buffer("alpha", torch.zeros(()))

    def ramp_step(self) -> None:
        """Advance an ``alpha_ramp`` residual by one optimizer step (no-op for other modes)."""
        if self.mode == "alpha_ramp":
            with torch.no_grad():
                self.alpha.add_(self.alpha_step).clamp_(max=1.0)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "post":
            return self.norm(x + self.fn(x))
        if self.mode == "pre":
            return x + self.fn(self.norm(x))
        return x + self.alpha * self.fn(x)


def attach_alpha_ramp(model: nn.Module, optimizer: torch.optim.Optimizer) -> Any:
    """Advance every ``alpha_ramp`` :class:`Residual` of ``model`` after each ``optimizer.step()``.

    Returns the hook handle (``handle.remove()`` detaches it).
    """
    ramps = [m for m in model.modules() if isinstance(m, Residual) and m.mode == "alpha_ramp"]

    def hook(*_: Any) -> None:
        for r in ramps:
            r.ramp_step()

    return optimizer.register_step_post_hook(hook)


def _normal_scheme(model: nn.Module, config: Any, generator: torch.Generator | None) -> None:
    """``N(0, initializer_range)`` weights and GPT-2's ``1/√(2L)`` on residual outputs."""
    normal_init_(model, config.initializer_range, generator=generator)
    scale_residual_(model.layers, config.num_layers)


def _gau_alpha_scheme(model: nn.Module, config: Any, generator: torch.Generator | None) -> None:
    """GAU-α's truncated normal ``L^(-1/3)/√fan_in`` (kexue.fm/archives/9052, 8978)."""
    gau_alpha_init_(model, config.num_layers, 3, generator=generator)


#: name -> ``fn(model, config, generator)``: how a model initialises its weights
INIT_SCHEMES: Registry[Callable[..., None]] = Registry("init scheme")
INIT_SCHEMES.add("normal", _normal_scheme)
INIT_SCHEMES.add("gau_alpha", _gau_alpha_scheme)
