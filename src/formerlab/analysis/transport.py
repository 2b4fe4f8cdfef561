"""Optimal transport between discrete distributions: exact EMD and entropic Sinkhorn, batched.

``emd(p, q, cost)`` solves the earth mover's distance linear program (kexue.fm/archives/7388)

    EMD(p, q) = min_{γ ≥ 0} Σ_ij γ_ij C_ij   s.t.  Σ_j γ_ij = p_i,  Σ_i γ_ij = q_j

for a whole batch of problems at once and is differentiable in ``p``, ``q`` and ``cost``:
by LP duality (envelope theorem) ``∂EMD/∂C = γ*`` (the optimal plan) and ``∂EMD/∂p = u``,
``∂EMD/∂q = v`` (an optimal dual, centred like POT's ``ot.emd2``; unique up to the constant
that the mass constraint leaves free, and not unique at all for degenerate problems).

Solvers (:data:`TRANSPORT_SOLVERS`):

==============  ============================================================================
``exact``       formerlab's batched transportation simplex (compiled with numba when installed)
``pot``         POT's network simplex ``ot.emd``, one problem at a time (POT imported lazily)
``scipy``       ``scipy.optimize.linprog`` (HiGHS), one problem at a time, the last (redundant)
                equality dropped as the post suggests
``sinkhorn``    entropic OT, batched log-domain Sinkhorn on torch; returns ``⟨γ_ε, C⟩`` like
                POT's ``ot.sinkhorn2`` (``reg`` = ε), gradients by implicit differentiation
==============  ============================================================================

The exact solvers work in float64 on the CPU (a CUDA cost is copied, as POT does); Sinkhorn
stays on the input's device and dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..registry import Registry

__all__ = ["TRANSPORT_SOLVERS", "emd", "sinkhorn"]

#: name -> fn(p, q, cost, **options) -> (value, plan, u, v) as float64 numpy arrays (exact
#: solvers); ``sinkhorn`` is handled in torch.
TRANSPORT_SOLVERS: Registry[Callable[..., Any]] = Registry("transport solver")

_MASS_TOL = 1e-6


# --------------------------------------------------------------------------------- validation
def _check_weights(name: str, w: Tensor, size: int) -> None:
    if not isinstance(w, Tensor):
        raise TypeError(f"{name} must be a tensor of weights, got {type(w).__name__}")
    if not w.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {w.dtype}")
    if w.shape[-1] != size:
        raise ValueError(f"{name} has {w.shape[-1]} weights but the cost has {size} along its axis")
    if w.numel() == 0:
        raise ValueError(f"{name} is empty: every distribution needs at least one point")
    wd = w.detach()
    if not bool(torch.isfinite(wd).all()) or bool((wd < 0).any()):
        raise ValueError(f"{name} must hold finite non-negative weights")
    sums = wd.sum(-1)
    bad = (sums - 1).abs() > _MASS_TOL
    if bool(bad.any()):
        raise ValueError(
            f"{name} must sum to one along its last axis; got sums such as {float(sums[bad][0])}"
        )


def _prepare(p: Tensor, q: Tensor, cost: Tensor) -> tuple[Tensor, Tensor, Tensor, tuple[int, ...]]:
    if not isinstance(cost, Tensor):
        raise TypeError(f"cost must be a tensor, got {type(cost).__name__}")
    if cost.dim() < 2:
        raise ValueError(f"cost must be (..., m, n), got shape {tuple(cost.shape)}")
    if not cost.dtype.is_floating_point:
        raise TypeError(f"cost must be a floating-point tensor, got dtype {cost.dtype}")
    m, n = cost.shape[-2:]
    if m == 0 or n == 0:
        raise ValueError(f"cost is empty (shape {tuple(cost.shape)}): both sides need points")
    _check_weights("p", p, m)
    _check_weights("q", q, n)
    try:
        batch = torch.broadcast_shapes(p.shape[:-1], q.shape[:-1], cost.shape[:-2])
    except RuntimeError as exc:
        raise ValueError(
            f"batch shapes of p {tuple(p.shape)}, q {tuple(q.shape)} and cost "
            f"{tuple(cost.shape)} do not broadcast"
        ) from exc
    p = p.expand(*batch, m).reshape(-1, m)
    q = q.expand(*batch, n).reshape(-1, n)
    cost = cost.expand(*batch, m, n).reshape(-1, m, n)
    return p, q, cost, tuple(batch)


# ------------------------------------------------------------------------------ exact solvers
@TRANSPORT_SOLVERS.register("exact", exact=True)
def _solve_exact(p: np.ndarray, q: np.ndarray, cost: np.ndarray, numItermax: int = 100000,
                 **_: Any) -> tuple[np.ndarray, ...]:
    """Batched transportation simplex (:mod:`formerlab.analysis._ot_kernels`)."""
    from . import _ot_kernels as kernels

    b, m, n = cost.shape
    plans = np.empty((b, m, n))
    us, vs = np.empty((b, m)), np.empty((b, n))
    values = np.empty(b)
    iters, status = np.empty(b, np.int64), np.empty(b, np.int64)
    kernels.emd_batch(p, q, cost, plans, us, vs, values, iters, status, int(numItermax), 1e-12)
    if bool((status != kernels.STATUS_OPTIMAL).any()):
        raise RuntimeError(
            f"the transportation simplex reached numItermax={numItermax} pivots before optimality"
        )
    return values, plans, us, vs


@TRANSPORT_SOLVERS.register("pot", exact=True)
def _solve_pot(p: np.ndarray, q: np.ndarray, cost: np.ndarray, numItermax: int = 100000,
               **_: Any) -> tuple[np.ndarray, ...]:
    """POT's network simplex, one problem at a time."""
    import ot

    out = [ot.emd(p[i], q[i], cost[i], numItermax=int(numItermax), log=True)
           for i in range(cost.shape[0])]
    plans = np.stack([g for g, _ in out])
    values = np.array([log["cost"] for _, log in out], dtype=np.float64)
    us = np.stack([log["u"] for _, log in out])
    vs = np.stack([log["v"] for _, log in out])
    return values, plans, us, vs


@TRANSPORT_SOLVERS.register("scipy", exact=True)
def _solve_scipy(p: np.ndarray, q: np.ndarray, cost: np.ndarray, **_: Any
                 ) -> tuple[np.ndarray, ...]:
    """``linprog`` (HiGHS) with the last column constraint dropped (it is implied by the rest)."""
    from scipy.optimize import linprog

    b, m, n = cost.shape
    rows = np.kron(np.eye(m), np.ones((1, n)))
    cols = np.kron(np.ones((1, m)), np.eye(n))[:-1]
    a_eq = np.concatenate([rows, cols])
    values, plans, us, vs = np.empty(b), np.empty((b, m, n)), np.empty((b, m)), np.empty((b, n))
    for i in range(b):
        qi = q[i] * p[i].sum() / q[i].sum()
        res = linprog(cost[i].reshape(-1), A_eq=a_eq, b_eq=np.concatenate([p[i], qi[:-1]]),
                      bounds=(0, None), method="highs")
        if res.status != 0:
            raise RuntimeError(f"linprog failed on problem {i}: {res.message}")
        values[i], plans[i] = res.fun, res.x.reshape(m, n)
        duals = res.eqlin.marginals
        us[i], vs[i] = duals[:m], np.append(duals[m:], 0.0)
    return values, plans, us, vs


class _ExactEMD(torch.autograd.Function):
    """Value of the exact LP; backward by duality (plan for the cost, centred duals for p, q)."""

    @staticmethod
    def forward(ctx, p, q, cost, solver, options):  # type: ignore[override]
        fn = TRANSPORT_SOLVERS.get(solver)
        arrays = [np.ascontiguousarray(t.detach().to("cpu", torch.float64).numpy())
                  for t in (p, q, cost)]
        values, plans, us, vs = fn(*arrays, **options)
        kw = dict(device=cost.device, dtype=cost.dtype)
        plan = torch.from_numpy(plans).to(**kw)
        u = torch.from_numpy(us - us.mean(-1, keepdims=True)).to(**kw)
        v = torch.from_numpy(vs - vs.mean(-1, keepdims=True)).to(**kw)
        ctx.save_for_backward(plan, u, v)
        ctx.mark_non_differentiable(plan)
        return torch.from_numpy(values).to(**kw), plan

    @staticmethod
    def backward(ctx, grad_value, _grad_plan):  # type: ignore[override]
        plan, u, v = ctx.saved_tensors
        g = grad_value[:, None]
        return g * u, g * v, g[..., None] * plan, None, None


# ---------------------------------------------------------------------------------- sinkhorn
def _sinkhorn_potentials(log_p: Tensor, log_q: Tensor, cost: Tensor, reg: float,
                         numItermax: int, stopThr: float, method: str | None = None
                         ) -> tuple[Tensor, Tensor, int]:
    """Sinkhorn iterations on ``(B, m, n)`` costs; returns potentials ``(f, g, iterations)`` with
    ``γ_ij = exp((f_i + g_j − C_ij)/ε)``.

    When ``exp(−C/ε)`` cannot underflow (the cost range is below ~⅔ of the dtype's exponent
    range in units of ε) the iterations run on the scaling vectors ``u, v`` (POT's
    ``sinkhorn_knopp``); otherwise in the log domain with ``logsumexp`` (stable for any ε).
    Every 10 iterations the problems whose column-marginal error (L2) is below ``stopThr`` leave
    the batch, as they would stop if solved one at a time.
    """
    q_all = log_q.exp()
    finite = torch.isfinite(cost)
    lo = cost.masked_fill(~finite, float("inf")).amin((-2, -1), keepdim=True)
    hi = cost.masked_fill(~finite, float("-inf")).amax((-2, -1), keepdim=True)
    safe = float((hi - lo).max()) / reg < 0.6 * math.log(torch.finfo(cost.dtype).max)
    scaling = safe if method is None else method == "sinkhorn"
    if scaling:
        kernel = torch.exp(-(cost - lo) / reg)  # shifted by each problem's minimum cost
        state = [kernel, kernel.transpose(-1, -2).contiguous(), log_p.exp(), q_all,
                 torch.ones_like(log_p), torch.ones_like(log_q)]
    else:
        state = [cost, log_p, log_q, q_all, torch.zeros_like(log_p), torch.zeros_like(log_q)]
    idx = torch.arange(cost.shape[0], device=cost.device)
    out_a, out_b = state[-2].clone(), state[-1].clone()
    it = 0
    for it in range(1, numItermax + 1):
        if scaling:
            k, kt, p, q, u, v = state
            v = q / (u[:, None, :] @ k)[:, 0]
            u = p / (v[:, None, :] @ kt)[:, 0]
            state[4], state[5] = u, v
        else:
            c, lp, lq, q, f, g = state
            g = reg * (lq - torch.logsumexp((f[..., :, None] - c) / reg, dim=-2))
            f = reg * (lp - torch.logsumexp((g[..., None, :] - c) / reg, dim=-1))
            state[4], state[5] = f, g
        if it % 10 and it != numItermax:
            continue
        if scaling:
            col = state[5] * (state[4][:, None, :] @ state[0])[:, 0]
        else:
            col = torch.exp((state[4][..., :, None] + state[5][..., None, :] - state[0])
                            / reg).sum(-2)
        done = (col - state[3]).norm(dim=-1) < stopThr
        if bool(done.any()):
            out_a[idx[done]], out_b[idx[done]] = state[4][done], state[5][done]
            keep = ~done
            idx = idx[keep]
            state = [t[keep] for t in state]
            if len(idx) == 0:
                break
    if len(idx):
        out_a[idx], out_b[idx] = state[4], state[5]
    if scaling:
        return reg * torch.log(out_a) + lo[..., 0], reg * torch.log(out_b), it
    return out_a, out_b, it


class _SinkhornValue(torch.autograd.Function):
    """``⟨γ_ε, C⟩`` with gradients by implicit differentiation of the Sinkhorn fixed point.

    With ``γ = exp((f ⊕ g − C)/ε)`` and the marginal constraints, ``H [df; dg] = t(dC) + ε [dp; dq]``
    where ``H = [[diag p, γ], [γᵀ, diag q]]`` and ``t(dC) = [(γ∘dC) 1; (γ∘dC)ᵀ 1]``. Solving
    ``H z = [(C∘γ) 1; (C∘γ)ᵀ 1]`` (on the complement of ``H``'s null vector ``(1, −1)``) gives
    ``∂/∂C = γ ∘ (1 + (z_f ⊕ z_g − C)/ε)``, ``∂/∂p = z_f``, ``∂/∂q = z_g``.
    """

    @staticmethod
    def forward(ctx, p, q, cost, reg, numItermax, stopThr, method):  # type: ignore[override]
        with torch.no_grad():
            log_p, log_q = torch.log(p), torch.log(q)
            f, g, _ = _sinkhorn_potentials(log_p, log_q, cost, reg, numItermax, stopThr, method)
            plan = torch.exp((f[..., :, None] + g[..., None, :] - cost) / reg)
            plan = torch.nan_to_num(plan, nan=0.0)
            value = (plan * cost.masked_fill(plan == 0, 0.0)).sum((-2, -1))
        ctx.reg = reg
        ctx.save_for_backward(plan, cost, p > 0, q > 0)
        ctx.mark_non_differentiable(plan)
        return value, plan

    @staticmethod
    def backward(ctx, grad_value, _grad_plan):  # type: ignore[override]
        plan, cost, row_on, col_on = ctx.saved_tensors
        reg = ctx.reg
        b, m, n = plan.shape
        cp = plan * cost.masked_fill(plan == 0, 0.0)
        s = torch.cat([cp.sum(-1), cp.sum(-2)], dim=-1)
        h = torch.zeros(b, m + n, m + n, dtype=plan.dtype, device=plan.device)
        h[:, :m, m:] = plan
        h[:, m:, :m] = plan.transpose(-1, -2)
        on = torch.cat([row_on, col_on], dim=-1)
        diag = torch.cat([plan.sum(-1), plan.sum(-2)], dim=-1)
        h.diagonal(dim1=-2, dim2=-1).copy_(torch.where(on, diag, torch.ones_like(diag)))
        null = torch.cat([row_on.to(plan.dtype), -col_on.to(plan.dtype)], dim=-1)
        null = null / null.norm(dim=-1, keepdim=True)
        h = h + null[:, :, None] * null[:, None, :]
        z = torch.linalg.solve(h, s.masked_fill(~on, 0.0))
        zf, zg = z[:, :m], z[:, m:]
        safe_cost = cost.masked_fill(plan == 0, 0.0)
        d_cost = plan * (1 + (zf[:, :, None] + zg[:, None, :] - safe_cost) / reg)
        g = grad_value
        return (g[:, None] * zf, g[:, None] * zg, g[:, None, None] * d_cost,
                None, None, None, None)


def sinkhorn(p: Tensor, q: Tensor, cost: Tensor, reg: float, *, numItermax: int = 1000,
             stopThr: float = 1e-9, method: str | None = None, return_plan: bool = False
             ) -> Tensor | tuple[Tensor, Tensor]:
    """Entropic OT cost ``⟨γ_ε, C⟩`` (POT's ``ot.sinkhorn2``), batched and differentiable.

    Args:
        p: ``(..., m)`` source weights summing to one (zeros = padding).
        q: ``(..., n)`` target weights summing to one.
        cost: ``(..., m, n)`` cost matrices.
        reg: Entropic regularisation ε > 0 (absolute, in cost units, as in POT).
        numItermax: Maximum Sinkhorn iterations.
        stopThr: Stop when every problem's column-marginal error (L2) is below this.
        method: ``"sinkhorn"`` (scaling vectors), ``"sinkhorn_log"`` (log domain) as in POT, or
            ``None`` to take the scaling vectors whenever ``exp(−C/ε)`` cannot underflow.
        return_plan: Also return the plan ``γ_ε``.

    Returns:
        The cost ``(...)`` (and the plan ``(..., m, n)``).
    """
    if method not in (None, "sinkhorn", "sinkhorn_log"):
        raise ValueError(f"method must be None, 'sinkhorn' or 'sinkhorn_log', got {method!r}")
    return emd(p, q, cost, solver="sinkhorn", reg=reg, numItermax=numItermax, stopThr=stopThr,
               return_plan=return_plan, method=method)


TRANSPORT_SOLVERS.add("sinkhorn", sinkhorn, exact=False)


# ------------------------------------------------------------------------------------- entry
def emd(p: Tensor, q: Tensor, cost: Tensor, solver: str = "exact", reg: float | None = None, *,
        return_plan: bool = False, numItermax: int | None = None, stopThr: float = 1e-9,
        method: str | None = None) -> Tensor | tuple[Tensor, Tensor]:
    """Earth mover's distance ``min_γ ⟨γ, C⟩`` between ``p`` and ``q``, batched, differentiable.

    Args:
        p: ``(..., m)`` weights summing to one (zero weights are allowed: padding).
        q: ``(..., n)`` weights summing to one.
        cost: ``(..., m, n)`` ground costs; batch dimensions broadcast with those of p and q.
        solver: A name of :data:`TRANSPORT_SOLVERS` (``exact``, ``pot``, ``scipy``, ``sinkhorn``).
        reg: Entropic regularisation (``sinkhorn`` only, required there).
        return_plan: Also return the optimal plan ``(..., m, n)`` (not differentiable).
        numItermax: Pivot limit (exact solvers, default 100000) or iteration limit (Sinkhorn,
            default 1000), POT's name.
        stopThr: Sinkhorn's stopping threshold on the marginal error.
        method: Sinkhorn's iteration (see :func:`sinkhorn`).

    Returns:
        The cost ``(...)`` in the cost's dtype (and the plan).
    """
    name = TRANSPORT_SOLVERS.canonical(solver)
    p2, q2, c2, batch = _prepare(p, q, cost)
    if name == "sinkhorn":
        if reg is None or not float(reg) > 0:
            raise ValueError(f"reg must be a positive float for the sinkhorn solver, got {reg!r}")
        value, plan = _SinkhornValue.apply(p2.to(c2.dtype), q2.to(c2.dtype), c2, float(reg),
                                           int(numItermax or 1000), float(stopThr), method)
    else:
        if reg is not None:
            raise ValueError(f"reg is only used by the sinkhorn solver, not by {name!r}")
        if not bool(torch.isfinite(c2.detach()).all()):
            raise ValueError("cost must be finite for the exact solvers")
        opts = {"numItermax": int(numItermax or 100000)}
        value, plan = _ExactEMD.apply(p2, q2, c2, name, opts)
    m, n = c2.shape[-2:]
    value = value.reshape(batch)
    if return_plan:
        return value, plan.reshape(*batch, m, n)
    return value
