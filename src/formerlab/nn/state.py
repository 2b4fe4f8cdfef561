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
so. All methods act in place and return the state. Layer calls of the recurrent mixers never
modify the state they are given (they return a new one); the caches of attention grow in place. :class:`Growable` is the storage of the caches: a tensor grown by
doubling along one axis, so appending a token never copies the whole history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor

__all__ = ["Growable", "LayerState", "RecurrentState", "StateMismatchError", "check_index"]


class StateMismatchError(ValueError):
    """A layer state was handed to a layer (or a model) that did not create it."""


def check_index(index: Tensor, batch: int, name: str = "index") -> Tensor:
    """Validate a 1-D integer index into ``batch`` rows (returns it as ``long``)."""
    if not isinstance(index, Tensor):
        index = torch.as_tensor(index)
    if index.dim() != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer tensor, got {index.dtype} {tuple(index.shape)}")
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= batch):
        raise ValueError(f"{name} must lie in [0, {batch}) (the batch size), got values in "
                         f"[{int(index.min())}, {int(index.max())}]")
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

    The protocol methods change the state **in place and return it**, so both
    ``state.reorder(i)`` and ``state = state.reorder(i)`` work (as Hugging Face's caches do).
    Subclasses implement :attr:`length`, :meth:`_index_batch`/:meth:`_repeat_batch` (or list
    their :class:`Growable` buffers in :meth:`_batched`) and :meth:`crop`. ``owner`` names the
    mixer that created the state, so a state handed to another kind of layer raises
    :class:`StateMismatchError` naming both.
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

    # -- what subclasses provide ---------------------------------------------------------------
    def _batched(self) -> Iterator[tuple[Growable, int]]:
        """``(buffer, batch axis)`` pairs of the tensors that carry a batch axis."""
        return iter(())

    def _index_batch(self, index: Tensor) -> None:
        for buf, dim in self._batched():
            buf.index_select(dim, index)

    def _repeat_batch(self, repeats: int) -> None:
        for buf, dim in self._batched():
            buf.repeat_interleave(repeats, dim)

    def _changed(self) -> None:
        """Hook: drop derived copies after the batch or the length changed."""

    # -- the protocol --------------------------------------------------------------------------
    def reorder(self, index: Tensor) -> LayerState:
        """Keep batch rows ``index`` in that order (repeats allowed): beam search's reordering."""
        return self._select(index, "reorder index")

    def _select(self, index: Tensor, name: str) -> LayerState:
        batch = self.batch_size
        if batch is None:
            return self
        self._index_batch(check_index(index, batch, name))
        self._changed()
        return self

    def batch_select(self, index: Tensor) -> LayerState:
        """Keep only batch rows ``index`` (integers or a boolean mask over the batch)."""
        if isinstance(index, Tensor) and index.dtype == torch.bool:
            batch = self.batch_size
            if index.dim() != 1 or (batch is not None and index.numel() != batch):
                raise ValueError(f"batch_select mask must be 1-D of length {batch} (the batch "
                                 f"size), got shape {tuple(index.shape)}")
            index = index.nonzero().flatten()
        return self._select(index, "batch_select index")

    def batch_repeat_interleave(self, repeats: int) -> LayerState:
        """Repeat every batch row ``repeats`` times (a prompt expanded to its beams)."""
        if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
            raise ValueError(f"repeats must be a positive int, got {repeats!r}")
        self._repeat_batch(repeats)
        self._changed()
        return self

    def crop(self, n: int) -> LayerState:
        """Forget every token after the first ``n`` (``n < 0``: drop the last ``|n|``)."""
        raise NotImplementedError(f"{type(self).__name__} cannot be cropped")

    def _check_crop(self, n: int) -> int:
        if isinstance(n, bool) or not isinstance(n, int):
            raise TypeError(f"crop length must be an int, got {type(n).__name__}")
        target = self.length + n if n < 0 else n
        if not 0 <= target <= self.length:
            raise ValueError(f"cannot crop a state of {self.length} tokens to {n}: the crop "
                             f"length must lie in [0, {self.length}]")
        return target

    def expect(self, owner: str) -> None:
        """Raise :class:`StateMismatchError` unless this state was made by ``owner``."""
        if self.owner != owner:
            raise StateMismatchError(
                f"a {type(self).__name__} of a {self.owner!r} layer was handed to a {owner!r} "
                "layer; pass each layer the state it returned"
            )


class RecurrentState(LayerState):
    """Base of dataclass states whose tensors in ``_batch_fields`` are batch-first (LRU, linear
    attention, Transformer-VQ). A pure recurrence keeps no history, so :meth:`crop` supports only
    ``n`` equal to the current length: keep a :meth:`clone` of the state where you may return."""

    _batch_fields: ClassVar[tuple[str, ...]] = ()

    def _tensors(self) -> dict[str, Tensor]:
        return {n: getattr(self, n) for n in self._batch_fields if getattr(self, n) is not None}

    @property
    def batch_size(self) -> int | None:
        tensors = self._tensors()
        return next(iter(tensors.values())).shape[0] if tensors else None

    def _index_batch(self, index: Tensor) -> None:
        for name, value in self._tensors().items():
            setattr(self, name, value.index_select(0, index.to(value.device)))

    def _repeat_batch(self, repeats: int) -> None:
        for name, value in self._tensors().items():
            setattr(self, name, value.repeat_interleave(repeats, dim=0))

    def crop(self, n: int) -> RecurrentState:
        """Drop back to the first ``n`` tokens: only ``n == length`` (a no-op) is possible.

        Raises:
            NotImplementedError: ``n < length``: a recurrent state keeps no history.
        """
        target = self._check_crop(n)
        if target != self.length:
            raise NotImplementedError(
                f"crop is not supported for recurrent state: {type(self).__name__} summarises "
                f"all {self.length} tokens in a fixed-size state and keeps no history to drop "
                f"back to {target}; keep state.clone() from that point or re-run the prefix"
            )
        return self

    def clone(self) -> RecurrentState:
        """A shallow copy: tensors are shared, later in-place methods affect only the copy."""
        return dataclasses.replace(self)  # type: ignore[type-var]

    def detach(self) -> RecurrentState:
        """Cut the autograd history of every tensor (truncated back-propagation), in place."""
        for name, value in self._tensors().items():
            setattr(self, name, value.detach())
        return self
