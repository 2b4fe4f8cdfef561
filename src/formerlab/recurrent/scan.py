"""Scans of the first-order linear recurrence ``x_t = a_t ⊙ x_{t−1} + b_t`` (``x_{−1} = 0``).

The recurrence is the inclusive scan of the pairs ``(a_t, b_t)`` under the associative operator
(``i`` before ``j``)::

    (a_i, b_i) ∘ (a_j, b_j) = (a_j a_i, a_j b_i + b_j)

whose running result is ``(Π a, x_t)``. Every algorithm below computes the same ``x`` (to rounding)
for real or complex tensors, time-varying ``a_t`` or a time-invariant ``a`` (size 1 along the scan
dimension, the LRU case ``a_t = λ``), with autograd (kexue.fm/archives/9554; Orvieto et al.,
arXiv 2303.06349; Blelloch, "Prefix sums and their applications", 1990).

==================  ===========================================================================
``sequential``      the loop ``x_t = a_t x_{t−1} + b_t``: the reference, ``L`` Python steps
``associative``     work-efficient: the odd/even recursion of ``jax.lax.associative_scan``
                    (combine neighbours, scan the pairs, fill the even positions) under
                    autograd, Blelloch's up-/down-sweep in one buffer without; ``O(L)`` work,
                    depth ``2 log₂ L``
``doubling``        Hillis–Steele: round ``r`` combines ``t`` with ``t − 2^r``;
                    ``⌈log₂ L⌉`` rounds, ``O(L log L)`` work
``upper_lower``     Su's recursion: scan both halves, then add ``(Π a of the second half's
                    prefix) ⊙ (last state of the first half)`` to the second half; ``log₂ L``
                    rounds of ``O(L)`` work (length padded to a power of two)
``chunked``         a loop of ``c`` steps inside all chunks at once, an odd/even scan of the
                    ``L/c`` chunk carries, one correction; ``c = ⌈√L⌉`` by default
==================  ===========================================================================

No algorithm uses ``λ^t · cumsum(λ^{−k} u_k)``: ``|λ|^{−k}`` overflows (``0.9^{−1000} ≈ 10⁴⁵``).
Products of ``a`` only shrink, so every method stays finite for ``|a| ≤ 1`` at any length.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..registry import Registry

__all__ = ["SCANS", "linear_scan", "register_scan"]

ScanFn = Callable[..., Tensor]

#: name -> fn(a, b, initial=None, **options) with the scan dimension first: ``a`` ``(L|1, *F)``,
#: ``b`` ``(L, *F)``, ``initial`` ``(*F)`` or ``None``
SCANS: Registry[ScanFn] = Registry("scan")


def register_scan(name: str, *, aliases: tuple[str, ...] = (), **meta):
    """Register ``fn(a, b, initial=None, **options) -> x`` (scan dimension first) under ``name``."""
    return SCANS.register(name, aliases=aliases, **meta)


def linear_scan(a: Tensor, b: Tensor, dim: int = -2, method: str = "sequential",
                initial: Tensor | None = None, **options) -> Tensor:
    """All states of ``x_t = a_t ⊙ x_{t−1} + b_t`` along ``dim``.

    Args:
        a: Coefficients, broadcastable to ``b``; size 1 along ``dim`` means time-invariant.
        b: Inputs ``(..., L, ...)``, real or complex.
        dim: The scan (time) dimension of ``b``.
        method: A name of :data:`SCANS` (``sequential``, ``associative``, ``upper_lower``,
            ``chunked``).
        initial: ``x_{−1}``, the shape of ``b`` without ``dim`` (default zeros).
        **options: Method options (``chunk_size`` for ``chunked``).

    Returns:
        ``x`` with the broadcast shape of ``a`` and ``b`` and their promoted dtype.
    """
    fn = SCANS.get(method)
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"a and b must be tensors, got {type(a).__name__}, {type(b).__name__}")
    if b.dim() == 0:
        raise ValueError("b must have a scan dimension, got a 0-d tensor")
    dim = _normalize_dim(dim, b.dim())
    if a.dim() > b.dim():
        raise ValueError(f"a has more dimensions than b: {tuple(a.shape)} vs {tuple(b.shape)}")
    a = a.reshape((1,) * (b.dim() - a.dim()) + tuple(a.shape))
    length = b.shape[dim]
    if a.shape[dim] not in (1, length):
        raise ValueError(f"a must have size 1 or {length} along dim {dim}, got {tuple(a.shape)}")
    try:
        feat = torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError as exc:
        raise ValueError(f"a {tuple(a.shape)} does not broadcast to b {tuple(b.shape)}") from exc
    dtype = torch.promote_types(a.dtype, b.dtype)
    a_t = a.to(dtype).movedim(dim, 0)
    b_t = b.to(dtype).expand(feat).movedim(dim, 0)
    a_t = a_t.expand(a_t.shape[0], *b_t.shape[1:])
    if initial is not None:
        want = b_t.shape[1:]
        if tuple(initial.shape) != tuple(want):
            raise ValueError(f"initial must have shape {tuple(want)} (b without dim {dim}), "
                             f"got {tuple(initial.shape)}")
        initial = initial.to(dtype)
    if length == 0:
        return b_t.clone().movedim(0, dim)
    if length == 1:
        x = b_t.clone() if initial is None else torch.addcmul(b_t, a_t, initial)
        return x.movedim(0, dim)
    return fn(a_t, b_t, initial=initial, **options).movedim(0, dim)


def _with_initial(a: Tensor, b: Tensor, initial: Tensor | None) -> Tensor:
    """``b`` with ``a_0 ⊙ x_{−1}`` added to its first step (functional, for autograd)."""
    if initial is None:
        return b
    return torch.cat([torch.addcmul(b[0], a[0], initial)[None], b[1:]])


def _needs_grad(*ts: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in ts)


def _normalize_dim(dim: int, ndim: int) -> int:
    if not -ndim <= dim < ndim:
        raise ValueError(f"dim {dim} is out of range for b with {ndim} dimensions")
    return dim % ndim


def _pad_time(x: Tensor, total: int, value: float) -> Tensor:
    if x.shape[0] == total:
        return x
    pad = x.new_full((total - x.shape[0], *x.shape[1:]), value)
    return torch.cat([x, pad])


@register_scan("sequential")
def sequential(a: Tensor, b: Tensor, initial: Tensor | None = None) -> Tensor:
    """The reference loop ``x_t = a_t x_{t−1} + b_t``."""
    steps = b.unbind(0)  # one backward node for all steps (indexing b[t] would allocate L grads)
    coefs = a.unbind(0) if a.shape[0] != 1 else (a[0],) * len(steps)
    x = steps[0] if initial is None else torch.addcmul(steps[0], coefs[0], initial)
    out = [x]
    for at, bt in zip(coefs[1:], steps[1:]):
        x = torch.addcmul(bt, at, x)
        out.append(x)
    return torch.stack(out)


def _doubling(a: Tensor, b: Tensor) -> Tensor:
    """Hillis–Steele inclusive scan along dim 0 (``a`` of length 1 = time-invariant)."""
    varying = a.shape[0] != 1
    x, prod, step, n = b, a, 1, b.shape[0]
    while step < n:
        coef = prod[step:] if varying else prod
        x = torch.cat([x[:step], x[step:] + coef * x[:-step]])
        if step * 2 < n:
            # windows cut by the start of the sequence keep a wrong product, but it multiplies
            # only zeros (nothing precedes x_0), so it is never used
            prod = torch.cat([prod[:step], prod[step:] * prod[:-step]]) if varying else prod * prod
        step *= 2
    return x


def _odd_even(a: Tensor, b: Tensor) -> Tensor:
    """Work-efficient odd/even recursion along dim 0 (the scheme of ``jax.lax.associative_scan``).

    Combine neighbouring pairs, scan the half-length sequence of pairs (the states at odd
    positions), then fill the even positions with one step each: ``O(L)`` work, depth
    ``2 log₂ L``.
    """
    n = b.shape[0]
    if n == 1:
        return b
    varying = a.shape[0] != 1
    m = n // 2
    a_odd = a[1:2 * m:2] if varying else a
    b_pair = torch.addcmul(b[1:2 * m:2], a_odd, b[0:2 * m:2])
    a_pair = a_odd * a[0:2 * m:2] if varying else a * a
    x_odd = _odd_even(a_pair, b_pair)  # states 1, 3, …, 2m − 1
    rest = b[2::2]  # even positions 2, 4, … below n
    out = torch.empty_like(b)  # filled by strided writes (autograd records them)
    out[1::2] = x_odd
    out[0] = b[0]
    out[2::2] = torch.addcmul(rest, a[2::2] if varying else a, x_odd[: rest.shape[0]])
    return out


@register_scan("associative", aliases=("odd_even", "blelloch"))
def associative(a: Tensor, b: Tensor, initial: Tensor | None = None) -> Tensor:
    """Work-efficient parallel scan: ``O(L)`` work in ``2⌈log₂ L⌉`` vectorised rounds.

    With autograd: the odd/even recursion (what ``jax.lax.associative_scan`` does, as in the
    reference LRU code of Orvieto et al.). Without: Blelloch's up-sweep / down-sweep in place in
    one output buffer (the same combinations, no allocation per round).
    """
    if _needs_grad(a, b, initial):
        return _odd_even(a, _with_initial(a, b, initial))
    return _blelloch_inplace(a, b, initial)


def _blelloch_inplace(a: Tensor, b: Tensor, initial: Tensor | None) -> Tensor:
    """Inclusive Blelloch scan in place (no autograd).

    Up-sweep, ``d = 1, 2, 4, …``: element ``i`` with ``i + 1 ≡ 0 (mod 2d)`` absorbs element
    ``i − d``: ``x_i ← A_i x_{i−d} + x_i``, ``A_i ← A_i A_{i−d}`` (``A`` = product of ``a`` over the
    segment, ``a^{2d}`` when time-invariant). Down-sweep, ``d = …, 2, 1``: element ``i`` with
    ``i + 1 ≡ d (mod 2d)``, ``i ≥ 2d``, completes from the finished prefix ``x_{i−d}``.
    """
    n = b.shape[0]
    varying = a.shape[0] != 1
    x = b.clone()
    if initial is not None:
        x[0].addcmul_(a[0], initial)
    prod = a.clone() if varying else None
    powers = [a[0]]  # a^d for d = 1, 2, 4, … (time-invariant case)
    d = 1
    while 2 * d <= n:
        hi, lo = slice(2 * d - 1, n, 2 * d), slice(d - 1, n - d, 2 * d)
        m = x[hi].shape[0]
        coef = prod[hi] if varying else powers[-1]
        x[hi].addcmul_(coef, x[lo][:m])
        if varying:
            prod[hi].mul_(prod[lo][:m])
        else:
            powers.append(powers[-1] * powers[-1])
        d *= 2
    while d > 1:
        d //= 2
        tgt, src = slice(3 * d - 1, n, 2 * d), slice(2 * d - 1, n - d, 2 * d)
        m = x[tgt].shape[0]
        if m:
            coef = prod[tgt] if varying else powers[d.bit_length() - 1]
            x[tgt].addcmul_(coef, x[src][:m])
    return x


@register_scan("doubling", aliases=("hillis_steele",))
def doubling(a: Tensor, b: Tensor, initial: Tensor | None = None) -> Tensor:
    """Doubling scan: ``⌈log₂ L⌉`` rounds of ``O(L)`` work each (Hillis & Steele 1986)."""
    return _doubling(a, _with_initial(a, b, initial))


@register_scan("upper_lower")
def upper_lower(a: Tensor, b: Tensor, initial: Tensor | None = None) -> Tensor:
    """Su's upper/lower recursion, bottom-up: blocks of 2, 4, 8, … (kexue.fm/archives/9554).

    At every level each block's second half receives ``A ⊙ x_last(first half)``, where ``A`` is
    the running product of ``a`` inside the second half (the powers ``λ^{1…s}`` when ``a = λ``).
    """
    n = b.shape[0]
    size = 1 << (n - 1).bit_length()
    varying = a.shape[0] != 1
    x = _pad_time(_with_initial(a, b, initial), size, 0.0)
    prod = _pad_time(a, size, 1.0) if varying else a
    powers = a  # a^{1..s} for the time-invariant case
    half = 1
    while half < size:
        feat = x.shape[1:]
        xb = x.reshape(size // (2 * half), 2 * half, *feat)
        x1, x2 = xb[:, :half], xb[:, half:]
        if varying:
            pb = prod.reshape(size // (2 * half), 2 * half, *feat)
            p1, p2 = pb[:, :half], pb[:, half:]
            x2 = x2 + p2 * x1[:, -1:]
            prod = torch.cat([p1, p2 * p1[:, -1:]], dim=1).reshape(size, *feat)
        else:
            x2 = x2 + powers[None] * x1[:, -1:]
            if 2 * half < size:
                powers = torch.cat([powers, powers * powers[-1:]])
        x = torch.cat([x1, x2], dim=1).reshape(size, *feat)
        half *= 2
    return x[:n]


@register_scan("chunked")
def chunked(a: Tensor, b: Tensor, initial: Tensor | None = None, chunk_size: int | None = None
            ) -> Tensor:
    """Loop inside chunks of ``chunk_size`` (all chunks at once), scan the chunk carries, correct.

    ``x = X_local + A_local ⊙ s_prev`` where ``X_local`` is the scan restarted at every chunk,
    ``A_local`` the running product of ``a`` inside the chunk and ``s_prev`` the true state at the
    end of the previous chunk (an odd/even scan over the ``L/c`` chunk ends). ``c + log(L/c)``
    sequential steps; ``c = ⌈√L⌉`` by default. Without autograd it writes into one output buffer
    (no per-pass allocation: on CPU, fresh large tensors cost page faults).
    """
    n = b.shape[0]
    c = max(1, math.isqrt(n - 1) + 1) if chunk_size is None else int(chunk_size)
    if c < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    c = min(c, n)
    if not _needs_grad(a, b, initial):
        return _chunked_inplace(a, b, initial, c)
    chunks = -(-n // c)
    varying = a.shape[0] != 1
    feat = b.shape[1:]
    b = _with_initial(a, b, initial)
    xb = _pad_time(b, chunks * c, 0.0).reshape(chunks, c, *feat)
    ab = _pad_time(a, chunks * c, 1.0).reshape(chunks, c, *feat) if varying else None
    steps = xb.unbind(1)
    coefs = ab.unbind(1) if varying else (a,) * c
    x, p = steps[0], coefs[0]
    xs, ps = [x], [p]
    for ak, bk in zip(coefs[1:], steps[1:]):
        x = torch.addcmul(bk, ak, x)
        p = p * ak
        xs.append(x)
        ps.append(p)
    local, prod = torch.stack(xs, dim=1), torch.stack(ps, dim=1)  # (T, c, F), (T|1, c, F)
    if chunks > 1:
        ends = _odd_even(prod[:, -1], local[:, -1])  # true state at the end of every chunk
        prev = torch.cat([torch.zeros_like(ends[:1]), ends[:-1]])
        local = torch.addcmul(local, prod, prev[:, None])
    return local.reshape(chunks * c, *feat)[:n]


def _chunked_inplace(a: Tensor, b: Tensor, initial: Tensor | None, c: int) -> Tensor:
    """The chunked scan without autograd, written into one buffer laid out like ``b``."""
    n, feat = b.shape[0], b.shape[1:]
    varying = a.shape[0] != 1
    out = torch.empty_like(b)
    chunks, full = n // c, (n // c) * c
    ob, xb = out[:full].unflatten(0, (chunks, c)), b[:full].unflatten(0, (chunks, c))
    ab = a[:full].unflatten(0, (chunks, c)) if varying else None
    prod = torch.empty_like(ob) if varying else a.new_empty((1, c, *feat))
    prod[:, 0] = ab[:, 0] if varying else a
    ob[:, 0] = xb[:, 0]
    for k in range(1, c):
        ak = ab[:, k] if varying else a
        torch.addcmul(xb[:, k], ak, ob[:, k - 1], out=ob[:, k])
        torch.mul(prod[:, k - 1], ak, out=prod[:, k])
    # true state before every chunk: a scan over the chunk ends, started from x_{−1}
    ends = ob[:, -1].clone()
    if initial is not None:
        ends[0] += prod[0, -1] * initial
    ends = _odd_even(prod[:, -1], ends)
    prev = torch.cat([initial[None] if initial is not None else torch.zeros_like(ends[:1]),
                      ends[:-1]])
    ob.addcmul_(prod, prev[:, None])
    last = ends[-1]
    for t in range(full, n):  # the ragged tail
        at = a[t] if varying else a[0]
        last = torch.addcmul(b[t], at, last, out=out[t])
    return out
