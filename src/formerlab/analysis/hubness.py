"""Hubness: in high dimension a few points sit in very many k-NN lists (kexue.fm/archives/9147).

The k-occurrence ``N_k(x) = #{j : x ∈ kNN(x_j)}`` sums to ``N·k`` over a set of ``N`` points; its
distribution grows more and more right-skewed with the dimension (Radovanović et al., JMLR 2010).
Points near the density centre are close to everyone (the mean minimises ``Σ‖x_i − c‖²``) while
very few points lie near it (the unit ball fills a vanishing share of its cube,
``V_n / 2^n = π^{n/2} / (Γ(n/2 + 1) 2^n) → 0``). Liang et al. (arXiv 2206.06014) keep GAN latents
``z ~ N(0, I)`` with a large hub value — an a-priori filter that also explains the truncation
trick (:func:`hub_filtered_normal`, the post's ``n10000_k5`` setting: pool 10 000, k = 5,
threshold 50).

:func:`k_occurrence` is computed in query chunks of ``chunk_size × N`` scores, so memory stays
bounded for large sets (about 16M scores per chunk by default). Measures:
:func:`hubness_skewness` (the standardised third moment of ``N_k``, as ``scipy.stats.skew``),
:func:`robin_hood_index` (the share of k-occurrences that must move for every point to be a
neighbour equally often; Feldbauer et al., ICBK 2018).

Metrics (:data:`HUBNESS_METRICS`; lower = nearer):

==================  ========================================================================
``sqeuclidean``     ``‖x − y‖²``
``cosine``          ``1 − cos(x, y)``
``csls``            cross-domain similarity local scaling (Conneau et al., arXiv 1710.04087):
                    ``2 cos(x, y) − r(y)`` with ``r(y)`` the mean cosine of ``y`` to its
                    ``csls_k`` nearest neighbours — penalises hubs (a remedy)
==================  ========================================================================

``center=True`` subtracts the mean first (for ``cosine``, the other common remedy).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ..registry import Registry

__all__ = [
    "HUBNESS_METRICS",
    "hub_filtered_normal",
    "hubness_skewness",
    "hubness_stats",
    "k_nearest",
    "k_occurrence",
    "robin_hood_index",
    "unit_ball_cube_ratio",
]

#: name -> fn(queries, data, state, out) writing ``(chunk, N)`` scores into ``out`` (lower =
#: nearer); ``state`` holds per-data-point precomputations (norms, unit vectors, CSLS radii).
HUBNESS_METRICS: Registry[Callable[..., Tensor]] = Registry("hubness metric")


@HUBNESS_METRICS.register("sqeuclidean")
def _sqeuclidean(q: Tensor, x: Tensor, state: dict, out: Tensor) -> Tensor:
    """``‖q‖² + ‖x‖² − 2 q·x`` (ranking per query row; tiny negatives from rounding kept)."""
    if "sq" not in state:
        state["sq"] = (x * x).sum(-1)
    torch.addmm(state["sq"][None], q, x.T, alpha=-2, out=out)
    return out.add_((q * q).sum(-1)[:, None])


def _unit(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)


def _cos_into(q: Tensor, x: Tensor, state: dict, out: Tensor) -> Tensor:
    if "unit" not in state:
        state["unit"] = _unit(x)
    return torch.matmul(_unit(q), state["unit"].T, out=out)


@HUBNESS_METRICS.register("cosine")
def _cosine(q: Tensor, x: Tensor, state: dict, out: Tensor) -> Tensor:
    return _cos_into(q, x, state, out).neg_().add_(1)


@HUBNESS_METRICS.register("csls", needs_radius=True)
def _csls(q: Tensor, x: Tensor, state: dict, out: Tensor) -> Tensor:
    # ranking per query: −(2 cos(q, y) − r(y)); the query's own r(q) is a constant per row
    return _cos_into(q, x, state, out).mul_(-2).add_(state["radius"][None])


def _chunks(n: int, chunk_size: int | None) -> int:
    if chunk_size is None:
        return max(1, (1 << 24) // max(n, 1))  # ≤ 16M scores (64 MB in float32) per chunk
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    return chunk_size


_BLOCK = 64


def _topk_rows(s: Tensor, k: int, largest: bool) -> tuple[Tensor, Tensor]:
    """``torch.topk(s, k, dim=1)`` through block extrema, exact (up to ties).

    Split each row into blocks of 64; the ``k`` best elements lie in the ``k`` blocks with the
    best extrema (at most ``k`` blocks can hold an element at least as good as the k-th best),
    so a top-k over the block extrema, a gather of those blocks and a top-k over ``64 k``
    candidates (plus the ragged tail) replace a top-k over the whole row.
    """
    r, n = s.shape
    full = (n // _BLOCK) * _BLOCK
    if full < 4 * _BLOCK * k:
        return torch.topk(s, k, dim=1, largest=largest)
    blocks = s[:, :full].reshape(r, full // _BLOCK, _BLOCK)
    ext = blocks.amax(-1) if largest else blocks.amin(-1)
    _, best = torch.topk(ext, k, dim=1, largest=largest)  # (r, k) block ids
    cand = blocks.gather(1, best[..., None].expand(r, k, _BLOCK)).reshape(r, k * _BLOCK)
    col = (best[..., None] * _BLOCK + torch.arange(_BLOCK, device=s.device)).reshape(r, -1)
    if full < n:
        cand = torch.cat([cand, s[:, full:]], 1)
        tail = torch.arange(full, n, device=s.device).expand(r, n - full)
        col = torch.cat([col, tail], 1)
    v, i = torch.topk(cand, k, dim=1, largest=largest)
    return v, col.gather(1, i)


def _scan(X: Tensor, k: int, score: Callable[..., Tensor], state: dict,
          chunk_size: int | None, exclude_self: bool, largest: bool = False
          ) -> tuple[Tensor, Tensor]:
    """Top-k scores and indices of every row of ``X`` against ``X``, chunk by chunk.

    One score buffer is allocated and reused, and the results are written into preallocated
    outputs: interleaving small long-lived tensors with large short-lived ones would fragment
    the allocator's heap and grow the memory of a large scan without bound. The per-row top-k
    goes through block extrema (:func:`_topk_rows`), which costs about one pass over the row.
    """
    n = X.shape[0]
    step = min(_chunks(n, chunk_size), n)
    buf = torch.empty(step, n, dtype=X.dtype, device=X.device)
    vals = torch.empty(n, k, dtype=X.dtype, device=X.device)
    idx = torch.empty(n, k, dtype=torch.long, device=X.device)
    rows = torch.arange(step, device=X.device)
    fill = -math.inf if largest else math.inf
    for start in range(0, n, step):
        r = min(step, n - start)
        s = score(X[start:start + r], X, state, buf[:r])
        if exclude_self:
            s[rows[:r], rows[:r] + start] = fill
        v, i = _topk_rows(s, k, largest)
        vals[start:start + r] = v
        idx[start:start + r] = i
    return vals, idx


def _check(X: Tensor, k: int, exclude_self: bool) -> None:
    if not isinstance(X, Tensor) or X.dim() != 2:
        raise ValueError(f"X must be a (points, dim) tensor, got "
                         f"{tuple(X.shape) if isinstance(X, Tensor) else type(X).__name__}")
    if not X.dtype.is_floating_point:
        raise TypeError(f"X must be a floating-point tensor, got dtype {X.dtype}")
    limit = X.shape[0] - 1 if exclude_self else X.shape[0]
    if not isinstance(k, int) or not 1 <= k <= limit:
        raise ValueError(f"k must be an int in [1, {limit}] for {X.shape[0]} points, got {k!r}")


def k_nearest(X: Tensor, k: int = 10, *, metric: str = "sqeuclidean", chunk_size: int | None = None,
              exclude_self: bool = True, center: bool = False, csls_k: int = 10) -> Tensor:
    """Indices ``(N, k)`` of every point's ``k`` nearest neighbours within ``X`` (chunked).

    Args: as :func:`k_occurrence`.
    """
    _check(X, k, exclude_self)
    fn = HUBNESS_METRICS.get(metric)
    if center:
        X = X - X.mean(0, keepdim=True)
    state: dict = {}
    if HUBNESS_METRICS.meta(metric).get("needs_radius"):
        if not 1 <= csls_k < X.shape[0]:
            raise ValueError(f"csls_k must be in [1, {X.shape[0] - 1}], got {csls_k}")
        sims, _ = _scan(X, csls_k, _cos_into, state, chunk_size, exclude_self=True,
                        largest=True)
        state["radius"] = sims.mean(-1)
    _, idx = _scan(X, k, fn, state, chunk_size, exclude_self)
    return idx


def k_occurrence(X: Tensor, k: int = 10, *, metric: str = "sqeuclidean",
                 chunk_size: int | None = None, exclude_self: bool = True, center: bool = False,
                 csls_k: int = 10) -> Tensor:
    """Hub values ``N_k`` ``(N,)``: how often each point is among the others' k nearest.

    Args:
        X: ``(N, dim)`` points.
        k: Neighbours per point.
        metric: ``sqeuclidean``, ``cosine`` or ``csls`` (:data:`HUBNESS_METRICS`).
        chunk_size: Query rows per chunk (memory ``chunk_size × N`` scores); default keeps a
            chunk at about 16M scores (64 MB in float32).
        exclude_self: A point is not its own neighbour.
        center: Subtract the mean of ``X`` first (a hubness remedy for ``cosine``).
        csls_k: Neighbourhood size of the CSLS radius.

    Returns:
        ``(N,)`` int64 counts summing to ``N·k``.
    """
    idx = k_nearest(X, k, metric=metric, chunk_size=chunk_size, exclude_self=exclude_self,
                    center=center, csls_k=csls_k)
    return torch.bincount(idx.reshape(-1), minlength=X.shape[0])


def _counts(nk: Tensor) -> Tensor:
    if not isinstance(nk, Tensor) or nk.dim() != 1 or nk.numel() == 0:
        raise ValueError("Nk must be a non-empty 1-D tensor of k-occurrences")
    return nk.double()


def hubness_skewness(Nk: Tensor) -> float:
    """Skewness ``E[(N_k − μ)³] / σ³`` of the k-occurrence (biased moments, as scipy)."""
    x = _counts(Nk)
    d = x - x.mean()
    var = (d * d).mean()
    return float((d**3).mean() / var**1.5) if float(var) > 0 else 0.0


def robin_hood_index(Nk: Tensor) -> float:
    """``½ Σ|N_k − mean| / Σ N_k`` ∈ [0, 1): 0 when every point is equally often a neighbour."""
    x = _counts(Nk)
    total = float(x.sum())
    return 0.5 * float((x - x.mean()).abs().sum()) / total if total > 0 else 0.0


def hubness_stats(Nk: Tensor, k: int) -> dict[str, float]:
    """Skewness, Robin Hood index, anti-hub share (``N_k = 0``) and the largest hub / k."""
    x = _counts(Nk)
    return {"skewness": hubness_skewness(Nk), "robin_hood": robin_hood_index(Nk),
            "antihub_occurrence": float((x == 0).double().mean()),
            "max_over_k": float(x.max()) / k}


def unit_ball_cube_ratio(n: int) -> float:
    """Volume of the unit n-ball over its bounding cube: ``π^{n/2} / (Γ(n/2 + 1) 2^n)``."""
    if n < 1:
        raise ValueError(f"n must be a positive dimension, got {n}")
    return math.exp(0.5 * n * math.log(math.pi) - math.lgamma(0.5 * n + 1) - n * math.log(2))


def hub_filtered_normal(size: int, dim: int, pool: int = 10_000, k: int = 5,
                        threshold: int = 50, chunk: int = 1_000, *,
                        generator: torch.Generator | None = None,
                        dtype: torch.dtype = torch.float32, max_pools: int = 1_000) -> Tensor:
    """``size`` latents from ``N(0, I)`` whose hub value exceeds ``threshold`` (Liang et al.).

    Draws pools of ``pool`` latents, computes each point's k-occurrence within its pool
    (``chunk`` query rows at a time) and keeps those with ``N_k > threshold`` until ``size``
    are collected.

    Args:
        size: Number of latents to return.
        dim: Latent dimension.
        pool: Pool size (the post: 10 000).
        k: Neighbours (the post: 5).
        threshold: Keep ``N_k > threshold`` (the post: 50; the mean of ``N_k`` is ``k``).
        chunk: Query rows per chunk (the post: 1 000).
        generator: Random generator (the global one if ``None``).
        max_pools: Give up (``RuntimeError``) after this many pools.

    Returns:
        ``(size, dim)`` latents.
    """
    if size < 1 or dim < 1:
        raise ValueError(f"size and dim must be positive, got {size}, {dim}")
    if threshold < 0:
        raise ValueError(f"threshold must be non-negative, got {threshold}")
    kept: list[Tensor] = []
    have = 0
    for _ in range(max_pools):
        z = torch.randn(pool, dim, generator=generator, dtype=dtype)
        nk = k_occurrence(z, k, chunk_size=chunk)
        good = z[nk > threshold]
        kept.append(good)
        have += len(good)
        if have >= size:
            return torch.cat(kept)[:size]
    raise RuntimeError(f"only {have} of {size} latents passed N_k > {threshold} in {max_pools} "
                       "pools; lower the threshold or enlarge the pool")
