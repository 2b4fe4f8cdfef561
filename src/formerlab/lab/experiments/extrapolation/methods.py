"""The evaluated rows of the length-extrapolation study: methods and the model variants they use.

A :class:`Method` names the trained model variant it runs on and how it sets that model's
position hooks for a test length (``configure(model, train_len, test_len)``). Inference-time
methods reuse the trained RoPE baseline with an extension factor ``k = L_test / L``; the others
need their own training (a :data:`MODEL_VARIANTS` entry).

| method | what changes at inference | post |
|---|---|---|
| ``baseline`` | nothing (direct extrapolation) | kexue.fm/archives/9675 |
| ``pi`` | every frequency ``/ k`` (position interpolation, arXiv 2306.15595) | 9675 |
| ``ntk_old`` | base ``b·k`` | 9675 |
| ``ntk_aware`` | base ``b·k^(r/(r-2))`` (bloc97) | 9706 |
| ``ntk_fixed`` / ``ntk_mixed`` | ``θ_i k^(-2(i+1)/r)`` / ``θ_i exp(-a(i+1)^b)``, b = 0.625 | 9706 |
| ``yarn`` | NTK-by-parts ramp + attention temperature (arXiv 2309.00071) | 9948 |
| ``dynamic`` | NTK-aware with ``k`` from the current length (‡ below) | 9706 |
| ``rerope`` / ``leaky`` | relative positions ``≥ w`` clipped to ``w`` / compressed ``/k`` | 9708 |
| ``*-logn_dagger`` | queries × ``max(1, log_L n)`` on the baseline (log n†) | 9706, 9708 |
| ``*-logn_pretrain`` | a model pre-trained with log-n attention (post 8823) | 9675 |
| ``hwfa``, ``hwfa2``, ``invleaky`` | trained layer schedules / maps | 9603, 9731, 9728 |
| ``rope_bias``, ``nope``, ``sinusoidal`` | trained baselines of other encodings | 9577, 9675 |

‡ Dynamic NTK recomputes ``k = n / L`` from the sequence length ``n``. On whole sequences of one
length it is therefore **exactly** NTK-aware with the factor the test length implies, which is
what the static methods are given; :attr:`Method.same_as` records such identities by
construction so that the table labels them instead of presenting them as results. The two
differ only where one forward pass sees another length (the last-``L`` loss at a shorter context).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from ....models.lm import CausalLM
from ....registry import Registry

__all__ = [
    "BASELINE_OF",
    "METHODS",
    "MODEL_VARIANTS",
    "NTK_FAMILY",
    "QUICK_METHODS",
    "Method",
    "identity_pairs",
    "register_method",
    "schedule_names",
    "variant_changes",
]

Configure = Callable[[CausalLM, int, int], None]


@dataclasses.dataclass(frozen=True)
class Method:
    """An evaluated row: which trained model variant, and how to set its position hooks.

    Attributes:
        name, label: Registry name and display label.
        variant: The :data:`MODEL_VARIANTS` entry it runs on.
        configure: ``configure(model, train_len, test_len)`` installs its position hooks.
        inference_only: Runs on the RoPE baseline model (no training of its own).
        family: Methods of one family share a colour in the figures (``ntk_old`` and
            ``ntk_old-logn_dagger``).
        logn: ``None``, ``"dagger"`` (inference-only log n†) or ``"pretrain"``.
        schedule: An inverse-frequency schedule with ``k = L_test / L`` (``k = 1`` at ``L``).
        window: Relative-map window ``w(L)`` of ReRoPE / Leaky ReRoPE rows (``None`` otherwise).
        same_as: A method this one equals by construction on whole sequences of one length.
    """

    name: str
    label: str
    variant: str
    configure: Configure
    inference_only: bool = True
    family: str = ""
    logn: str | None = None
    schedule: bool = False
    window: Callable[[int], int] | None = None
    same_as: str | None = None


#: trained model variants: name -> what distinguishes them
MODEL_VARIANTS: dict[str, str] = {
    "rope": "RoPE baseline (every inference-time method reuses it)",
    "rope_logn": "RoPE pre-trained with log-n attention (base = L, post 8823)",
    "nope": "no position encoding",
    "sinusoidal": "sinusoidal absolute positions",
    "rope_bias": "RoPE with q/k projection biases (post 9577)",
    "hwfa": "HWFA: window RoPE layers + one full NoPE log-n layer (post 9603)",
    "hwfa2": "HWFA2: window layers + full layers trained with RoPE (post 9731)",
    "invleaky": "InvLeaky ReRoPE: trained with Leaky ReRoPE w=L/4, k=1/16, log-n (post 9728)",
}

#: the plain method of a model variant: the reference of the identities at the training length
BASELINE_OF = {"rope": "baseline", "rope_logn": "baseline-logn_pretrain"}

#: the NTK family of the blog's claims (dynamic NTK is NTK-aware here, YaRN is reported apart)
NTK_FAMILY = ("ntk_old", "ntk_aware", "ntk_fixed", "ntk_mixed")


def variant_changes(variant: str, train_len: int, num_layers: int) -> dict[str, Any]:
    """``ModelConfig.replace`` changes of a trained model variant (relative to the base model).

    Args:
        variant: A :data:`MODEL_VARIANTS` name.
        train_len: Training length ``L``.
        num_layers: Layers of the base model (HWFA/HWFA2 place their window layers).
    """
    from ....position.layers import hwfa2_specs, hwfa_specs

    L = train_len
    logn = {"logn": "pretrain", "logn_base_length": L}
    if variant == "rope":
        return {}
    if variant == "rope_logn":
        return logn
    if variant == "nope":
        return {"position": "nope"}
    if variant == "sinusoidal":
        return {"position": "sinusoidal"}
    if variant == "rope_bias":
        return {"qk_bias": True}
    if variant == "hwfa":
        # the full NoPE layer's log-n comes from its layer spec; only the base length is shared
        return {"logn_base_length": L,
                "layer_specs": [s.to_dict() for s in hwfa_specs(num_layers, L)]}
    if variant == "hwfa2":
        specs = hwfa2_specs(num_layers, window=max(2, L // 4),
                            num_full=2 if num_layers >= 4 else 1, rerope_window=L // 2)
        return {"layer_specs": [s.to_dict() for s in specs]}
    if variant == "invleaky":
        return {**logn, "relpos": {"name": "leaky", "window": L // 4, "factor": 1 / 16}}
    raise ValueError(f"unknown model variant {variant!r}; known: {list(MODEL_VARIANTS)}")


METHODS: Registry[Method] = Registry("extrapolation method")


def register_method(name: str, label: str, *, variant: str = "rope", inference_only: bool = True,
                    **info: Any) -> Callable[[Configure], Method]:
    """Register ``configure(model, train_len, test_len)`` as an extrapolation method.

    Args:
        name, label: Registry name and display label.
        variant: The trained model variant it runs on.
        inference_only: ``False`` for methods that need their own training.
        **info: Further :class:`Method` fields (``family``, ``logn``, ``schedule``, ``window``,
            ``same_as``).
    """

    def deco(fn: Configure) -> Method:
        if variant not in MODEL_VARIANTS:
            raise ValueError(f"unknown model variant {variant!r}; known: {list(MODEL_VARIANTS)}")
        info.setdefault("family", name)
        m = Method(name, label, variant, fn, inference_only, **info)
        METHODS.add(name, m)
        return m

    return deco


def _k(train_len: int, test_len: int) -> float:
    return max(1.0, test_len / train_len)


#: schedule methods: name -> (label, rope_type, params(k, L))
_SCHEDULES: dict[str, tuple[str, str, Callable[[float, int], dict[str, Any]]]] = {
    "baseline": ("Baseline (RoPE)", "default", lambda k, L: {}),
    "pi": ("PI-RoPE", "linear", lambda k, L: {"factor": k}),
    "ntk_old": ("NTK-RoPE-old (base×k)", "ntk_old", lambda k, L: {"factor": k}),
    "ntk_aware": ("NTK-aware (bloc97)", "ntk_aware", lambda k, L: {"factor": k}),
    "ntk_fixed": ("NTK-RoPE-fixed", "ntk_fixed", lambda k, L: {"factor": k}),
    "ntk_mixed": ("NTK-RoPE-mixed (b=0.625)", "ntk_mixed",
                  lambda k, L: {"factor": k, "b": 0.625}),
    "yarn": ("YaRN", "yarn", lambda k, L: {"factor": k, "original_max_position_embeddings": L}),
    "dynamic": ("Dynamic NTK ‡", "dynamic",
                lambda k, L: {"factor": 1.0, "max_position_embeddings": L}),
}
_SAME_AS = {"dynamic": "ntk_aware"}

#: relative-map methods: name -> (label, window(L), relpos(L))
_RELPOS: dict[str, tuple[str, Callable[[int], int], Callable[[int], dict[str, Any]]]] = {
    "rerope": ("ReRoPE (w=L/2)", lambda L: L // 2,
               lambda L: {"name": "rerope", "window": L // 2}),
    "rerope-w_quarter": ("ReRoPE (w=L/4)", lambda L: L // 4,
                         lambda L: {"name": "rerope", "window": L // 4}),
    "rerope-w_full": ("ReRoPE (w=L)", lambda L: L, lambda L: {"name": "rerope", "window": L}),
    "leaky": ("Leaky ReRoPE (w=L/4, k=16)", lambda L: L // 4,
              lambda L: {"name": "leaky", "window": L // 4, "factor": 16.0}),
}


def _schedule_method(rope_type: str, params: Callable[[float, int], dict[str, Any]],
                     logn: str | None) -> Configure:
    def configure(model: CausalLM, train_len: int, test_len: int) -> None:
        model.set_position_method(rope_type, rope_params=params(_k(train_len, test_len), train_len),
                                  logn=logn, train_len=train_len)

    return configure


def _relpos_method(relpos: Callable[[int], dict[str, Any]], logn: str | None) -> Configure:
    def configure(model: CausalLM, train_len: int, test_len: int) -> None:
        model.set_position_method(relpos=relpos(train_len), logn=logn, train_len=train_len)

    return configure


def _reset(model: CausalLM, train_len: int, test_len: int) -> None:
    model.reset_position_method()


def _same(name: str, suffix: str = "") -> str | None:
    return _SAME_AS[name] + suffix if name in _SAME_AS else None


for _name, (_label, _rt, _params) in _SCHEDULES.items():
    register_method(_name, _label, schedule=True, same_as=_same(_name))(
        _schedule_method(_rt, _params, None))
    register_method(f"{_name}-logn_dagger", f"{_label} + log n†", family=_name, logn="dagger",
                    schedule=True, same_as=_same(_name, "-logn_dagger"))(
        _schedule_method(_rt, _params, "dagger"))
for _name, (_label, _win, _rel) in _RELPOS.items():
    register_method(_name, _label, window=_win)(_relpos_method(_rel, None))
    register_method(f"{_name}-logn_dagger", f"{_label} + log n†", family=_name, logn="dagger",
                    window=_win)(_relpos_method(_rel, "dagger"))
for _name in ("baseline", "pi", "ntk_old", "ntk_fixed", "ntk_mixed"):
    _label, _rt, _params = _SCHEDULES[_name]
    register_method(f"{_name}-logn_pretrain", f"{_label}, log-n pre-trained", variant="rope_logn",
                    inference_only=False, family=_name, logn="pretrain", schedule=True)(
        _schedule_method(_rt, _params, "pretrain"))
register_method("rerope-logn_pretrain", "ReRoPE (w=L/2), log-n pre-trained", variant="rope_logn",
                inference_only=False, family="rerope", logn="pretrain",
                window=_RELPOS["rerope"][1])(_relpos_method(_RELPOS["rerope"][2], "pretrain"))
register_method("nope", "NoPE (trained without positions)", variant="nope",
                inference_only=False)(_reset)
register_method("sinusoidal", "Sinusoidal (absolute, trained)", variant="sinusoidal",
                inference_only=False)(_reset)
register_method("rope_bias", "RoPE + q/k bias (trained)", variant="rope_bias",
                inference_only=False)(_reset)
register_method("hwfa", "HWFA (window RoPE + full NoPE log-n, trained)", variant="hwfa",
                inference_only=False)(_reset)
register_method("invleaky", "InvLeaky ReRoPE (trained w=L/4, k=1/16; RoPE at inference)",
                variant="invleaky", inference_only=False, logn="pretrain")(
    lambda model, train_len, test_len: model.set_position_method("default", logn="pretrain"))


@register_method("hwfa2", "HWFA2 (RoPE in training, ReRoPE w=L/2 on full layers)",
                 variant="hwfa2", inference_only=False)
def _hwfa2(model: CausalLM, train_len: int, test_len: int) -> None:
    model.set_position_method(relpos={"name": "rerope", "window": train_len // 2},
                              relpos_layers="full")


def schedule_names() -> set[str]:
    """Every registered inverse-frequency schedule method (with or without log n)."""
    return {n for n in METHODS if METHODS.get(n).schedule}


def identity_pairs(names: list[str], train_len: int) -> list[tuple[str, str]]:
    """``(method, reference)`` pairs that must agree exactly at the training length.

    A schedule has ``k = 1`` there and log n† is ``max(1, log_L n) = 1`` for ``n ≤ L``, so every
    schedule row (± log n†) is its variant's plain method; ReRoPE / Leaky with ``w ≥ L`` never
    clip a distance at ``L`` and are plain RoPE.
    """
    pairs = []
    for n in names:
        m = METHODS.get(n)
        ref = BASELINE_OF.get(m.variant)
        exact = m.schedule or (m.window is not None and m.window(train_len) >= train_len)
        if ref is not None and ref != n and exact and ref in names:
            pairs.append((n, ref))
    return pairs


#: what the quick preset evaluates: every inference-time method on the one trained RoPE model
QUICK_METHODS = [n for n in METHODS
                 if METHODS.get(n).inference_only and not n.startswith("rerope-w_full")]
