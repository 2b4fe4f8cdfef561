"""Process-parallel batch encoding for large inputs (used by ``UnigramTokenizer.encode_batch``).

The texts are cut into ``num_workers`` contiguous shards of about equal byte size; each worker
process rebuilds the lattice once (initializer) and encodes its shard with the same kernels
(kexue.fm/archives/9752, 9811). Sampling seeds are drawn by the caller, one per text, so the output
is identical for every worker count.
"""

from __future__ import annotations

import itertools
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from .engine import Packed
from .lattice import SAMPLERS

if TYPE_CHECKING:
    from .tokenizer import UnigramTokenizer

__all__ = ["encode_parallel", "shard_bounds"]

_WORKER_TOKENIZER: UnigramTokenizer | None = None


def _init_worker(tokenizer: UnigramTokenizer) -> None:
    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = tokenizer


def _encode_shard(
    datas: Packed, alpha: float | None, seeds: np.ndarray | None, sampler: str
) -> tuple[np.ndarray, np.ndarray]:
    engine = _WORKER_TOKENIZER._engine
    if alpha is None:
        return engine.viterbi(datas)
    return engine.sample(datas, alpha, seeds, legacy=SAMPLERS.get(sampler))


def shard_bounds(sizes: list[int], n_shards: int) -> list[int]:
    """Cut points ``0 = b_0 ≤ … ≤ b_n = len(sizes)`` giving shards of about equal total size."""
    cum = np.cumsum([0, *sizes])
    targets = cum[-1] * np.arange(1, n_shards) / n_shards
    cuts = np.searchsorted(cum, targets, side="left").tolist()
    return sorted({0, *cuts, len(sizes)})


def encode_parallel(
    tokenizer: UnigramTokenizer,
    datas: Packed,
    alpha: float | None,
    seeds: np.ndarray | None,
    sampler: str,
    num_workers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat piece indices and offsets of ``datas``, computed by ``num_workers`` processes."""
    bounds = shard_bounds(datas.sizes().tolist(), min(num_workers, len(datas)))
    jobs = []
    with ProcessPoolExecutor(
        max_workers=len(bounds) - 1, initializer=_init_worker, initargs=(tokenizer,)
    ) as pool:
        for a, b in itertools.pairwise(bounds):
            shard_seeds = None if seeds is None else seeds[a:b]
            jobs.append(pool.submit(_encode_shard, datas.take(a, b), alpha, shard_seeds, sampler))
        parts = [job.result() for job in jobs]
    ids = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int32)
    offsets = [np.zeros(1, np.int64)]
    base = 0
    for _, off in parts:
        offsets.append(off[1:] + base)
        base += int(off[-1])
    return ids, np.concatenate(offsets)
