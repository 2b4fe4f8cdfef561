"""Extend the context of Hugging Face Llama-family models with formerlab's position methods.

``extend_context(model, method, **params) -> handle`` patches a loaded transformers model in place
(tested with transformers 5.0 … 5.24); ``handle.remove()`` restores it exactly. Methods:

- any rope schedule of :data:`formerlab.position.ROPE_SCHEDULES` (``linear``/``pi``, ``ntk_old``,
  ``ntk_aware``, ``ntk_fixed``, ``ntk_mixed``, ``dynamic``, ``yarn``, ``llama3``, ``longrope``, …):
  the rotary module's ``inv_freq``/``original_inv_freq`` buffers and ``attention_scaling`` are
  replaced (recomputed per forward for length-dependent schedules). The training length ``L0``
  comes from the config's ``original_max_position_embeddings`` when it has one. A model that already
  scales its rope (``rope_type`` ≠ ``"default"``, e.g. Llama 3.1's ``llama3``) is refused unless
  ``replace_scaling=True``: the schedule is then computed from the unscaled ``rope_theta``.
  kexue.fm/archives/9675, 9706.
- ``"logn"`` (alias ``"logn_dagger"``): log-n† query scaling ``max(1, log_{train_len}(pos + 1))``
  (kexue.fm/archives/9706): a pre-hook on the rotary module captures the position ids, forward
  hooks on every ``q_proj`` scale the queries (keys and the KV cache are untouched).
- ``"rerope"`` / ``"leaky"``: ReRoPE / Leaky ReRoPE (kexue.fm/archives/9708) by replacing each
  attention module's ``forward``. The replacement reads its arguments through the installed
  class's own ``forward`` signature (``inspect.signature``), so the cache is found whatever its
  keyword (``cache`` from transformers 5.24, ``past_key_values`` before, or a deprecated spelling
  passed by keyword). While patched, the model's KV cache holds **un-rotated** keys (rotated at read
  time), so prefill-then-decode equals the full forward and length-dependent schedules stay exact.
  The cache must grow by concatenation (``DynamicCache``); a static cache raises. Do not carry a
  cache across ``extend_context``/``remove()``.

Every method accepts ``logn_train_len=`` to add log-n† on top (the bojone/rerope recipe). Handles
may be stacked and must be removed in reverse order. transformers is imported lazily.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from types import MethodType
from typing import Any

import torch
from torch import Tensor, nn

from ..position.logn import logn_dagger_factor
from ..position.relative import LeakyReRoPEMap, RelPosFn, ReRoPEMap, relpos_attention
from ..position.rerope import ReRoPECache, rerope_attention, rerope_decode_step
from ..position.schedules import ROPE_SCHEDULES, parse_rope_parameters, rope_frequencies

__all__ = ["EXTEND_METHODS", "SUPPORTED_MODEL_TYPES", "ExtendContextHandle", "extend_context"]

#: ``config.model_type`` values whose decoder layout (``model.model.rotary_emb``,
#: ``layers[i].self_attn.{q,k,v,o}_proj``) extend_context understands
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
#: methods besides the rope schedules
EXTEND_METHODS = ("logn", "logn_dagger", "rerope", "leaky")


class ExtendContextHandle:
    """Undo record of :func:`extend_context`; ``remove()`` restores the model (also a context manager)."""

    def __init__(self, model: nn.Module, method: str, params: dict[str, Any]) -> None:
        self.model, self.method, self.params = model, method, dict(params)
        self._undo: list[Callable[[], None]] = []
        self.removed = False

    def _stack(self) -> list[ExtendContextHandle]:
        stack = getattr(self.model, "_formerlab_extend_handles", None)
        if stack is None:
            stack = []
            self.model._formerlab_extend_handles = stack  # type: ignore[assignment]
        return stack

    def remove(self) -> None:
        """Restore the model. Stacked handles must be removed newest first."""
        if self.removed:
            return
        stack = self._stack()
        if stack and stack[-1] is not self:
            raise RuntimeError("remove extend_context handles in reverse order (newest first)")
        for undo in reversed(self._undo):
            undo()
        self._undo.clear()
        if stack:
            stack.pop()
        self.removed = True

    def __enter__(self) -> ExtendContextHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "removed" if self.removed else "active"
        return f"ExtendContextHandle(method={self.method!r}, params={self.params}, {state})"


# --------------------------------------------------------------------------------------------
# locating the pieces


def _locate(model: nn.Module) -> tuple[Any, nn.Module, list[nn.Module]]:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise TypeError(
            f"extend_context supports transformers models with model_type in {list(SUPPORTED_MODEL_TYPES)} "
            f"(LlamaForCausalLM, LlamaModel, Mistral*, Qwen2*), got {type(model).__name__} "
            f"(model_type={model_type!r})"
        )
    base = getattr(model, "model", model)
    rotary = getattr(base, "rotary_emb", None)
    layers = getattr(base, "layers", None)
    if rotary is None or layers is None or not hasattr(rotary, "inv_freq"):
        raise TypeError(
            f"{type(model).__name__} lacks model.rotary_emb / model.layers; this transformers version's "
            f"layout is not supported (expected the 5.x Llama layout)"
        )
    return config, rotary, [layer.self_attn for layer in layers]


def _config_rope(config: Any) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """The config's rope dict — ``rope_parameters`` (transformers 5) or ``rope_scaling`` (4.x) —
    split by :func:`~formerlab.position.schedules.parse_rope_parameters`."""
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None)
    return parse_rope_parameters(dict(rope or {}))


def _original_length(config: Any) -> int | None:
    """The training length L0 the config states, if any (a top-level field wins, as in transformers)."""
    top = getattr(config, "original_max_position_embeddings", None)
    if top is not None:
        return int(top)
    inner = _config_rope(config)[1].get("original_max_position_embeddings")
    return None if inner is None else int(inner)


def _existing_scaling(model: nn.Module, config: Any, rotary: nn.Module) -> str | None:
    """A description of the rope scaling already in force, or ``None`` for plain RoPE."""
    for h in reversed(getattr(model, "_formerlab_extend_handles", None) or []):
        if h.method in ROPE_SCHEDULES:
            shown = {k: v for k, v in h.params.items() if v is not None}
            return f"extend_context({h.method!r}, {shown}) (an active handle)"
    rope_type, params, _ = _config_rope(config)
    if rope_type == "default":
        rope_type = ROPE_SCHEDULES.canonical(getattr(rotary, "rope_type", None) or "default")
    if rope_type == "default":
        return None
    return f"{ {**params, 'rope_type': rope_type} } (from the model config)"


def _rope_setup(config: Any) -> tuple[int, float, float]:
    _, _, common = _config_rope(config)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    base = common.get("rope_theta", getattr(config, "rope_theta", 10000.0))
    partial = common.get("partial_rotary_factor",
                         getattr(config, "partial_rotary_factor", None) or 1.0)
    return int(head_dim), float(base), float(partial)


def _positions_from_call(args: tuple, kwargs: dict) -> Tensor | None:
    pos = kwargs.get("position_ids")
    if pos is None and len(args) > 1:
        pos = args[1]
    return pos


# --------------------------------------------------------------------------------------------
# the methods


def _patch_schedule(
    handle: ExtendContextHandle, config: Any, rotary: nn.Module, name: str, params: dict, replace_scaling: bool
) -> None:
    existing = _existing_scaling(handle.model, config, rotary)
    if existing is not None and not replace_scaling:
        raise ValueError(
            f"the model already uses rope scaling {existing}; extend_context({name!r}) would replace it, "
            "not stack on it. Pass replace_scaling=True to replace it (the new schedule is computed "
            "from the unscaled rope_theta)"
        )
    head_dim, base, partial = _rope_setup(config)
    meta = ROPE_SCHEDULES.meta(name)
    params = dict(params)
    params.setdefault("max_position_embeddings", config.max_position_embeddings)
    if "original_max_position_embeddings" in meta["optional"]:
        original = _original_length(config)
        params.setdefault("original_max_position_embeddings", original or config.max_position_embeddings)

    def compute(seq_len: int | None) -> tuple[Tensor, float]:
        return rope_frequencies(
            head_dim, base=base, rope_type=name, seq_len=seq_len, partial_rotary_factor=partial, **params
        )

    inv_freq, factor = compute(None)  # validates the parameters before touching the model
    saved = {
        "inv_freq": rotary.inv_freq.detach().clone(),
        "original_inv_freq": getattr(rotary, "original_inv_freq", None),
        "attention_scaling": getattr(rotary, "attention_scaling", 1.0),
        "rope_type": getattr(rotary, "rope_type", None),
    }
    if saved["original_inv_freq"] is not None:
        saved["original_inv_freq"] = saved["original_inv_freq"].detach().clone()
    if inv_freq.shape != rotary.inv_freq.shape:
        raise ValueError(f"schedule gives {inv_freq.shape[0]} frequencies, the model has {rotary.inv_freq.shape[0]}")

    def install(inv: Tensor, att: float) -> None:
        device = rotary.inv_freq.device
        rotary.inv_freq = inv.to(device=device, dtype=rotary.inv_freq.dtype)
        if saved["original_inv_freq"] is not None:
            rotary.original_inv_freq = inv.to(device=device, dtype=rotary.inv_freq.dtype).clone()
        rotary.attention_scaling = att

    install(inv_freq, factor)
    rotary.rope_type = "default"  # switch off transformers' own dynamic/longrope update

    def undo() -> None:
        rotary.inv_freq = saved["inv_freq"]
        if saved["original_inv_freq"] is not None:
            rotary.original_inv_freq = saved["original_inv_freq"]
        rotary.attention_scaling = saved["attention_scaling"]
        if saved["rope_type"] is not None:
            rotary.rope_type = saved["rope_type"]

    handle._undo.append(undo)
    if meta.get("dynamic"):
        memo: dict[int, tuple[Tensor, float]] = {}

        def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
            pos = _positions_from_call(args, kwargs)
            if pos is None or pos.numel() == 0:
                return
            seq_len = int(pos.max()) + 1
            if seq_len not in memo:
                memo.clear()
                memo[seq_len] = compute(seq_len)
            install(*memo[seq_len])

        hook = rotary.register_forward_pre_hook(pre_hook, with_kwargs=True)
        handle._undo.append(hook.remove)


def _patch_logn(handle: ExtendContextHandle, rotary: nn.Module, attns: list[nn.Module], train_len: int) -> None:
    logn_dagger_factor(torch.zeros(1), train_len)  # validate
    state: dict[str, Tensor | None] = {"factor": None}

    def pre_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        pos = _positions_from_call(args, kwargs)
        state["factor"] = None if pos is None else logn_dagger_factor(pos, train_len)

    def q_hook(module: nn.Module, inputs: tuple, output: Tensor) -> Tensor:
        factor = state["factor"]
        if factor is None:
            return output
        if factor.shape[-1] != output.shape[-2]:
            raise RuntimeError("log-n hook: position ids and q_proj output lengths disagree")
        return output * factor[..., None].to(device=output.device, dtype=output.dtype)

    hooks = [rotary.register_forward_pre_hook(pre_hook, with_kwargs=True)]
    hooks += [attn.q_proj.register_forward_hook(q_hook) for attn in attns]
    for h in hooks:
        handle._undo.append(h.remove)


def _bool_mask(attention_mask: Tensor | None) -> Tensor | None:
    if attention_mask is None:
        return None
    if attention_mask.dtype == torch.bool:
        return attention_mask
    return attention_mask > torch.finfo(attention_mask.dtype).min / 2


def _is_cache(obj: Any) -> bool:
    return callable(getattr(obj, "update", None)) and callable(getattr(obj, "get_seq_length", None))


class _CallLayout:
    """How the installed attention class is called, read from its own ``forward`` signature.

    transformers has renamed the cache argument (``past_key_value`` → ``past_key_values`` in 4.56,
    ``past_key_values`` → ``cache`` in 5.24) and dropped ``cache_position`` (5.4), so nothing here
    is spelled out: the cache parameter is the one annotated with a ``Cache`` type, the hidden states
    are the first parameter. A cache passed under another (deprecated) keyword lands in ``**kwargs``
    and is recognised by its type.
    """

    def __init__(self, attn: nn.Module) -> None:
        cls = type(attn)
        self.signature = inspect.signature(cls.forward)  # follows functools.wraps decorators
        params = list(self.signature.parameters.values())[1:]  # drop self
        self.var_keyword = next((p.name for p in params if p.kind is p.VAR_KEYWORD), None)
        named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        if not named:
            raise TypeError(f"{cls.__name__}.forward{self.signature} takes no hidden states")
        self.hidden = named[0].name
        annotated = [p.name for p in named if "Cache" in str(p.annotation)]
        known = [p.name for p in named if p.name in ("cache", "past_key_values", "past_key_value")]
        found = annotated or known
        if len(found) != 1:
            raise TypeError(
                f"cannot tell the cache argument of {cls.__name__}.forward{self.signature} "
                f"(candidates {found}); unsupported transformers attention layout"
            )
        self.cache = found[0]

    def read(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[Tensor, Any, dict[str, Any]]:
        """``(hidden_states, cache or None, every other argument by name)`` of one call."""
        bound = self.signature.bind(module, *args, **kwargs)
        named = dict(bound.arguments)
        if self.var_keyword is not None:
            named.update(named.pop(self.var_keyword, None) or {})
        hidden, cache = named.pop(self.hidden), named.pop(self.cache, None)
        if cache is None:
            cache = next((v for v in named.values() if _is_cache(v)), None)
        return hidden, cache, named


def _call_positions(named: dict[str, Any], past_len: int, nq: int, device: torch.device) -> Tensor:
    """Query positions ``(B or 1, nq)``: ``position_ids``, else ``cache_position`` (≤ 5.3), else
    the positions after the cached tokens."""
    pos = named.get("position_ids")
    if pos is None and named.get("cache_position") is not None:
        pos = named["cache_position"][None]
    if pos is None:
        pos = torch.arange(past_len, past_len + nq, device=device)[None]
    return pos.to(device)


def _relpos_forward(relpos: RelPosFn, rotary: nn.Module, layout: _CallLayout) -> Callable[..., tuple[Tensor, None]]:
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> tuple[Tensor, None]:
        hidden_states, cache, named = layout.read(self, args, kwargs)
        input_shape = hidden_states.shape[:-1]
        hidden_shape = (*input_shape, -1, self.head_dim)
        q = self.q_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(hidden_shape).transpose(1, 2)
        nq = q.shape[2]
        past_len = 0
        if cache is not None:
            past_len = int(cache.get_seq_length(self.layer_idx))
            k, v = cache.update(k, v, self.layer_idx)  # the cache holds un-rotated keys
            if k.shape[2] != past_len + nq:
                raise ValueError(
                    f"ReRoPE patching needs a cache that grows by concatenation (DynamicCache); "
                    f"{type(cache).__name__} returned {k.shape[2]} keys after {past_len} cached + {nq} new"
                )
        nk = k.shape[2]
        pos = _call_positions(named, past_len, nq, q.device)
        attention_mask = named.get("attention_mask")
        if past_len == 0 and nk == nq:
            kpos = pos
        else:  # cache slot j holds position j + (last query position - last new slot)
            kpos = torch.arange(nk, device=q.device)[None] + (pos[:, -1:] - (past_len + nq - 1))
        causal = (kpos[:, None, :] <= pos[:, :, None])[:, None]
        mask = _bool_mask(attention_mask)
        mask = causal if mask is None else mask[..., :nq, :nk]
        qp = pos[0] if pos.shape[0] == 1 else pos
        kp = kpos[0] if kpos.shape[0] == 1 else kpos
        factor = float(getattr(rotary, "attention_scaling", 1.0))
        plain = qp.dim() == 1 and bool((mask == causal).all())  # shared positions, no padding
        if plain and past_len == 0 and torch.equal(qp, torch.arange(nq, device=qp.device)):
            out = rerope_attention(  # fast blockwise / flash path
                q, k, v, inv_freq=rotary.inv_freq, window=relpos.window,
                leaky_factor=getattr(relpos, "factor", None), scale=self.scaling, attention_factor=factor,
            )
        elif plain and bool((kp[1:] > kp[:-1]).all()):
            view = ReRoPECache(rotary.inv_freq)  # a view of the transformers cache (raw keys)
            view.keys, view.values, view.positions = k, v, kp.to(torch.float64)
            at_end = torch.equal(qp.to(torch.float64), view.positions[-nq:])  # newest keys: flash path
            out = rerope_decode_step(
                q, view, relpos.window, getattr(relpos, "factor", None), q_positions=None if at_end else qp,
                scale=self.scaling, attention_factor=factor,
            )
        else:
            out = relpos_attention(
                q, k, v, q_positions=qp, k_positions=kp, inv_freq=rotary.inv_freq, relpos=relpos,
                mask=mask, scale=self.scaling, attention_factor=factor,
            )
        out = out.transpose(1, 2).reshape(*input_shape, -1).contiguous()  # type: ignore[union-attr]
        return self.o_proj(out), None

    return forward


def _patch_relpos(handle: ExtendContextHandle, config: Any, rotary: nn.Module, attns: list[nn.Module], relpos: RelPosFn) -> None:
    impl = getattr(config, "_attn_implementation", "eager")
    if impl not in ("eager", "sdpa", None):
        raise ValueError(
            f"ReRoPE patching needs attn_implementation 'eager' or 'sdpa', the model uses {impl!r}; "
            "load it with attn_implementation='sdpa'"
        )
    layer_types = getattr(config, "layer_types", None) or []
    if getattr(config, "sliding_window", None) and (
        config.model_type == "mistral" or "sliding_attention" in layer_types
    ):
        raise ValueError("ReRoPE patching does not support sliding-window attention layers")
    _, _, partial = _rope_setup(config)
    if partial != 1.0:
        raise ValueError("ReRoPE patching supports full rotary (partial_rotary_factor = 1) only")
    for attn in attns:
        for name in ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling", "layer_idx"):
            if not hasattr(attn, name):
                raise TypeError(f"{type(attn).__name__} has no {name!r}; unsupported attention layout")
    layouts = {cls: _CallLayout(attn) for cls, attn in {type(a): a for a in attns}.items()}
    for attn in attns:
        fwd = _relpos_forward(relpos, rotary, layouts[type(attn)])
        had_own = "forward" in attn.__dict__
        old = attn.__dict__.get("forward")
        attn.forward = MethodType(fwd, attn)  # type: ignore[method-assign]

        def undo(attn: nn.Module = attn, had_own: bool = had_own, old: Any = old) -> None:
            if had_own:
                attn.forward = old  # type: ignore[method-assign]
            else:
                del attn.forward

        handle._undo.append(undo)


def extend_context(model: nn.Module, method: str, **params: Any) -> ExtendContextHandle:
    """Patch a Hugging Face Llama-family model in place; returns a handle whose ``remove()`` undoes it.

    Args:
        model: A transformers ``LlamaForCausalLM``/``LlamaModel`` (or Mistral/Qwen2 equivalent).
        method: A rope schedule name (``"linear"``, ``"ntk_mixed"``, ``"dynamic"``, ``"yarn"``, …),
            ``"logn"`` (log-n†), ``"rerope"`` or ``"leaky"``.
        **params: Schedule keys in Hugging Face's vocabulary (``factor``, ``beta_fast``, …;
            ``max_position_embeddings`` defaults to the config's, ``original_max_position_embeddings``
            to the config's ``original_max_position_embeddings`` if it states one, else its
            ``max_position_embeddings``) and ``replace_scaling=True`` to replace a rope scaling the
            model already has; ``train_len`` for ``"logn"`` (default the config's
            ``max_position_embeddings``); ``window`` (and ``leaky_factor``, or ``factor`` for
            ``"leaky"``) for ReRoPE. ``logn_train_len`` adds log-n† to any method.

    Raises:
        TypeError: The model is not a supported architecture.
        ValueError: Unknown method or bad parameters; a schedule on a model that already scales
            its rope without ``replace_scaling=True``.

    Example:
        >>> handle = extend_context(model, "ntk_mixed", factor=8)      # doctest: +SKIP
        >>> handle.remove()                                            # doctest: +SKIP
    """
    config, rotary, attns = _locate(model)
    params = dict(params)
    logn_len = params.pop("logn_train_len", None)
    if method not in EXTEND_METHODS and method not in ROPE_SCHEDULES:
        valid = ", ".join([*EXTEND_METHODS, *ROPE_SCHEDULES.names(include_aliases=True)])
        raise ValueError(f"unknown extend_context method {method!r}; valid methods: {valid}")
    handle = ExtendContextHandle(model, method, {**params, "logn_train_len": logn_len})
    try:
        if method in ("logn", "logn_dagger"):
            train_len = params.pop("train_len", config.max_position_embeddings)
            if params:
                raise ValueError(f"unknown parameter(s) {sorted(params)} for 'logn'; allowed: ['train_len']")
            if logn_len is not None:
                raise ValueError("give the log-n training length once (train_len)")
            _patch_logn(handle, rotary, attns, int(train_len))
        elif method in ("rerope", "leaky"):
            window = params.pop("window", None)
            if window is None:
                raise ValueError(f"method {method!r} requires parameter 'window'")
            factor = params.pop("leaky_factor", params.pop("factor", None) if method == "leaky" else None)
            if params:
                raise ValueError(f"unknown parameter(s) {sorted(params)} for {method!r}; allowed: window, leaky_factor")
            if method == "leaky" and factor is None:
                raise ValueError("method 'leaky' requires parameter 'factor' (or 'leaky_factor')")
            relpos = ReRoPEMap(window) if factor is None else LeakyReRoPEMap(window, factor)
            _patch_relpos(handle, config, rotary, attns, relpos)
        else:
            replace = params.pop("replace_scaling", False)
            if not isinstance(replace, bool):
                raise TypeError(f"replace_scaling must be a bool, got {replace!r}")
            _patch_schedule(handle, config, rotary, ROPE_SCHEDULES.canonical(method), params, replace)
        if logn_len is not None:
            _patch_logn(handle, rotary, attns, int(logn_len))
    except Exception:
        for undo in reversed(handle._undo):
            undo()
        raise
    handle._stack().append(handle)
    return handle
