"""The layer-state protocol: what a token mixer carries from one decoding step to the next.

Every incremental path of formerlab — the rotated KV cache of attention, the raw-key cache of
ReRoPE and dynamic schedules, GAU's cache, the recurrent states of LRU and linear attention —
is a :class:`LayerState`. Decoding loops and beam search only ever use the protocol:

- ``length``: tokens the state has seen;
- ``reorder(index)``: keep batch rows ``index`` in that order (beam search after each step);
- ``batch_select(index)``: keep a subset of batch rows (drop finished sequences);
- ``batch_repeat_interleave(repeats)``: repeat every row (expand a prompt to its beams);
- ``crop(n)``: forget everything after the first ``n`` tokens (speculative or assisted decoding).

States that cannot crop (a pure recurrence keeps no history) raise ``NotImplementedError`` saying
so. All methods act in place. :class:`Growable` is the storage of the caches: a tensor grown by
doubling along one axis, so appending a token never copies the whole history.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["Growable", "LayerState", "StateMismatchError", "check_index"]


class StateMismatchError(ValueError):
    """A layer state was handed to a layer (or a model) that did not create it."""


def check_index(index: Tensor, batch: int, name: str = "index") -> Tensor:
    """Validate a 1-D integer index into ``batch`` rows (returns it as ``long``)."""
    if not isinstance(index, Tensor):
        index = torch.as_tensor(index)
    if index.dim() != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer tensor, got {index.dtype} {tuple(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch):
        raise ValueError(f"{name} values must lie in [0, {batch}), got {index.tolist()}")
    return index.long()


class Growable:
    """A tensor grown along ``dim`` with amortised doubling (no full copy per appended token).

    Args:
        dim: The growing axis (the sequence axis).
        capacity: Slots to preallocate at the first append (grown by doubling beyond it).
    """

    def __init__(self, dim: int, capacity: int = 0) -> None:
        self.dim, self.capacity = dim, capacity
        self.buf: Tensor | None = None
        self.n = 0

    def append(self, x: Tensor) -> Tensor:
        """Append ``x`` along ``dim``; returns the view of everything stored so far."""
        if self.dim < 0:
            self.dim += x.dim()
        m = x.shape[self.dim]
        if self.buf is not None and (
            x.dim() != self.buf.dim()
            or any(a != b for i, (a, b) in enumerate(zip(x.shape, self.buf.shape)) if i != self.dim)
        ):
            raise StateMismatchError(
                f"cannot append a tensor of shape {tuple(x.shape)} to a cache of shape "
                f"{tuple(self.view().shape)} (they differ outside axis {self.dim})"
            )
        if self.buf is None or self.n + m > self.buf.shape[self.dim]:
            old = 0 if self.buf is None else self.buf.shape[self.dim]
            cap = max(16, self.capacity, self.n + m, 2 * old)
            shape = list(x.shape)
            shape[self.dim] = cap
            buf = torch.empty(shape, dtype=x.dtype, device=x.device)
            if self.buf is not None and self.n:
                buf.narrow(self.dim, 0, self.n).copy_(self.buf.narrow(self.dim, 0, self.n))
            self.buf = buf
        self.buf.narrow(self.dim, self.n, m).copy_(x)
        self.n += m
        return self.view()

    def view(self) -> Tensor:
        if self.buf is None:
            raise ValueError("the buffer is empty")
        return self.buf.narrow(self.dim, 0, self.n)

    def crop(self, n: int) -> None:
        self.n = min(self.n, n)

    def index_select(self, dim: int, index: Tensor) -> None:
        """Select rows ``index`` along another axis (the batch), in place of the buffer."""
        if self.buf is not None:
            self.buf = self.buf.index_select(dim, index.to(self.buf.device))

    def repeat_interleave(self, repeats: int, dim: int) -> None:
        if self.buf is not None:
            self.buf = self.buf.repeat_interleave(repeats, dim=dim)


class LayerState:
    """Base class of every per-layer decoding state (see the module docstring).

    Subclasses implement :attr:`length`, :meth:`_batched` (the batch-carrying buffers and their
    batch axis) and :meth:`crop`; ``reorder``/``batch_select``/``batch_repeat_interleave`` then
    come for free. ``owner`` names the mixer that created the state, so a state handed to another
    kind of layer raises :class:`StateMismatchError` naming both.
    """

    owner: str = "layer"

    @property
    def length(self) -> int:
        raise NotImplementedError

    @property
    def batch_size(self) -> int | None:
        for buf, dim in self._batched():
            if buf.buf is not None:
                return buf.buf.shape[dim]
        return None

    def _batched(self) -> Iterator[tuple[Growable, int]]:
        """``(buffer, batch axis)`` pairs of the tensors that carry a batch axis."""
        return iter(())

    def _changed(self) -> None:
        """Hook: drop derived copies after the batch or the length changed."""

    def reorder(self, index: Tensor) -> None:
        """Keep batch rows ``index`` (in that order): beam search's reordering."""
        batch = self.batch_size
        if batch is None:
            return
        index = check_index(index, batch)
        for buf, dim in self._batched():
            buf.index_select(dim, index)
        self._changed()

    def batch_select(self, index: Tensor) -> None:
        """Keep only batch rows ``index`` (e.g. drop finished sequences)."""
        self.reorder(index)

    def batch_repeat_interleave(self, repeats: int) -> None:
        """Repeat every batch row ``repeats`` times (a prompt expanded to its beams)."""
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        for buf, dim in self._batched():
            buf.repeat_interleave(repeats, dim)
        self._changed()

    def crop(self, n: int) -> None:
        """Forget every token after the first ``n``."""
        raise NotImplementedError(f"{type(self).__name__} cannot be cropped")

    def _check_crop(self, n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise ValueError(f"crop length must be an int, got {n!r}")
        if n < 0:  # like Hugging Face: a negative length removes that many tokens
            n = self.length + n
        if not 0 <= n <= self.length:
            raise ValueError(f"crop length must lie in [0, {self.length}], got {n}")
        return n

    def expect(self, owner: str) -> None:
        """Raise :class:`StateMismatchError` unless this state was made by ``owner``."""
        if self.owner != owner:
            raise StateMismatchError(
                f"a {type(self).__name__} of a {self.owner!r} layer was handed to a {owner!r} "
                "layer; pass each layer the state it returned"
            )
