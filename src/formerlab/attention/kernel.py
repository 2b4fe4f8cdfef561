"""The single scaled-dot-product entry point of formerlab.

``scaled_dot_product(q, k, v, ...)`` takes ``(batch, heads, seq, head_dim)`` tensors (grouped
key/value heads allowed) and uses :func:`torch.nn.functional.scaled_dot_product_attention` when
it applies (softmax normalisation, weights not requested). Otherwise it runs the explicit path:
``scores = q kᵀ·scale + bias`` → registered normaliser with the boolean mask → dropout → ``@ v``.
Both paths agree to float tolerance (tested).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .normalize import NORMALIZERS, attention_normalize

__all__ = ["causal_mask", "repeat_kv", "scaled_dot_product"]

#: SDPA broadcasts grouped key/value heads itself (``enable_gqa``, torch 2.5+): no repeated copy
#: of the keys and values (a decoding step's cache would be copied ``groups`` times per layer)
_SDPA_GQA = tuple(int(x) for x in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 5)


def causal_mask(nq: int, nk: int | None = None, *, device: torch.device | None = None) -> Tensor:
    """Bool ``(nq, nk)`` mask, ``True`` where key ``j <= i + (nk - nq)`` (bottom-right aligned)."""
    nk = nq if nk is None else nk
    i = torch.arange(nq, device=device)[:, None] + (nk - nq)
    j = torch.arange(nk, device=device)[None, :]
    return j <= i


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """``(B, Hkv, n, d) -> (B, Hkv·groups, n, d)`` for grouped-query attention."""
    if groups == 1:
        return x
    return x.repeat_interleave(groups, dim=1)


def _check_shapes(q: Tensor, k: Tensor, v: Tensor) -> int:
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(
            "q, k, v must be 4-D (batch, heads, seq, head_dim), got shapes "
            f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[-1] != k.shape[-1]:
        raise ValueError(
            "q, k, v shapes do not fit: q (B, H, nq, d), k (B, Hkv, nk, d), v (B, Hkv, nk, dv) "
            f"expected, got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}"
        )
    if q.shape[1] % k.shape[1]:
        raise ValueError(
            f"query heads ({q.shape[1]}) must be a multiple of key/value heads ({k.shape[1]})"
        )
    return q.shape[1] // k.shape[1]


def _sdpa(q: Tensor, k: Tensor, v: Tensor, groups: int, *, attn_mask: Tensor | None = None,
          dropout_p: float = 0.0, is_causal: bool = False, scale: float,
          split_values: bool = False) -> Tensor:
    """``F.scaled_dot_product_attention``; ``split_values`` serves wide values as extra heads.

    Grouped key/value heads are broadcast by SDPA itself (``enable_gqa``, torch 2.5+) instead of
    being copied per group.

    PyTorch's CPU flash kernel needs the value width to equal the query width; otherwise it falls
    back to the math kernel, which materialises every score matrix (GAU: ``e = 2d`` values on
    ``s = d/6`` keys). The values are cut into ``c = ⌈dv/d⌉`` chunks of width ``d`` (the last one
    completed by zero columns whose outputs are dropped) served as ``c`` heads that share the query and key: ``A·[v₁ … v_c] = [A·v₁ … A·v_c]``, exactly
    the same output through the fused kernel (the scores are recomputed per chunk, in tiles that
    are never stored: memory O(n) instead of O(n²), at ``c`` times the score FLOPs and a
    recomputing backward; ``benchmarks/bench_gau.py`` measures both). Not with dropout, whose mask must be
    shared by the chunks.
    """
    d, dv = q.shape[-1], v.shape[-1]
    if not split_values or dv <= d or dropout_p > 0.0:
        kw: dict[str, Any] = {"attn_mask": attn_mask, "dropout_p": dropout_p,
                              "is_causal": is_causal, "scale": scale}
        if groups > 1 and _SDPA_GQA:
            return F.scaled_dot_product_attention(q, k, v, enable_gqa=True, **kw)
        return F.scaled_dot_product_attention(q, repeat_kv(k, groups), repeat_kv(v, groups), **kw)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    c = -(-dv // d)
    if c * d != dv:  # zero columns complete the last chunk; their outputs are dropped
        v = F.pad(v, (0, c * d - dv))
    b, h, nq, nk = q.shape[0], q.shape[1], q.shape[2], k.shape[2]
    qc = q[:, :, None].expand(b, h, c, nq, d).reshape(b, h * c, nq, d)
    kc = k[:, :, None].expand(k.shape[0], h, c, nk, d).reshape(k.shape[0], h * c, nk, d)
    vc = v.reshape(v.shape[0], h, nk, c, d).transpose(2, 3).reshape(v.shape[0], h * c, nk, d)
    mc = attn_mask
    if mc is not None and mc.dim() == 4 and mc.shape[1] == h and h > 1:
        mc = mc.repeat_interleave(c, dim=1)
    out = F.scaled_dot_product_attention(qc, kc, vc, attn_mask=mc, is_causal=is_causal, scale=scale)
    return out.reshape(b, h, c, nq, d).transpose(2, 3).reshape(b, h, nq, c * d)[..., :dv]


def scaled_dot_product(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None = None,
    is_causal: bool = False,
    bias: Tensor | None = None,
    scale: float | None = None,
    normalization: str = "softmax",
    normalization_options: dict[str, Any] | None = None,
    dropout_p: float = 0.0,
    return_weights: bool = False,
    split_values: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Attention ``normalize(q kᵀ·scale + bias, mask) · v``.

    Args:
        q: ``(B, H, nq, d)`` queries.
        k: ``(B, Hkv, nk, d)`` keys; ``H`` must be a multiple of ``Hkv`` (GQA).
        v: ``(B, Hkv, nk, dv)`` values.
        mask: Boolean, broadcastable to ``(B, H, nq, nk)``; ``True`` = may attend.
        is_causal: Add a causal mask (bottom-right aligned when ``nq < nk``).
        bias: Additive float bias broadcastable to the scores (ALiBi, relative biases).
        scale: Score scale; default ``1/√d``.
        normalization: A name of :data:`formerlab.attention.NORMALIZERS`.
        normalization_options: Extra keyword arguments of the normaliser.
        dropout_p: Dropout on the attention weights (pass 0 at evaluation).
        return_weights: Also return the ``(B, H, nq, nk)`` weights (forces the explicit path).
        split_values: When ``dv`` is a multiple of ``d`` (GAU), run the fused kernel on value
            chunks served as heads instead of the math kernel the value width forces (exact;
            see :func:`_sdpa` for the trade-off).

    Returns:
        ``(B, H, nq, dv)`` output, and the weights if ``return_weights``.
    """
    groups = _check_shapes(q, k, v)
    nq, nk = q.shape[-2], k.shape[-2]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if mask is not None and mask.dtype != torch.bool:
        raise TypeError(f"mask must be a bool tensor (True = attend), got {mask.dtype}")
    opts = normalization_options or {}
    sdpa_ok = (
        NORMALIZERS.meta(normalization).get("sdpa", False) and not return_weights and not opts
    )
    if sdpa_ok and is_causal and mask is None and bias is None and nq == nk:
        # the common training case: SDPA's own causal kernel, no mask tensor at all
        return _sdpa(q, k, v, groups, dropout_p=dropout_p, is_causal=True, scale=scale,
                     split_values=split_values)
    if is_causal and nq == 1:  # one query at the last position (a decoding step) sees every key
        is_causal = False
    if is_causal:
        cm = causal_mask(nq, nk, device=q.device)
        mask = cm if mask is None else mask & cm
    if sdpa_ok:
        attn_mask = mask
        if bias is not None:
            attn_mask = bias.to(q.dtype)
            if mask is not None:
                attn_mask = attn_mask.masked_fill(~mask, float("-inf"))
        return _sdpa(q, k, v, groups, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale,
                     split_values=split_values)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    scores = torch.matmul(q, k.transpose(-1, -2)) * scale
    if bias is not None:
        scores = scores + bias
    weights = attention_normalize(scores, mask, normalization, **opts)
    if dropout_p > 0.0:
        weights = F.dropout(weights, p=dropout_p)
    out = torch.matmul(weights.to(v.dtype), v)
    return (out, weights) if return_weights else out

