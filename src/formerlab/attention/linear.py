"""Linear attention baseline (Katharopoulos et al., arXiv 2006.16236).

With a positive feature map ``φ(x) = elu(x) + 1``::

    bidirectional: O = φ(Q) (φ(K)ᵀ V) / (φ(Q) (φ(K)ᵀ 1))                  O(n·d_φ·d_v)
    causal:        S_i = S_{i−1} + φ(k_i) v_iᵀ,  z_i = z_{i−1} + φ(k_i)
                   o_i = φ(q_i)ᵀ S_i / (φ(q_i)ᵀ z_i)

Both equal the quadratic form ``normalize_rows(φ(Q)φ(K)ᵀ ⊙ M) V``; the bidirectional attention
matrix ``φ(Q)φ(K)ᵀ`` has rank ≤ d_φ — the "low-rank" side of the decoder-only argument
(kexue.fm/archives/9529) and the kernelised baseline of Transformer-VQ (kexue.fm/archives/9844).

Three causal forms, equal to rounding:

- :func:`linear_attention` (``causal=True``): cumulative sums of the outer products, fully
  parallel but ``O(n·d_φ·d_v)`` memory;
- :func:`linear_attention_recurrent`: chunk by chunk with the state ``(S, z)`` carried across
  chunks, ``O(c² + d_φ·d_v)`` memory per chunk of ``c`` tokens
  (``O_c = [φ(Q_c) S + tril(φ(Q_c)φ(K_c)ᵀ) V_c] / [φ(Q_c) z + tril(·) 1]``); it continues from
  a :class:`LinearAttentionState`, so a sequence processed in pieces equals the whole;
- :func:`linear_attention_step`: one token, ``O(d_φ·d_v)`` time and memory at any position.

:class:`LinearAttentionState` holds ``S`` ``(B, H, d_φ, d_v)`` and the normaliser ``z``
``(B, H, d_φ)``, and speaks the layer-state protocol of :mod:`formerlab.nn.state`.
:class:`LinearAttention` is the multi-head layer over ``(batch, seq, hidden)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.state import RecurrentState
from ..registry import Registry
from .masks import check_key_mask

__all__ = [
    "FEATURE_MAPS",
    "LinearAttention",
    "LinearAttentionState",
    "linear_attention",
    "linear_attention_matrix",
    "linear_attention_recurrent",
    "linear_attention_step",
]

#: name -> φ
FEATURE_MAPS: Registry[Callable[[Tensor], Tensor]] = Registry("feature map")
FEATURE_MAPS.add("elu1", lambda x: F.elu(x) + 1.0)
FEATURE_MAPS.add("relu", F.relu)
FEATURE_MAPS.add("softplus", F.softplus)
FEATURE_MAPS.add("identity", lambda x: x)


def _check(q: Tensor, k: Tensor, v: Tensor) -> None:
    if q.dim() < 2 or k.shape[:-1] != v.shape[:-1] or q.shape[-1] != k.shape[-1] \
            or q.shape[:-2] != k.shape[:-2]:
        raise ValueError(
            "expected q (..., nq, d), k (..., nk, d), v (..., nk, dv) with equal leading dims, "
            f"got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )


def _divide(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` with ``0`` where ``den == 0`` (a query that sees no key: padding)."""
    empty = den == 0
    return torch.where(empty, 0.0, num / torch.where(empty, 1.0, den))


def linear_attention(q: Tensor, k: Tensor, v: Tensor, causal: bool = False,
                     feature_map: str = "elu1", eps: float = 0.0,
                     key_mask: Tensor | None = None) -> Tensor:
    """Kernelised attention ``(…, n, d_v)`` in O(n) time and memory (causal by cumulative sums).

    Args:
        q, k: ``(…, n, d)`` (causal needs ``nq == nk``).
        v: ``(…, n, d_v)``.
        causal: Query ``i`` sees keys ``j ≤ i``.
        feature_map: A name of :data:`FEATURE_MAPS`.
        eps: Added to the denominator.
        key_mask: Bool ``(…, n)`` (broadcastable), ``False`` = padded key: its features count as
            zero. A query that sees no key at all returns zeros.
    """
    _check(q, k, v)
    phi = FEATURE_MAPS.get(feature_map)
    fq, fk = phi(q), phi(k)
    m = check_key_mask(key_mask, k.shape[:-1], "keys")
    if m is not None:  # padded keys: no features, no values (whatever the padding holds)
        fk, v = fk.masked_fill(~m[..., None], 0.0), v.masked_fill(~m[..., None], 0.0)
    if not causal:
        kv = torch.matmul(fk.transpose(-1, -2), v)  # (…, d, dv)
        z = fk.sum(-2)  # (…, d)
        num = torch.matmul(fq, kv)
        den = (fq * z[..., None, :]).sum(-1, keepdim=True)
        return _divide(num, den + eps)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal linear attention needs nq == nk, got {q.shape[-2]}, {k.shape[-2]}")
    s = torch.cumsum(fk[..., :, None] * v[..., None, :], dim=-3)  # (…, n, d, dv)
    z = torch.cumsum(fk, dim=-2)  # (…, n, d)
    num = torch.einsum("...nd,...nde->...ne", fq, s)
    den = (fq * z).sum(-1, keepdim=True)
    return _divide(num, den + eps)


def linear_attention_matrix(q: Tensor, k: Tensor, causal: bool = False,
                            feature_map: str = "elu1", eps: float = 0.0) -> Tensor:
    """The explicit ``(…, nq, nk)`` matrix ``normalize_rows(φ(Q)φ(K)ᵀ ⊙ M)`` (the oracle)."""
    phi = FEATURE_MAPS.get(feature_map)
    a = torch.matmul(phi(q), phi(k).transpose(-1, -2))
    if causal:
        n = a.shape[-1]
        a = a * torch.ones(n, n, dtype=torch.bool, device=a.device).tril()
    return a / (a.sum(-1, keepdim=True) + eps)


@dataclasses.dataclass
class LinearAttentionState(RecurrentState):
    """Recurrent state of causal linear attention: ``S = Σ φ(k) vᵀ`` and ``z = Σ φ(k)``.

    ``s`` is ``(…, d_φ, d_v)`` (``(B, H, d_φ, d_v)`` in the layer), ``z`` is ``(…, d_φ)``;
    ``length`` counts the tokens summed. ``state.step(q, k, v)`` takes one token ``(…, d)`` /
    ``(…, d_v)``, advances the state in place and returns its output (equal to the causal
    parallel form). ``crop`` below the current length raises ``NotImplementedError`` (the sums
    keep no history).
    """

    feature_map: str = "elu1"
    eps: float = 0.0
    s: Tensor | None = None
    z: Tensor | None = None
    length: int = 0
    owner: str = "linear"
    _batch_fields = ("s", "z")

    @property
    def min_crop_length(self) -> int:
        """The shortest length :meth:`crop` can return to: the current one (no history)."""
        return self.length

    def update(self, fk: Tensor, v: Tensor) -> LinearAttentionState:
        """Add the features ``φ(k)`` ``(…, m, d_φ)`` and values ``(…, m, d_v)`` of ``m`` tokens."""
        if fk.dim() < 2 or fk.shape[:-1] != v.shape[:-1]:
            raise ValueError(f"update takes φ(k) (…, m, d) and v (…, m, d_v), got "
                             f"{tuple(fk.shape)}, {tuple(v.shape)}")
        ds = torch.matmul(fk.transpose(-1, -2), v)
        dz = fk.sum(-2)
        if self.s is not None:
            if self.s.shape != ds.shape:
                raise ValueError(f"state.s has shape {tuple(self.s.shape)} but these tokens "
                                 f"give {tuple(ds.shape)} (…, d_φ, d_v)")
            ds, dz = self.s + ds, self.z + dz
        self.s, self.z = ds, dz
        self.length += fk.shape[-2]
        return self

    def step(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Advance by one token in place and return its output ``(…, d_v)``."""
        if q.shape != k.shape or q.shape[:-1] != v.shape[:-1]:
            raise ValueError(f"step takes q, k (…, d) and v (…, d_v), got {tuple(q.shape)}, "
                             f"{tuple(k.shape)}, {tuple(v.shape)}")
        phi = FEATURE_MAPS.get(self.feature_map)
        fq = phi(q)
        self.update(phi(k)[..., None, :], v[..., None, :])
        num = torch.einsum("...d,...de->...e", fq, self.s)
        den = (fq * self.z).sum(-1, keepdim=True)
        return _divide(num, den + self.eps)


def _resolve(state: LinearAttentionState | None, feature_map: str | None, eps: float | None
             ) -> LinearAttentionState:
    if state is None:
        return LinearAttentionState(feature_map=feature_map or "elu1", eps=eps or 0.0)
    if not isinstance(state, LinearAttentionState):
        raise TypeError(f"state must be a LinearAttentionState, got {type(state).__name__}")
    for name, given, held in (("feature_map", feature_map, state.feature_map),
                              ("eps", eps, state.eps)):
        if given is not None and given != held:
            raise ValueError(f"{name}={given!r} differs from the state's {name}={held!r}")
    FEATURE_MAPS.get(state.feature_map)
    return state.clone()


def _check_state_shape(state: LinearAttentionState, q: Tensor, v: Tensor) -> None:
    if state.s is None:
        return
    want = (*q.shape[:-2], q.shape[-1], v.shape[-1])
    if tuple(state.s.shape) != want or tuple(state.z.shape) != want[:-1]:
        raise ValueError(f"state.s / state.z must have shapes {want} / {want[:-1]} for these "
                         f"inputs, got {tuple(state.s.shape)} / {tuple(state.z.shape)}")


def linear_attention_recurrent(
    q: Tensor, k: Tensor, v: Tensor, state: LinearAttentionState | None = None, *,
    feature_map: str | None = None, eps: float | None = None, chunk_size: int = 64,
    key_mask: Tensor | None = None,
) -> tuple[Tensor, LinearAttentionState]:
    """Causal linear attention chunk by chunk, continuing from ``state``.

    Args:
        q, k: ``(…, n, d)``; v: ``(…, n, d_v)`` (the next ``n`` tokens).
        state: The state after the previous tokens (not modified); ``None`` starts empty.
        feature_map, eps: As :func:`linear_attention` (default: the state's, else ``elu1``, 0).
        chunk_size: Tokens per chunk (quadratic inside a chunk, recurrent across chunks).
        key_mask: Bool ``(…, n)``, ``False`` = padding: those tokens add nothing to the state
            (``S`` and ``z`` pass them unchanged).

    Returns:
        ``(out, new_state)``: ``out`` ``(…, n, d_v)`` equals ``linear_attention(…, causal=True)``
        over the whole sequence seen so far, restricted to these ``n`` queries.
    """
    _check(q, k, v)
    if q.shape[-2] != k.shape[-2]:
        raise ValueError(f"causal linear attention needs nq == nk, got {q.shape[-2]}, {k.shape[-2]}")
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    st = _resolve(state, feature_map, eps)
    _check_state_shape(st, q, v)
    phi = FEATURE_MAPS.get(st.feature_map)
    fq, fk = phi(q), phi(k)
    m = check_key_mask(key_mask, k.shape[:-1], "keys")
    if m is not None:  # padded keys: no features, no values (whatever the padding holds)
        fk, v = fk.masked_fill(~m[..., None], 0.0), v.masked_fill(~m[..., None], 0.0)
    outs = []
    # split, not sliced: one backward node for all chunks (a slice's backward fills a tensor of
    # the whole sequence, which would make the backward quadratic in n)
    for cq, ck, cv in zip(*(t.split(chunk_size, dim=-2) for t in (fq, fk, v))):
        m = cq.shape[-2]
        a = torch.matmul(cq, ck.transpose(-1, -2))
        a = a * torch.ones(m, m, dtype=torch.bool, device=a.device).tril()
        num, den = torch.matmul(a, cv), a.sum(-1, keepdim=True)
        if st.s is not None:
            num = num + torch.matmul(cq, st.s)
            den = den + (cq * st.z[..., None, :]).sum(-1, keepdim=True)
        outs.append(_divide(num, den + st.eps))
        st.update(ck, cv)
    out = torch.cat(outs, dim=-2) if outs else v.new_zeros(v.shape)
    return out, st


def linear_attention_step(
    q: Tensor, k: Tensor, v: Tensor, state: LinearAttentionState | None = None, *,
    feature_map: str | None = None, eps: float | None = None,
) -> tuple[Tensor, LinearAttentionState]:
    """One decoding step: ``q``, ``k`` ``(…, d)``, ``v`` ``(…, d_v)`` → ``(o (…, d_v), new_state)``.

    ``O(d_φ·d_v)`` whatever the position; ``state`` is not modified.
    """
    st = _resolve(state, feature_map, eps)
    if st.s is not None:
        _check_state_shape(st, q[..., None, :], v[..., None, :])
    return st.step(q, k, v), st


class LinearAttention(nn.Module):
    """Multi-head linear attention over ``(batch, seq, hidden)`` with recurrent decoding.

    Projections are named like :class:`~formerlab.attention.MultiHeadAttention`
    (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``).

    Args:
        hidden_size: Model width.
        num_heads: Heads.
        head_dim: Per-head width (default ``hidden_size // num_heads``).
        feature_map: A name of :data:`FEATURE_MAPS`.
        causal: Decoder (recurrent form) or encoder (bidirectional form, no state).
        eps: Added to the denominators.
        bias: Biases on the projections.
        chunk_size: Chunk length of the causal form.
    """

    def __init__(self, hidden_size: int, num_heads: int, head_dim: int | None = None, *,
                 feature_map: str = "elu1", causal: bool = True, eps: float = 0.0,
                 bias: bool = False, chunk_size: int = 64) -> None:
        super().__init__()
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(f"hidden_size ({hidden_size}) must be divisible by num_heads "
                                 f"({num_heads}) unless head_dim is given")
            head_dim = hidden_size // num_heads
        FEATURE_MAPS.get(feature_map)
        self.hidden_size, self.num_heads, self.head_dim = hidden_size, num_heads, head_dim
        self.feature_map, self.causal, self.eps, self.chunk_size = feature_map, causal, eps, chunk_size
        inner = num_heads * head_dim
        self.q_proj = nn.Linear(hidden_size, inner, bias=bias)
        self.k_proj = nn.Linear(hidden_size, inner, bias=bias)
        self.v_proj = nn.Linear(hidden_size, inner, bias=bias)
        self.o_proj = nn.Linear(inner, hidden_size, bias=bias)

    def _heads(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.num_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: Tensor, state: LinearAttentionState | None = None, use_cache: bool = False,
                mask: Tensor | None = None) -> tuple[Tensor, LinearAttentionState | None]:
        """``x`` ``(batch, seq, hidden)`` → ``(y, new_state)``; ``state`` is not modified.

        The new state is returned when ``use_cache`` is set or a ``state`` was given (causal
        only); feeding a sequence in pieces with the state equals feeding it whole. ``mask``
        ``(batch, seq)`` bool marks real tokens: padded ones are invisible as keys (and leave the
        state unchanged).
        """
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be (batch, seq, {self.hidden_size}), got {tuple(x.shape)}")
        if mask is not None and (not isinstance(mask, Tensor) or mask.dtype != torch.bool
                                 or tuple(mask.shape) != tuple(x.shape[:2])):
            raise ValueError(f"mask must be a bool tensor of shape {tuple(x.shape[:2])} (True = "
                             f"real token), got {getattr(mask, 'dtype', None)} "
                             f"{tuple(getattr(mask, 'shape', ()))}")
        key_mask = None if mask is None else mask[:, None, :]
        q, k, v = (self._heads(p(x)) for p in (self.q_proj, self.k_proj, self.v_proj))
        new_state = None
        if not self.causal:
            if state is not None or use_cache:
                raise ValueError("a bidirectional LinearAttention has no decoding state; "
                                 "use causal=True for state / use_cache")
            o = linear_attention(q, k, v, causal=False, feature_map=self.feature_map, eps=self.eps,
                                 key_mask=key_mask)
        else:
            if state is not None and state.s is not None and state.s.shape[0] != x.shape[0]:
                raise ValueError(f"state has batch size {state.s.shape[0]}, x has {x.shape[0]}")
            o, st = linear_attention_recurrent(q, k, v, state, feature_map=self.feature_map,
                                               eps=self.eps, chunk_size=self.chunk_size,
                                               key_mask=key_mask)
            new_state = st if (use_cache or state is not None) else None
        y = self.o_proj(o.transpose(1, 2).reshape(x.shape[0], x.shape[1], -1))
        return y, new_state
