"""Unargmaxable classes of a softmax head (kexue.fm/archives/9046; Grivas, Bogoychev & Lopez,
"Low-Rank Softmax Can Have Unargmaxable Classes in Theory but Rarely in Practice", ACL 2022).

Class ``k`` of a head with logits ``⟨w_i, z⟩ + b_i`` is **argmaxable** iff some ``z`` makes it the
strict argmax: ``⟨w_k − w_j, z⟩ + b_k − b_j > 0`` for every ``j ≠ k``. Write the atoms
``a_j = (w_k − w_j, b_k − b_j)`` and, with a bias, the extra atom ``e = (0, …, 0, 1)``. By Gordan's
alternative, k is unargmaxable iff ``0 ∈ conv{a_j}``; otherwise the min-norm point ``x* = (z, s)``
of that polytope is a witness (``s > 0``; ``z / s`` makes k the argmax). Its norm is the margin

    δ_k = ‖x*‖ = max_{‖y‖≤1} min_j ⟨a_j, y⟩,   without bias  δ_k = dist(w_k, conv{w_j : j ≠ k})

(the minimax identity of the post). Unargmaxable needs ``n > d + 1`` for points in general
position; duplicated rows are unargmaxable under the strict definition. Equal-norm rows without
bias are all argmaxable (each is an extreme point): :func:`normalize_classifier_`.

:func:`find_unargmaxable` first **screens** every class with a cheap witness: in whitened
coordinates ``v = Σ^{-1/2}(w − μ)`` the class itself, ``z_k = Σ^{-1/2} v_k`` (a class can only lose
to classes of larger whitened norm, which halves the work). Under a float32 error bound this
settles nearly every class of a real head (all but a few dozen of SmolLM2's 49 152). The rest go
to the method of :data:`UNARGMAXABLE_METHODS`, on a pool of the strongest competitors grown by
column generation until the answer holds for **all** classes:

===============  ===============================================================================
``lp``           the LP ``max t`` s.t. ``⟨w_k − w_j, z⟩ + b_k − b_j ≥ t``, ``t ≤ 1``, z free
                 (argmaxable iff ``t* > 0``), HiGHS through scipy (imported lazily); its duals
                 give the convex combination of an unargmaxable class
``hull``         Wolfe's exact min-norm-point algorithm (1976) on the atoms, float64, pure torch
``frank_wolfe``  Frank–Wolfe with exact line search (the post's method); classes it cannot
                 settle in ``max_iter`` steps (distance → 0 converges like 1/√t) go to ``hull``
===============  ===============================================================================

Certificates (:class:`ArgmaxCertificates`): a witness ``z`` with its margin for every argmaxable
class, a convex combination ``Σ λ_j w_j = w_k`` (with ``Σ λ_j b_j ≥ b_k``) for every other one.
A class counts as argmaxable iff its witness margin exceeds ``tol · R · ‖(z, 1)‖`` (``R`` the
largest row norm), i.e. ``δ_k > tol · R``; the default ``tol`` follows ``W``'s dtype.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from ..registry import Registry

__all__ = ["UNARGMAXABLE_METHODS", "ArgmaxCertificates", "HullDistance", "find_unargmaxable",
           "hull_distance", "normalize_classifier_"]

F64 = torch.float64
#: float32 screening is trusted only beyond this multiple of ``‖v_k‖·max‖v_j‖`` (bounds the
#: rounding of two length-d float32 dot products, d·u ≈ 3.5e-5 at d = 576)
_SCREEN_SAFETY = 1e-4

#: name -> ``solver(A, state, iters) -> (x, lam, state)`` on an explicit atom matrix ``A``
UNARGMAXABLE_METHODS: Registry[Callable[..., Any]] = Registry("unargmaxable method")


@dataclasses.dataclass
class ArgmaxCertificates:
    """Why each class is (un)argmaxable.

    Attributes:
        argmaxable: ``(n,)`` bool.
        witness: ``(n, d)`` float64; row k is a ``z`` making class k the strict argmax (zeros for
            unargmaxable classes).
        margin: ``(n,)`` a lower bound of ``min_j (logit_k − logit_j)`` at the witness (``nan`` if
            unargmaxable).
        combination: For each unargmaxable k, ``(indices, weights)``: ``λ ≥ 0``, ``Σ λ = 1``,
            ``Σ λ_j w_j = w_k`` and ``Σ λ_j b_j ≥ b_k`` up to ``residual``.
        residual: For each unargmaxable k, ``‖w_k − Σ λ_j w_j‖`` (plus the bias shortfall).
        solved_by: How many classes each stage settled (``{"screen": …, "lp": …}``).
    """

    argmaxable: Tensor
    witness: Tensor
    margin: Tensor
    combination: dict[int, tuple[Tensor, Tensor]]
    residual: dict[int, float]
    solved_by: dict[str, int]

    def verify(self, W: Tensor, b: Tensor | None = None, tol: float | None = None) -> bool:
        """Recheck every certificate against ``W`` (and ``b``) in float64 (an ``n × n`` pass):
        witness margins above ``tol · R · ‖(z, 1)‖``, combinations within ``10 · tol · R``."""
        W64, b64 = _lift_check(W, b)
        tol = max(_check_tol(tol, W.dtype), 1e-7)
        R, bias = _scale(W64, b64), b64 is not None
        Z = self.witness.to(F64)
        lift = _lift_norm(Z, bias)
        ok = True
        for s in range(0, W64.shape[0], 256):
            rows = torch.arange(s, min(s + 256, W64.shape[0]))
            logits = Z[rows] @ W64.T + (b64 if bias else 0.0)  # (B, n)
            own = logits[torch.arange(len(rows)), rows].clone()
            logits[torch.arange(len(rows)), rows] = -math.inf
            good = own - logits.amax(1) > tol * R * lift[rows]
            ok &= bool((good | ~self.argmaxable[rows]).all())
        for k, (idx, lam) in self.combination.items():
            gap = float((W64[k] - lam.to(F64) @ W64[idx]).norm())
            if bias:
                gap += max(0.0, float(b64[k] - lam.to(F64) @ b64[idx]))
            ok &= bool(abs(float(lam.sum()) - 1) < 1e-9 and (lam >= 0).all()
                       and k not in idx.tolist() and gap <= 10 * tol * R)
        return ok and int((~self.argmaxable).sum()) == len(self.combination)


class HullDistance(NamedTuple):
    """``distance`` from ``w_k`` to the hull of the other rows (an upper bound for Frank–Wolfe),
    a certified ``lower_bound``, and the nearest point ``Σ weights_i · w_{indices_i}``."""

    distance: float
    lower_bound: float
    indices: Tensor
    weights: Tensor


# --- validation ------------------------------------------------------------------------------------
def _lift_check(W: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor | None]:
    if not isinstance(W, Tensor):
        raise TypeError(f"W must be a tensor (n_classes, dim), got {type(W).__name__}")
    if W.dim() != 2:
        raise ValueError(f"W must be 2-D (n_classes, dim), got shape {tuple(W.shape)}")
    if not W.is_floating_point() or W.shape[0] < 1 or W.shape[1] < 1:
        raise ValueError(f"W must be a non-empty floating matrix, got {W.dtype} {tuple(W.shape)}")
    if not bool(torch.isfinite(W).all()):
        raise ValueError("W must be finite, it holds inf or nan")
    if b is not None:
        if not isinstance(b, Tensor) or b.dim() != 1 or b.shape[0] != W.shape[0]:
            shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
            raise ValueError(f"b must be a 1-D tensor of length n_classes = {W.shape[0]}, got {shape}")
        if not bool(torch.isfinite(b).all()):
            raise ValueError("b must be finite, it holds inf or nan")
        b = b.detach().to(F64)
    return W.detach().to(F64), b


def _scale(W: Tensor, b: Tensor | None) -> float:
    rows = W.norm(dim=1) if b is None else torch.cat([W, b[:, None]], 1).norm(dim=1)
    return max(float(rows.max()), 1e-300)


def _check_tol(tol: float | None, dtype: torch.dtype) -> float:
    """``tol``, or the default for ``W``'s dtype: 1e-9 (float64), 1e-6 (float32), 1e-3 (half)."""
    if tol is None:
        return 1e-9 if dtype == F64 else 1e-6 if dtype == torch.float32 else 1e-3
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < 1:
        raise ValueError(f"tol must be a number in [0, 1) or None, got {tol!r}")
    return float(tol)


# --- screening ---------------------------------------------------------------------------------------
def _whiten(W: Tensor) -> tuple[Tensor, Tensor]:
    """``(V, P)``: whitened rows ``V = (W − μ) P`` and ``P = Σ^{-1/2}`` (float64; directions of
    negligible variance are dropped: they cannot separate the rows)."""
    mu = W.mean(0)
    X = W - mu
    evals, evecs = torch.linalg.eigh(X.T @ X / W.shape[0])
    floor = max(float(evals.max()), 1e-300) * 1e-10  # below: rounding noise of a low-rank head
    inv = torch.where(evals > floor, evals.clamp_min(floor).rsqrt(), torch.zeros_like(evals))
    P = (evecs * inv) @ evecs.T
    return X @ P, P


def _screen(W: Tensor, b: Tensor | None, tol: float, R: float
            ) -> tuple[Tensor, Tensor, Tensor]:
    """Self-witnesses in whitened coordinates: ``(certified, witness, margin)``.

    For ``z_k = P v_k`` the logit gaps are ``(v_k − v_j)·v_k`` exactly; they are computed in
    float32 and trusted beyond ``_SCREEN_SAFETY · ‖v_k‖ · max‖v‖``. With a bias, ``c · z_k`` is
    tried for a geometric grid of scales ``c``."""
    n = W.shape[0]
    V64, P = _whiten(W)
    V, norms = V64.float(), V64.norm(dim=1)
    top = float(norms.max())
    margin = torch.full((n,), -math.inf, dtype=F64)
    scales = torch.ones(n, dtype=F64)
    chunk = max(16, min(1024, 2 ** 24 // n))
    if b is None:  # j can beat k only if ‖v_j‖ ≥ ‖v_k‖: compare with the larger norms only
        order = norms.argsort(descending=True)
        sorted_norms, Vs = norms[order], V[order]  # sorted once: every rival set is a prefix
        for s in range(0, n, chunk):
            rows = order[s:s + chunk]
            floor = float(sorted_norms[s + len(rows) - 1]) * (1 - 2 * _SCREEN_SAFETY)
            m = int(torch.searchsorted(-sorted_norms, torch.tensor([-floor], dtype=F64), right=True))
            G = Vs[s:s + len(rows)] @ Vs[:m].T
            G[torch.arange(len(rows)), torch.arange(s, s + len(rows))] = -math.inf
            margin[rows] = norms[rows] ** 2 - G.amax(1).double()
        margin -= _SCREEN_SAFETY * norms * top
    else:
        grid = [float(b.std()) * 4.0 ** e / max(top ** 2, 1e-300) for e in range(-2, 6)]
        for s in range(0, n, chunk):
            rows = torch.arange(s, min(s + chunk, n))
            G = (V[rows] @ V.T).double()
            i = torch.arange(len(rows))
            own = G[i, rows].clone()
            G[i, rows] = -math.inf  # no gap to itself
            for c in grid:
                m = (c * (own[:, None] - G) + (b[rows, None] - b[None, :])).amin(1)
                m -= c * _SCREEN_SAFETY * norms[rows] * top
                better = m > margin[rows]
                margin[rows] = torch.where(better, m, margin[rows])
                scales[rows] = torch.where(better, torch.full_like(m, c), scales[rows])
    witness = (V64 @ P) * scales[:, None]  # z_k = P v_k (P is symmetric), times its scale
    certified = margin > tol * R * _lift_norm(witness, b is not None)
    witness[~certified] = 0
    margin[~certified] = math.nan
    return certified, witness, margin


def _lift_norm(z: Tensor, bias: bool) -> Tensor:
    """``‖(z, 1)‖`` with a bias, ``‖z‖`` without (the scale a margin is measured against)."""
    return (z.pow(2).sum(-1) + 1).sqrt() if bias else z.norm(dim=-1)


# --- solvers on explicit atoms A (m × D): is 0 in conv(rows of A)? -----------------------------------
# solver(A, state, iters, tol) -> (y, S, lam, state, zero): y the witness direction (margins of atom
# j are ⟨a_j, y⟩), S/lam the convex weights of the active atoms, zero = "0 ∈ conv" on these atoms.
@UNARGMAXABLE_METHODS.register("hull", aliases=("mnp",))
def _mnp(A: Tensor, state: Any, iters: int, tol: float) -> tuple[Tensor, list, Tensor, Any, bool]:
    """Wolfe's min-norm-point algorithm (Math. Programming 11, 1976): the exact nearest point of
    the hull to 0 by an active set with an incrementally updated Cholesky factor."""
    sq = (A * A).sum(1)
    eps = 1e-12 * (float(sq.max()) + 1.0)  # pivot floor, also the Cholesky regularisation
    S, lam = ([int(sq.argmin())], torch.ones(1, dtype=F64)) if state is None else state
    L = _chol(A[S], eps)
    x = lam @ A[S]
    for _ in range(iters):
        if float(x @ x) <= tol * tol:
            break
        g = A @ x
        j = int(g.argmin())
        if float(g[j]) >= float(x @ x) - eps or j in S:
            break
        col = A[S] @ A[j] + 1.0
        row = torch.linalg.solve_triangular(L, col[:, None], upper=False).flatten()
        dd = float(sq[j] + 1.0 + eps - row @ row)
        if dd <= eps:  # affinely dependent on the active set: numerically optimal
            break
        L = torch.cat([torch.cat([L, L.new_zeros(len(S), 1)], 1),
                       torch.cat([row, row.new_tensor([math.sqrt(dd)])])[None]])
        S, lam = [*S, j], torch.cat([lam, lam.new_zeros(1)])
        while True:  # minor cycle: towards the affine minimiser of the active set
            mu = torch.cholesky_solve(torch.ones(len(S), 1, dtype=F64), L).flatten()
            mu = mu / mu.sum()
            if bool((mu > 1e-15).all()):
                lam = mu
                break
            dec = mu < lam
            theta = min(1.0, float((lam[dec] / (lam[dec] - mu[dec])).min()))
            lam = lam + theta * (mu - lam)
            keep = lam > 1e-15
            S = [s for s, k in zip(S, keep.tolist()) if k]
            lam = lam[keep] / lam[keep].sum()
            L = _chol(A[S], eps)
        x = lam @ A[S]
    return x, S, lam, (S, lam), float(x @ x) <= tol * tol


def _chol(AS: Tensor, eps: float) -> Tensor:
    """Cholesky factor of the augmented Gram matrix ``A_S A_Sᵀ + 11ᵀ`` (+ ``eps`` on the
    diagonal): positive definite iff the active atoms are affinely independent."""
    G = AS @ AS.T + 1.0
    G.diagonal().add_(eps)
    return torch.linalg.cholesky(G)


@UNARGMAXABLE_METHODS.register("frank_wolfe", aliases=("fw",))
def _frank_wolfe(A: Tensor, state: Any, iters: int, tol: float, decide: bool = True
                 ) -> tuple[Tensor, list, Tensor, Any, bool]:
    """Frank–Wolfe on ``f(λ) = ‖Aᵀλ‖²`` over the simplex with exact line search (post 9046):
    ``j* = argmin ⟨a_j, x⟩``, ``γ = clip(−⟨x, d⟩/‖d‖², 0, 1)`` along ``d = a_j* − x``;
    ``decide`` stops as soon as ``x`` separates every atom (a witness)."""
    lam = torch.zeros(A.shape[0], dtype=F64)
    if state is None:
        lam[int((A * A).sum(1).argmin())] = 1.0
    else:
        lam[:len(state)] = state
    x = lam @ A
    for _ in range(iters):
        if float(x @ x) <= tol * tol:
            break
        g = A @ x
        j = int(g.argmin())
        d = A[j] - x
        dd = float(d @ d)
        if dd == 0 or float(g[j]) >= float(x @ x) or (decide and float(g[j]) > 0):
            break  # optimal (zero duality gap), or x already separates every atom: a witness
        gamma = min(1.0, max(0.0, -float(x @ d) / dd))
        lam.mul_(1 - gamma)[j] += gamma
        x = x + gamma * d
    S = lam.nonzero().flatten().tolist()
    return x, S, lam[S], lam, float(x @ x) <= tol * tol


@UNARGMAXABLE_METHODS.register("lp")
def _lp(A: Tensor, state: Any, iters: int, tol: float) -> tuple[Tensor, list, Tensor, Any, bool]:
    """``max t`` s.t. ``⟨a_j, (z, 1)⟩ ≥ t``, ``t ≤ 1``, z free (the last column of ``A`` is the bias
    gap) with HiGHS; the duals of the constraints are the convex weights."""
    try:
        from scipy.optimize import linprog
    except ImportError as exc:  # pragma: no cover - scipy is a test dependency
        raise ImportError("method='lp' solves its LPs with scipy's HiGHS: pip install scipy "
                          "(formerlab[analysis]), or use method='hull' (pure torch)") from exc
    import numpy as np

    Aw, c = A[:, :-1].numpy(), A[:, -1].numpy()
    m, d = Aw.shape
    for solver in ("highs", "highs-ipm"):  # the interior point survives degenerate heads
        res = linprog(np.r_[np.zeros(d), -1.0], A_ub=np.c_[-Aw, np.ones(m)], b_ub=c,
                      bounds=[(None, None)] * d + [(None, 1.0)], method=solver)
        if res.status == 0:
            break
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on an argmaxability LP: {res.message}")
    t = float(res.x[d])
    lam = torch.from_numpy(-res.ineqlin.marginals).clamp_min(0)
    S = lam.nonzero().flatten().tolist()
    w = lam[S] / lam[S].sum() if S else lam[S]
    y = torch.cat([torch.from_numpy(res.x[:d]), torch.ones(1, dtype=F64)])
    return y, S, w, None, t <= tol


# --- one class: a pool of the strongest competitors, grown by column generation ------------------------
@dataclasses.dataclass
class _Verdict:
    argmaxable: bool
    by: str
    witness: Tensor | None = None
    margin: float = math.nan
    indices: Tensor | None = None
    weights: Tensor | None = None
    residual: float = math.nan
    y_norm: float = math.nan


def _solve_class(U: Tensor, k: int, bias: bool, method: str, tol: float, iters: int, pool: int,
                 start: Tensor | None = None) -> _Verdict:
    """Decide class k exactly over all rows of ``U`` (``(n, d)`` or ``(n, d + 1)`` with the bias
    last), in units where the largest row has norm 1."""
    n = U.shape[0]
    lp = method == "lp"
    P, q = U, U[k]
    if lp and not bias:  # the LP's atoms carry the bias gap (here 0) as their last coordinate
        P, q = torch.cat([U, U.new_zeros(n, 1)], 1), torch.cat([q, q.new_zeros(1)])
    if bias and not lp:  # the atom e = (0, …, 0, 1), i.e. the virtual point q − e (row n)
        P = torch.cat([U, (q - torch.eye(U.shape[1], dtype=F64)[-1])[None]])
    m = P.shape[0]
    score = P @ (start if start is not None and len(start) == P.shape[1] else q)
    score[k] = -math.inf
    idx = score.topk(min(pool, m - 1)).indices
    solver = UNARGMAXABLE_METHODS.get(method)
    state: Any = None

    def checked(v: _Verdict, y: Tensor) -> _Verdict:
        if method == "hull" or v.residual <= 10 * max(tol, 1e-7):
            return v
        # e.g. HiGHS's duals on a degenerate (low-rank) head: the exact solver decides
        v = _solve_class(U, k, bias, "hull", tol, max(iters, 4 * U.shape[1]), pool, y)
        return dataclasses.replace(v, by=f"{method}+hull")

    while True:
        y, S, lam, state, zero = solver(q - P[idx], state, iters, tol)
        support = idx[torch.as_tensor(S, dtype=torch.long)]
        if zero:
            return checked(_unargmaxable(U, k, bias, method, support, lam, float(y.norm())), y)
        margins = float(q @ y) - P @ y
        margins[k] = math.inf
        z = y[:-1] if lp else (y[:-1] / y[-1] if bias else y)
        if float(margins.min()) > tol * float(y.norm()) and (lp or not bias or float(y[-1]) > 0):
            return _argmaxable(U, k, bias, method, z, tol)
        outside = torch.ones(m, dtype=torch.bool)
        outside[idx], outside[k] = False, False
        bad = outside & (margins <= tol * float(y.norm()))
        separates_pool = float(margins[idx].min()) > tol * float(y.norm())
        if method == "frank_wolfe" and not separates_pool:
            # not settled within max_iter steps (‖x‖ → 0 like 1/√t): the exact solver decides
            v = _solve_class(U, k, bias, "hull", tol, max(iters, 4 * U.shape[1]), pool, y)
            return dataclasses.replace(v, by="frank_wolfe+hull")
        if not bool(bad.any()):  # optimal on every atom: zero at working precision
            return checked(_unargmaxable(U, k, bias, method, support, lam, float(y.norm())), y)
        cand = bad.nonzero().flatten()
        grow = cand[margins[cand].argsort()[:max(pool // 2, 64)]]
        idx = torch.cat([idx, grow])
        if method == "frank_wolfe":
            state = torch.cat([state, state.new_zeros(len(grow))])


def _argmaxable(U: Tensor, k: int, bias: bool, by: str, z: Tensor, tol: float) -> _Verdict:
    w = U[:, :-1] if bias else U
    logits = w @ z + (U[:, -1] if bias else 0.0)
    gaps = logits[k] - logits
    gaps[k] = math.inf
    margin = float(gaps.min())
    if not margin > tol * float(_lift_norm(z, bias)):
        raise RuntimeError(f"class {k}: the witness found by {by!r} does not verify (margin "
                           f"{margin:.3g}); the head may be too ill-conditioned for tol={tol:g}")
    return _Verdict(True, by, witness=z, margin=margin)


def _unargmaxable(U: Tensor, k: int, bias: bool, by: str, support: Tensor, lam: Tensor,
                  y_norm: float) -> _Verdict:
    real = support < U.shape[0]  # drop the virtual atom, renormalise
    idx, w = support[real], lam[real]
    w = w / w.sum()
    nearest = w @ U[idx]
    if bias:
        res = float((U[k, :-1] - nearest[:-1]).norm()) + max(0.0, float(U[k, -1] - nearest[-1]))
    else:
        res = float((U[k] - nearest).norm())
    order = idx.argsort()
    return _Verdict(False, by, indices=idx[order], weights=w[order], residual=res, y_norm=y_norm)


def find_unargmaxable(
    W: Tensor,
    b: Tensor | None = None,
    method: str = "hull",
    tol: float | None = None,
    *,
    screen: bool = True,
    max_iter: int = 2000,
    pool: int | None = None,
) -> tuple[Tensor, ArgmaxCertificates]:
    """Every class of the head ``(W, b)`` that no input can make the argmax, with certificates.

    Args:
        W: ``(n_classes, dim)`` weight (an ``nn.Linear``'s ``weight``, e.g. an LM head).
        b: ``(n_classes,)`` bias or ``None``.
        method: A name of :data:`UNARGMAXABLE_METHODS`: ``"hull"`` (exact min-norm point, pure
            torch; the fastest), ``"lp"`` (HiGHS, needs scipy) or ``"frank_wolfe"``.
        tol: Margins ``δ_k ≤ tol · R`` (R the largest row norm) count as zero; default 1e-9 for
            float64 ``W``, 1e-6 for float32 (the rounding level of the data), 1e-3 for half
            precision. The exact solvers resolve ``δ`` down to about ``1e-7 · R``; a class
            below that and above ``tol`` is reported unargmaxable with its ``residual``.
        screen: Settle the easy classes with whitened self-witnesses first (``False`` runs the
            method on every class).
        max_iter: Iterations of ``hull``/``frank_wolfe`` per pool round.
        pool: Competitors in a class's first pool (default ``max(2·dim, 1024)``).

    Returns:
        ``(indices, certificates)``: the sorted long tensor of unargmaxable classes and an
        :class:`ArgmaxCertificates`.

    Raises:
        ValueError: ``W`` not 2-D, ``b`` not of length ``n_classes``, bad ``tol`` or method.
    """
    W64, b64 = _lift_check(W, b)
    tol = _check_tol(tol, W.dtype)
    method = UNARGMAXABLE_METHODS.canonical(method)
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ValueError(f"max_iter must be a positive int, got {max_iter!r}")
    if pool is not None and (isinstance(pool, bool) or not isinstance(pool, int) or pool < 1):
        raise ValueError(f"pool must be a positive int or None, got {pool!r}")
    n, d = W64.shape
    R = _scale(W64, b64)
    bias = b64 is not None
    if screen and n > 1:
        certified, witness, margin = _screen(W64, b64, tol, R)
    else:
        certified = torch.zeros(n, dtype=torch.bool)
        witness, margin = torch.zeros(n, d, dtype=F64), torch.full((n,), math.nan, dtype=F64)
    solved_by = {"screen": int(certified.sum())}
    U = (W64 if not bias else torch.cat([W64, b64[:, None]], 1)) / R  # unit scale for the solvers
    pool = pool if pool is not None else max(2 * d, 1024)
    combination: dict[int, tuple[Tensor, Tensor]] = {}
    residual: dict[int, float] = {}
    for k in (~certified).nonzero().flatten().tolist():
        if n == 1:
            certified[k], margin[k] = True, math.inf
            solved_by["single class"] = 1
            continue
        v = _solve_class(U, k, bias, method, tol, max_iter, pool)
        solved_by[v.by] = solved_by.get(v.by, 0) + 1
        if v.argmaxable:
            certified[k], witness[k], margin[k] = True, v.witness, v.margin * R
        else:
            combination[k] = (v.indices, v.weights)
            residual[k] = v.residual * R
    dtype = W.dtype if W.dtype in (torch.float32, F64) else torch.float32
    certs = ArgmaxCertificates(certified, witness.to(dtype), margin, combination, residual, solved_by)
    return torch.tensor(sorted(combination), dtype=torch.long), certs


def hull_distance(W: Tensor, k: int, iters: int = 1000, *, method: str = "hull") -> HullDistance:
    """Distance from row ``k`` of ``W`` to the convex hull of the other rows.

    Args:
        W: ``(n, d)`` matrix (rows are the points).
        k: The row.
        iters: Iteration budget of the solver.
        method: ``"hull"`` (exact min-norm point) or ``"frank_wolfe"`` (the post's iteration;
            its ``distance`` is an upper bound).

    Returns:
        A :class:`HullDistance`; ``lower_bound = max(0, min_j ⟨w_k − w_j, r⟩ / ‖r‖)`` at the
        final residual ``r`` (weak duality), equal to ``distance`` at the optimum.
    """
    W64, _ = _lift_check(W, None)
    n = W64.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < n or n < 2:
        raise ValueError(f"k must be a row index in [0, {n}) of a matrix with >= 2 rows, got {k!r}")
    if method not in ("hull", "frank_wolfe"):
        raise ValueError(f"method must be 'hull' or 'frank_wolfe', got {method!r}")
    if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
        raise ValueError(f"iters must be a positive int, got {iters!r}")
    others = torch.cat([torch.arange(k), torch.arange(k + 1, n)])
    A = W64[k] - W64[others]
    if method == "hull":
        r, S, lam, _, _ = _mnp(A, None, iters, 0.0)
    else:
        r, S, lam, _, _ = _frank_wolfe(A, None, iters, 0.0, decide=False)
    dist = float(r.norm())
    lower = max(0.0, float((A @ r).min()) / dist) if dist > 0 else 0.0
    return HullDistance(dist, min(lower, dist), others[torch.as_tensor(S, dtype=torch.long)], lam)


@torch.no_grad()
def normalize_classifier_(linear: nn.Module | Tensor, norm: float | None = None, *,
                          zero_bias: bool = False) -> nn.Module | Tensor:
    """Give every row of a classifier the same norm, in place: then no class is unargmaxable
    (each distinct row is an extreme point of the hull; Grivas et al., appendix D).

    Args:
        linear: An ``nn.Linear`` (or any module with ``weight``, e.g. a tied ``nn.Embedding``)
            or a weight tensor ``(n_classes, dim)``.
        norm: The common row norm (default: the current mean row norm).
        zero_bias: A bias can still make classes unargmaxable: the module's bias must be absent,
            or dropped (set to 0) with ``zero_bias=True``.

    Returns:
        ``linear`` (modified in place). Duplicated rows stay unargmaxable.
    """
    weight = linear if isinstance(linear, Tensor) else getattr(linear, "weight", None)
    if not isinstance(weight, Tensor) or weight.dim() != 2:
        raise ValueError(f"linear must be a 2-D weight or a module with a 2-D weight, got "
                         f"{type(linear).__name__}")
    bias = None if isinstance(linear, Tensor) else getattr(linear, "bias", None)
    if isinstance(bias, Tensor) and not zero_bias:
        raise ValueError("the classifier has a bias, which can still make classes unargmaxable "
                         "after normalising the rows; pass zero_bias=True to set it to 0")
    rows = weight.norm(dim=1, keepdim=True)
    if bool((rows == 0).any()):
        raise ValueError("the classifier has an all-zero row, which cannot be normalised")
    target = float(rows.mean()) if norm is None else float(norm)
    if not math.isfinite(target) or target <= 0:
        raise ValueError(f"norm must be a positive number, got {norm!r}")
    weight.mul_(target / rows)
    if isinstance(bias, Tensor):
        bias.zero_()
    return linear
