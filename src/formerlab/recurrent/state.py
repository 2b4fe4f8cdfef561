"""The layer-state protocol for decoding, and a base class for states made of batched tensors.

Everything a layer carries from one decoding step to the next (an LRU's hidden vector, linear
attention's ``(S, z)``, Transformer-VQ's window and code cache) speaks one protocol:

==========================  =========================================================================
``length``                  tokens seen so far
``update(...)``             advance by new tokens (arguments depend on the layer), in place
``reorder(index)``          beam search: select / repeat / permute along the batch dimension
``batch_select(index)``     keep a subset of the batch (indices or a boolean mask)
``crop(n)``                 drop back to the first ``n`` tokens (``n < 0``: drop ``|n|`` tokens)
==========================  =========================================================================

The four methods change the state **in place and return it**, so both ``state.reorder(i)`` and
``state = state.reorder(i)`` work (as Hugging Face's caches do). Layer calls such as
``layer(x, state=s)`` never modify ``s``: they return a new state (use :meth:`clone` to branch
by hand).

A pure recurrence keeps no history, so :meth:`RecurrentState.crop` supports only ``n`` equal to
the current length and raises ``NotImplementedError`` otherwise: keep a :meth:`clone` of the state
at the point you may want to return to.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import Tensor

__all__ = ["LayerState", "RecurrentState"]


@runtime_checkable
class LayerState(Protocol):
    """What a token mixer carries between decoding steps."""

    length: int

    def update(self, *args: Any, **kwargs: Any) -> LayerState: ...

    def reorder(self, index: Tensor) -> LayerState: ...

    def batch_select(self, index: Tensor) -> LayerState: ...

    def crop(self, n: int) -> LayerState: ...


class RecurrentState:
    """Mixin for dataclass states whose tensors in ``_batch_fields`` are batch-first."""

    _batch_fields: ClassVar[tuple[str, ...]] = ()
    length: int

    # --- batch dimension -------------------------------------------------------------------------
    def _tensors(self) -> dict[str, Tensor]:
        out = {}
        for name in self._batch_fields:
            value = getattr(self, name)
            if value is not None:
                out[name] = value
        return out

    @property
    def batch_size(self) -> int | None:
        """Size of the batch dimension (``None`` while the state holds no tensor yet)."""
        tensors = self._tensors()
        return next(iter(tensors.values())).shape[0] if tensors else None

    def _take(self, index: Tensor) -> RecurrentState:
        for name, value in self._tensors().items():
            setattr(self, name, value.index_select(0, index.to(value.device)))
        return self

    def _check_index(self, index: Tensor, what: str) -> Tensor:
        if not isinstance(index, Tensor):
            index = torch.as_tensor(index)
        if index.dim() != 1 or index.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"{what} index must be a 1-D integer tensor, got dtype {index.dtype} "
                             f"and shape {tuple(index.shape)}")
        size = self.batch_size
        if size is not None and index.numel() and (int(index.min()) < 0 or int(index.max()) >= size):
            raise ValueError(f"{what} index must lie in [0, {size}) (the batch size), got values "
                             f"in [{int(index.min())}, {int(index.max())}]")
        return index.long()

    def reorder(self, index: Tensor) -> RecurrentState:
        """Select rows ``index`` of the batch (repeats allowed: beam expansion), in place."""
        return self._take(self._check_index(index, "reorder"))

    def batch_select(self, index: Tensor) -> RecurrentState:
        """Keep the batch rows given by integer ``index`` or a boolean mask, in place."""
        if isinstance(index, Tensor) and index.dtype == torch.bool:
            size = self.batch_size
            if index.dim() != 1 or (size is not None and index.numel() != size):
                raise ValueError(f"batch_select mask must be 1-D of length {size} (the batch "
                                 f"size), got shape {tuple(index.shape)}")
            index = index.nonzero().flatten()
        return self._take(self._check_index(index, "batch_select"))

    # --- time dimension --------------------------------------------------------------------------
    def _crop_target(self, n: int) -> int:
        if not isinstance(n, int):
            raise TypeError(f"crop length must be an int, got {type(n).__name__}")
        target = self.length + n if n < 0 else n
        if not 0 <= target <= self.length:
            raise ValueError(f"cannot crop a state of length {self.length} to {n} tokens")
        return target

    def crop(self, n: int) -> RecurrentState:
        """Drop back to the first ``n`` tokens: only ``n == length`` (a no-op) is possible.

        Raises:
            NotImplementedError: ``n < length``: a recurrent state keeps no history.
        """
        target = self._crop_target(n)
        if target != self.length:
            raise NotImplementedError(
                f"crop is not supported for recurrent state: {type(self).__name__} summarises "
                f"all {self.length} tokens in a fixed-size state and keeps no history to drop "
                f"back to {target}; keep state.clone() from that point or re-run the prefix"
            )
        return self

    # --- misc ------------------------------------------------------------------------------------
    def clone(self) -> RecurrentState:
        """A shallow copy: the tensors are shared, later in-place methods affect only the copy."""
        return dataclasses.replace(self)  # type: ignore[type-var]

    def detach(self) -> RecurrentState:
        """Cut the autograd history of every tensor (truncated back-propagation), in place."""
        for name, value in self._tensors().items():
            setattr(self, name, value.detach())
        return self
