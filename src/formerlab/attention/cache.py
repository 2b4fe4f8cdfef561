"""The key/value cache of one attention layer, in the layer-state protocol of
:mod:`formerlab.nn.state`.

:class:`KVCache` stores keys, values and key positions in buffers preallocated and grown by
doubling (appending a token never copies the history). Keys are stored either **rotated** (RoPE
applied at write time: static schedules) or **raw** (rotated at read time: dynamic schedules and
relative-position maps, with batched positions). A rotated cache remembers the schedule its keys
were rotated with; reading it under another schedule raises instead of silently mixing
frequencies. The raw cache with positions shared by the batch is
:class:`formerlab.position.ReRoPECache`, which also keeps incrementally rotated copies for the
fast ReRoPE decoding step.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from torch import Tensor

from ..nn.state import Growable, LayerState, StateMismatchError

__all__ = ["KVCache"]


class KVCache(LayerState):
    """Keys ``(B, Hkv, n, d)``, values ``(B, Hkv, n, dv)`` and positions ``(n,)`` or ``(B, n)``.

    Args:
        rotated: Keys are stored with RoPE applied (or no rotation is used at all).
        schedule: The rotation schedule of the stored keys (``RotaryEmbedding.schedule_key``).
        owner: Name of the mixer that owns the cache (``"mha"``, ``"gau"`` ...).
        capacity: Tokens to preallocate; buffers double beyond it.
    """

    def __init__(self, *, rotated: bool = True, schedule: Any = None, owner: str = "mha",
                 capacity: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be a non-negative int, got {capacity!r}")
        self.rotated, self.schedule, self.owner = rotated, schedule, owner
        self._k, self._v = Growable(2, capacity), Growable(2, capacity)
        self._p = Growable(-1, capacity)
        self._batched_positions = False

    # -- contents ----------------------------------------------------------------------------
    @property
    def length(self) -> int:
        return self._k.n

    def __len__(self) -> int:
        return self.length

    @property
    def keys(self) -> Tensor:
        return self._k.view()

    @property
    def values(self) -> Tensor:
        return self._v.view()

    @property
    def positions(self) -> Tensor:
        return self._p.view()

    def update(self, k: Tensor, v: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append ``m`` new keys/values at ``positions`` ``(m,)`` or ``(B, m)``; returns the full
        ``(keys, values, positions)`` views."""
        if k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3]:
            raise ValueError(
                f"k and v must be (B, Hkv, m, d) with matching leading dims, got "
                f"{tuple(k.shape)} and {tuple(v.shape)}"
            )
        if positions.shape[-1] != k.shape[2] or positions.dim() not in (1, 2):
            raise ValueError(
                f"positions must be ({k.shape[2]},) or (B, {k.shape[2]}), got {tuple(positions.shape)}"
            )
        if positions.dim() == 2 and not self._batched_positions:
            if self._p.buf is not None:  # switch the stored positions to one row per sequence
                old = self._p.view().expand(k.shape[0], -1).clone()
                self._p = Growable(-1, self._p.capacity)
                self._p.append(old)
            self._batched_positions = True
        elif positions.dim() == 1 and self._batched_positions:
            positions = positions.expand(k.shape[0], -1)
        self._k.append(k)
        self._v.append(v)
        self._p.append(positions)
        return self.keys, self.values, self.positions

    def check_schedule(self, schedule: Any) -> None:
        """Rotated keys are only valid under the schedule that rotated them."""
        if self.rotated and self.length and schedule != self.schedule:
            raise StateMismatchError(
                f"the KV cache holds keys rotated with schedule {self.schedule}, but the layer now "
                f"uses {schedule}; re-run the prefill after changing the position method"
            )

    # -- the protocol --------------------------------------------------------------------------
    def _batched(self) -> Iterator[tuple[Growable, int]]:
        yield self._k, 0
        yield self._v, 0
        if self._batched_positions:
            yield self._p, 0

    def crop(self, n: int) -> None:
        n = self._check_crop(n)
        for buf in (self._k, self._v, self._p):
            buf.crop(n)

    def __repr__(self) -> str:
        kind = "rotated" if self.rotated else "raw"
        return f"KVCache({self.owner}, {kind} keys, length={self.length})"


def as_kv_cache(state: object, owner: str) -> KVCache | None:
    """``state`` checked to be a :class:`KVCache` of ``owner`` (``None`` passes through)."""
    if state is None:
        return None
    if not isinstance(state, LayerState):
        raise TypeError(f"a layer state must be a LayerState, got {type(state).__name__}")
    state.expect(owner)
    return state  # type: ignore[return-value]
