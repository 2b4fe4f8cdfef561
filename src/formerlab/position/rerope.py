"""Fast ReRoPE / Leaky ReRoPE attention: causal prefill and decoding with an un-rotated key cache.

The maps, the reference two-pass :func:`~formerlab.position.relative.relpos_attention` and the
naive oracle live in :mod:`formerlab.position.relative` (which re-exports these names).
kexue.fm/archives/9708 (ReRoPE, Leaky ReRoPE), 9728 (InvLeaky), 9948 (only the blocks straddling the
window boundary need both passes).

- :func:`rerope_attention`: causal self-attention at positions ``0 … n-1``. ``impl="two_pass"``
  merges the two score blocks with an explicit ``where`` and applies one softmax (query blocks,
  memory ``O(block_size·n)``); ``impl="lse_merge"`` runs two masked passes and merges them by
  log-sum-exp — on CPU without gradients through PyTorch's flash kernel (pass 2 is one causal call on
  shifted tensors, pass 1 a band-masked call per block), so time and memory stay close to RoPE + SDPA.
- :class:`ReRoPECache` + :func:`rerope_decode_step`: decoding against **un-rotated** keys; per step
  only the keys within the window are rotated.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..nn.state import Growable, LayerState
from ._ops import (
    Piecewise,
    _check_qkv,
    _freqs_for,
    _gqa_apply,
    _gqa_scores,
    _rel,
    _rotary_dim,
    _rotate,
    _softmax_weights,
)
from .rope import apply_rope, rope_cos_sin

__all__ = ["ReRoPECache", "rerope_attention", "rerope_decode_step", "two_pass_scores"]

# --------------------------------------------------------------------------------------------
# the generic two-pass merge


def two_pass_scores(
    q: Tensor, k: Tensor, qp: Tensor, kp: Tensor, inv_freq: Tensor, layout: str, r: int, relpos: Any
) -> Tensor:
    """Raw scores ``q_iᵀ R_{-f(i-j)} k_j`` ``(B, H, nq, nk)`` of any map with ``window`` and
    ``outer_positions``: RoPE scores inside the window, the second pass outside (``where``)."""
    s1 = _gqa_scores(_rotate(q, qp, inv_freq, layout, r), _rotate(k, kp, inv_freq, layout, r))
    if relpos.is_identity:
        return s1
    qa, kc = relpos.outer_positions(qp.to(torch.float64), kp.to(torch.float64))
    s2 = _gqa_scores(_rotate(q, qa, inv_freq, layout, r), _rotate(k, kc, inv_freq, layout, r))
    rel = _rel(qp, kp).to(q.device)
    inside = (rel[:, None] if rel.dim() == 3 else rel) < relpos.window
    return torch.where(inside, s1, s2)


# --------------------------------------------------------------------------------------------
# causal prefill at positions 0..n-1


def _rerope_block(
    q1: Tensor, k1: Tensor, q2: Tensor | None, k2: Tensor | None, v: Tensor,
    i0: int, i1: int, window: int | None, impl: str, work: torch.dtype,
) -> Tensor:
    """Output rows ``i0 … i1-1`` of causal two-pass attention at positions ``0 … n-1``.

    ``q1, k1``: RoPE-rotated (already scaled); ``q2, k2``: second-pass rotated (``None`` for the
    identity map). Keys ``j < far`` need pass 2 for some rows, keys ``j ≥ near`` pass 1.
    """
    dev = q1.device
    rows = torch.arange(i0, i1, device=dev)
    if window is None or i1 - window <= 0:
        near, far = 0, 0
    else:
        near, far = max(0, i0 - window + 1), i1 - window
    qb1 = q1[:, :, i0:i1]
    s1 = _gqa_scores(qb1, k1[:, :, near:i1]).to(work)
    cols1 = torch.arange(near, i1, device=dev)
    rel1 = rows[:, None] - cols1[None, :]
    # pass 1 is valid for keys inside the window and not in the future
    ok1 = rel1 >= 0
    if window is not None:
        ok1 = ok1 & (rel1 < window)
    if far == 0:
        p = _softmax_weights(s1, ok1, work)
        return _gqa_apply(p, v[:, :, near:i1].to(work))
    s2 = _gqa_scores(q2[:, :, i0:i1], k2[:, :, :far]).to(work)  # type: ignore[index]
    cols2 = torch.arange(0, far, device=dev)
    ok2 = (rows[:, None] - cols2[None, :]) >= window
    if impl == "two_pass":
        # one softmax over [pass-2 keys 0..near) ++ merged overlap [near, far) ++ pass-1 keys [far, i1)
        overlap = torch.where(ok1[:, : far - near], s1[..., : far - near], s2[..., near:far])
        s = torch.cat([s2[..., :near], overlap, s1[..., far - near :]], dim=-1)
        valid = torch.cat([ok2[:, :near], ok1[:, : far - near] | ok2[:, near:far], ok1[:, far - near :]], -1)
        p = _softmax_weights(s, valid, work)
        return _gqa_apply(p, v[:, :, :i1].to(work))
    # lse_merge: two independently normalised passes merged by their log-sum-exp
    s1 = s1.masked_fill(~ok1, float("-inf"))
    s2 = s2.masked_fill(~ok2, float("-inf"))
    lse1 = torch.logsumexp(s1, dim=-1, keepdim=True)
    lse2 = torch.logsumexp(s2, dim=-1, keepdim=True)
    o1 = _gqa_apply(torch.nan_to_num(torch.exp(s1 - lse1), nan=0.0), v[:, :, near:i1].to(work))
    o2 = _gqa_apply(torch.nan_to_num(torch.exp(s2 - lse2), nan=0.0), v[:, :, :far].to(work))
    m = torch.maximum(lse1, lse2)
    w1, w2 = torch.exp(lse1 - m), torch.exp(lse2 - m)
    return (w1 * o1 + w2 * o2) / (w1 + w2)


def _fused_kernel(q: Tensor, *others: Tensor) -> Any:
    """PyTorch's CPU flash-attention op, which also returns the row log-sum-exp (``None`` if unusable).

    Not used when gradients are needed: the op's backward treats the log-sum-exp output as
    constant, so gradients through the merge weights would be wrong. Nor when the values are
    wider or narrower than the queries (GAU): the op needs one head size for q, k and v.
    """
    if q.device.type != "cpu" or q.dtype not in (torch.float32, torch.float64):
        return None
    if any(t.shape[-1] != q.shape[-1] for t in others):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, *others)):
        return None
    return getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _rerope_fused(
    kernel: Any, q: Tensor, k: Tensor, v: Tensor, inv_freq: Tensor, relpos: Piecewise,
    layout: str, r: int, scale: float, block_size: int,
) -> Tensor:
    """Exact LSE merge of two flash passes at positions ``0 … n-1`` (inference only).

    Pass 1 (``0 ≤ i - j < w``) runs blockwise with a band mask; pass 2 (``j ≤ i - w``) is one causal
    call on shifted tensors (query rows ``w …``, keys ``… n-w-1``) with no mask. Outputs are written
    in place and the rotated copies of each pass are freed before the next, so peak memory stays
    close to RoPE + SDPA.
    """
    n = q.shape[2]
    rep = q.shape[1] // k.shape[1]

    def heads(t: Tensor) -> Tensor:  # the kernel wants equal head counts
        return t.repeat_interleave(rep, 1) if rep > 1 else t

    pos = torch.arange(n, device=q.device)
    w = None if relpos.is_identity or n <= relpos.window else relpos.window  # type: ignore[operator]
    q1, k1, vv = _rotate(q, pos, inv_freq, layout, r), heads(_rotate(k, pos, inv_freq, layout, r)), heads(v)
    if w is None:
        return kernel(q1, k1, vv, 0.0, True, scale=scale)[0]
    out = torch.empty(*q.shape[:3], v.shape[-1], dtype=q.dtype, device=q.device)
    lse1 = torch.empty(q.shape[:3], dtype=q.dtype, device=q.device)
    for i0 in range(0, n, block_size):
        i1 = min(i0 + block_size, n)
        near = max(0, i0 - w + 1)
        rel = torch.arange(i0, i1, device=q.device)[:, None] - torch.arange(near, i1, device=q.device)[None]
        mask = torch.zeros(rel.shape, dtype=q.dtype, device=q.device)
        mask = mask.masked_fill((rel < 0) | (rel >= w), float("-inf"))
        o, lse = kernel(q1[:, :, i0:i1], k1[:, :, near:i1], vv[:, :, near:i1], 0.0, False, attn_mask=mask, scale=scale)
        out[:, :, i0:i1] = o
        lse1[:, :, i0:i1] = lse
    del q1, k1, o, mask
    qa, kc = relpos.outer_positions(pos[w:].to(torch.float64), pos[: n - w].to(torch.float64))
    q2 = _rotate(q[:, :, w:], qa, inv_freq, layout, r)
    k2 = k[:, :, : n - w] if relpos.factor is None else _rotate(k[:, :, : n - w], kc, inv_freq, layout, r)
    out2, lse2 = kernel(q2, heads(k2), vv[:, :, : n - w], 0.0, True, scale=scale)
    del q2, k2
    la, lb = lse1[:, :, w:, None], lse2[..., None]
    m = torch.maximum(la, lb)
    wa, wb = torch.exp(la - m), torch.exp(lb - m)
    total = wa + wb
    tail = out[:, :, w:]
    tail.mul_(wa / total)
    tail.add_(out2.mul_(wb / total))
    return out


def rerope_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    inv_freq: Tensor,
    window: int | None,
    leaky_factor: float | None = None,
    causal: bool = True,
    layout: str = "half",
    impl: str = "auto",
    scale: float | None = None,
    rotary_dim: int | None = None,
    attention_factor: float = 1.0,
    block_size: int = 512,
) -> Tensor:
    """ReRoPE / Leaky ReRoPE attention on un-rotated ``(B, H, n, d)`` tensors at positions ``0 … n-1``.

    Args:
        q, k, v: Un-rotated queries ``(B, H, n, d)``, keys/values ``(B, Hkv, n, d)`` (GQA allowed).
        inv_freq: ``(r/2,)`` inverse frequencies.
        window: ReRoPE window ``w`` (relative positions ``< w`` are exact); ``None`` = plain RoPE.
        leaky_factor: ``None`` for ReRoPE; ``k`` for Leaky ReRoPE (``k < 1``: InvLeaky).
        causal: Causal mask (the fast blockwise path); ``False`` uses :func:`relpos_attention`
            (negative distances are left unchanged, ``f(r) = r`` for ``r < 0``).
        layout: RoPE layout.
        impl: ``"two_pass"`` (merge, then one softmax over explicit score blocks),
            ``"lse_merge"`` (two masked passes merged by their log-sum-exp; on CPU float32/64
            without gradients it runs PyTorch's flash kernel, otherwise explicit blocks) or
            ``"auto"`` (= ``"lse_merge"``). All are exact up to rounding and differentiable.
        scale: Logit scale (default ``1/sqrt(d)``); fold a log-n factor into ``q`` beforehand.
        rotary_dim: Rotated channels (partial rotary); default ``2·len(inv_freq)``.
        attention_factor: cos/sin multiplier as in Hugging Face (logits scale by its square).
        block_size: Query rows per block (memory ``O(block_size · n)`` per head).

    Returns:
        ``(B, H, n, d)`` in ``q``'s dtype.
    """
    _, _, _, n, nk = _check_qkv(q, k, v)
    if nk != n:
        raise ValueError(f"rerope_attention is self-attention at positions 0..n-1: q has {n}, k has {nk}")
    if impl not in ("auto", "two_pass", "lse_merge"):
        raise ValueError(f"impl must be 'auto', 'two_pass' or 'lse_merge', got {impl!r}")
    impl = "lse_merge" if impl == "auto" else impl
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size <= 0:
        raise ValueError(f"block_size must be a positive int, got {block_size!r}")
    relpos = Piecewise(window, leaky_factor)
    pos = torch.arange(n, device=q.device)
    r = _rotary_dim(inv_freq, q.shape[-1], rotary_dim)
    inv_freq = _freqs_for(inv_freq, q)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    if not causal:
        s = two_pass_scores(q, k, pos, pos, inv_freq, layout, r, relpos)
        p = _softmax_weights(s * (scale * float(attention_factor) ** 2), None, v.dtype)
        return _gqa_apply(p, v).to(q.dtype)
    kernel = _fused_kernel(q, k, v) if impl == "lse_merge" else None
    if kernel is not None:
        total = scale * float(attention_factor) ** 2
        return _rerope_fused(kernel, q, k, v, inv_freq, relpos, layout, r, total, block_size).to(q.dtype)
    qs = q * (scale * float(attention_factor) ** 2)
    q1, k1 = _rotate(qs, pos, inv_freq, layout, r), _rotate(k, pos, inv_freq, layout, r)
    q2 = k2 = None
    if not relpos.is_identity and n > relpos.window:  # type: ignore[operator]
        qa, kc = relpos.outer_positions(pos.to(torch.float64), pos.to(torch.float64))
        q2 = _rotate(qs, qa, inv_freq, layout, r)
        k2 = k if relpos.factor is None else _rotate(k, kc, inv_freq, layout, r)
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    outs = [
        _rerope_block(q1, k1, q2, k2, v, i0, min(i0 + block_size, n), relpos.window, impl, work)
        for i0 in range(0, n, block_size)
    ]
    return torch.cat(outs, dim=2).to(q.dtype)


# --------------------------------------------------------------------------------------------
# decoding with a cache of un-rotated keys


class ReRoPECache(LayerState):
    """KV cache of **un-rotated** keys, values and their positions (one layer).

    Args:
        inv_freq: ``(r/2,)`` inverse frequencies used at read time.
        layout: RoPE layout.
        rotary_dim: Rotated channels (default ``2·len(inv_freq)``).
        capacity: Tokens to preallocate (optional; buffers grow by doubling beyond it).

    ``keys``/``values`` ``(B, Hkv, n, d)`` and ``positions`` ``(n,)`` (float64) are views of buffers
    grown by doubling. Keys are rotated when read, so the frequencies may change between steps (set
    ``cache.inv_freq``; dynamic NTK stays exact for this layer). Rotated copies used by plain RoPE
    (keys at ``j``) and by the Leaky second pass (keys at ``j/k``) are kept incrementally. Positions
    are shared by the batch and must increase.

    It speaks the layer-state protocol of :mod:`formerlab.nn.state` (``length``, ``reorder``,
    ``batch_select``, ``batch_repeat_interleave``, ``crop``); reordering or cropping drops the
    incrementally rotated copies, which are rebuilt on the next read.
    """

    owner = "mha"

    def __init__(
        self, inv_freq: Tensor, *, layout: str = "half", rotary_dim: int | None = None, capacity: int = 0
    ) -> None:
        if not isinstance(inv_freq, Tensor) or inv_freq.dim() != 1:
            raise ValueError("inv_freq must be a 1-D tensor of r/2 inverse frequencies")
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
            raise ValueError(f"capacity must be a non-negative int, got {capacity!r}")
        self.inv_freq = inv_freq
        self.capacity = capacity
        self.layout = layout
        self.rotary_dim = 2 * inv_freq.numel() if rotary_dim is None else rotary_dim
        self.reset()

    def reset(self) -> None:
        self.keys: Tensor | None = None
        self.values: Tensor | None = None
        self.positions: Tensor | None = None
        self._bufs = (Growable(2, self.capacity), Growable(2, self.capacity), Growable(0, self.capacity))
        self._scaled: dict[tuple[float, Tensor], tuple[Growable, Tensor]] = {}
        # RoPE-rotated copies of the most recent keys (pass 1 of decoding): (inv_freq, start, buffer)
        self._recent: tuple[Tensor, int, Growable] | None = None
        self.recent_keep = 0  # how many recent rotated keys to keep (raised by rerope_decode_step)
        self._last: float | None = None  # last cached position, as a Python number
        self._first: float | None = None  # first position while positions are consecutive integers
        self._tables: dict[tuple[str, float], tuple[Tensor, Tensor, Tensor]] = {}  # -> (inv_freq, cos, sin)

    def __len__(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    # -- the layer-state protocol ------------------------------------------------------------------
    @property
    def length(self) -> int:
        return len(self)

    def _batched(self):
        return iter(((self._bufs[0], 0), (self._bufs[1], 0)))

    def _changed(self) -> None:
        kb, vb, pb = self._bufs
        if kb.n == 0:
            self.keys = self.values = self.positions = None
            self._last = self._first = None
        else:
            self.keys, self.values, self.positions = kb.view(), vb.view(), pb.view()
            self._last = float(self.positions[-1])
        self._scaled.clear()
        self._recent = None

    def crop(self, n: int) -> None:
        n = self._check_crop(n)
        for buf in self._bufs:
            buf.crop(n)
        self._changed()

    def update(self, k: Tensor, v: Tensor, positions: Tensor | None = None) -> None:
        """Append un-rotated keys ``(B, Hkv, m, d)`` and values at ``positions`` ``(m,)``.

        Positions default to continuing after the last cached one (from 0); they must increase.
        """
        if k.dim() != 4 or v.dim() != 4 or k.shape[:3] != v.shape[:3]:
            raise ValueError(
                f"k and v must be (B, Hkv, m, d) with matching leading dims, got {tuple(k.shape)}, {tuple(v.shape)}"
            )
        m = k.shape[2]
        last = self._last
        if positions is None:
            start = 0 if last is None else int(last) + 1
            positions = torch.arange(start, start + m, device=k.device, dtype=torch.float64)
            new_last = float(start + m - 1)
            consecutive = True
        else:
            if positions.shape != (m,):
                raise ValueError(f"positions must have shape ({m},), got {tuple(positions.shape)}")
            positions = positions.to(device=k.device, dtype=torch.float64)
            if (m > 1 and not bool((positions[1:] > positions[:-1]).all())) or (
                last is not None and m and float(positions[0]) <= last
            ):
                raise ValueError("cache positions must be strictly increasing")
            new_last = float(positions[-1]) if m else last
            first_new = float(positions[0]) if m else None
            consecutive = m == 0 or (
                first_new == int(first_new)  # type: ignore[arg-type]
                and new_last - first_new == m - 1  # type: ignore[operator]
                and (last is None or first_new == last + 1)
            )
        if self.keys is not None and (k.shape[:2] != self.keys.shape[:2] or k.shape[-1] != self.keys.shape[-1]):
            raise ValueError(f"k {tuple(k.shape)} does not match the cached keys {tuple(self.keys.shape)}")
        for key, (buf, _) in list(self._scaled.items()):
            self._scaled[key] = (buf, buf.append(self._rotate(k, positions * key[0])))
        kb, vb, pb = self._bufs
        self.keys, self.values, self.positions = kb.append(k), vb.append(v), pb.append(positions)
        if len(self) == m:  # the first update
            self._first = float(positions[0]) if consecutive and m else None
        elif not consecutive:
            self._first = None
        self._last = new_last
        if self._recent is not None:
            freqs, start, buf = self._recent
            if freqs is not self.inv_freq:
                self._recent = None
            else:
                cos, sin = self._consecutive_tables(new_last, m, k) if self._first is not None else (None, None)
                if cos is None:
                    cos, sin = self.cos_sin(positions, k)
                if m == 1:  # the next decoding query sits here: keep its table
                    self._tables = {k0: t for k0, t in self._tables.items() if k0[0] != "pos"}
                    self._tables["pos", new_last] = (self.inv_freq, cos, sin)
                rot = buf.append(apply_rope(k, cos, sin, self.layout, self.rotary_dim))
                if buf.n > 2 * self.recent_keep + 64:  # trim (amortised O(1) per token)
                    keep = self.recent_keep + 32
                    buf = Growable(2)
                    buf.append(rot[:, :, -keep:])
                    start = len(self) - keep
                self._recent = (freqs, start, buf)

    def _consecutive_tables(self, last: float, m: int, like: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """cos/sin rows of the last ``m`` positions from a table indexed by ``position - first``.

        The table (like transformers' cos/sin cache) grows by doubling, so decoding computes no
        trigonometry per token. Only for consecutive integer positions.
        """
        start = int(last - self._first) - m + 1  # type: ignore[operator]
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        tab = self._tables.get(("table", 0.0))
        if tab is None or tab[0] is not self.inv_freq or tab[1].dtype != dtype or tab[1].shape[0] < start + m:
            size = max(2 * (start + m), 256)
            pos = torch.arange(size, device=like.device, dtype=torch.float64) + self._first  # type: ignore[operator]
            tab = self._tables["table", 0.0] = (self.inv_freq, *self.cos_sin(pos, like))
        return tab[1].narrow(0, start, m), tab[2].narrow(0, start, m)

    def _rotate(self, x: Tensor, pos: Tensor) -> Tensor:
        return _rotate(x, pos, _freqs_for(self.inv_freq, x), self.layout, self.rotary_dim)

    def cos_sin(self, pos: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """RoPE tables ``(m, r)`` at ``pos`` for activations like ``like``."""
        return rope_cos_sin(pos, _freqs_for(self.inv_freq, like), layout=self.layout)

    def table_at(self, kind: str, value: float, like: Tensor) -> tuple[Tensor, Tensor]:
        """Cached ``(1, r)`` tables at one position: ``kind`` ``"pos"`` (last token) or ``"win"`` (window)."""
        key = (kind, value)
        hit = self._tables.get(key)
        if hit is None or hit[0] is not self.inv_freq or hit[1].dtype != (
            torch.float64 if like.dtype == torch.float64 else torch.float32
        ):
            pos = torch.tensor([value], dtype=torch.float64, device=like.device)
            cos, sin = self.cos_sin(pos, like)
            hit = self._tables[key] = (self.inv_freq, cos, sin)
        return hit[1], hit[2]

    def rotated_keys_from(self, start: int) -> Tensor:
        """RoPE-rotated keys ``start … n-1`` (at their positions), from the recent-key buffer."""
        n = len(self)
        if self.keys is None or self.positions is None or not 0 <= start <= n:
            raise ValueError(f"start must lie in [0, {n}], got {start}")
        self.recent_keep = max(self.recent_keep, n - start)
        rec = self._recent
        if rec is None or rec[0] is not self.inv_freq or rec[1] > start:
            lo = min(max(0, n - self.recent_keep - 32), start)
            buf = Growable(2)
            buf.append(self._rotate(self.keys[:, :, lo:], self.positions[lo:]))
            rec = self._recent = (self.inv_freq, lo, buf)
        buf = rec[2]
        return buf.buf.narrow(2, start - rec[1], buf.n - (start - rec[1]))  # type: ignore[union-attr]

    def scaled_rotated_keys(self, scale: float) -> Tensor:
        """Keys rotated at ``positions·scale`` (kept and extended incrementally per ``inv_freq``)."""
        if self.keys is None or self.positions is None:
            raise ValueError("the cache is empty")
        # keyed by the frequency tensor too: assigning a new cache.inv_freq invalidates the copies
        for stale in [key for key in self._scaled if key[1] is not self.inv_freq]:
            del self._scaled[stale]
        key = (float(scale), self.inv_freq)
        if key not in self._scaled:
            buf = Growable(2)
            self._scaled[key] = (buf, buf.append(self._rotate(self.keys, self.positions * scale)))
        return self._scaled[key][1]


def _decode_last(q: Tensor, cache: ReRoPECache, relpos: Piecewise, w: int, total: float, work: torch.dtype) -> Tensor:
    """One query at the last cached position (every key visible): both passes' scores, one softmax.

    With a single query the scores are a ``(B, H, 1, n)`` row, so explicit attention reads each
    key and value once, like a fused kernel, without the kernel's fixed cost per call (two calls
    and a log-sum-exp merge cost more than the arithmetic at a few thousand keys).
    """
    keys, values, kp = cache.keys, cache.values, cache.positions
    n = len(cache)
    last = float(kp[-1]) if cache._last is None else cache._last  # type: ignore[index]
    if cache._first is not None:  # consecutive integer positions: no search needed
        far = min(n, max(0, int(last - w - cache._first) + 1))
    else:
        far = int(torch.searchsorted(kp, torch.tensor(last - w, dtype=kp.dtype), right=True))  # type: ignore[arg-type,union-attr]
    k1 = cache.rotated_keys_from(far)
    layout, r = cache.layout, cache.rotary_dim
    cos, sin = cache.table_at("pos", last, q)
    if far and relpos.factor is None:  # pass 2 rotates the query by the constant window
        cw, sw = cache.table_at("win", float(w), q)
        # the one query broadcast against both tables: (B, H, 2, d), rows at ``last`` and at ``w``
        both = apply_rope(q, torch.cat([cos, cw]), torch.cat([sin, sw]), layout, r)
        q1, q2 = both.narrow(2, 0, 1), both.narrow(2, 1, 1)
        k2 = keys.narrow(2, 0, far)  # type: ignore[union-attr]
    else:
        q1 = apply_rope(q, cos, sin, layout, r)
        if far:
            qa, _ = relpos.outer_positions(kp[-1:], kp[-1:])  # type: ignore[index]
            q2 = cache._rotate(q, qa)
            k2 = cache.scaled_rotated_keys(1.0 / relpos.factor).narrow(2, 0, far)  # type: ignore[attr-defined]
    s = _gqa_scores(q1, k1)
    if far:
        s = torch.cat([_gqa_scores(q2, k2), s], dim=-1)
    if s.dtype != work:  # half-precision inputs: the softmax and the sum in float32
        s, values = s.to(work), values.to(work)  # type: ignore[union-attr]
    out = _gqa_apply(torch.softmax(s.mul_(total), dim=-1), values)  # type: ignore[arg-type]
    return out if out.dtype == q.dtype else out.to(q.dtype)


def rerope_decode_step(
    q: Tensor,
    cache: ReRoPECache,
    window: int | None,
    leaky_k: float | None = None,
    *,
    q_positions: Tensor | None = None,
    scale: float | None = None,
    attention_factor: float = 1.0,
) -> Tensor:
    """Attend ``q`` ``(B, H, m, d)`` (un-rotated) to every cached key, causally.

    Append the new tokens' keys/values with :meth:`ReRoPECache.update` first; by default the
    queries sit at the last ``m`` cached positions. Only the keys within ``w + m`` of the queries
    are rotated per call (pass 1); for ReRoPE the far keys are used raw with the query rotated by
    ``w`` (pass 2), for Leaky they come from an incrementally kept copy rotated at ``j/k``.

    Args:
        window: ReRoPE window; ``None`` = plain RoPE.
        leaky_k: Leaky factor (``None`` = ReRoPE); ``k < 1`` (InvLeaky) uses the explicit form.
        q_positions: ``(m,)`` query positions (default: the last ``m`` cached positions).
        scale: Logit scale (default ``1/sqrt(d)``).
        attention_factor: cos/sin multiplier (logits scale by its square).
    """
    if len(cache) == 0:
        raise ValueError("the cache is empty; call cache.update(k, v) with the new tokens first")
    keys, values, kp = cache.keys, cache.values, cache.positions
    if keys is None or values is None or kp is None:  # pragma: no cover - guarded by len()
        raise ValueError("the cache is empty")
    _, _, _, m, nk = _check_qkv(q, keys, values)
    relpos = Piecewise(window, leaky_k)
    if q_positions is None:
        if m > nk:
            raise ValueError(f"{m} queries but only {nk} cached keys")
        qp = kp[-m:]
    else:
        if q_positions.shape != (m,):
            raise ValueError(f"q_positions must have shape ({m},), got {tuple(q_positions.shape)}")
        qp = q_positions.to(device=kp.device, dtype=torch.float64)
    total = (q.shape[-1] ** -0.5 if scale is None else float(scale)) * float(attention_factor) ** 2
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    w = relpos.window
    if m == 1 and q_positions is None and w is not None:
        return _decode_last(q, cache, relpos, w, total, work)
    qs = q * total
    if w is None:  # plain RoPE: incrementally rotated keys
        s = _gqa_scores(cache._rotate(qs, qp), cache.scaled_rotated_keys(1.0)).to(work)
        p = _softmax_weights(s, kp[None, :] <= qp[:, None], work)
        return _gqa_apply(p, values.to(work)).to(q.dtype)
    # keys j >= near are inside the window for some query, keys j < far outside for some
    near = int(torch.searchsorted(kp, qp.min() - w, right=True))
    far = int(torch.searchsorted(kp, qp.max() - w, right=True))
    rel1 = qp[:, None] - kp[None, near:]
    ok1 = (rel1 >= 0) & (rel1 < w)
    s1 = _gqa_scores(cache._rotate(qs, qp), cache._rotate(keys[:, :, near:], kp[near:])).to(work)
    if far == 0:
        p = _softmax_weights(s1, ok1, work)
        return _gqa_apply(p, values[:, :, near:].to(work)).to(q.dtype)
    qa, _ = relpos.outer_positions(qp, kp[:1])
    if relpos.factor is None:
        k2 = keys[:, :, :far]
    else:
        k2 = cache.scaled_rotated_keys(1.0 / relpos.factor)[:, :, :far]  # type: ignore[attr-defined]
    s2 = _gqa_scores(cache._rotate(qs, qa), k2).to(work)
    mid = far - near  # keys [near, far) need both passes: merge with an explicit where
    s_near = torch.cat([torch.where(ok1[:, :mid], s1[..., :mid], s2[..., near:]), s1[..., mid:]], dim=-1)
    ok_near = torch.cat([ok1[:, :mid] | (rel1[:, :mid] >= w), ok1[:, mid:]], dim=-1)
    s = torch.cat([s2[..., :near], s_near.masked_fill(~ok_near, float("-inf"))], dim=-1)
    p = torch.nan_to_num(torch.softmax(s, dim=-1), nan=0.0).to(work)
    return _gqa_apply(p, values.to(work)).to(q.dtype)


