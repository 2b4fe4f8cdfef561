"""The decoding state of a whole model: one layer state per block.

:class:`Cache` is a list of :class:`~formerlab.nn.LayerState` (what ``past_key_values`` holds)
that applies the protocol to every layer at once: ``length``, ``reorder(index)`` (beam search),
``batch_select(index)``, ``batch_repeat_interleave(repeats)``, ``crop(n)``. Hugging Face's
``get_seq_length()`` and ``reorder_cache(beam_idx)`` are accepted spellings.
"""

from __future__ import annotations

from torch import Tensor

from ..nn.state import LayerState

__all__ = ["Cache"]


class Cache(list):
    """Per-layer states of a model (``cache[i]`` is layer ``i``'s state)."""

    @property
    def length(self) -> int:
        return self[0].length if self and self[0] is not None else 0

    def get_seq_length(self) -> int:
        return self.length

    def _each(self) -> list[LayerState]:
        return [s for s in self if s is not None]

    def reorder(self, index: Tensor) -> None:
        for s in self._each():
            s.reorder(index)

    reorder_cache = reorder

    def batch_select(self, index: Tensor) -> None:
        for s in self._each():
            s.batch_select(index)

    def batch_repeat_interleave(self, repeats: int) -> None:
        for s in self._each():
            s.batch_repeat_interleave(repeats)

    def crop(self, n: int) -> None:
        for s in self._each():
            s.crop(n)

    def __repr__(self) -> str:
        return f"Cache(layers={len(self)}, length={self.length})"
