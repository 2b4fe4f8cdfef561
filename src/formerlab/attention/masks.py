"""Attention masks of the decoder-only debate (kexue.fm/archives/9529, 9547) and friends.

Every builder returns a **4-D boolean** mask ``(B|1, H|1, n, n)`` with ``True`` = may attend, so
the result plugs straight into ``MultiHeadAttention(..., mask=...)``, ``CausalLM(...,
attention_mask=...)`` and :func:`formerlab.attention.scaled_dot_product`.

=====================  ============================================================================
``causal``             ``j <= i`` (GPT)
``bidirectional``      every key (BERT encoder)
``unilm`` / ``prefix`` segment ids ``s`` (0 = source, 1 = target), ``idx = cumsum(s)``; attend iff
                       ``idx[j] <= idx[i]``: sources see all sources, targets see all sources and
                       the targets up to themselves (bert4keras ``UniLM_Mask``)
``fwd_bwd_heads``      first half of the heads causal (``j <= i``), second half anti-causal
``fwd_bwd_layers``     causal on even layers, anti-causal on odd layers
``sliding``            causal window ``i - w < j <= i``
``sliding_bidirectional``  ``|i - j| < w``
``pcw``                parallel context windows (Ratner et al., arXiv 2212.10947): block-diagonal
                       causal attention inside each context; the task tokens see every context
                       and themselves causally
=====================  ============================================================================

The decoder-only argument (9529): a causal softmax attention matrix is lower triangular with a
positive diagonal, hence full rank for any q, k; bidirectional attention can be low rank. Tested
in ``tests/attention/test_masks.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ..registry import Registry

__all__ = ["MASKS", "build_mask", "check_key_mask", "pcw_position_ids", "prefix_segment_ids",
           "register_mask"]

MaskBuilder = Callable[..., Tensor]

#: name -> builder(n, *, segment_ids, window, num_heads, layer_idx, context_lengths, device)
MASKS: Registry[MaskBuilder] = Registry("attention mask")


def register_mask(name: str, *, aliases: tuple[str, ...] = ()):
    """Register a mask builder ``fn(n, **kwargs) -> bool (B|1, H|1, n, n)``."""
    return MASKS.register(name, aliases=aliases)


def build_mask(
    kind: str,
    n: int,
    *,
    segment_ids: Tensor | Sequence[int] | None = None,
    window: int | None = None,
    num_heads: int | None = None,
    layer_idx: int | None = None,
    context_lengths: Sequence[int] | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """The boolean ``(B|1, H|1, n, n)`` mask of ``kind`` (``True`` = may attend).

    Args:
        kind: A name of :data:`MASKS` (unknown names raise ``ValueError`` listing them).
        n: Sequence length.
        segment_ids: ``(n,)`` or ``(B, n)`` 0/1 ids for ``unilm``/``prefix``.
        window: Window size for ``sliding``/``sliding_bidirectional``.
        num_heads: Head count for ``fwd_bwd_heads`` (must be even).
        layer_idx: Layer index for ``fwd_bwd_layers``.
        context_lengths: Lengths of the parallel contexts for ``pcw`` (the remaining
            ``n - sum(context_lengths)`` tokens are the task tokens).
    """
    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive int, got {n!r}")
    fn = MASKS.get(kind)
    return fn(n, segment_ids=segment_ids, window=window, num_heads=num_heads,
              layer_idx=layer_idx, context_lengths=context_lengths, device=device)


def _grid(n: int, device: torch.device | None) -> tuple[Tensor, Tensor]:
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return i, j


def _need(name: str, value: object, kind: str) -> None:
    if value is None:
        raise ValueError(f"mask {kind!r} needs {name}=...")


@register_mask("causal")
def _causal(n: int, device: torch.device | None = None, **_: object) -> Tensor:
    i, j = _grid(n, device)
    return (j <= i)[None, None]


@register_mask("anticausal")
def _anticausal(n: int, device: torch.device | None = None, **_: object) -> Tensor:
    i, j = _grid(n, device)
    return (j >= i)[None, None]


@register_mask("bidirectional", aliases=("full",))
def _bidirectional(n: int, device: torch.device | None = None, **_: object) -> Tensor:
    return torch.ones(1, 1, n, n, dtype=torch.bool, device=device)


@register_mask("unilm", aliases=("prefix",))
def _unilm(n: int, segment_ids: Tensor | Sequence[int] | None = None,
           device: torch.device | None = None, **_: object) -> Tensor:
    _need("segment_ids", segment_ids, "unilm")
    s = torch.as_tensor(segment_ids, device=device)
    if s.dim() == 1:
        s = s[None]
    if s.dim() != 2 or s.shape[-1] != n:
        raise ValueError(f"segment_ids must be (n,) or (B, n) with n = {n}, got {tuple(s.shape)}")
    if bool(((s != 0) & (s != 1)).any()):
        raise ValueError("segment_ids must hold 0 (source) and 1 (target) only")
    idx = torch.cumsum(s.long(), dim=-1)
    return (idx[:, None, None, :] <= idx[:, None, :, None])


@register_mask("fwd_bwd_heads")
def _fwd_bwd_heads(n: int, num_heads: int | None = None, device: torch.device | None = None,
                   **_: object) -> Tensor:
    _need("num_heads", num_heads, "fwd_bwd_heads")
    if num_heads <= 0 or num_heads % 2:
        raise ValueError(f"fwd_bwd_heads needs an even positive num_heads, got {num_heads}")
    fwd, bwd = _causal(n, device=device), _anticausal(n, device=device)
    half = num_heads // 2
    return torch.cat([fwd.expand(1, half, n, n), bwd.expand(1, half, n, n)], dim=1)


@register_mask("fwd_bwd_layers")
def _fwd_bwd_layers(n: int, layer_idx: int | None = None, device: torch.device | None = None,
                    **_: object) -> Tensor:
    _need("layer_idx", layer_idx, "fwd_bwd_layers")
    return _causal(n, device=device) if layer_idx % 2 == 0 else _anticausal(n, device=device)


def _check_window(window: int | None, kind: str) -> int:
    _need("window", window, kind)
    if int(window) <= 0:
        raise ValueError(f"window must be a positive int, got {window}")
    return int(window)


@register_mask("sliding")
def _sliding(n: int, window: int | None = None, device: torch.device | None = None,
             **_: object) -> Tensor:
    w = _check_window(window, "sliding")
    i, j = _grid(n, device)
    return ((j <= i) & (i - j < w))[None, None]


@register_mask("sliding_bidirectional")
def _sliding_bi(n: int, window: int | None = None, device: torch.device | None = None,
                **_: object) -> Tensor:
    w = _check_window(window, "sliding_bidirectional")
    i, j = _grid(n, device)
    return ((i - j).abs() < w)[None, None]


@register_mask("pcw")
def _pcw(n: int, context_lengths: Sequence[int] | None = None,
         device: torch.device | None = None, **_: object) -> Tensor:
    _need("context_lengths", context_lengths, "pcw")
    lengths = [int(c) for c in context_lengths]
    if any(c <= 0 for c in lengths) or sum(lengths) > n:
        raise ValueError(
            f"context_lengths must be positive and sum to at most n = {n}, got {lengths}"
        )
    # block id per position: contexts 0..C-1, task tokens C
    block = torch.full((n,), len(lengths), dtype=torch.long, device=device)
    start = 0
    for b, c in enumerate(lengths):
        block[start:start + c] = b
        start += c
    i, j = _grid(n, device)
    causal = j <= i
    same = block[:, None] == block[None, :]
    task_row = (block == len(lengths))[:, None]
    return (causal & (same | task_row))[None, None]


def prefix_segment_ids(source_len: int, target_len: int, *, batch: int | None = None) -> Tensor:
    """``[0]*source_len + [1]*target_len`` (optionally repeated to ``(batch, n)``)."""
    s = torch.cat([torch.zeros(source_len, dtype=torch.long),
                   torch.ones(target_len, dtype=torch.long)])
    return s if batch is None else s[None].expand(batch, -1).clone()


def pcw_position_ids(context_lengths: Sequence[int], num_task: int, *,
                     align: str = "left") -> Tensor:
    """Positions for PCW: every context reuses its own positions.

    ``align="left"`` (Ratner et al.): context ``c`` gets ``0 … len_c − 1`` and the task tokens
    continue at ``max(len) …``. ``align="right"`` (NBCE-master ``generate_NBCE_position_ids``):
    contexts end at ``L − 1`` with ``L = max(len)``, the task tokens sit at ``L, L+1, …``.
    """
    if align not in ("left", "right"):
        raise ValueError(f"align must be 'left' or 'right', got {align!r}")
    lengths = [int(c) for c in context_lengths]
    if not lengths or min(lengths) <= 0:
        raise ValueError(f"context_lengths must be positive, got {lengths}")
    L = max(lengths)
    parts = [torch.arange(c) + (L - c if align == "right" else 0) for c in lengths]
    parts.append(torch.arange(L, L + num_task))
    return torch.cat(parts)


def check_key_mask(key_mask: Tensor | None, shape: torch.Size, what: str) -> Tensor | None:
    """``key_mask`` (bool, ``True`` = real key) expanded to ``shape``; ``None`` passes through.

    Raises:
        TypeError: ``key_mask`` is not a bool tensor.
        ValueError: it does not broadcast to ``shape`` (``what`` names the tensor it masks).
    """
    if key_mask is None:
        return None
    if not isinstance(key_mask, Tensor) or key_mask.dtype != torch.bool:
        raise TypeError(f"key_mask must be a bool tensor (True = real key), got "
                        f"{getattr(key_mask, 'dtype', type(key_mask).__name__)}")
    try:
        return key_mask.expand(shape)
    except RuntimeError as exc:
        raise ValueError(f"key_mask of shape {tuple(key_mask.shape)} does not broadcast to the "
                         f"{what}' {tuple(shape)} (…, n)") from exc
