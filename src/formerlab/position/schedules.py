"""Inverse-frequency schedules of RoPE: one registry, Hugging Face key names.

``rope_frequencies(head_dim, base=..., rope_type=..., seq_len=..., **params)`` returns
``(inv_freq, attention_factor)``. Each schedule is registered in :data:`ROPE_SCHEDULES` with the
keys it requires and accepts; unknown or missing keys raise ``ValueError`` naming them.

The β-base view of RoPE (kexue.fm/archives/9675): the features ``cos(n/β^(m-1))`` behave like the
digits of ``n`` in base ``β = b^(2/r)``. Position interpolation (PI, HF ``linear``) divides every
frequency by ``k``; NTK-RoPE-old raises the base to ``b·k`` so each digit extrapolates only a
little (kexue.fm/archives/9675, 9706).

Schedules (``r`` = rotary dimension, ``θ_i = b^(-2i/r)``, ``k`` = ``factor``):

- ``default``; ``linear`` (alias ``pi``): ``θ_i / k``;
- ``ntk_old`` (Su, 9675): base ``b·k``; ``ntk_aware`` (alias ``ntk``, bloc97): base ``b·k^(r/(r-2))``;
- ``ntk_fixed`` (Su, 9706): ``θ_i·k^(-2(i+1)/r)``; ``ntk_mixed`` (Su, 9706): ``θ_i·exp(-a(i+1)^b)``,
  ``a = ln k/(r/2)^b``, exponent key ``b`` (alias ``mix_b``, default 0.625);
- transformers-compatible ``dynamic``, ``yarn``, ``llama3``, ``longrope`` (same numbers as
  ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS`` for the same parameters).

``dynamic`` and ``longrope`` depend on the current length (registry metadata ``dynamic=True``).
:func:`register_into_transformers` adds the pure-frequency schedules transformers lacks to its
``ROPE_INIT_FUNCTIONS``.

Frequencies are computed in float64 and returned in float32 (``dtype`` selects otherwise).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry

__all__ = [
    "HF_EXTRA_ROPE_TYPES",
    "ROPE_SCHEDULES",
    "default_inv_freq",
    "parse_rope_parameters",
    "register_into_transformers",
    "register_rope_schedule",
    "rope_frequencies",
]

ScheduleFn = Callable[..., tuple[Tensor, float]]

#: name -> fn(rotary_dim, base, seq_len, **params) -> (inv_freq float64, attention_factor)
ROPE_SCHEDULES: Registry[ScheduleFn] = Registry("rope_type")

# keys that rope_frequencies itself understands (Hugging Face vocabulary)
_COMMON_KEYS = ("rope_type", "type", "rope_theta", "partial_rotary_factor", "max_position_embeddings")


def register_rope_schedule(
    name: str,
    *,
    required: tuple[str, ...] = (),
    optional: tuple[str, ...] = (),
    aliases: tuple[str, ...] = (),
    dynamic: bool = False,
    description: str = "",
) -> Callable[[ScheduleFn], ScheduleFn]:
    """Register a schedule ``fn(rotary_dim, base, seq_len, **params)``.

    Args:
        required: Parameter names that must be given (e.g. ``("factor",)``).
        optional: Parameter names that may be given.
        dynamic: The frequencies depend on the current sequence length.
    """
    return ROPE_SCHEDULES.register(
        name,
        aliases=aliases,
        required=required,
        optional=optional,
        dynamic=dynamic,
        description=description,
    )


def parse_rope_parameters(rope: dict[str, Any] | None) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Split a Hugging Face ``rope_scaling`` (v4) or ``rope_parameters`` (v5) dict.

    Returns ``(rope_type, schedule_params, common)``: the canonical schedule name (``"default"``
    when absent; v4's ``"type"`` accepted), its parameters (``factor``,
    ``original_max_position_embeddings`` ...) and the common keys found (``rope_theta``,
    ``partial_rotary_factor``). The one place formerlab reads such dicts.
    """
    if rope is None:
        rope = {}
    if not isinstance(rope, dict):
        raise TypeError(f"rope parameters must be a dict, got {type(rope).__name__}")
    params = dict(rope)
    rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
    params.pop("type", None)
    common = {k: params.pop(k) for k in ("rope_theta", "partial_rotary_factor") if k in params}
    return ROPE_SCHEDULES.canonical(rope_type), params, common


def default_inv_freq(rotary_dim: int, base: float) -> Tensor:
    """``θ_i = base^(-2i/r)`` for ``i = 0 … r/2-1`` in float64."""
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float64) / rotary_dim))


def _factor(params: dict[str, Any], key: str = "factor") -> float:
    k = float(params[key])
    if not k >= 1.0:
        raise ValueError(f"{key} must be >= 1 (an extension factor), got {k}")
    return k


def rope_frequencies(
    head_dim: int,
    *,
    base: float = 10000.0,
    rope_type: str = "default",
    seq_len: int | None = None,
    dtype: torch.dtype = torch.float32,
    **params: Any,
) -> tuple[Tensor, float]:
    """Inverse frequencies and attention factor of a RoPE schedule.

    Args:
        head_dim: Per-head channel count ``d`` (the rotary dimension is
            ``int(d·partial_rotary_factor)``, which must be even).
        base: RoPE base ``b``; a ``rope_theta`` key in ``params`` overrides it.
        rope_type: Schedule name (see :data:`ROPE_SCHEDULES`).
        seq_len: Current sequence length, used by dynamic schedules.
        dtype: Output dtype of ``inv_freq`` (float32 by default).
        **params: Hugging Face keys (``factor``, ``original_max_position_embeddings``, ...).

    Returns:
        ``(inv_freq, attention_factor)`` with ``inv_freq`` of shape ``(rotary_dim // 2,)``.
    """
    params = dict(params)
    params.pop("type", None)
    params.pop("rope_type", None)
    base = float(params.pop("rope_theta", base))
    partial = float(params.pop("partial_rotary_factor", 1.0))
    if not isinstance(head_dim, int) or head_dim <= 0:
        raise ValueError(f"head_dim must be a positive int, got {head_dim!r}")
    rotary_dim = int(head_dim * partial)
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(
            f"the rotary dimension must be even and positive, got head_dim={head_dim} × "
            f"partial_rotary_factor={partial} = {rotary_dim}"
        )
    if not base > 0:
        raise ValueError(f"base (rope_theta) must be > 0, got {base}")
    name = ROPE_SCHEDULES.canonical(rope_type)
    meta = ROPE_SCHEDULES.meta(name)
    allowed = set(meta["required"]) | set(meta["optional"]) | {"max_position_embeddings"}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"unknown parameter(s) {unknown} for rope_type {name!r}; allowed: "
            f"{sorted(allowed | set(_COMMON_KEYS))}"
        )
    missing = [k for k in meta["required"] if params.get(k) is None]
    if missing:
        raise ValueError(f"rope_type {name!r} requires parameter(s) {missing}")
    inv_freq, attention_factor = ROPE_SCHEDULES.get(name)(rotary_dim, base, seq_len, **params)
    return inv_freq.to(dtype), float(attention_factor)


@register_rope_schedule("default", optional=("factor",), description="plain RoPE, θ_i = b^(-2i/r)")
def _default(rotary_dim: int, base: float, seq_len: int | None, **params: Any):
    factor = params.get("factor")
    if factor is not None and float(factor) != 1.0:
        raise ValueError(
            f"rope_type 'default' is plain RoPE and ignores an extension factor, got "
            f"factor={factor}; choose a schedule that uses it (linear, ntk_aware, yarn, ...)"
        )
    return default_inv_freq(rotary_dim, base), 1.0


@register_rope_schedule(
    "linear",
    aliases=("pi",),
    required=("factor",),
    optional=("original_max_position_embeddings",),
    description="position interpolation (PI): θ_i / k",
)
def _linear(rotary_dim: int, base: float, seq_len: int | None, **params: Any):
    return default_inv_freq(rotary_dim, base) / _factor(params), 1.0


@register_rope_schedule(
    "ntk_old",
    required=("factor",),
    optional=("original_max_position_embeddings",),
    description="NTK-RoPE-old (kexue.fm/archives/9675): base b·k",
)
def _ntk_old(rotary_dim: int, base: float, seq_len: int | None, **params: Any):
    return default_inv_freq(rotary_dim, base * _factor(params)), 1.0



def _require_rotary_gt2(name: str, rotary_dim: int) -> None:
    if rotary_dim <= 2:
        raise ValueError(f"rope_type {name!r} needs a rotary dimension > 2 (it divides by r - 2), got {rotary_dim}")


def _original_length(name: str, params: dict[str, Any]) -> int:
    """``original_max_position_embeddings`` (L0), falling back to ``max_position_embeddings``.

    Transformers' ``standardize_rope_params`` fills L0 from ``max_position_embeddings`` the same way.
    """
    length = params.get("original_max_position_embeddings")
    if length is None:
        length = params.get("max_position_embeddings")
    if length is None:
        raise ValueError(
            f"rope_type {name!r} requires parameter 'original_max_position_embeddings' (the training "
            "length; 'max_position_embeddings' is used when it is absent)"
        )
    length = int(length)
    if length <= 0:
        raise ValueError(f"original_max_position_embeddings must be > 0, got {length}")
    return length


@register_rope_schedule(
    "ntk_aware",
    aliases=("ntk",),
    required=("factor",),
    optional=("original_max_position_embeddings",),
    description="NTK-aware scaling (bloc97): base b·k^(r/(r-2)); lowest frequency θ/k",
)
def _ntk_aware(rotary_dim: int, base: float, seq_len: int | None, **params: Any):
    _require_rotary_gt2("ntk_aware", rotary_dim)
    k = _factor(params)
    return default_inv_freq(rotary_dim, base * k ** (rotary_dim / (rotary_dim - 2))), 1.0


def _ntk_mixed_inv_freq(rotary_dim: int, base: float, k: float, b: float) -> Tensor:
    """``θ_i · exp(-a (i+1)^b)`` with ``a = ln k / (r/2)^b`` (kexue.fm/archives/9706)."""
    half = rotary_dim // 2
    a = torch.log(torch.tensor(k, dtype=torch.float64)) / (half**b)
    m = torch.arange(1, half + 1, dtype=torch.float64)
    return default_inv_freq(rotary_dim, base) * torch.exp(-a * m**b)


@register_rope_schedule(
    "ntk_fixed",
    required=("factor",),
    optional=("original_max_position_embeddings",),
    description="NTK-RoPE-fixed (kexue.fm/archives/9706): θ_i·k^(-2(i+1)/r); lowest frequency θ/k",
)
def _ntk_fixed(rotary_dim: int, base: float, seq_len: int | None, **params: Any):
    k = _factor(params)
    i = torch.arange(rotary_dim // 2, dtype=torch.float64)
    return default_inv_freq(rotary_dim, base) * float(k) ** (-2.0 * (i + 1) / rotary_dim), 1.0


@register_rope_schedule(
    "ntk_mixed",
    required=("factor",),
    optional=("b", "mix_b", "original_max_position_embeddings"),
    description="NTK-RoPE-mixed (kexue.fm/archives/9706): θ_i·exp(-a(i+1)^b), a = ln k/(r/2)^b",
)
def _ntk_mixed(rotary_dim: int, base: float, seq_len: int | None, **params: Any):
    k = _factor(params)
    if params.get("b") is not None and params.get("mix_b") is not None:
        raise ValueError("give the ntk_mixed exponent as 'b' or 'mix_b', not both")
    b = params.get("b", params.get("mix_b"))
    b = 0.625 if b is None else float(b)
    if not 0.0 < b <= 1.0:
        raise ValueError(f"ntk_mixed exponent b must lie in (0, 1], got {b}")
    return _ntk_mixed_inv_freq(rotary_dim, base, k, b), 1.0


@register_rope_schedule(
    "dynamic",
    required=("factor",),
    optional=("original_max_position_embeddings",),
    dynamic=True,
    description="dynamic NTK (bloc97/emozilla): base b·(s·L/Lmax - (s-1))^(r/(r-2)) for L > Lmax",
)
def _dynamic(rotary_dim: int, base: float, seq_len: int | None, **params: Any):
    _require_rotary_gt2("dynamic", rotary_dim)
    s = _factor(params)
    lmax = params.get("max_position_embeddings")
    if lmax is None:
        lmax = params.get("original_max_position_embeddings")
    if lmax is None:
        raise ValueError(
            "rope_type 'dynamic' requires 'max_position_embeddings' (or "
            "'original_max_position_embeddings'): the length beyond which the base grows"
        )
    lmax = int(lmax)
    length = lmax if seq_len is None else max(int(seq_len), lmax)
    new_base = base * (s * length / lmax - (s - 1.0)) ** (rotary_dim / (rotary_dim - 2))
    return default_inv_freq(rotary_dim, new_base), 1.0


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1.0 else 0.1 * mscale * math.log(scale) + 1.0


@register_rope_schedule(
    "yarn",
    required=("factor",),
    optional=(
        "original_max_position_embeddings",
        "attention_factor",
        "beta_fast",
        "beta_slow",
        "mscale",
        "mscale_all_dim",
        "truncate",
    ),
    description="YaRN (arXiv 2309.00071): ramp between PI and extrapolation, attention temperature",
)
def _yarn(rotary_dim: int, base: float, seq_len: int | None, **params: Any):
    s = _factor(params)
    l0 = _original_length("yarn", params)
    attention_factor = params.get("attention_factor")
    mscale, mscale_all_dim = params.get("mscale"), params.get("mscale_all_dim")
    if attention_factor is None:
        if mscale and mscale_all_dim:
            attention_factor = _yarn_mscale(s, mscale) / _yarn_mscale(s, mscale_all_dim)
        else:
            attention_factor = _yarn_mscale(s)
    # transformers treats 0/None as "use the default" for the betas and truncate
    beta_fast = float(params.get("beta_fast") or 32)
    beta_slow = float(params.get("beta_slow") or 1)
    if beta_fast < beta_slow:
        raise ValueError(f"yarn needs beta_fast >= beta_slow, got beta_fast={beta_fast}, beta_slow={beta_slow}")
    truncate = params.get("truncate", True)

    def corr_dim(rotations: float) -> float:
        return rotary_dim * math.log(l0 / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    j = torch.arange(rotary_dim // 2, dtype=torch.float64)
    ramp = ((j - low) / (high - low)).clamp(0.0, 1.0)
    extrapolation_weight = 1.0 - ramp
    theta = default_inv_freq(rotary_dim, base)
    inv_freq = theta / s * (1.0 - extrapolation_weight) + theta * extrapolation_weight
    return inv_freq, float(attention_factor)


@register_rope_schedule(
    "llama3",
    required=("factor", "low_freq_factor", "high_freq_factor"),
    optional=("original_max_position_embeddings",),
    description="Llama 3.1 (arXiv 2407.21783): PI on long wavelengths, none on short, smooth between",
)
def _llama3(rotary_dim: int, base: float, seq_len: int | None, **params: Any):
    s = _factor(params)
    l0 = _original_length("llama3", params)
    low_ff, high_ff = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    if not high_ff > low_ff:
        raise ValueError(
            f"llama3 needs high_freq_factor > low_freq_factor, got {high_ff} and {low_ff}"
        )
    theta = default_inv_freq(rotary_dim, base)
    wavelen = 2 * math.pi / theta
    gamma = (l0 / wavelen - low_ff) / (high_ff - low_ff)
    smoothed = (1 - gamma) * theta / s + gamma * theta
    out = torch.where(wavelen > l0 / low_ff, theta / s, smoothed)
    out = torch.where(wavelen < l0 / high_ff, theta, out)
    return out, 1.0


@register_rope_schedule(
    "longrope",
    required=("short_factor", "long_factor"),
    optional=("original_max_position_embeddings", "factor", "attention_factor"),
    dynamic=True,
    description="LongRoPE (arXiv 2402.13753): per-frequency factors, long set beyond L0",
)
def _longrope(rotary_dim: int, base: float, seq_len: int | None, **params: Any):
    l0 = _original_length("longrope", params)
    factor = params.get("factor")
    if factor is None:
        lmax = params.get("max_position_embeddings")
        if lmax is None:
            raise ValueError(
                "rope_type 'longrope' needs 'factor' or 'max_position_embeddings' (factor = Lmax / L0)"
            )
        factor = int(lmax) / l0
    else:
        factor = _factor(params)
    attention_factor = params.get("attention_factor")
    if attention_factor is None:
        attention_factor = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(l0))
    key = "long_factor" if seq_len is not None and seq_len > l0 else "short_factor"
    ext = torch.as_tensor(params[key], dtype=torch.float64).flatten()
    for name in ("short_factor", "long_factor"):
        n = len(params[name])
        if n != rotary_dim // 2:
            raise ValueError(f"longrope {name} must have rotary_dim/2 = {rotary_dim // 2} entries, got {n}")
    return default_inv_freq(rotary_dim, base) / ext, float(attention_factor)


# --------------------------------------------------------------------------------------------
# transformers adapter


def _hf_init_fn(rope_type: str) -> Callable[..., tuple[Tensor, float]]:
    """A function with the signature of transformers' ``ROPE_INIT_FUNCTIONS`` entries."""

    def init_fn(config: Any, device: Any = None, seq_len: int | None = None, layer_type: str | None = None):
        if hasattr(config, "standardize_rope_params"):
            config.standardize_rope_params()
        rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
        if layer_type is not None and layer_type in rope:
            rope = rope[layer_type]
        params = {k: v for k, v in rope.items() if k not in ("rope_type", "type")}
        base = params.pop("rope_theta", getattr(config, "rope_theta", 10000.0))
        if "partial_rotary_factor" not in params and getattr(config, "partial_rotary_factor", None):
            params["partial_rotary_factor"] = config.partial_rotary_factor
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        inv_freq, factor = rope_frequencies(
            int(head_dim), base=float(base), rope_type=rope_type, seq_len=seq_len, **params
        )
        return inv_freq.to(device) if device is not None else inv_freq, factor

    init_fn.__name__ = f"formerlab_{rope_type}_rope_parameters"
    init_fn.__doc__ = f"formerlab's {rope_type!r} schedule with transformers' ROPE_INIT_FUNCTIONS signature."
    return init_fn


#: formerlab schedules that are pure inverse-frequency changes transformers lacks
HF_EXTRA_ROPE_TYPES = ("ntk_old", "ntk_aware", "ntk_fixed", "ntk_mixed")


def register_into_transformers(names: tuple[str, ...] = HF_EXTRA_ROPE_TYPES) -> list[str]:
    """Add formerlab schedules to ``transformers.modeling_rope_utils.ROPE_INIT_FUNCTIONS``.

    After this call a config with ``rope_parameters={"rope_type": "ntk_mixed", "factor": 8, ...}``
    builds its rotary embedding from formerlab's schedule. log-n and ReRoPE cannot be expressed as
    inverse frequencies; use :func:`formerlab.interop.hf.extend_context` for those. transformers
    logs a warning about the missing validation function of these types; it is harmless.

    Returns:
        The names registered (existing transformers entries are never overwritten).
    """
    from transformers import modeling_rope_utils  # lazy: optional dependency

    added = []
    for name in names:
        canonical = ROPE_SCHEDULES.canonical(name)
        if name in modeling_rope_utils.ROPE_INIT_FUNCTIONS:
            continue
        modeling_rope_utils.ROPE_INIT_FUNCTIONS[name] = _hf_init_fn(canonical)
        added.append(name)
    return added
