"""The attention step every attention mixer shares: cache, mask, position hooks, kernel.

:func:`attend` takes the **un-rotated** queries, keys and values of the new tokens and does, in
order:

1. :func:`store_keys` — append the keys/values to the layer state (rotated keys under a static
   schedule, raw keys when the rotation depends on more than the key's own position);
2. :func:`visibility_mask` — causal / sliding-window / explicit masks and key padding;
3. :func:`scale_queries` — per-query factors: log-n (pretraining and log n†) and normalisers
   that are a row-scaled softmax (``softmax_plus``), so those run on the fused kernels;
4. :func:`relpos_scores_path` or the RoPE path through
   :func:`~formerlab.attention.kernel.scaled_dot_product`.

The position hooks of one layer are a :class:`LayerPosition`: a rotary embedding (any schedule),
a relative-position map (ReRoPE, Leaky; an ``eval_relpos`` used only outside training, as HWFA2
switches to ReRoPE at inference), a query scale (log-n) and an additive score bias (ALiBi).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..nn.state import LayerState, StateMismatchError
from ..position.relative import RelPosFn, relpos_attention, relpos_scores
from ..position.rerope import ReRoPECache
from ..position.rope import RotaryEmbedding
from .cache import KVCache
from .kernel import repeat_kv, scaled_dot_product
from .normalize import attention_normalize, row_factor

__all__ = ["LayerPosition", "attend", "build_attention_mask"]


@dataclasses.dataclass
class LayerPosition:
    """The position hooks of one attention layer (see the module docstring)."""

    rotary: RotaryEmbedding | None = None
    relpos: RelPosFn | None = None
    eval_relpos: RelPosFn | None = None
    query_scale: Any = None
    bias_fn: Callable[[Tensor, Tensor], Tensor] | None = None

    def relpos_for(self, training: bool) -> RelPosFn | None:
        """The active relative map (``None`` for plain RoPE)."""
        rp = self.relpos if training or self.eval_relpos is None else self.eval_relpos
        return None if rp is None or rp.is_identity else rp


def build_attention_mask(
    nq: int,
    nk: int,
    *,
    causal: bool = True,
    window: int | None = None,
    key_padding: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor | None:
    """Boolean ``(B|1, 1, nq, nk)`` mask by sequence index (queries are the last ``nq`` keys).

    ``window`` keeps keys with ``i - j < window``; ``key_padding`` is ``(B, nk)`` bool, ``True``
    = real token. Returns ``None`` when nothing is masked. A query never loses its own key, so
    padded rows stay finite.
    """
    i = torch.arange(nq, device=device)[:, None] + (nk - nq)
    j = torch.arange(nk, device=device)[None, :]
    mask = (j <= i) if causal else None
    if window is not None:
        near = (i - j < window) if causal else ((i - j).abs() < window)
        mask = near if mask is None else mask & near
    if mask is not None:
        mask = mask[None, None]
    if key_padding is not None:
        if key_padding.shape[-1] != nk:
            raise ValueError(
                f"attention_mask covers {key_padding.shape[-1]} keys but there are {nk} "
                "(past + current tokens)"
            )
        kp = key_padding.bool()[:, None, None, :] | (i == j)[None, None]
        mask = kp if mask is None else mask & kp
    return mask


# -- 1. the layer state ---------------------------------------------------------------------------
def _raw_keys(pos: LayerPosition, relpos: RelPosFn | None) -> bool:
    """Keys must be stored un-rotated when their rotation depends on more than their position."""
    return pos.rotary is not None and (relpos is not None or pos.rotary.dynamic)


def store_keys(
    k: Tensor, v: Tensor, positions: Tensor, *, pos: LayerPosition, raw: bool,
    state: LayerState | None, use_cache: bool, owner: str,
) -> tuple[Tensor, Tensor, Tensor, LayerState | None, int]:
    """Append the new keys/values; returns ``(keys, values, key_positions, state, past_len)``.

    Without a state and without ``use_cache`` nothing is stored (training).
    """
    rotary = pos.rotary
    schedule = None if rotary is None else rotary.schedule_key
    if state is None and not use_cache:
        keys = k if raw or rotary is None else rotary.rotate(k, positions)
        return keys, v, positions, None, 0
    if state is None:
        if raw and positions.dim() == 1:
            state = ReRoPECache(rotary.inv_freq, layout=rotary.layout,  # type: ignore[union-attr]
                                rotary_dim=rotary.rotary_dim)  # type: ignore[union-attr]
            state.owner = owner
        else:
            state = KVCache(rotated=not raw, schedule=schedule, owner=owner)
    if not isinstance(state, LayerState):
        raise TypeError(f"a layer state must be a LayerState, got {type(state).__name__}")
    state.expect(owner)
    if isinstance(state, ReRoPECache):
        if not raw:
            raise StateMismatchError(
                "the cache holds raw keys (built under a relative map or a dynamic schedule) but "
                "the layer now rotates keys at write time; re-run the prefill after changing the "
                "position method"
            )
        if positions.dim() != 1:
            raise StateMismatchError("this cache's positions are shared by the batch; got (B, n)")
        past = len(state)
        state.update(k, v, positions.to(torch.float64))
        return state.keys, state.values, state.positions, state, past  # type: ignore[return-value]
    if not isinstance(state, KVCache):
        raise StateMismatchError(f"an attention layer needs a KVCache, got {type(state).__name__}")
    if state.rotated == raw and state.length:
        raise StateMismatchError(
            "the KV cache was built with a different position method (rotated vs raw keys); "
            "re-run the prefill after changing the position method"
        )
    if state.length == 0:
        state.rotated, state.schedule = not raw, schedule
    state.check_schedule(schedule)
    past = state.length
    new = k if raw or rotary is None else rotary.rotate(k, positions)
    keys, values, k_pos = state.update(new, v, positions)
    return keys, values, k_pos, state, past


# -- 2. masks -------------------------------------------------------------------------------------
def visibility_mask(
    n: int, nk: int, *, causal: bool, window: int | None, key_padding: Tensor | None,
    explicit: Tensor | None, device: torch.device, need: bool,
) -> Tensor | None:
    """The boolean mask of this call, or ``None`` when the plain causal kernel applies.

    ``need`` forces a mask even for plain causal attention (paths without ``is_causal``).
    """
    if explicit is not None:
        if explicit.dtype != torch.bool or explicit.dim() != 4 or explicit.shape[-2:] != (n, nk):
            raise ValueError(
                f"mask must be a bool tensor (B|1, H|1, {n}, {nk}), got "
                f"{explicit.dtype} {tuple(explicit.shape)}"
            )
        pad = build_attention_mask(n, nk, causal=False, key_padding=key_padding, device=device)
        return explicit if pad is None else explicit & pad
    # plain causal attention needs no mask tensor: SDPA's own causal kernel when n == nk, and
    # nothing at all for a single query at the last position (a decoding step)
    plain = (nk == n or (causal and n == 1)) and key_padding is None and window is None
    if plain and not need:
        return None
    return build_attention_mask(n, nk, causal=causal, window=window, key_padding=key_padding,
                                device=device)


# -- 3. per-query factors -------------------------------------------------------------------------
def _visible_counts(mask: Tensor | None, n: int, nk: int, causal: bool, device: torch.device
                    ) -> Tensor:
    """Keys visible to each query row, ``(B|1, 1, n)``."""
    if mask is not None:
        return mask.expand(-1, -1, n, nk).sum(-1)
    if causal:
        return torch.arange(nk - n + 1, nk + 1, device=device)[None, None]
    return torch.full((1, 1, n), nk, device=device)


def scale_queries(
    q: Tensor, positions: Tensor, mask: Tensor | None, nk: int, *, pos: LayerPosition,
    causal: bool, normalization: str, options: dict[str, Any] | None,
) -> tuple[Tensor, str, dict[str, Any] | None]:
    """Fold log-n and row-scaled softmaxes into the queries; returns the normaliser left to run."""
    n = q.shape[-2]
    counts = None
    if pos.query_scale is not None:
        counts = _visible_counts(mask, n, nk, causal, q.device)
        q_pos = positions if positions.dim() == 2 else positions[None]
        q = q * pos.query_scale.query_factor(q_pos[:, None, :], counts)[..., None].to(q.dtype)
    if counts is None:
        counts = _visible_counts(mask, n, nk, causal, q.device)
    factor = row_factor(normalization, counts, options)
    if factor is not None:
        q = q * factor[..., None].to(device=q.device, dtype=q.dtype)
        return q, "softmax", None
    return q, normalization, options


# -- 4. the relative-position path ----------------------------------------------------------------
def _key_span(rotary: RotaryEmbedding, k_pos: Tensor) -> int | None:
    """The sequence length a dynamic schedule is evaluated at (largest key position + 1).

    Static schedules do not depend on it, so they skip the device-to-host read (no graph break
    under ``torch.compile``); a dynamic schedule's frequencies depend on the data by definition.
    """
    return int(k_pos.max()) + 1 if rotary.dynamic and k_pos.numel() else None


def relpos_scores_path(
    q: Tensor, keys: Tensor, values: Tensor, positions: Tensor, k_pos: Tensor, *,
    relpos: RelPosFn, rotary: RotaryEmbedding, mask: Tensor | None, bias: Tensor | None,
    normalization: str, options: dict[str, Any] | None, dropout_p: float, return_weights: bool,
    scale: float | None,
) -> tuple[Tensor, Tensor | None]:
    """Two-pass scores of any map, then any normaliser, bias, dropout and weights."""
    inv_freq, factor = rotary.frequencies(_key_span(rotary, k_pos))
    s = relpos_scores(q, keys, q_positions=positions, k_positions=k_pos, inv_freq=inv_freq,
                      relpos=relpos, layout=rotary.layout, rotary_dim=rotary.rotary_dim)
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    s = s * (scale * factor**2)
    if bias is not None:
        s = s + bias
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    w = attention_normalize(s.to(work), mask, normalization, **(options or {}))
    if dropout_p > 0.0:
        w = torch.nn.functional.dropout(w, p=dropout_p)
    groups = q.shape[1] // values.shape[1]
    out = torch.matmul(w.to(values.dtype), repeat_kv(values, groups)).to(q.dtype)
    return out, (w if return_weights else None)


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    positions: Tensor,
    *,
    pos: LayerPosition,
    owner: str,
    causal: bool = True,
    window: int | None = None,
    key_padding: Tensor | None = None,
    mask: Tensor | None = None,
    state: LayerState | None = None,
    use_cache: bool = False,
    normalization: str = "softmax",
    options: dict[str, Any] | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
    training: bool = False,
    scale: float | None = None,
    split_values: bool = False,
) -> tuple[Tensor, LayerState | None, Tensor | None]:
    """Attention of the new tokens over the cached and the new keys.

    Args:
        q: Un-rotated queries ``(B, H, n, d)``.
        k, v: Un-rotated keys ``(B, Hkv, n, d)`` and values ``(B, Hkv, n, dv)`` of the new tokens.
        positions: Absolute positions of the new tokens, ``(n,)`` or ``(B, n)``.
        pos: The layer's position hooks.
        owner: The mixer name recorded in (and checked against) the layer state.
        causal, window: Causal attention and a sliding window by sequence index.
        key_padding: ``(B, past + n)`` bool, ``True`` = real token.
        mask: Explicit bool ``(B|1, H|1, n, past + n)`` mask replacing causal/window.
        state, use_cache: The layer state to extend (created when ``use_cache`` and ``None``).
        normalization, options: The normaliser (:data:`~formerlab.attention.NORMALIZERS`).
        dropout_p: Attention dropout (already 0 outside training).
        return_weights: Also return the weights (explicit path).
        training: Selects ``relpos`` over ``eval_relpos``.
        scale: Logit scale (default ``1/sqrt(d)``).
        split_values: Values wider than q/k through the fused kernel as extra heads (GAU).

    Returns:
        ``(out (B, H, n, dv), state or None, weights or None)``.
    """
    n = q.shape[-2]
    if positions.shape[-1] != n:
        raise ValueError(f"positions cover {positions.shape[-1]} tokens, the input has {n}")
    relpos = pos.relpos_for(training)
    raw = _raw_keys(pos, relpos)
    keys, values, k_pos, state, past = store_keys(
        k, v, positions, pos=pos, raw=raw, state=state, use_cache=use_cache, owner=owner)
    nk = keys.shape[-2]
    need_mask = relpos is not None and causal
    m = visibility_mask(n, nk, causal=causal, window=window, key_padding=key_padding,
                        explicit=mask, device=q.device, need=need_mask)
    q, norm, opts = scale_queries(q, positions, m, nk, pos=pos, causal=causal,
                                  normalization=normalization, options=options)
    bias = None if pos.bias_fn is None else pos.bias_fn(positions, k_pos.to(positions.dtype))
    rotary = pos.rotary
    if relpos is not None:
        fast = norm == "softmax" and not opts and dropout_p == 0.0 and bias is None \
            and not return_weights
        if fast:
            out = _relpos_fast(q, keys, values, positions, k_pos, relpos=relpos, rotary=rotary,
                               mask=m, state=state, past=past, plain=mask is None
                               and key_padding is None and window is None and causal,
                               scale=scale)
            return out, (state if use_cache else None), None
        out, w = relpos_scores_path(
            q, keys, values, positions, k_pos, relpos=relpos, rotary=rotary, mask=m, bias=bias,
            normalization=norm, options=opts, dropout_p=dropout_p,
            return_weights=return_weights, scale=scale)
        return out, (state if use_cache else None), w
    if rotary is not None:
        seq_len = _key_span(rotary, k_pos) if raw else None
        q = rotary.rotate(q, positions, seq_len)
        if raw:
            keys = rotary.rotate(keys, k_pos, seq_len)
    res = scaled_dot_product(
        q, keys, values, mask=m, is_causal=causal and m is None, bias=bias, scale=scale,
        normalization=norm, normalization_options=opts, dropout_p=dropout_p,
        return_weights=return_weights, split_values=split_values,
    )
    out, w = res if return_weights else (res, None)
    return out, (state if use_cache else None), w


def _relpos_fast(
    q: Tensor, keys: Tensor, values: Tensor, positions: Tensor, k_pos: Tensor, *,
    relpos: RelPosFn, rotary: RotaryEmbedding | None, mask: Tensor | None,
    state: LayerState | None, past: int, plain: bool, scale: float | None,
) -> Tensor:
    """Softmax attention under a relative map through the map's own fast kernels."""
    inv_freq, factor = rotary.frequencies(_key_span(rotary, k_pos))  # type: ignore[arg-type]
    if isinstance(state, ReRoPECache) and past and plain:
        out = relpos.fast_decode(q, state, inv_freq=inv_freq, scale=scale,
                                 attention_factor=factor)
        if out is not None:
            return out
    return relpos_attention(  # type: ignore[return-value]
        q, keys, values, q_positions=positions, k_positions=k_pos, inv_freq=inv_freq,
        relpos=relpos, mask=mask, scale=scale, layout=rotary.layout,  # type: ignore[union-attr]
        rotary_dim=rotary.rotary_dim, attention_factor=factor,  # type: ignore[union-attr]
    )
