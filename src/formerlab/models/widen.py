"""Function-preserving widening: make a trained Transformer k times wider so it computes exactly
the same function (kexue.fm/archives/8444).

Every hidden state becomes ``x̃ = R(x)/√k`` where ``R`` repeats each coordinate ``k`` times
(``repeat_interleave``; **not** tiling, which scrambles the per-head reshape). ``x ↦ R(x)/√k`` is
an isometry, so inner products — attention logits, tied-embedding logits — are preserved. Rules
(R along every widened axis):

====================================  =========================================================
embeddings (token/position/segment)   ``R(E)/√k``
generic linear (ReLU FFN, v, o)       ``W̃ = R(W)/k``, ``b̃ = R(b)/√k``
q, k with ``1/√head_dim`` scale        ``W̃ = k^{1/4} R(W)/k``, ``b̃ = k^{1/4} R(b)/√k`` (head size ×k)
GELU FFN, first layer                 ``W̃₁ = R(W₁)/√k``, ``b̃₁ = R(b₁)`` (GELU sees the original values)
GELU FFN, second layer                ``W̃₂ = R(W₂)/(k√k)``, ``b̃₂ = R(b₂)/√k``  (**correction 1**)
SwiGLU                                gate as the GELU first layer; up and down generic
LayerNorm / RMSNorm                   ``γ̃ = R(γ)/√k``, ``β̃ = R(β)/√k``, ``ε̃ = ε/k``  (**correction 2**)
untied head (vocab × hidden)          ``R`` along hidden, ÷ √k; tied heads need nothing
RoPE (q/k channels)                   ``half`` layout: plain ``R``; ``interleaved``: repeat whole pairs
====================================  =========================================================

The post prints ``b̃₂ = ½ b₂`` (k = 2) and keeps ε; both break exactness (regression tests in
``tests/models/test_widen.py`` measure by how much). RoPE is not exact with the standard θ
schedule, which depends on the head size; ``exact_rope=True`` repeats every frequency of the
original schedule per pair (``inv_freq[p div k]``) through the config's
``position.rope_freq_repeat``, which is exact, survives save/load and is kept when the position
schedule is changed afterwards (the new schedule is computed for the original width and repeated).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from .config import ModelConfig

__all__ = [
    "repeat_axis",
    "widen_config",
    "widen_embedding",
    "widen_linear",
    "widen_norm",
    "widen_transformer",
]

_MODES = ("repeat", "tile", "pairs")
#: (weight scale, bias scale) as powers of k
_RULES = {
    "generic": (-1.0, -0.5),
    "qk": (-0.75, -0.25),
    "pre_act": (-0.5, 0.0),
    "post_act": (-1.5, -0.5),
    "post_act_uncorrected": (-1.5, -1.0),  # the post's ½·b₂ for k = 2 (b₂/k in general)
    "head": (-0.5, 0.0),  # input widened, output (vocabulary) not
}


def repeat_axis(t: Tensor, k: int, dim: int, mode: str = "repeat", block: int | None = None) -> Tensor:
    """``R`` along ``dim``: ``repeat`` (interleaved, ``[a,a,b,b]``), ``tile`` (``[a,b,a,b]``) or
    ``pairs`` (each consecutive pair inside blocks of ``block`` channels: ``[a,b,a,b,c,d,c,d]``)."""
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {list(_MODES)}, got {mode!r}")
    if k < 1:
        raise ValueError(f"factor must be a positive int, got {k}")
    if mode == "repeat":
        return t.repeat_interleave(k, dim=dim)
    if mode == "tile":
        reps = [1] * t.dim()
        reps[dim] = k
        return t.repeat(*reps)
    dim = dim % t.dim()
    n = t.shape[dim]
    if n % 2:
        raise ValueError(f"pair repetition needs an even axis, got {n}")
    shape = list(t.shape)
    paired = t.reshape(*shape[:dim], n // 2, 2, *shape[dim + 1:])
    out = paired.repeat_interleave(k, dim=dim)
    return out.reshape(*shape[:dim], n * k, *shape[dim + 1:])


def widen_linear(weight: Tensor, bias: Tensor | None, k: int, rule: str = "generic", *,
                 in_mode: str | None = "repeat", out_mode: str | None = "repeat",
                 ) -> tuple[Tensor, Tensor | None]:
    """Widen an ``nn.Linear`` ``(out, in)`` weight and its bias by ``rule`` (see module table).

    ``in_mode``/``out_mode`` = ``None`` leaves that axis unwidened (e.g. the vocabulary axis).
    """
    if rule not in _RULES:
        raise ValueError(f"rule must be one of {list(_RULES)}, got {rule!r}")
    ws, bs = _RULES[rule]
    w = weight
    if out_mode is not None:
        w = repeat_axis(w, k, 0, out_mode)
    if in_mode is not None:
        w = repeat_axis(w, k, 1, in_mode)
    w = w * k ** ws
    b = None
    if bias is not None:
        b = (repeat_axis(bias, k, 0, out_mode) if out_mode is not None else bias) * k ** bs
    return w, b


def widen_embedding(weight: Tensor, k: int, mode: str = "repeat") -> Tensor:
    """``(num, hidden)`` table → ``R(E)/√k`` along the hidden axis."""
    return repeat_axis(weight, k, 1, mode) / math.sqrt(k)


def widen_norm(weight: Tensor | None, bias: Tensor | None, eps: float, k: int, *,
               mode: str = "repeat", eps_scale: bool = True
               ) -> tuple[Tensor | None, Tensor | None, float]:
    """LayerNorm/RMSNorm on a ``R(x)/√k`` input: ``γ/√k``, ``β/√k`` (repeated), ``ε/k``."""
    w = None if weight is None else repeat_axis(weight, k, 0, mode) / math.sqrt(k)
    b = None if bias is None else repeat_axis(bias, k, 0, mode) / math.sqrt(k)
    return w, b, (eps / k if eps_scale else eps)


def widen_config(config: ModelConfig, k: int, *, eps_scale: bool = True) -> ModelConfig:
    """Hidden, head and FFN sizes × k; heads unchanged; ``norm_eps / k``."""
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"factor must be a positive int, got {k!r}")
    if config.position.partial_rotary_factor != 1.0:
        raise ValueError("widening supports full rotary only (partial_rotary_factor = 1)")
    return config.replace(
        hidden_size=config.hidden_size * k,
        head_dim=config.dim_per_head * k,
        intermediate_size=config.ffn_size * k,
        norm_eps=config.norm_eps / k if eps_scale else config.norm_eps,
    )


def _state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {name: t.detach() for name, t in model.state_dict().items()}


def _widen_block_tensors(sd: dict[str, Tensor], prefix: str, c: ModelConfig, k: int, *,
                         mode: str, qk_mode: str, ffn_rule: str, bias_correction: bool,
                         eps_scale: bool, attn_scale: bool) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}

    def lin(name: str, rule: str, in_mode: str | None = mode, out_mode: str | None = mode) -> None:
        w, b = widen_linear(sd[f"{name}.weight"], sd.get(f"{name}.bias"), k, rule,
                            in_mode=in_mode, out_mode=out_mode)
        out[f"{name}.weight"] = w
        if b is not None:
            out[f"{name}.bias"] = b

    att = f"{prefix}mixer"
    qk_rule = "qk" if attn_scale else "generic"
    lin(f"{att}.q_proj", qk_rule, out_mode=qk_mode)
    lin(f"{att}.k_proj", qk_rule, out_mode=qk_mode)
    lin(f"{att}.v_proj", "generic")
    lin(f"{att}.o_proj", "generic")
    mlp = f"{prefix}mlp"
    post = "post_act" if bias_correction else "post_act_uncorrected"
    if c.ffn == "swiglu":
        lin(f"{mlp}.gate_proj", "generic" if ffn_rule == "generic" else "pre_act")
        lin(f"{mlp}.up_proj", "generic")
        lin(f"{mlp}.down_proj", "generic")
    elif c.ffn == "gelu" and ffn_rule != "generic":
        lin(f"{mlp}.up_proj", "pre_act")
        lin(f"{mlp}.down_proj", post)
    else:  # ReLU is positively homogeneous: the generic rule is exact
        lin(f"{mlp}.up_proj", "generic")
        lin(f"{mlp}.down_proj", "generic")
    for norm in ("attn_norm", "mlp_norm"):
        w, b, _ = widen_norm(sd.get(f"{prefix}{norm}.weight"), sd.get(f"{prefix}{norm}.bias"),
                             c.norm_eps, k, mode=mode, eps_scale=eps_scale)
        if w is not None:
            out[f"{prefix}{norm}.weight"] = w
        if b is not None:
            out[f"{prefix}{norm}.bias"] = b
    return out


def _options(kw: dict[str, Any]) -> dict[str, Any]:
    allowed = {"mode", "ffn_rule", "bias_correction", "eps_correction", "attn_scale"}
    unknown = sorted(set(kw) - allowed)
    if unknown:
        raise ValueError(f"unknown widening option(s) {unknown}; allowed: {sorted(allowed)}")
    opts = dict(mode="repeat", ffn_rule="auto", bias_correction=True, eps_correction=True,
                attn_scale=True)
    opts.update(kw)
    if opts["ffn_rule"] not in ("auto", "generic"):
        raise ValueError(f"ffn_rule must be 'auto' or 'generic', got {opts['ffn_rule']!r}")
    return opts


def widen_transformer(model: nn.Module, factor: int, *, rope: bool | None = None,
                      exact_rope: bool = False, **options: Any) -> nn.Module:
    """A ``factor``-times wider copy of a :class:`CausalLM` (GPT/Llama) or :class:`Encoder`
    (BERT) computing the same function.

    Args:
        model: A model whose layers use the ``mha`` mixer.
        factor: ``k``: hidden, head and FFN sizes × k, heads unchanged.
        rope: Unused (inferred from the model); kept for older calls.
        exact_rope: Keep the rotations exact: every frequency of the original schedule is
            repeated ``k`` times (``position.rope_freq_repeat``, saved with the config, kept by
            ``set_position_method``); otherwise the wider head gets its own, close schedule.
        **options: For the regression tests: ``mode`` (``repeat``/``tile``), ``ffn_rule``
            (``auto``/``generic``), ``bias_correction``, ``eps_correction``, ``attn_scale``
            (``False`` for unscaled attention).
    """
    from .transformer import TransformerModel

    if not isinstance(model, TransformerModel):
        raise TypeError(
            f"widen_transformer supports CausalLM and Encoder, got {type(model).__name__}; use "
            "widen_linear / widen_embedding / widen_norm for other modules"
        )
    c = model.config
    mixers = {b.mixer_name for b in model.layers}
    if mixers != {"mha"}:
        raise ValueError(f"widening is derived for attention layers (mixer 'mha'), got {sorted(mixers)}")
    if c.position.kind == "sinusoidal":
        raise ValueError("sinusoidal positions depend on the hidden size: not widenable exactly")
    o = _options(options)
    mode, k = o["mode"], factor
    rotary = c.position.kind_spec.rotary
    qk_mode = "pairs" if rotary and c.position.rope_layout == "interleaved" \
        and mode == "repeat" else mode
    new_c = widen_config(c, k, eps_scale=o["eps_correction"])
    if rotary and exact_rope:
        new_c = new_c.replace(position={"rope_freq_repeat": c.position.rope_freq_repeat * k})
    sd = _state_dict(model)
    out = {name: widen_embedding(sd[name], k, mode) for name in sd if name.startswith("embed_")
           and name.endswith(".weight") and not name.startswith("embed_norm")}
    for norm in ("embed_norm", "norm"):
        w, b, _ = widen_norm(sd.get(f"{norm}.weight"), sd.get(f"{norm}.bias"), c.norm_eps, k,
                             mode=mode)
        if w is not None:
            out[f"{norm}.weight"] = w
        if b is not None:
            out[f"{norm}.bias"] = b
    for i in range(c.num_layers):
        out.update(_widen_block_tensors(
            sd, f"layers.{i}.", c, k, mode=mode, qk_mode=qk_mode, ffn_rule=o["ffn_rule"],
            bias_correction=o["bias_correction"], eps_scale=o["eps_correction"],
            attn_scale=o["attn_scale"]))
    if "lm_head.weight" in sd and not c.tie_word_embeddings:
        out["lm_head.weight"], _ = widen_linear(sd["lm_head.weight"], None, k, "head",
                                                out_mode=None, in_mode=mode)
    new = type(model)(new_c).to(next(model.parameters()).dtype)
    new.load_weights(out, source="widened weights")
    return new.train(model.training)
