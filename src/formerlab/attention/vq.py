"""Transformer-VQ attention: every computational form, as pure functions of the quantised keys.

Lingle, "Transformer-VQ: Linear-Time Transformers via Vector Quantization" (arXiv 2309.16354),
read by Su in kexue.fm/archives/9844. Only the **keys** are vector-quantised, ``K̂ = ΔC`` with a
codebook ``C ∈ R^{S×d_k}`` and one-hot assignments ``Δ``; since
``exp(q·k̂_j) = Σ_s exp(q·c_s) Δ_js``, attention over ``K̂`` becomes linear in ``n`` while staying
**exact given K̂**. The quantiser itself (assignment, EMA codebook, dead codes) lives in
:mod:`formerlab.quantize`; here the codebook, the quantised keys ``k_hat`` (carrying the
straight-through gradient) and the code indices are tensor arguments.

Forms (``Q`` with the scale folded in; ``ℓ`` = block length; all equal to the reference):

================================  ===============================================================
:func:`vq_attention_reference`    ``softmax(Q K̂ᵀ + M + B) V`` (quadratic; the oracle)
``vq_attention(causal=False)``    ``softmax_s(q·c_s + log L_s) · Ū``: per-code counts ``L_s`` and
                                  value means ``Ū_s`` over all keys, ``O(n·S·(d_k + d_v))``
``vq_attention(causal=True)``     block form: queries of block ``t`` attend to the keys of blocks
                                  ``t−1`` and ``t`` (causal, with the window bias ``B``) and to
                                  the code cache of blocks ``≤ t−2``, vectorised over blocks
:func:`vq_attention_step`         the RNN form: one token, ``O(ℓ + S)``, at any position
================================  ===============================================================

**Stable log-count cache** (the official implementation's form). Per code the cache stores the
count ``L_s`` and the running mean ``Ū_s = U_s / L_s`` of the values assigned to it; the code
logits are ``q·c_s + log L_s`` (``−inf`` when ``L_s = 0``) and share **one** softmax (and its max
subtraction) with the window logits::

    o_i = Σ_window p_ij v_j + Σ_s p_is Ū_s

This is algebraically the block form ``[exp(Q K̂ᵀ + B) V + exp(Q Cᵀ) U] / [same, V → 1]`` but
never materialises ``exp(QCᵀ)`` or a growing ``U``, so logits of order 10³ stay finite.

**Window bias.** ``window_bias[..., i, r]`` is added to the logit of query ``i`` and key
``j = i − r`` (``0 ≤ r < 2ℓ``) whenever ``j`` lies in the block of ``i`` or the one before; older
keys reach the query only through the cache, without bias. A shape ``(2ℓ,)`` (or ``(…, 1, 2ℓ)``)
is a Toeplitz bias ``g(i − j)``: the block form then equals quadratic attention with that bias
exactly when ``g(r) = 0`` for ``r > ℓ``. A per-query ``(…, n, 2ℓ)`` bias covers content-dependent
relative biases (Transformer-XL's ``(q + v)·R_{i−j}``, which the official code uses). Su regards
the bias as what separates Transformer-VQ from low-rank kernelised attention.

**Gradients.** Window terms take the gradient of ``k_hat`` (straight-through when
``k_hat = k + sg(C[z] − k)``, :func:`vq_straight_through`); the cache uses ``C`` directly (so
gradients reach the codebook) and stops the gradient of its value statistics like a
Transformer-XL memory, unless ``grad_through_cache=True`` (official ``GRAD_THRU_CACHE``).

Sequences whose length is not a multiple of ``ℓ`` are padded (padded keys masked, padded
queries dropped). ``key_mask`` marks padding tokens of a ragged batch: they keep their place in
the block grid but are never attended to or counted, and a query that sees no key returns zeros.
:class:`~formerlab.attention.vq_cache.VQAttentionState` carries counts, means and the raw keys /
codes / values of the current and previous block between calls: feeding a sequence in pieces
(any sizes, including single tokens) equals feeding it whole.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .masks import check_key_mask
from .vq_cache import DEFAULT_BLOCK_LEN, VQAttentionState, _code_stats, _compute_dtype, _log_counts

__all__ = [
    "VQAttentionState",
    "vq_attention",
    "vq_attention_reference",
    "vq_attention_step",
    "vq_commitment_loss",
    "vq_straight_through",
]

_GROUP_ELEMENTS = 1 << 20  # logits computed at once by the block form (bounds its temporaries)


# --- helpers ---------------------------------------------------------------------------------------
def _lookup(codebook: Tensor, codes: Tensor) -> Tensor:
    """``C[codes]``: codebook ``(…, S, d)`` broadcast over the leading dims of codes ``(…, n)``."""
    if codebook.dim() == 2:
        return F.embedding(codes, codebook)
    lead = torch.broadcast_shapes(codebook.shape[:-2], codes.shape[:-1])
    cb = codebook.expand(*lead, *codebook.shape[-2:])
    idx = codes.expand(*lead, codes.shape[-1])[..., None].expand(*lead, codes.shape[-1],
                                                                 codebook.shape[-1])
    return torch.gather(cb, -2, idx)


def vq_straight_through(k: Tensor, codebook: Tensor, codes: Tensor) -> Tensor:
    """``k̂ = k + sg(C[codes] − k)``: forward the codes, backward the identity to ``k``.

    Args:
        k: Keys ``(…, n, d)``.
        codebook: ``(S, d)`` or ``(…, S, d)`` broadcastable over the leading dims.
        codes: ``(…, n)`` indices (from the quantiser).
    """
    return k + (_lookup(codebook, codes).to(k.dtype) - k).detach()


def vq_commitment_loss(k: Tensor, codebook: Tensor, codes: Tensor, mask: Tensor | None = None
                       ) -> Tensor:
    """Commitment loss ``mean_valid ‖k − sg(C[z])‖²`` (squared norm per token, masked mean).

    Args:
        k: Keys ``(…, n, d)``.
        codebook, codes: As :func:`vq_straight_through`.
        mask: Boolean ``(…, n)`` (broadcastable), ``True`` = real token; padded tokens are
            excluded from the mean.

    Returns:
        A scalar whose gradient reaches ``k`` only (``2(k − c)/count``), never the codebook.
    """
    err = (k - _lookup(codebook, codes).to(k.dtype).detach()).pow(2).sum(-1)
    if mask is None:
        return err.mean()
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = real token), got {mask.dtype}")
    m = mask.expand_as(err)
    return (err * m).sum() / m.sum().clamp_min(1)


def _check_qkv(q: Tensor, k_hat: Tensor, v: Tensor, causal: bool) -> None:
    if q.dim() < 2 or k_hat.shape[:-1] != v.shape[:-1] or q.shape[-1] != k_hat.shape[-1] \
            or q.shape[:-2] != k_hat.shape[:-2]:
        raise ValueError(
            "expected q (…, nq, d), k_hat (…, nk, d), v (…, nk, d_v) with equal leading dims, "
            f"got {tuple(q.shape)}, {tuple(k_hat.shape)}, {tuple(v.shape)}")
    if causal and q.shape[-2] != k_hat.shape[-2]:
        raise ValueError(f"causal VQ attention needs nq == nk, got {q.shape[-2]}, {k_hat.shape[-2]}")


def _check_codes(codes: Tensor, k_hat: Tensor, codebook: Tensor) -> None:
    if codes.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"codes must be an integer tensor of code indices, got {codes.dtype}")
    if codes.shape != k_hat.shape[:-1]:
        raise ValueError(f"codes must have shape {tuple(k_hat.shape[:-1])} (k_hat without its last "
                         f"dim), got {tuple(codes.shape)}")
    if codebook.dim() < 2 or codebook.shape[-1] != k_hat.shape[-1]:
        raise ValueError(f"codebook must be (S, {k_hat.shape[-1]}) or (…, S, {k_hat.shape[-1]}), "
                         f"got {tuple(codebook.shape)}")
    try:
        torch.broadcast_shapes(codebook.shape[:-2], k_hat.shape[:-2])
    except RuntimeError as exc:
        raise ValueError(f"codebook leading dims {tuple(codebook.shape[:-2])} do not broadcast to "
                         f"{tuple(k_hat.shape[:-2])}") from exc
    size = codebook.shape[-2]
    if codes.numel() and (int(codes.min()) < 0 or int(codes.max()) >= size):
        raise ValueError(f"codes must lie in [0, {size}) (the codebook size), got values in "
                         f"[{int(codes.min())}, {int(codes.max())}]")


def _check_block_len(block_len: int) -> None:
    if not isinstance(block_len, int) or block_len < 1:
        raise ValueError(f"block_len must be a positive integer, got {block_len!r}")


def _check_bias(bias: Tensor | None, block_len: int, nq: int) -> Tensor | None:
    if bias is None:
        return None
    if bias.shape[-1] != 2 * block_len:
        raise ValueError(f"window_bias must have last dim 2·block_len = {2 * block_len} (relative "
                         f"distances 0 … {2 * block_len - 1}), got {tuple(bias.shape)}")
    if bias.dim() == 1:
        bias = bias[None]
    if bias.shape[-2] not in (1, nq):
        raise ValueError(f"window_bias must be (…, {nq}, {2 * block_len}) or (…, 1, "
                         f"{2 * block_len}) for {nq} queries, got {tuple(bias.shape)}")
    return bias


def _joint_softmax(wl: Tensor, vwin: Tensor, cl: Tensor, means: Tensor) -> Tensor:
    """``Σ p_w v_w + Σ p_s Ū_s`` with ``p = softmax([wl ; cl])`` (one max, one normaliser).

    ``wl`` and ``cl`` must be fresh logits: they are overwritten in place.
    """
    m = torch.maximum(wl.amax(-1, keepdim=True), cl.amax(-1, keepdim=True)).detach()
    m = m.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0)  # a row with no visible key
    grad = torch.is_grad_enabled() and (wl.requires_grad or cl.requires_grad)
    pw = wl.sub_(m).exp() if grad else wl.sub_(m).exp_()
    pc = cl.sub_(m).exp() if grad else cl.sub_(m).exp_()
    den = pw.sum(-1, keepdim=True) + pc.sum(-1, keepdim=True)
    out = torch.matmul(pw, vwin) + torch.matmul(pc, means)
    return out.div_(den.clamp_min(torch.finfo(den.dtype).tiny))  # no visible key: zeros


# --- reference -----------------------------------------------------------------------------------
def vq_attention_reference(q: Tensor, k_hat: Tensor, v: Tensor, causal: bool = True,
                           block_len: int | None = None, window_bias: Tensor | None = None,
                           key_mask: Tensor | None = None) -> Tensor:
    """Quadratic ``softmax(Q K̂ᵀ + M + B) V``: the oracle of every other form.

    Args:
        q, k_hat: ``(…, n, d)``; v: ``(…, n, d_v)``.
        causal: Causal mask ``M``.
        block_len: ``ℓ``; needed with ``window_bias`` (which keys get a bias).
        window_bias: ``(2ℓ,)``, ``(…, 1, 2ℓ)`` or ``(…, n, 2ℓ)``: ``B_ij = bias[…, i, i − j]`` iff
            ``j ≤ i`` and ``block(j) ≥ block(i) − 1`` (absolute blocks from position 0), else 0.
        key_mask: Bool ``(…, n)`` (broadcastable), ``False`` = padded key (never attended to;
            a query with no visible key gets NaN here, zeros in the fast forms).
    """
    _check_qkv(q, k_hat, v, causal)
    logits = torch.matmul(q, k_hat.transpose(-1, -2))
    n = q.shape[-2]
    i = torch.arange(n, device=q.device)[:, None]
    j = torch.arange(k_hat.shape[-2], device=q.device)[None, :]
    if window_bias is not None:
        if not causal:
            raise ValueError("window_bias is defined for causal attention only")
        if block_len is None:
            raise ValueError("window_bias needs block_len (the bias covers the query's block "
                             "and the one before)")
        _check_block_len(block_len)
        bias = _check_bias(window_bias, block_len, n)
        r = i - j
        near = (r >= 0) & (j // block_len >= i // block_len - 1)
        full = bias.expand(*bias.shape[:-2], n, 2 * block_len)
        idx = r.clamp(0, 2 * block_len - 1).expand(*full.shape[:-1], n)
        logits = logits + torch.gather(full, -1, idx).masked_fill(~near, 0.0)
    if causal:
        logits = logits.masked_fill(j > i, float("-inf"))
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask[..., None, :], float("-inf"))
    return torch.matmul(torch.softmax(logits, dim=-1), v)


def _check_state(state: VQAttentionState, q: Tensor, v: Tensor, codebook: Tensor,
                 block_len: int | None) -> None:
    if not isinstance(state, VQAttentionState):
        raise TypeError(f"cache must be a VQAttentionState, got {type(state).__name__}")
    if block_len is not None and block_len != state.block_len:
        raise ValueError(f"block_len={block_len} differs from the cache's block_len="
                         f"{state.block_len}")
    if state.counts is None:
        return
    want = (*q.shape[:-2], codebook.shape[-2])
    if tuple(state.counts.shape) != want or state.means.shape[-1] != v.shape[-1] \
            or state.keys.shape[-1] != q.shape[-1]:
        raise ValueError(f"cache holds counts {tuple(state.counts.shape)}, means "
                         f"{tuple(state.means.shape)}, keys {tuple(state.keys.shape)}; these "
                         f"inputs need counts {want}, d={q.shape[-1]}, d_v={v.shape[-1]}")


# --- forms ---------------------------------------------------------------------------------------
def _bidirectional(q: Tensor, codes: Tensor, v: Tensor, codebook: Tensor,
                   valid: Tensor | None) -> Tensor:
    counts, sums = _code_stats(codes, v, codebook.shape[-2], valid)
    means = sums / counts.clamp_min(1)[..., None]
    logits = torch.matmul(q, codebook.transpose(-1, -2)) + _log_counts(counts)[..., None, :]
    seen = counts.sum(-1, keepdim=True)[..., None] > 0  # (…, 1, 1): some key is real
    out = torch.matmul(torch.softmax(torch.where(seen, logits, 0.0), dim=-1), means)
    return torch.where(seen, out, 0.0)


def _window_index(block_len: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Relative distance ``r = a + ℓ − w`` for query offset ``a`` and window slot ``w`` and its
    causal mask ``r ≥ 0`` (slots ``0 … ℓ−1`` = previous block, ``ℓ … 2ℓ−1`` = this block)."""
    a = torch.arange(block_len, device=device)[:, None]
    w = torch.arange(2 * block_len, device=device)[None, :]
    r = a + block_len - w
    return r.clamp_min(0), r >= 0


def _mask_window(wl: Tensor, future: Tensor, first: int, blocks: int, pad: int) -> None:
    """Hide, in place, the window keys a query may not see: later keys of its own block, the
    (absent) block before the stream's first block, and the padding of the last block."""
    ell = future.shape[-1]
    wl[..., ell:].masked_fill_(future, float("-inf"))
    if first == 0:
        wl[..., 0, :, :ell] = float("-inf")
    if pad and first + wl.shape[-3] == blocks:
        wl[..., -1, :, 2 * ell - pad:] = float("-inf")


def _blocks(q: Tensor, keys: Tensor, codes: Tensor, v: Tensor, codebook: Tensor, block_len: int,
            bias: Tensor | None, counts0: Tensor, means0: Tensor, grad_through_cache: bool,
            key_valid: Tensor | None = None) -> Tensor:
    """Block form over a token stream that starts at a block boundary.

    ``counts0``/``means0`` summarise everything before the stream; every block of the stream
    attends to itself, its predecessor in the stream and the cache of the stream's blocks two or
    more back. ``bias`` is ``(…, 1|N, 2ℓ)`` aligned with the stream (or ``None``);
    ``key_valid`` ``(…, N)`` marks the stream's real tokens (``None``: all).
    """
    *lead, n, _d = keys.shape
    ell, size = block_len, codebook.shape[-2]
    nb = -(-n // ell)
    if nb == 0:
        return v.new_zeros(*v.shape[:-2], 0, v.shape[-1])
    pad = nb * ell - n

    def blocked(t: Tensor) -> Tensor:
        t = F.pad(t, (0, 0, 0, pad)) if pad else t
        return t.reshape(*t.shape[:-2], nb, ell, t.shape[-1])

    qb, kb, vb = blocked(q), blocked(keys), blocked(v)
    valid = (torch.arange(nb * ell, device=q.device) < n).reshape(nb, ell)
    if key_valid is not None:
        valid = F.pad(key_valid, (0, pad), value=False).reshape(*key_valid.shape[:-1], nb, ell)
    cb = F.pad(codes, (0, pad)).reshape(*lead, nb, ell) if pad else codes.reshape(*lead, nb, ell)
    cb_t = codebook.transpose(-1, -2)  # (…, d, S)
    rel, causal = _window_index(ell, q.device)
    future = ~causal[:, ell:]  # (ℓ, ℓ): keys after the query in its own block
    if bias is not None and bias.shape[-2] == 1:  # by distance only: (…, 1, ℓ, 2ℓ)
        bias = bias[..., 0, :][..., rel][..., None, :, :]
    elif bias is not None:  # per query: (…, T, ℓ, 2ℓ)
        bias = blocked(bias)
        bias = torch.gather(bias, -1, rel.expand(*bias.shape))
    # the cache of block t (counts0/means0 plus the stream's blocks ≤ t − 2) as running sums
    counts, sums = counts0, means0 * counts0[..., None]
    # groups of blocks keep the ℓ × (2ℓ + S) logits of a group within _GROUP_ELEMENTS
    group = max(1, _GROUP_ELEMENTS // (max(1, math.prod(lead)) * ell * (2 * ell + size)))
    # per-group pieces by split / unbind, not slicing: one backward node each (the backward of a
    # slice fills a tensor of the whole stream, quadratic over many groups)
    previous = [torch.cat([torch.zeros_like(t[..., :1, :, :]), t[..., :-1, :, :]], dim=-3)
                for t in (kb, vb)]  # block t − 1 beside block t; zeros before the first
    pieces = [t.split(group, dim=-3) for t in (qb, kb, vb, *previous)]
    if bias is not None and bias.shape[-3] != 1:
        bias_groups = bias.split(group, dim=-3)
    v_blocks, c_blocks = vb.unbind(-3), cb.unbind(-2)
    outs = []
    for gi, (qg, kg, vg, kp, vp) in enumerate(zip(*pieces)):
        t0 = gi * group
        t1 = t0 + qg.shape[-3]
        cache_counts, cache_means = [], []
        for t in range(t0, t1):
            if t >= 2:  # block t − 2 leaves the window and enters the cache
                c, u = _code_stats(c_blocks[t - 2], v_blocks[t - 2], size, valid[..., t - 2, :])
                counts, sums = counts + c, sums + (u if grad_through_cache else u.detach())
            cache_counts.append(counts)
            cache_means.append(sums / counts.clamp_min(1)[..., None])
        kwin = torch.cat([kp, kg], dim=-2)
        vwin = torch.cat([vp, vg], dim=-2)
        wl = torch.matmul(qg, kwin.transpose(-1, -2))  # (…, G, ℓ, 2ℓ)
        if bias is not None:
            wl = wl + (bias if bias.shape[-3] == 1 else bias_groups[gi])
        _mask_window(wl, future, t0, nb, pad)
        if key_valid is not None:  # padding tokens of a ragged batch
            prev = (valid[..., t0 - 1:t1 - 1, :] if t0 > 0 else
                    F.pad(valid[..., :t1 - 1, :], (0, 0, 1, 0), value=False))
            seen = torch.cat([prev, valid[..., t0:t1, :]], dim=-1)  # (…, G, 2ℓ)
            wl.masked_fill_(~seen[..., None, :], float("-inf"))
        log_counts = _log_counts(torch.stack(cache_counts, dim=-2))[..., None, :]
        # the group's queries as one (G·ℓ)-row matrix: a per-head codebook is broadcast once,
        # not copied for every block
        cl = torch.matmul(qg.flatten(-3, -2), cb_t).view(*qg.shape[:-1], size)
        cl = cl.add_(log_counts)  # (…, G, ℓ, S)
        outs.append(_joint_softmax(wl, vwin, cl, torch.stack(cache_means, dim=-3)))
    out = torch.cat(outs, dim=-3) if len(outs) > 1 else outs[0]
    return out.reshape(*out.shape[:-3], nb * ell, out.shape[-1])[..., :n, :]


def vq_attention(q: Tensor, k_hat: Tensor, codes: Tensor, v: Tensor, codebook: Tensor,
                 causal: bool = True, block_len: int | None = None,
                 window_bias: Tensor | None = None, cache: VQAttentionState | None = None,
                 grad_through_cache: bool = False, use_cache: bool = False,
                 key_mask: Tensor | None = None) -> tuple[Tensor, VQAttentionState | None]:
    """Transformer-VQ attention in linear time (block form; bidirectional form).

    Args:
        q: Queries ``(…, n, d)`` (scale folded in).
        k_hat: Quantised keys ``(…, n, d)``, equal in value to ``codebook[codes]`` (they carry the
            window's gradient, e.g. straight-through from :func:`vq_straight_through`).
        codes: Code indices ``(…, n)`` of the keys.
        v: Values ``(…, n, d_v)``.
        codebook: ``(S, d)`` or ``(…, S, d)`` (e.g. one per head) broadcastable over ``…``.
        causal: Block form (decoder) or the bidirectional code form (encoder).
        block_len: ``ℓ`` (default: the cache's, else 512).
        window_bias: ``(2ℓ,)``, ``(…, 1, 2ℓ)`` or ``(…, n, 2ℓ)`` relative bias (module doc).
        cache: Continue after the tokens summarised in this state (not modified).
        grad_through_cache: Let gradients flow through the cache's value statistics.
        use_cache: Return the state after these tokens (also returned when ``cache`` is given).
        key_mask: Bool ``(…, n)`` (broadcastable), ``False`` = padding: such tokens keep their
            place in the block grid but are never attended to, counted or cached as real; a
            query that sees no key returns zeros. Earlier padding is remembered by the cache.

    Returns:
        ``(out (…, n, d_v), new_cache)``; ``new_cache`` is ``None`` unless requested.
    """
    _check_qkv(q, k_hat, v, causal)
    _check_codes(codes, k_hat, codebook)
    key_mask = check_key_mask(key_mask, codes.shape, "codes")
    dt = _compute_dtype(q, k_hat, v, codebook)
    if not causal:
        if window_bias is not None or cache is not None or use_cache:
            raise ValueError("the bidirectional form takes no window_bias and no cache")
        out = _bidirectional(q.to(dt), codes, v.to(dt), codebook.to(dt), key_mask)
        return out.to(q.dtype), None
    if cache is not None:
        _check_state(cache, q, v, codebook, block_len)
        block_len = cache.block_len
    block_len = DEFAULT_BLOCK_LEN if block_len is None else block_len
    _check_block_len(block_len)
    bias = _check_bias(window_bias, block_len, q.shape[-2])
    state = cache.clone() if cache is not None else VQAttentionState(block_len=block_len)
    if state.counts is None:
        state._empty(k_hat, v, codebook.shape[-2], dt)
    state.counts, state.means = state.counts.to(dt), state.means.to(dt)
    state.keys, state.values = state.keys.to(dt), state.values.to(dt)
    seen = state._joined_valid(key_mask, codes)  # window + new tokens, None if all real
    if q.shape[-2] == 1 and state.length > 0:
        out = _step(q.to(dt), k_hat.to(dt), v.to(dt), codebook.to(dt), state,
                    None if bias is None else bias.to(dt), seen)
    else:
        w = state.window
        qs = F.pad(q.to(dt), (0, 0, w, 0))  # the window's queries are not needed: zeros
        keys = torch.cat([state.keys, k_hat.to(dt)], dim=-2)
        vals = torch.cat([state.values, v.to(dt)], dim=-2)
        cds = torch.cat([state.codes, codes.long()], dim=-1)
        if bias is not None:
            bias = bias.to(dt) if bias.shape[-2] == 1 else F.pad(bias.to(dt), (0, 0, w, 0))
        out = _blocks(qs, keys, cds, vals, codebook.to(dt), block_len, bias, state.counts,
                      state.means, grad_through_cache, seen)[..., w:, :]
    new_cache = None
    if use_cache or cache is not None:
        new_cache = state.update(k_hat, codes, v, grad_through_cache=grad_through_cache,
                                 valid=key_mask)
    return out.to(q.dtype), new_cache


def _step(q: Tensor, k_hat: Tensor, v: Tensor, codebook: Tensor, state: VQAttentionState,
          bias: Tensor | None, seen: Tensor | None) -> Tensor:
    """One query ``(…, 1, d)`` against the window (plus itself) and the code cache; ``seen``
    ``(…, w + 1)`` marks the real tokens among them."""
    kwin = torch.cat([state.keys, k_hat], dim=-2)  # (…, w + 1, d)
    vwin = torch.cat([state.values, v], dim=-2)
    wl = torch.matmul(q, kwin.transpose(-1, -2))  # (…, 1, w + 1)
    if bias is not None:
        r = torch.arange(state.window, -1, -1, device=q.device)  # distances of the window keys
        wl = wl + bias[..., r]
    if seen is not None:
        wl = wl.masked_fill(~seen[..., None, :], float("-inf"))
    cl = torch.matmul(q, codebook.transpose(-1, -2)).add_(_log_counts(state.counts)[..., None, :])
    return _joint_softmax(wl, vwin, cl, state.means)


def vq_attention_step(q: Tensor, k_hat: Tensor, codes: Tensor, v: Tensor, codebook: Tensor,
                      cache: VQAttentionState | None = None, *, block_len: int | None = None,
                      window_bias: Tensor | None = None, grad_through_cache: bool = False,
                      key_mask: Tensor | None = None) -> tuple[Tensor, VQAttentionState]:
    """The RNN form: one token, ``O(ℓ + S)`` whatever the position.

    Args:
        q, k_hat: ``(…, d)``; codes: ``(…)``; v: ``(…, d_v)``; codebook as :func:`vq_attention`.
        cache: The state after the previous tokens (not modified); ``None`` starts empty.
        block_len: ``ℓ`` of a new state (default 512); must match the cache's if both given.
        window_bias: ``(2ℓ,)`` or ``(…, 2ℓ)``: bias of this query by relative distance.
        grad_through_cache: As :func:`vq_attention`.
        key_mask: Bool ``(…)``: ``False`` marks this token as padding.

    Returns:
        ``(o (…, d_v), new_cache)``.
    """
    if window_bias is not None and window_bias.dim() > 1:
        window_bias = window_bias[..., None, :]
    out, state = vq_attention(q[..., None, :], k_hat[..., None, :], codes[..., None],
                              v[..., None, :], codebook, block_len=block_len,
                              window_bias=window_bias, cache=cache,
                              grad_through_cache=grad_through_cache, use_cache=True,
                              key_mask=None if key_mask is None else key_mask[..., None])
    return out[..., 0, :], state
