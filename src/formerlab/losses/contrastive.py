"""Contrastive losses and exact gradient accumulation for them (kexue.fm/archives/8471;
GradCache: Gao et al., arXiv 2101.06983; SimCSE: arXiv 2104.08821).

InfoNCE couples every pair of the batch, so averaging per-chunk losses is *not* the large-batch
loss. The representation gradient makes it exact: with ``L`` the loss of the whole batch,

    ∇_θ L = ∇_θ Σ_i ⟨h_i, sg(∂L/∂h_i)⟩

For ``s_ij = ⟨h_i, h_j⟩/τ`` and ``L = −Σ_ij t_ij log softmax_j(s_ij)`` (summed over rows) the post
derives ``∂L/∂h_i = (1/τ) Σ_j (p_ij + p_ji − 2t_ij) h_j`` when ``t`` is symmetric. Algorithm of
:class:`ContrastiveAccumulator` (one extra forward pass):

1. forward every chunk without gradient, recording the CPU and CUDA RNG states first;
2. the true loss ``L`` on the detached representations and ``G = ∂L/∂h`` by autograd;
3. per chunk: restore its RNG state, forward with gradient, ``h_chunk.backward(G_chunk)``.

Restoring the RNG replays every dropout mask, so the gradients equal those of one backward
through the whole batch even with dropout on — which the post thought impossible (its conclusion
that SimCSE cannot use the trick no longer holds). Peak activation memory is that of one chunk.
Under DDP the representations are all-gathered, so the loss is that of the global batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ContrastiveAccumulator",
    "RNGState",
    "cached_backward",
    "capture_rng_state",
    "info_nce",
    "replay_forward_backward",
    "replay_rng",
    "split_batch",
]


# --- loss ----------------------------------------------------------------------------------------
def info_nce(h_a: Tensor, h_b: Tensor | None = None, temperature: float = 0.05,
             symmetric: bool = True, mask_diagonal: bool = True, normalize: bool = True,
             reduction: str = "mean") -> Tensor:
    """InfoNCE with in-batch negatives.

    Args:
        h_a: ``(n, d)`` representations. Without ``h_b``: SimCSE layout, rows ``2k`` and
            ``2k+1`` are the two views of one example (each row's positive is its partner).
        h_b: ``(m, d)`` documents, ``m >= n``; query ``i``'s positive is document ``i``, all
            other documents (including extra hard negatives ``n…m−1``) are its negatives.
        temperature: τ in ``s_ij = sim(h_i, h_j)/τ``.
        symmetric: With ``h_b``, also classify each of the first ``n`` documents against the
            queries and average both directions (CLIP style).
        mask_diagonal: Without ``h_b``, exclude each row's similarity with itself.
        normalize: Cosine similarity (``True``, SimCSE) or plain dot products.
        reduction: ``"mean"`` over rows, ``"sum"``, or ``"none"`` (per row).
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not isinstance(h_a, Tensor) or h_a.dim() != 2:
        raise ValueError(f"h_a must be (batch, dim), got {getattr(h_a, 'shape', type(h_a))}")
    if normalize:
        h_a = F.normalize(h_a, dim=-1)
    if h_b is None:
        n = h_a.shape[0]
        if n % 2:
            raise ValueError(f"without h_b the batch holds pairs (rows 2k, 2k+1), got {n} rows")
        s = h_a @ h_a.T / temperature
        if mask_diagonal:
            s = s.masked_fill(torch.eye(n, dtype=torch.bool, device=s.device), float("-inf"))
        labels = torch.arange(n, device=s.device) ^ 1
        return F.cross_entropy(s, labels, reduction=reduction)
    if h_b.dim() != 2 or h_b.shape[1] != h_a.shape[1] or h_b.shape[0] < h_a.shape[0]:
        raise ValueError(f"h_b must be (m, {h_a.shape[1]}) with m >= {h_a.shape[0]}, got "
                         f"{tuple(h_b.shape)}")
    if normalize:
        h_b = F.normalize(h_b, dim=-1)
    n = h_a.shape[0]
    s = h_a @ h_b.T / temperature
    labels = torch.arange(n, device=s.device)
    loss = F.cross_entropy(s, labels, reduction=reduction)
    if symmetric:
        back = F.cross_entropy(s[:, :n].T, labels, reduction=reduction)
        loss = 0.5 * (loss + back) if reduction != "none" else torch.cat([loss, back])
    return loss


# --- RNG replay ----------------------------------------------------------------------------------
class RNGState(NamedTuple):
    """The global CPU generator state and the states of every initialised CUDA device."""

    cpu: Tensor
    cuda: tuple[Tensor, ...]


def capture_rng_state() -> RNGState:
    """Snapshot of the CPU and (if initialised) CUDA random states."""
    cuda = tuple(torch.cuda.get_rng_state_all()) if torch.cuda.is_initialized() else ()
    return RNGState(torch.get_rng_state(), cuda)


@contextlib.contextmanager
def replay_rng(state: RNGState | None) -> Iterator[None]:
    """Run the block from ``state`` and leave the global RNG as it was before the block
    (``state=None``: run on the live RNG, which then advances)."""
    if state is None:
        yield
        return
    devices = list(range(len(state.cuda)))
    with torch.random.fork_rng(devices=devices, enabled=True):
        torch.set_rng_state(state.cpu)
        for d, s in zip(devices, state.cuda):
            torch.cuda.set_rng_state(s, d)
        yield


# --- batches -------------------------------------------------------------------------------------
def _batch_size(batch: Any) -> int:
    if isinstance(batch, Tensor):
        if batch.dim() == 0:
            raise ValueError("a batch tensor needs a batch axis, got a 0-d tensor")
        return batch.shape[0]
    values = list(batch.values()) if isinstance(batch, Mapping) else list(batch)
    sizes = {v.shape[0] for v in values if isinstance(v, Tensor) and v.dim() > 0}
    if len(sizes) != 1:
        raise ValueError(f"the tensors of a batch must share one batch size, got sizes "
                         f"{sorted(sizes)}")
    return sizes.pop()


def split_batch(batch: Any, chunk_size: int) -> list[Any]:
    """Split a tensor, a mapping of tensors (e.g. ``input_ids``/``attention_mask``) or a
    tuple of tensors along dim 0 into chunks of ``chunk_size`` (the last may be smaller).
    Non-tensor values are passed to every chunk unchanged."""
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
    if not isinstance(batch, (Tensor, Mapping, tuple, list)):
        raise TypeError(f"batch must be a Tensor, a mapping or a tuple of tensors, got "
                        f"{type(batch).__name__}")
    n = _batch_size(batch)
    out = []
    for start in range(0, n, chunk_size):
        def cut(v: Any, s: int = start) -> Any:
            return v[s:s + chunk_size] if isinstance(v, Tensor) and v.dim() > 0 else v

        if isinstance(batch, Tensor):
            out.append(cut(batch))
        elif isinstance(batch, Mapping):
            out.append({k: cut(v) for k, v in batch.items()})
        else:
            out.append(type(batch)(cut(v) for v in batch))
    return out


def _name(encoder: Callable[..., Any]) -> str:
    return getattr(encoder, "__name__", None) or type(encoder).__name__


def _encode(encoder: Callable[..., Any], chunk: Any) -> Tensor:
    """``encoder(chunk)``, ``encoder(**chunk)`` or ``encoder(*chunk)``; the output must be a
    tensor of representations with the chunk's batch size."""
    if isinstance(chunk, Mapping):
        out = encoder(**chunk)
    elif isinstance(chunk, (tuple, list)):
        out = encoder(*chunk)
    else:
        out = encoder(chunk)
    if not isinstance(out, Tensor):
        raise TypeError(
            f"encoder {_name(encoder)} returned {type(out).__name__}, expected a Tensor of "
            "representations (batch, ...); wrap it, e.g. lambda **x: model(**x).pooler_output")
    n = _batch_size(chunk)
    if out.dim() == 0 or out.shape[0] != n:
        raise ValueError(f"encoder {_name(encoder)} returned shape {tuple(out.shape)} for a chunk "
                         f"of {n}; the first axis must be the batch")
    return out


# --- functional pieces ---------------------------------------------------------------------------
def cached_backward(reps: Tensor | Sequence[Tensor], loss_fn: Callable[..., Tensor]
                    ) -> tuple[Tensor, tuple[Tensor, ...]]:
    """The loss on detached representations and its gradients with respect to them.

    Args:
        reps: One tensor or a sequence (e.g. queries and documents), detached or not.
        loss_fn: ``loss_fn(*reps) -> scalar``; its own parameters (a learnable temperature)
            receive their exact gradient here.

    Returns:
        ``(loss, grads)``: the detached loss and one gradient per representation tensor.
    """
    seq = (reps,) if isinstance(reps, Tensor) else tuple(reps)
    leaves = [r.detach().requires_grad_(True) for r in seq]
    with torch.enable_grad():
        loss = loss_fn(*leaves)
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            raise TypeError(f"loss_fn must return a scalar tensor, got "
                            f"{getattr(loss, 'shape', type(loss).__name__)}")
        loss.backward()
    grads = tuple(x.grad if x.grad is not None else torch.zeros_like(x) for x in leaves)
    return loss.detach(), grads


def replay_forward_backward(encoder: Callable[..., Any], chunk: Any, rep_grad: Tensor,
                            rng_state: RNGState | None = None) -> None:
    """Forward ``chunk`` with gradient from ``rng_state`` (the state before its no-grad
    forward) and back-propagate ``rep_grad`` (``∂L/∂h`` of this chunk) into the encoder."""
    with replay_rng(rng_state), torch.enable_grad():
        out = _encode(encoder, chunk)
    if out.grad_fn is None:
        raise ValueError(f"encoder {_name(encoder)} returned a tensor without a graph: no "
                         "parameter or input requires grad")
    out.backward(rep_grad.to(out.dtype))


# --- distributed helpers -------------------------------------------------------------------------
def _world() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _gather_sizes(n: int, device: torch.device) -> list[int]:
    size = torch.tensor([n], device=device)
    sizes = [torch.zeros_like(size) for _ in range(_world())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _all_gather(x: Tensor, sizes: list[int]) -> Tensor:
    """Concatenate ``x`` of every rank (variable first axes ``sizes``) in rank order."""
    pad = max(sizes) - x.shape[0]
    xp = torch.cat([x, x.new_zeros(pad, *x.shape[1:])]) if pad else x.contiguous()
    parts = [torch.empty_like(xp) for _ in sizes]
    dist.all_gather(parts, xp)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)])


def _is_ddp(encoder: Any) -> bool:
    return isinstance(encoder, nn.parallel.DistributedDataParallel)


# --- the accumulator -----------------------------------------------------------------------------
class ContrastiveAccumulator:
    """Exact large-batch gradients of a contrastive loss with the activations of one chunk.

    Args:
        encoder: ``encoder(chunk) -> (b, ...)`` representations (``encoder(**chunk)`` for
            mapping chunks, ``encoder(*chunk)`` for tuples). A module or any callable; wrap
            models whose output is not a tensor.
        loss_fn: ``loss_fn(h) -> scalar`` (``loss_fn(h_q, h_d)`` when documents are given),
            e.g. :func:`info_nce`, over the **whole** batch.
        chunk_size: Examples per chunk (the last chunk may be smaller).
        preserve_rng: Replay each chunk's CPU/CUDA RNG state so dropout masks repeat exactly.
        doc_encoder: Encoder of the documents in :meth:`step` (default: ``encoder``).
        gather_distributed: Under an initialised process group, all-gather the
            representations so the loss is that of the global batch.

    After :meth:`step` the parameters hold the gradient of one backward through the whole batch.
    With DDP-wrapped encoders (gradients averaged by DDP, synchronised once on the last chunk)
    ``world_size`` processes give the gradient of one process with the global batch; a plain
    module in a process group gets its own share (sum it over ranks).
    :attr:`last_chunks` reports the chunk sizes of the last step (queries, then documents).
    """

    def __init__(self, encoder: Callable[..., Any], loss_fn: Callable[..., Tensor],
                 chunk_size: int, preserve_rng: bool = True,
                 doc_encoder: Callable[..., Any] | None = None,
                 gather_distributed: bool = True) -> None:
        for name, fn in (("encoder", encoder), ("loss_fn", loss_fn)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
        if doc_encoder is not None and not callable(doc_encoder):
            raise TypeError(f"doc_encoder must be callable, got {type(doc_encoder).__name__}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")
        self.encoder, self.loss_fn, self.chunk_size = encoder, loss_fn, chunk_size
        self.preserve_rng, self.doc_encoder = preserve_rng, doc_encoder
        self.gather_distributed = gather_distributed
        self.last_chunks: list[list[int]] = []
        self.last_loss: Tensor | None = None

    def _no_grad_pass(self, encoder: Callable[..., Any], chunks: list[Any]
                      ) -> tuple[Tensor, list[RNGState | None]]:
        states: list[RNGState | None] = []
        reps = []
        with torch.no_grad():
            for chunk in chunks:
                states.append(capture_rng_state() if self.preserve_rng else None)
                reps.append(_encode(encoder, chunk))
        return torch.cat(reps), states

    @staticmethod
    def _backward_pass(jobs: list[tuple[Any, Any, Tensor, RNGState | None]]) -> None:
        """Replay every chunk; a DDP encoder synchronises only on its last chunk of the step."""
        last = {id(enc): k for k, (enc, *_) in enumerate(jobs)}
        for k, (enc, chunk, grad, state) in enumerate(jobs):
            sync = (enc.no_sync() if _is_ddp(enc) and last[id(enc)] != k
                    else contextlib.nullcontext())
            with sync:
                replay_forward_backward(enc, chunk, grad, state)

    def step(self, batch: Any, docs: Any = None) -> Tensor:
        """Accumulate the exact gradient of ``loss_fn`` over ``batch`` (and ``docs``) into the
        encoders' ``.grad``; returns the detached loss of the whole (global) batch."""
        towers = [(self.encoder, batch)]
        if docs is not None:
            towers.append((self.doc_encoder or self.encoder, docs))
        elif self.doc_encoder is not None:
            raise ValueError("a doc_encoder was given: call step(queries, docs)")
        chunked = [split_batch(b, self.chunk_size) for _, b in towers]
        passes = [self._no_grad_pass(enc, ch) for (enc, _), ch in zip(towers, chunked)]
        reps = [r for r, _ in passes]
        distributed = self.gather_distributed and _world() > 1
        if distributed:
            loss, grads = self._distributed_grads(reps, towers, chunked)
        else:
            loss, grads = cached_backward(reps, self.loss_fn)
        jobs = []
        for (enc, _), chunks, (_, states), g in zip(towers, chunked, passes, grads):
            starts = [0]
            for c in chunks:
                starts.append(starts[-1] + _batch_size(c))
            jobs += [(enc, c, g[a:b], st) for c, st, a, b in zip(chunks, states, starts, starts[1:])]
        self._backward_pass(jobs)
        self.last_chunks = [[_batch_size(c) for c in ch] for ch in chunked]
        self.last_loss = loss
        return loss

    def _distributed_grads(self, reps: list[Tensor], towers: list[tuple[Any, Any]],
                           chunked: list[list[Any]]) -> tuple[Tensor, list[Tensor]]:
        """Loss of the gathered global batch; this rank's slice of ``∂L/∂h`` (×world for DDP)."""
        world, rank = _world(), dist.get_rank()
        all_sizes = [_gather_sizes(r.shape[0], r.device) for r in reps]
        for (enc, _), sizes in zip(towers, all_sizes):
            counts = {-(-s // self.chunk_size) for s in sizes}
            if _is_ddp(enc) and len(counts) > 1:
                raise ValueError(f"under DDP every rank must run the same number of chunks; "
                                 f"local batch sizes {sizes} with chunk_size={self.chunk_size} "
                                 f"give {sorted(counts)}")
        full = [_all_gather(r, s) for r, s in zip(reps, all_sizes)]
        loss, grads = cached_backward(full, self.loss_fn)
        local = []
        for g, sizes, (enc, _) in zip(grads, all_sizes, towers):
            start = sum(sizes[:rank])
            part = g[start:start + sizes[rank]]
            local.append(part * world if _is_ddp(enc) else part)
        return loss, local
