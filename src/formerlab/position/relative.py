"""Relative-position maps and ReRoPE / Leaky ReRoPE / InvLeaky ReRoPE attention.

A map ``f`` replaces the relative position ``r = i - j`` seen by RoPE (kexue.fm/archives/9708,
9728; reference repo bojone/rerope):

    identity:  f(r) = r                                   plain RoPE
    rerope:    f(r) = r if r < w else w                   ReRoPE, no distance ever exceeds w
    leaky:     f(r) = r if r < w else w + (r - w)/k       Leaky ReRoPE (k > 1); InvLeaky (k < 1)
    score_ij = q_iᵀ R_{-f(i-j)} k_j · scale

RoPE only produces scores linear in ``i - j``, so the piecewise map needs two score matrices merged
*before* masking and softmax: ``S1`` (ordinary RoPE) inside the window and ``S2`` outside, where
``S2`` rotates q and k at "outer" positions whose difference is ``f(r)`` (ReRoPE: q at ``w``, raw k;
Leaky: q at ``(i - w)/k + w``, k at ``j/k``). The merge is an explicit ``where(i - j < w, S1, S2)``;
the ``max`` shortcut of the reference decoder is valid only for ``k ≥ 1`` and is never used here.

Contents:

- :data:`RELPOS_MAPS`, :func:`make_relpos`: the maps (objects with ``f(r)``, ``window``,
  ``is_identity``, ``outer_positions``).
- :func:`relpos_scores`, :func:`relpos_attention`: the reference two-pass computation on un-rotated
  q/k at arbitrary positions (GQA, masks, batched positions).
- :func:`rerope_attention`: the public causal entry point at positions ``0 … n-1``;
  :class:`ReRoPECache`, :func:`rerope_decode_step`: decoding with a cache of **un-rotated** keys.
  Implemented in :mod:`formerlab.position.rerope` and re-exported here.
- :func:`naive_relpos_attention`: the per-pair oracle that builds ``R_{-f(i-j)}`` explicitly.

Causal use only is covered by the posts; for ``r < 0`` (bidirectional) every map is the identity.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..registry import Registry
from ._ops import (
    Piecewise,
    _check_qkv,
    _freqs_for,
    _gqa_apply,
    _positions,
    _rotary_dim,
    _softmax_weights,
)
from .rerope import ReRoPECache, rerope_attention, rerope_decode_step, two_pass_scores

__all__ = [
    "RELPOS_MAPS",
    "IdentityMap",
    "LeakyReRoPEMap",
    "ReRoPECache",
    "ReRoPEMap",
    "RelPosFn",
    "make_relpos",
    "naive_relpos_attention",
    "relpos_attention",
    "relpos_scores",
    "rerope_attention",
    "rerope_decode_step",
]

RELPOS_MAPS: Registry[type] = Registry("relative-position map")


def _check_window(window: Any) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window <= 0:
        raise ValueError(f"window must be a positive int, got {window!r}")
    return window


class RelPosFn:
    """Base class of relative-position maps; subclasses define :meth:`f` and :meth:`outer_positions`."""

    name = "base"
    window: int | None = None
    is_identity = False

    def f(self, r: Tensor) -> Tensor:
        raise NotImplementedError

    def outer_positions(self, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        """Positions ``(a_i, c_j)`` of the second pass with ``a_i - c_j = f(i - j)`` for ``i - j ≥ w``."""
        raise NotImplementedError

    def fast_attention(
        self, q: Tensor, k: Tensor, v: Tensor, q_positions: Tensor, k_positions: Tensor,
        inv_freq: Tensor, mask: Tensor | None, scale: float | None, layout: str,
        rotary_dim: int | None, attention_factor: float,
    ) -> Tensor | None:
        """The map's own fast equivalent of :func:`relpos_attention` for this call, or ``None``
        when the call is outside what the fast kernels cover (then the reference runs).

        A new map must implement it (or users call ``relpos_attention(..., fast=False)``): the
        base class raises instead of silently running the ``O(n²)``-memory reference.
        """
        raise NotImplementedError(
            f"{type(self).__name__} has no fast path; implement fast_attention(), or call "
            "relpos_attention(..., fast=False) to run the reference two-pass computation"
        )

    def fast_decode(self, q: Tensor, cache: ReRoPECache, *, inv_freq: Tensor,
                    scale: float | None, attention_factor: float) -> Tensor | None:
        """Queries at the newest cached positions against an incrementally kept
        :class:`ReRoPECache` (``None``: use :meth:`fast_attention` on the cache's tensors)."""
        return None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RelPosFn) and self.to_dict() == other.to_dict()

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.to_dict().items())))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"{type(self).__name__}({args})"


class _PiecewiseFast(RelPosFn):
    """Fast paths shared by the piecewise maps: the blockwise causal prefill of
    :func:`~formerlab.position.rerope.rerope_attention` and the cached decoding step of
    :func:`~formerlab.position.rerope.rerope_decode_step`."""

    def piecewise(self) -> Piecewise:
        return Piecewise(self.window, getattr(self, "factor", None))

    def fast_decode(self, q: Tensor, cache: ReRoPECache, *, inv_freq: Tensor,
                    scale: float | None, attention_factor: float) -> Tensor | None:
        if cache.inv_freq is not inv_freq:
            cache.inv_freq = inv_freq  # a new schedule invalidates the rotated copies
        return rerope_decode_step(q, cache, self.window, getattr(self, "factor", None),
                                  scale=scale, attention_factor=attention_factor)

    def fast_attention(
        self, q: Tensor, k: Tensor, v: Tensor, q_positions: Tensor, k_positions: Tensor,
        inv_freq: Tensor, mask: Tensor | None, scale: float | None, layout: str,
        rotary_dim: int | None, attention_factor: float,
    ) -> Tensor | None:
        qp, kp = _shared_positions(q_positions), _shared_positions(k_positions)
        if qp is None or kp is None:
            return None
        nq, nk = qp.numel(), kp.numel()
        if nk > 1 and not bool((kp[1:] > kp[:-1]).all()):
            return None
        causal = kp[None, :].to(q.device) <= qp[:, None].to(q.device)
        if mask is None:
            if not bool(causal.all()):  # "all visible" equals causal only when no key is ahead
                return None
        elif not bool((mask == causal).all()):
            return None
        factor = getattr(self, "factor", None)
        arange = torch.arange(nk, device=kp.device)
        if nq == nk and torch.equal(qp.to(kp.dtype), kp) and torch.equal(kp.to(arange.dtype), arange):
            return rerope_attention(
                q, k, v, inv_freq=inv_freq, window=self.window, leaky_factor=factor,
                layout=layout, scale=scale, rotary_dim=rotary_dim,
                attention_factor=attention_factor,
            )
        if nq <= nk and rotary_dim in (None, 2 * inv_freq.numel()):
            view = ReRoPECache(inv_freq, layout=layout)  # a read-only view: nothing is copied
            view.keys, view.values = k, v
            view.positions = kp.to(device=k.device, dtype=torch.float64)
            qp = qp.to(device=k.device, dtype=torch.float64)
            at_end = torch.equal(qp, view.positions[-nq:])  # queries are the newest keys
            return rerope_decode_step(
                q, view, self.window, factor, q_positions=None if at_end else qp, scale=scale,
                attention_factor=attention_factor,
            )
        return None


def _shared_positions(pos: Tensor) -> Tensor | None:
    """1-D positions, or the common row of batched positions (``None`` if rows differ)."""
    if pos.dim() == 1:
        return pos
    return pos[0] if bool((pos == pos[:1]).all()) else None


@RELPOS_MAPS.register("identity", aliases=("rope",))
class IdentityMap(_PiecewiseFast):
    """``f(r) = r``: plain RoPE."""

    name = "identity"
    is_identity = True

    def f(self, r: Tensor) -> Tensor:
        return r


@RELPOS_MAPS.register("rerope")
class ReRoPEMap(_PiecewiseFast):
    """ReRoPE ``f(r) = r if r < w else w`` (kexue.fm/archives/9708)."""

    name = "rerope"

    def __init__(self, window: int) -> None:
        self.window = _check_window(window)

    def f(self, r: Tensor) -> Tensor:
        return torch.where(r < self.window, r, torch.full_like(r, float(self.window)))

    def outer_positions(self, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        return self.piecewise().outer_positions(q_pos, k_pos)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "window": self.window}


@RELPOS_MAPS.register("leaky", aliases=("leaky_rerope",))
class LeakyReRoPEMap(_PiecewiseFast):
    """Leaky ReRoPE ``f(r) = r if r < w else w + (r - w)/k`` (kexue.fm/archives/9708).

    ``factor = k > 1`` compresses distances beyond the window; ``k = 1`` is plain RoPE; ``k < 1``
    stretches them (InvLeaky ReRoPE for training, kexue.fm/archives/9728).
    """

    name = "leaky"

    def __init__(self, window: int, factor: float) -> None:
        self.window = _check_window(window)
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 0:
            raise ValueError(f"leaky factor must be a number > 0, got {factor!r}")
        if not math.isfinite(factor):
            raise ValueError("leaky factor must be finite; use make_relpos('rerope', window=...) for k = ∞")
        self.factor = float(factor)

    def f(self, r: Tensor) -> Tensor:
        w = float(self.window)
        return torch.where(r < w, r, w + (r - w) / self.factor)

    def f_shortcut(self, r: Tensor) -> Tensor:
        """The reference decoder's ``-f(r) = max(-r, -(w + (r - w)/k))``; valid only for ``k ≥ 1``."""
        if self.factor < 1:
            raise ValueError(
                f"the max shortcut of Leaky ReRoPE is wrong for factor < 1 (InvLeaky), got {self.factor}; "
                "use f(r), the explicit where form"
            )
        w = float(self.window)
        return -torch.maximum(-r, -(w + (r - w) / self.factor))

    def outer_positions(self, q_pos: Tensor, k_pos: Tensor) -> tuple[Tensor, Tensor]:
        return self.piecewise().outer_positions(q_pos, k_pos)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "window": self.window, "factor": self.factor}


def make_relpos(name: str = "identity", **params: Any) -> RelPosFn:
    """Build a relative-position map by name: ``identity``, ``rerope(window)``, ``leaky(window, factor)``.

    Unknown names raise ``ValueError`` listing the valid ones; bad parameters raise ``ValueError``.
    """
    cls = RELPOS_MAPS.get(name)
    try:
        return cls(**params)
    except TypeError as err:
        raise ValueError(f"bad parameters {sorted(params)} for relative-position map {name!r}: {err}") from None


def _as_relpos(relpos: RelPosFn | str | dict | None) -> RelPosFn:
    if relpos is None:
        return IdentityMap()
    if isinstance(relpos, RelPosFn):
        return relpos
    if isinstance(relpos, str):
        return make_relpos(relpos)
    if isinstance(relpos, dict):
        d = dict(relpos)
        return make_relpos(d.pop("name"), **d)
    raise TypeError(f"relpos must be a RelPosFn, a name or a dict, got {type(relpos).__name__}")


# --------------------------------------------------------------------------------------------
# reference two-pass computation


def relpos_scores(
    q: Tensor,
    k: Tensor,
    *,
    q_positions: Tensor,
    k_positions: Tensor,
    inv_freq: Tensor,
    relpos: RelPosFn | str | None = None,
    layout: str = "half",
    rotary_dim: int | None = None,
) -> Tensor:
    """Merged raw scores ``q_iᵀ R_{-f(i-j)} k_j`` ``(B, H, nq, nk)`` (no scale, no mask).

    Inputs as in :func:`relpos_attention`; ``v`` is not needed.
    """
    relpos = _as_relpos(relpos)
    b, _, _, nq, nk = _check_qkv(q, k, k)
    r = _rotary_dim(inv_freq, q.shape[-1], rotary_dim)
    qp = _positions(q_positions, b, nq, "q_positions")
    kp = _positions(k_positions, b, nk, "k_positions")
    return two_pass_scores(q, k, qp, kp, _freqs_for(inv_freq, q), layout, r, relpos)


def relpos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    q_positions: Tensor,
    k_positions: Tensor,
    inv_freq: Tensor,
    relpos: RelPosFn | str | None = None,
    mask: Tensor | None = None,
    scale: float | None = None,
    layout: str = "half",
    rotary_dim: int | None = None,
    attention_factor: float = 1.0,
    return_weights: bool = False,
    fast: bool = True,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention with RoPE under a relative-position map, exact two-pass form.

    Args:
        q: **Un-rotated** queries ``(B, H, nq, d)``.
        k: **Un-rotated** keys ``(B, Hkv, nk, d)``; ``Hkv`` divides ``H`` (GQA).
        v: Values ``(B, Hkv, nk, dv)``.
        q_positions: Absolute query positions ``(nq,)`` or ``(B, nq)`` (may be fractional).
        k_positions: Absolute key positions ``(nk,)`` or ``(B, nk)``.
        inv_freq: ``(r/2,)`` inverse frequencies (any schedule).
        relpos: A :class:`RelPosFn`, a registered name or ``None`` (identity = plain RoPE).
        mask: Bool mask broadcastable to ``(B, H, nq, nk)``, True = attend; ``None`` = all visible.
            Applied *after* the merge.
        scale: Logit scale, default ``1/sqrt(d)``.
        layout: RoPE layout ``"half"`` or ``"interleaved"``.
        rotary_dim: Rotated channels (default ``2·len(inv_freq)``); the rest pass through.
        attention_factor: Hugging Face's cos/sin multiplier (YaRN); logits scale by its square.
        return_weights: Also return the attention weights ``(B, H, nq, nk)``.
        fast: When the call is plain causal self-attention at positions ``0 … n-1`` (or decoding
            against increasing key positions with a causal mask) and no weights are asked for,
            dispatch to :func:`~formerlab.position.rerope.rerope_attention` /
            :func:`~formerlab.position.rerope.rerope_decode_step` (same result, far less memory).
            ``False`` always runs the reference computation.

    Returns:
        ``(B, H, nq, dv)`` in ``q``'s dtype (and the weights if asked). Rows with no visible key
        give zeros.
    """
    b, h, _, nq, nk = _check_qkv(q, k, v)
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor (True = attend)")
        try:
            torch.broadcast_shapes(mask.shape, (b, h, nq, nk))
        except RuntimeError:
            raise ValueError(f"mask {tuple(mask.shape)} does not broadcast to {(b, h, nq, nk)}") from None
    if fast and not return_weights:
        out = _as_relpos(relpos).fast_attention(
            q, k, v, q_positions, k_positions, inv_freq, mask, scale, layout, rotary_dim,
            attention_factor,
        )
        if out is not None:
            return out
    s = relpos_scores(
        q, k, q_positions=q_positions, k_positions=k_positions, inv_freq=inv_freq,
        relpos=relpos, layout=layout, rotary_dim=rotary_dim,
    )
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    s = s * (scale * float(attention_factor) ** 2)
    p = _softmax_weights(s, mask, v.dtype)
    out = _gqa_apply(p, v).to(q.dtype)
    return (out, p) if return_weights else out


# --------------------------------------------------------------------------------------------
# the naive per-pair oracle


def _pair_channels(r: int, layout: str) -> list[tuple[int, int]]:
    if layout == "half":
        return [(i, i + r // 2) for i in range(r // 2)]
    if layout == "interleaved":
        return [(2 * i, 2 * i + 1) for i in range(r // 2)]
    raise ValueError(f"layout must be 'half' or 'interleaved', got {layout!r}")


def _rotation_matrix(angles: Tensor, d: int, pairs: list[tuple[int, int]]) -> Tensor:
    """Explicit ``d×d`` block rotation: pair ``(a, b)`` rotated by ``angles[t]``; other channels fixed."""
    rot = torch.eye(d, dtype=torch.float64)
    c, s = torch.cos(angles), torch.sin(angles)
    for t, (a, b) in enumerate(pairs):
        rot[a, a], rot[a, b], rot[b, a], rot[b, b] = c[t], -s[t], s[t], c[t]
    return rot


def naive_relpos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    q_positions: Tensor,
    k_positions: Tensor,
    inv_freq: Tensor,
    relpos: RelPosFn | str | None = None,
    mask: Tensor | None = None,
    scale: float | None = None,
    layout: str = "half",
    rotary_dim: int | None = None,
) -> Tensor:
    """Oracle: ``S_ij = q_iᵀ R_{-f(i-j)} k_j · scale`` with ``R`` built per pair; O(nq·nk·d²).

    Positions are 1-D. Computed in float64 whatever the input dtype; meant for ``n ≤ 64``.
    """
    relpos = _as_relpos(relpos)
    b, h, hkv, nq, nk = _check_qkv(q, k, v)
    d = q.shape[-1]
    r = _rotary_dim(inv_freq, d, rotary_dim)
    pairs = _pair_channels(r, layout)
    qd, kd, vd = q.double(), k.double(), v.double()
    kd = kd.repeat_interleave(h // hkv, dim=1)
    vd = vd.repeat_interleave(h // hkv, dim=1)
    theta = inv_freq.double().cpu()
    scale = d**-0.5 if scale is None else float(scale)
    s = torch.empty(b, h, nq, nk, dtype=torch.float64)
    rotations: dict[float, Tensor] = {}  # R_{-f(r)} per distinct relative position r
    qd, kd = qd.cpu(), kd.cpu()
    for i in range(nq):
        for j in range(nk):
            rel = float(q_positions[i]) - float(k_positions[j])
            if rel not in rotations:
                angle = -relpos.f(torch.tensor(rel, dtype=torch.float64)) * theta
                rotations[rel] = _rotation_matrix(angle, d, pairs)
            s[:, :, i, j] = ((qd[:, :, i] @ rotations[rel]) * kd[:, :, j]).sum(-1) * scale
    if mask is not None:
        s = s.masked_fill(~mask.cpu(), float("-inf"))
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0)
    return (p @ vd.cpu()).to(device=q.device)


