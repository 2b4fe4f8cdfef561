"""Adapters that put the linear-time layers behind the token-mixer protocol.

:class:`RecurrentMixer` runs an LRU or SLRU (kexue.fm/archives/9554; arXiv 2303.06349) causally
with an :class:`~formerlab.recurrent.LRUState`, or bidirectionally (an encoder: one recurrence
left to right plus one right to left, summed, as the LRA models of the LRU paper do).
:class:`LinearAttentionMixer` is :class:`~formerlab.attention.linear.LinearAttention`
(arXiv 2006.16236) with the protocol's signature. Transformer-VQ
(:class:`~formerlab.attention.vq_layer.TransformerVQLayer`) speaks the protocol itself.

Padding (``key_padding``, ``True`` = real token, ``(B, past + n)``): a recurrence carries its
state over padded positions unchanged (``a_t = 1``, ``b_t = 0``), linear attention gives padded
keys no features, so a left-padded batch equals its rows alone. Positions are not used.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..attention.linear import LinearAttention, LinearAttentionState
from ..nn.state import LayerState
from ..recurrent.lru import LRUState

__all__ = ["LinearAttentionMixer", "RecurrentMixer", "padding_valid"]


def padding_valid(key_padding: Tensor | None, b: int, n: int, past: int) -> Tensor | None:
    """The ``(B, n)`` real-token mask of this call's tokens from ``(B, past + n)`` padding."""
    if key_padding is None:
        return None
    if key_padding.shape != (b, past + n):
        raise ValueError(f"key_padding must be (batch, past + seq) = {(b, past + n)}, got "
                         f"{tuple(key_padding.shape)}")
    return key_padding[:, past:].bool()


def _check_call(owner: str, mask: Tensor | None, state: LayerState | None,
                kind: type[LayerState]) -> int:
    """Reject explicit masks and foreign states; returns the tokens the state has seen."""
    if mask is not None:
        raise ValueError(f"a {owner!r} layer takes no explicit (B, H, n, nk) attention mask: it "
                         "has no attention matrix; pass the (batch, seq) padding mask instead")
    if state is None:
        return 0
    if not isinstance(state, LayerState):
        raise TypeError(f"a layer state must be a LayerState, got {type(state).__name__}")
    state.expect(owner)
    if not isinstance(state, kind):
        raise TypeError(f"a {owner!r} layer needs a {kind.__name__}, got {type(state).__name__}")
    return state.length


class RecurrentMixer(nn.Module):
    """An LRU / SLRU token mixer: causal with a decoding state, or bidirectional.

    Args:
        make: Builds one recurrence (``LRU(...)`` or ``SLRU(...)``).
        causal: One left-to-right recurrence (decoder); otherwise a second, independent one runs
            right to left and the outputs are summed (encoder, no decoding state).
    """

    owner = "lru"

    def __init__(self, make: Callable[[], nn.Module], causal: bool = True) -> None:
        super().__init__()
        self.fwd = make()
        self.bwd = None if causal else make()
        self.causal = causal

    def init_mixer_(self, generator=None) -> None:
        """Ring initialisation of every recurrence (the model's init scheme covers only
        ``Linear`` and ``Embedding`` weights)."""
        for rec in (self.fwd, self.bwd):
            if rec is not None:
                rec.reset_parameters(generator)

    def forward(self, x: Tensor, positions: Tensor | None = None, *,
                key_padding: Tensor | None = None, mask: Tensor | None = None,
                state: LayerState | None = None, use_cache: bool = False,
                return_weights: bool = False) -> tuple[Tensor, LayerState | None, None]:
        past = _check_call(self.owner, mask, state, LRUState)
        b, n = x.shape[:2]
        valid = padding_valid(key_padding, b, n, past)
        if self.bwd is not None:
            if state is not None or use_cache:
                raise ValueError(f"a bidirectional {self.owner!r} layer keeps no decoding state")
            y, _ = self.fwd(x, mask=valid)
            yb, _ = self.bwd(x.flip(1), mask=None if valid is None else valid.flip(1))
            return y + yb.flip(1), None, None
        if n == 1 and state is not None:  # decoding: one O(d·N) step
            y, new = self.fwd.step(x[:, 0], state, None if valid is None else valid[:, 0])
            y = y[:, None]
        else:
            y, new = self.fwd(x, state=state, use_cache=use_cache, mask=valid)
        if new is not None:
            new.owner = self.owner
        return y, (new if use_cache else None), None


class LinearAttentionMixer(LinearAttention):
    """Multi-head linear attention with the token-mixer signature (see the module docstring)."""

    owner = "linear"

    def forward(self, x: Tensor, positions: Tensor | None = None, *,
                key_padding: Tensor | None = None, mask: Tensor | None = None,
                state: LayerState | None = None, use_cache: bool = False,
                return_weights: bool = False) -> tuple[Tensor, LayerState | None, None]:
        past = _check_call(self.owner, mask, state, LinearAttentionState)
        valid = padding_valid(key_padding, x.shape[0], x.shape[1], past)
        if not self.causal and (state is not None or use_cache):
            raise ValueError(f"a bidirectional {self.owner!r} layer keeps no decoding state")
        y, new = super().forward(x, state, use_cache and self.causal, mask=valid)
        if new is not None:
            new.owner = self.owner
        return y, (new if use_cache else None), None
