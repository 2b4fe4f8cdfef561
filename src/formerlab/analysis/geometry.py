"""Orthogonal matrices that map a unit vector ``a`` to a unit vector ``b`` (kexue.fm/archives/8453).

With ``c = aᵀb`` (``a``, ``b`` normalised first), every solution acts on the plane of ``a`` and
``b``; three deterministic choices (:data:`ORTHOGONAL_MAPS`):

===============  =================================================  =============================
``symmetric``    ``(a+b)(a+b)ᵀ/(1+c) − I`` (Su's "simplest")          symmetric, involutory, a ↔ b,
                                                                      ``−I`` on span(a,b)^⊥,
                                                                      ``det = (−1)^(d−1)``
``householder``  ``I − (a−b)(a−b)ᵀ/(1−c) = I − 2uuᵀ``,                 symmetric, involutory, a ↔ b,
                 ``u = (a−b)/‖a−b‖``                                  ``det = −1``
``rotation``     ``I + 2baᵀ − (a+b)(a+b)ᵀ/(1+c)`` = Rodrigues           ``det = +1``, identity on
                 ``I + K + K²/(1+c)``, ``K = baᵀ − abᵀ``              span(a,b)^⊥, maps a → b only
===============  =================================================  =============================

Applied without forming ``T`` (``O(d)``): ``T_sym x = (a+b)((a+b)·x)/(1+c) − x``,
``T_ref x = x − (a−b)((a−b)·x)/(1−c)``, ``T_rot x = x + 2b(a·x) − (a+b)((a+b)·x)/(1+c)``.

Degenerate pairs keep each kind's invariants: for ``b = a`` the Householder map is the
reflection ``I − 2wwᵀ`` in a fixed unit ``w ⊥ a`` (the limit of ``I − 2uuᵀ``, still ``det −1``);
for ``b = −a`` the symmetric map is ``2wwᵀ − I`` and the rotation is ``I − 2aaᵀ − 2wwᵀ`` (a half
turn in the plane of ``a`` and ``w``). ``w`` is the coordinate axis least aligned with ``a``,
orthogonalised. In one dimension every kind is ``T = ab``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..registry import Registry

__all__ = ["ORTHOGONAL_MAPS", "apply_orthogonal_map", "orthogonal_map"]

#: name -> fn(x, a, b, c, w) -> T x for unit a, b, c = a·b and a unit w ⊥ a
ORTHOGONAL_MAPS: Registry[Callable[..., Tensor]] = Registry("orthogonal map")


def _dot(u: Tensor, v: Tensor) -> Tensor:
    return (u * v).sum(-1, keepdim=True)


def _tol(dtype: torch.dtype) -> float:
    return 1e-12 if dtype == torch.float64 else 1e-6


def _near(c: Tensor, target: float) -> Tensor:
    return (c - target).abs() <= _tol(c.dtype)


def _safe(den: Tensor, bad: Tensor) -> Tensor:
    return torch.where(bad, torch.ones_like(den), den)


@ORTHOGONAL_MAPS.register("symmetric", det="(-1)^(d-1)", symmetric=True)
def _symmetric(x: Tensor, a: Tensor, b: Tensor, c: Tensor, w: Tensor) -> Tensor:
    """Su's ``(a+b)(a+b)ᵀ/(1+c) − I``; ``2wwᵀ − I`` when ``b = −a``."""
    bad = _near(c, -1.0)
    s = a + b
    regular = s * _dot(s, x) / _safe(1 + c, bad) - x
    return torch.where(bad, 2 * w * _dot(w, x) - x, regular)


@ORTHOGONAL_MAPS.register("householder", det="-1", symmetric=True)
def _householder(x: Tensor, a: Tensor, b: Tensor, c: Tensor, w: Tensor) -> Tensor:
    """``I − (a−b)(a−b)ᵀ/(1−c)``; ``I − 2wwᵀ`` when ``b = a``."""
    bad = _near(c, 1.0)
    d = a - b
    regular = x - d * _dot(d, x) / _safe(1 - c, bad)
    return torch.where(bad, x - 2 * w * _dot(w, x), regular)


@ORTHOGONAL_MAPS.register("rotation", det="+1", symmetric=False)
def _rotation(x: Tensor, a: Tensor, b: Tensor, c: Tensor, w: Tensor) -> Tensor:
    """``I + 2baᵀ − (a+b)(a+b)ᵀ/(1+c)``; a half turn in the (a, w) plane when ``b = −a``."""
    bad = _near(c, -1.0)
    s = a + b
    regular = x + 2 * b * _dot(a, x) - s * _dot(s, x) / _safe(1 + c, bad)
    return torch.where(bad, x - 2 * a * _dot(a, x) - 2 * w * _dot(w, x), regular)


def _unit(v: Tensor, name: str) -> Tensor:
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(v).__name__}")
    if not v.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {v.dtype}")
    if v.dim() < 1 or v.shape[-1] == 0:
        raise ValueError(f"{name} must be (..., d) with d >= 1, got {tuple(v.shape)}")
    norm = v.norm(dim=-1, keepdim=True)
    if bool((norm.detach() == 0).any()):
        raise ValueError(f"{name} contains a zero vector: it has no direction")
    return v / norm


def _prepare(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    a, b = _unit(a, "a"), _unit(b, "b")
    if a.shape[-1] != b.shape[-1]:
        raise ValueError(f"a and b must have the same dimension, got {a.shape[-1]} and "
                         f"{b.shape[-1]}")
    a, b = torch.broadcast_tensors(a, b)
    c = _dot(a, b).clamp(-1, 1)
    # a fixed unit w ⊥ a: the coordinate axis least aligned with a, orthogonalised
    k = a.detach().abs().argmin(-1, keepdim=True)
    e = torch.zeros_like(a).scatter_(-1, k, 1.0)
    w = e - a * _dot(a, e)
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    return a, b, c, w


def apply_orthogonal_map(x: Tensor, a: Tensor, b: Tensor, kind: str = "symmetric") -> Tensor:
    """``T x`` for the orthogonal ``T`` of :func:`orthogonal_map`, in ``O(d)`` per vector.

    Args:
        x: ``(..., d)`` vectors (batch dims broadcast with those of ``a`` and ``b``).
        a: ``(..., d)`` source directions (normalised here).
        b: ``(..., d)`` target directions (normalised here).
        kind: ``symmetric``, ``householder`` or ``rotation`` (:data:`ORTHOGONAL_MAPS`).

    Returns:
        ``(..., d)`` mapped vectors.
    """
    fn = ORTHOGONAL_MAPS.get(kind)
    a, b, c, w = _prepare(a, b)
    if x.shape[-1] != a.shape[-1]:
        raise ValueError(f"x must end in dimension {a.shape[-1]}, got {tuple(x.shape)}")
    if a.shape[-1] == 1:
        return x * a * b
    return fn(x, a, b, c, w)


def orthogonal_map(a: Tensor, b: Tensor, kind: str = "symmetric") -> Tensor:
    """The orthogonal ``(..., d, d)`` matrix ``T`` with ``T a = b`` of the chosen kind.

    Args:
        a: ``(..., d)`` source directions (normalised here; batch dims broadcast with b).
        b: ``(..., d)`` target directions.
        kind: ``symmetric`` (Su's), ``householder`` or ``rotation`` (:data:`ORTHOGONAL_MAPS`).

    Returns:
        ``(..., d, d)`` matrices, differentiable in ``a`` and ``b``.
    """
    fn = ORTHOGONAL_MAPS.get(kind)
    a, b, c, w = _prepare(a, b)
    d = a.shape[-1]
    if d == 1:
        return (a * b)[..., None]
    eye = torch.eye(d, dtype=a.dtype, device=a.device).expand(*a.shape[:-1], d, d)
    # column j of T is T e_j: map the d basis vectors at once (x indexes the last-but-one axis)
    cols = fn(eye, a[..., None, :], b[..., None, :], c[..., None, :], w[..., None, :])
    return cols.transpose(-1, -2)
