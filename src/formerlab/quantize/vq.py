"""VQ-VAE vector quantiser (review in kexue.fm/archives/9826; VQ-VAE arXiv 1711.00937,
VQ-VAE-2 arXiv 1906.00446), shaped to serve Transformer-VQ's keys too (kexue.fm/archives/9844).

===========================  =================================================================
assignment                   ``k = argmin_i ‖z − e_i‖²`` via ``‖z‖² − 2z·e + ‖e‖²`` in float32
                             (autocast off), lowest index on ties
straight-through estimator   ``z_q = z + sg(e_k − z)``: forward ``e_k``, identity gradient
loss                         ``commitment_weight·‖z − sg(e_k)‖² (+ codebook_weight·‖e_k − sg(z)‖²
                             without EMA)``, a (masked) mean over vectors and dimensions. Su's β>γ
                             weights the codebook term more; the paper's β = 0.25 is the
                             *commitment* weight (the naming trap)
EMA ``"cluster"`` (VQ-VAE-2)  ``N_k ← γN_k + (1−γ)n_k``, ``m_k ← γm_k + (1−γ)Σ_{z→k} z``,
                             ``e_k = m_k / N̂_k`` with Laplace smoothing ``N̂ = (N+ε)/(ΣN+Kε)·ΣN``
EMA ``"simple"`` (Su)         ``e_k ← γe_k + (1−γ)·mean_{z→k} z`` = one SGD step on
                             ``½‖e_k − sg(z)‖²`` with learning rate ``1−γ``
dead codes                   codes with EMA count ``N_k < threshold_dead`` are replaced by random
                             encoder outputs of the batch (count reset to the threshold)
k-means init                 k-means++ seeds and Lloyd iterations on the first training
                             batch (:meth:`kmeans_init_`)
===========================  =================================================================

Usage statistics (perplexity, dead fraction, ...) are kept over a window and returned as plain
numbers by :meth:`VectorQuantizer.usage_stats`. Under ``torch.distributed`` the EMA statistics
are all-reduced and k-means/revival are broadcast from rank 0, so every process keeps the same
codebook. Several codebooks (``num_codebooks``, e.g. one per attention head) take inputs
``(..., num_codebooks, dim)``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ..registry import Registry
from .common import (
    QUANTIZERS,
    batch_usage,
    code_counts,
    distributed_world,
    finite_check,
    usage_statistics,
)

__all__ = ["EMA_UPDATES", "VQOutput", "VectorQuantizer", "kmeans"]

#: EMA codebook rules: name -> fn(vq, sums, counts) updating ``vq.embed`` in place
EMA_UPDATES: Registry = Registry("EMA codebook update")


class VQOutput(NamedTuple):
    """``(quantized, indices, loss, stats)``; ``stats`` holds this batch's detached 0-d tensors
    ``perplexity`` and ``active_fraction``."""

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    stats: dict[str, Tensor]


def _randperm(n: int, device: torch.device, generator: torch.Generator | None) -> Tensor:
    if generator is None:
        return torch.randperm(n, device=device)
    return torch.randperm(n, generator=generator, device=generator.device).to(device)


def _sample_rows(x: Tensor, num: int, generator: torch.Generator | None) -> Tensor:
    """``num`` rows of ``x`` ``(N, d)``: without replacement when ``N >= num``."""
    n = x.shape[0]
    if n >= num:
        return x[_randperm(n, x.device, generator)[:num]]
    dev = generator.device if generator is not None else x.device
    idx = torch.randint(0, n, (num,), generator=generator, device=dev).to(x.device)
    return x[idx]


def _sq_distances(x: Tensor, codebook: Tensor) -> Tensor:
    """``‖x‖² − 2x·e + ‖e‖²`` for ``x`` ``(C, N, d)``, ``codebook`` ``(C, K, d)`` → ``(C, N, K)``."""
    x2 = (x * x).sum(-1, keepdim=True)
    e2 = (codebook * codebook).sum(-1).unsqueeze(1)
    return torch.baddbmm(x2 + e2, x, codebook.transpose(1, 2), alpha=-2.0)


def _kmeans_pp(x: Tensor, k: int, generator: torch.Generator | None) -> Tensor:
    """k-means++ seeding (Arthur & Vassilvitskii): each next centre drawn ∝ squared distance."""
    dev = generator.device if generator is not None else x.device
    first = int(torch.randint(0, x.shape[0], (1,), generator=generator, device=dev))
    cent = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(-1)
    for _ in range(1, k):
        if float(d2.sum()) <= 0:  # fewer distinct points than clusters: sample at random
            cent.append(x[int(torch.randint(0, x.shape[0], (1,), generator=generator,
                                            device=dev))])
            continue
        j = int(torch.multinomial((d2 / d2.sum()).to(dev), 1, generator=generator))
        cent.append(x[j])
        d2 = torch.minimum(d2, ((x - x[j]) ** 2).sum(-1))
    return torch.stack(cent)


def kmeans(x: Tensor, num_clusters: int, iters: int = 10,
           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means on ``x`` ``(N, d)`` from k-means++ seeds: ``(centroids (K, d),
    counts (K,))``. An empty cluster keeps its centroid; ``iters=0`` returns the seeds."""
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters!r}")
    cent = _kmeans_pp(x, num_clusters, generator)
    for it in range(iters + 1):
        idx = _sq_distances(x[None], cent[None])[0].argmin(-1)
        counts = torch.bincount(idx, minlength=num_clusters).to(x.dtype)
        if it == iters:
            break
        sums = torch.zeros_like(cent).index_add_(0, idx, x)
        cent = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], cent)
    return cent, counts


@EMA_UPDATES.register("cluster")
def _ema_cluster(vq: VectorQuantizer, sums: Tensor, counts: Tensor) -> None:
    """VQ-VAE-2: EMA of cluster sums ``m`` and sizes ``N``; ``e = m / N̂`` (Laplace-smoothed)."""
    vq.embed_avg.lerp_(sums, 1 - vq.ema_decay)
    n = vq.cluster_size
    total = n.sum(-1, keepdim=True)
    smoothed = (n + vq.eps) / (total + vq.num_codes * vq.eps) * total
    vq.embed.data.copy_(vq.embed_avg / smoothed.unsqueeze(-1))


@EMA_UPDATES.register("simple")
def _ema_simple(vq: VectorQuantizer, sums: Tensor, counts: Tensor) -> None:
    """Su's ``e_k ← γ e_k + (1−γ) mean_{z→k} z`` for the codes used in this batch."""
    used = (counts > 0).unsqueeze(-1)
    mean = sums / counts.clamp_min(1).unsqueeze(-1)
    new = vq.embed.data.lerp(mean, 1 - vq.ema_decay)
    vq.embed.data.copy_(torch.where(used, new, vq.embed.data))


@QUANTIZERS.register("vq")
class VectorQuantizer(nn.Module):
    """Vector quantiser with STE, commitment loss, EMA codebook, dead-code revival, k-means init.

    Args:
        num_codes: Codebook size ``K``.
        dim: Code dimension ``d``.
        ema_decay: EMA rate γ of the codebook statistics (also of the usage counts that decide
            dead codes).
        commitment_weight: Weight of ``‖z − sg(e)‖²`` (0.25 in the VQ-VAE paper).
        codebook_weight: Weight of ``‖e − sg(z)‖²`` (only without EMA).
        use_ema: Update the codebook by EMA (a buffer) instead of gradients (a parameter).
        threshold_dead: Revive codes whose EMA count falls below this (0 = never).
        kmeans_init: Initialise the codebook by k-means on the first training batch.
        eps: Laplace smoothing of the EMA counts.
        kmeans_iters: Lloyd iterations of the k-means initialisation.
        num_codebooks: Independent codebooks (inputs ``(..., num_codebooks, dim)``).
        ema_update: ``"cluster"`` (VQ-VAE-2) or ``"simple"`` (Su), see :data:`EMA_UPDATES`.
        sync_distributed: All-reduce statistics across processes (``None`` = when a process
            group is initialised).

    ``forward(z, mask=None, generator=None)`` returns :class:`VQOutput`; EMA, k-means and
    revival happen only in training mode; ``generator`` drives the random parts.
    """

    def __init__(self, num_codes: int, dim: int, ema_decay: float = 0.99,
                 commitment_weight: float = 0.25, codebook_weight: float = 1.0,
                 use_ema: bool = True, threshold_dead: float = 0.0, kmeans_init: bool = False,
                 eps: float = 1e-5, kmeans_iters: int = 10, num_codebooks: int = 1,
                 ema_update: str = "cluster", sync_distributed: bool | None = None) -> None:
        super().__init__()
        for name, v in (("num_codes", num_codes), ("dim", dim), ("num_codebooks", num_codebooks)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        self.num_codes, self.dim, self.num_codebooks = num_codes, dim, num_codebooks
        self.ema_decay = finite_check("ema_decay", ema_decay, unit=True)
        self.commitment_weight = finite_check("commitment_weight", commitment_weight)
        self.codebook_weight = finite_check("codebook_weight", codebook_weight)
        self.threshold_dead = finite_check("threshold_dead", threshold_dead)
        self.eps = finite_check("eps", eps, positive=True)
        if kmeans_iters < 0:
            raise ValueError(f"kmeans_iters must be >= 0, got {kmeans_iters!r}")
        self.kmeans_iters = kmeans_iters
        self.use_ema = use_ema
        self.ema_update = EMA_UPDATES.canonical(ema_update)
        self.sync_distributed = sync_distributed
        embed = torch.empty(num_codebooks, num_codes, dim).uniform_(-dim ** -0.5, dim ** -0.5)
        if use_ema:
            self.register_buffer("embed", embed)
        else:
            self.embed = nn.Parameter(embed)
        self.register_buffer("cluster_size", torch.ones(num_codebooks, num_codes))
        self.register_buffer("embed_avg", embed.clone())
        self.register_buffer("initted", torch.tensor(not kmeans_init))
        self.register_buffer("usage_counts", torch.zeros(num_codebooks, num_codes,
                                                         dtype=torch.float64), persistent=False)
        self.num_revived = 0

    def extra_repr(self) -> str:
        return (f"num_codes={self.num_codes}, dim={self.dim}, num_codebooks={self.num_codebooks}, "
                f"use_ema={self.use_ema}, ema_decay={self.ema_decay}")

    # -- codebook access --------------------------------------------------------------------
    @property
    def codebook(self) -> Tensor:
        """The codebook ``(K, d)`` (``(num_codebooks, K, d)`` with several codebooks)."""
        return self.embed[0] if self.num_codebooks == 1 else self.embed

    @codebook.setter
    def codebook(self, value: Tensor) -> None:
        want = tuple(self.codebook.shape)
        if not isinstance(value, Tensor) or tuple(value.shape) != want:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"codebook must have shape {want} (num_codes={self.num_codes}, "
                             f"dim={self.dim}), got {got}")
        value = value.reshape(self.embed.shape).to(self.embed)
        with torch.no_grad():
            self.embed.copy_(value)
            self.embed_avg.copy_(value * self.cluster_size.unsqueeze(-1))

    def _flatten(self, z: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """``z`` → ``(C, N, d)`` float32 (float64 stays) and the leading shape."""
        c, d = self.num_codebooks, self.dim
        ok = isinstance(z, Tensor) and z.dim() >= (2 if c > 1 else 1) and z.shape[-1] == d
        if ok and c > 1:
            ok = z.shape[-2] == c
        if not ok:
            want = f"(..., {c}, {d})" if c > 1 else f"(..., {d})"
            got = tuple(z.shape) if isinstance(z, Tensor) else type(z).__name__
            raise ValueError(f"z must have shape {want} for this quantizer, got {got}")
        lead = tuple(z.shape[:-2] if c > 1 else z.shape[:-1])
        zf = z if z.dtype == torch.float64 else z.float()
        flat = zf.reshape(-1, c, d).transpose(0, 1)
        return flat, lead

    def _unflatten(self, x: Tensor, lead: tuple[int, ...]) -> Tensor:
        """``(C, N, ...)`` → ``(*lead, ...)`` (``(*lead, C, ...)`` with several codebooks)."""
        x = x.transpose(0, 1)
        return x.reshape(*lead, *x.shape[2:]) if self.num_codebooks == 1 else x.reshape(
            *lead, *x.shape[1:])

    def distances(self, z: Tensor) -> Tensor:
        """Squared distances to every code in float32: ``(..., K)`` (``(..., C, K)``)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat, lead = self._flatten(z)
            dist_ = _sq_distances(flat, self.embed.detach().to(flat.dtype))
        return self._unflatten(dist_, lead)

    def nearest(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest-code ``(indices, codes)`` for ``z`` of any leading shape, with no gradient
        trick, loss or update: indices ``(...)`` (``(..., C)``), codes in ``z``'s dtype."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat, lead = self._flatten(z)
            idx = _sq_distances(flat, self.embed.detach().to(flat.dtype)).argmin(-1)
            codes = self._gather(idx).to(z.dtype)
        return self._unflatten(idx, lead), self._unflatten(codes, lead)

    def _gather(self, idx: Tensor) -> Tensor:
        """Codes ``(C, N, d)`` for indices ``(C, N)`` (keeps the codebook's autograd graph)."""
        c = self.num_codebooks
        flat = (idx + torch.arange(c, device=idx.device).unsqueeze(1) * self.num_codes)
        return self.embed.reshape(c * self.num_codes, self.dim)[flat]

    def get_codes_from_indices(self, indices: Tensor) -> Tensor:
        """Codes ``(..., d)`` for indices ``(...)`` (``(..., C, d)`` for ``(..., C)``)."""
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise TypeError(f"indices must be an integer tensor, got {indices.dtype}")
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.num_codes):
            raise ValueError(f"indices must lie in [0, {self.num_codes}), got values in "
                             f"[{int(indices.min())}, {int(indices.max())}]")
        c = self.num_codebooks
        if c > 1 and (indices.dim() == 0 or indices.shape[-1] != c):
            raise ValueError(f"indices must be (..., {c}) with {c} codebooks, got "
                             f"{tuple(indices.shape)}")
        lead = tuple(indices.shape[:-1] if c > 1 else indices.shape)
        flat = indices.reshape(-1, c).transpose(0, 1).to(torch.int64)
        return self._unflatten(self._gather(flat), lead)

    # -- forward ----------------------------------------------------------------------------
    def forward(self, z: Tensor, mask: Tensor | None = None,
                generator: torch.Generator | None = None) -> VQOutput:
        """Quantise ``z``; ``mask`` (``True`` = real vector, shape ``z.shape[:-1]``, or without
        the codebook axis) excludes padding from loss, EMA and statistics (padding passes
        through unquantised)."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            flat, lead = self._flatten(z)
            m = self._flat_mask(mask, lead)
            if self.training and not bool(self.initted):
                self.kmeans_init_(flat.transpose(0, 1)[m] if m is not None else
                                  flat.transpose(0, 1), generator=generator)
            idx = _sq_distances(flat, self.embed.detach().to(flat.dtype)).argmin(-1)
            q = self._gather(idx).to(flat.dtype)
            loss = self._loss(flat, q, m)
            stats = batch_usage(idx, self.num_codes, m)
            with torch.no_grad():
                self.usage_counts += self._counts(idx, m)
                if self.training:
                    self._update(flat.detach(), idx, m, generator)
            zq = flat + (q - flat).detach()
            if m is not None:
                zq = torch.where(m.view(1, -1, 1), zq, flat)
        return VQOutput(self._unflatten(zq, lead).to(z.dtype), self._unflatten(idx, lead), loss,
                        stats)

    def _flat_mask(self, mask: Tensor | None, lead: tuple[int, ...]) -> Tensor | None:
        if mask is None:
            return None
        if mask.dtype != torch.bool or tuple(mask.shape) != lead:
            raise ValueError(f"mask must be a bool tensor of shape {lead} (True = real vector), "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        return mask.reshape(-1)

    def _loss(self, z: Tensor, q: Tensor, m: Tensor | None) -> Tensor:
        def mean(x: Tensor) -> Tensor:
            per = x.pow(2).mean(-1)  # (C, N)
            if m is None:
                return per.mean()
            w = m.to(per.dtype).unsqueeze(0).expand_as(per)
            return (per * w).sum() / w.sum().clamp_min(1)

        loss = self.commitment_weight * mean(z - q.detach())
        if not self.use_ema and self.codebook_weight:
            loss = loss + self.codebook_weight * mean(q - z.detach())
        return loss

    def _counts(self, idx: Tensor, m: Tensor | None) -> Tensor:
        mask = None if m is None else m.unsqueeze(0).expand_as(idx)
        offsets = torch.arange(self.num_codebooks, device=idx.device).unsqueeze(1) * self.num_codes
        return code_counts(idx + offsets, self.num_codebooks * self.num_codes, mask).reshape(
            self.num_codebooks, self.num_codes)

    # -- updates ----------------------------------------------------------------------------
    def _distributed(self) -> bool:
        flag = self.sync_distributed
        return distributed_world() > 1 if flag is None else (flag and distributed_world() > 1)

    def _update(self, z: Tensor, idx: Tensor, m: Tensor | None, generator) -> None:
        c, k, d = self.num_codebooks, self.num_codes, self.dim
        flat_idx = (idx + torch.arange(c, device=idx.device).unsqueeze(1) * k).reshape(-1)
        rows = z.reshape(-1, d)
        if m is not None:
            keep = m.unsqueeze(0).expand(c, -1).reshape(-1)
            flat_idx, rows = flat_idx[keep], rows[keep]
        counts = torch.bincount(flat_idx, minlength=c * k).to(z.dtype).reshape(c, k)
        sums = z.new_zeros(c * k, d).index_add_(0, flat_idx, rows).reshape(c, k, d)
        if self._distributed():
            dist.all_reduce(counts)
            dist.all_reduce(sums)
        self.cluster_size.lerp_(counts.to(self.cluster_size), 1 - self.ema_decay)
        if self.use_ema:
            EMA_UPDATES.get(self.ema_update)(self, sums.to(self.embed), counts.to(self.embed))
        if self.threshold_dead > 0:
            valid = z.transpose(0, 1) if m is None else z.transpose(0, 1)[m]
            self.revive_dead_codes_(valid, generator=generator)

    @torch.no_grad()
    def revive_dead_codes_(self, z: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Replace codes with EMA count below ``threshold_dead`` by random rows of ``z``
        (``(N, C, d)`` or ``(N, d)``); returns the boolean mask ``(C, K)`` of replaced codes."""
        z = z.reshape(-1, self.num_codebooks, self.dim)
        dead = self.cluster_size < self.threshold_dead
        if z.shape[0] == 0 or not bool(dead.any()):
            return torch.zeros_like(dead)
        for c in range(self.num_codebooks):
            rows = dead[c].nonzero().squeeze(-1)
            if rows.numel() == 0:
                continue
            new = _sample_rows(z[:, c], rows.numel(), generator).to(self.embed)
            self.embed.data[c, rows] = new
            self.cluster_size[c, rows] = self.threshold_dead
            self.embed_avg[c, rows] = new * self.threshold_dead
        self._broadcast()
        self.num_revived += int(dead.sum())
        return dead

    @torch.no_grad()
    def kmeans_init_(self, z: Tensor, generator: torch.Generator | None = None,
                     iters: int | None = None) -> None:
        """Set the codebook to k-means centroids of ``z`` (``(N, d)`` or ``(N, C, d)``; e.g. the
        keys of a pretrained model), counts to the cluster sizes (at least 1)."""
        z = z.reshape(-1, self.num_codebooks, self.dim).to(self.embed.dtype)
        if z.shape[0] == 0:
            raise ValueError("kmeans_init_ needs at least one vector, got an empty batch")
        for c in range(self.num_codebooks):
            cent, counts = kmeans(z[:, c], self.num_codes,
                                  self.kmeans_iters if iters is None else iters, generator)
            counts = counts.clamp_min(1)
            self.embed.data[c] = cent
            self.cluster_size[c] = counts
            self.embed_avg[c] = cent * counts.unsqueeze(-1)
        self._broadcast()
        self.initted.fill_(True)

    def _broadcast(self) -> None:
        if self._distributed():
            for t in (self.embed.data, self.cluster_size, self.embed_avg):
                dist.broadcast(t, src=0)

    # -- usage ----------------------------------------------------------------------------------
    def usage_stats(self, all_reduce: bool = False) -> dict[str, float | int]:
        """Usage since the last :meth:`reset_usage` (see :func:`usage_statistics`), plus
        ``below_threshold`` (codes whose EMA count is under ``threshold_dead``) and ``revived``."""
        stats = usage_statistics(self.usage_counts, all_reduce=all_reduce)
        stats["below_threshold"] = int((self.cluster_size < self.threshold_dead).sum())
        stats["revived"] = self.num_revived
        return stats

    def reset_usage(self) -> None:
        self.usage_counts.zero_()
