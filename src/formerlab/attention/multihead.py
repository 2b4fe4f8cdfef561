"""Multi-head and grouped-query attention with a KV cache and three position hooks.

The hooks are what the position family plugs into (``../spec/position.md``):

1. ``rotary`` — a :class:`~formerlab.position.RotaryEmbedding` whose inverse-frequency schedule can
   be swapped (PI, NTK, YaRN, dynamic NTK ...);
2. ``relpos`` — a relative-position map ``f(i-j)`` for the scores (ReRoPE, Leaky ReRoPE), computed
   by :func:`formerlab.position.relative.relpos_attention` on un-rotated q/k;
3. ``query_scale`` — a per-query factor (log-n: the pretraining per-row variant and the
   inference "dagger" variant), any object with ``query_factor(q_positions, visible_counts)``.

An additive ``bias_fn(q_positions, k_positions) -> (H, nq, nk)`` hook serves ALiBi-style biases.

The cache keeps **un-rotated** keys whenever the rotation depends on more than the key's own
position (dynamic schedules, relative maps) and rotates them at read time. For static schedules
and relative maps (ReRoPE, Leaky) incremental decoding then equals the full forward exactly. For
dynamic NTK every layer attends with one consistent base (unlike Hugging Face's cache of rotated
keys, huggingface/transformers#25104), which is exact for a single attention layer; in a deeper
model the cached keys/values of later layers were computed from hidden states under earlier
bases, so no key/value cache can reproduce the full forward exactly (tested: closer than HF's).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

from .kernel import causal_mask, scaled_dot_product

__all__ = ["KVCache", "MultiHeadAttention", "build_attention_mask"]


@dataclasses.dataclass
class KVCache:
    """Keys/values of one layer: ``keys``/``values`` ``(B, Hkv, n, d)``, ``positions`` ``(n,)``
    or ``(B, n)``; ``rotated`` says whether RoPE is already applied to the keys."""

    keys: Tensor
    values: Tensor
    positions: Tensor
    rotated: bool

    @property
    def length(self) -> int:
        return self.keys.shape[-2]


def build_attention_mask(
    nq: int,
    nk: int,
    *,
    causal: bool = True,
    window: int | None = None,
    key_padding: Tensor | None = None,
    device: torch.device | None = None,
) -> Tensor | None:
    """Boolean ``(B|1, 1, nq, nk)`` mask by sequence index (queries are the last ``nq`` keys).

    ``window`` keeps keys with ``i - j < window``; ``key_padding`` is ``(B, nk)`` bool, ``True``
    = real token. Returns ``None`` when nothing is masked. A query never loses its own key, so
    padded rows stay finite.
    """
    mask = causal_mask(nq, nk, device=device) if causal else None
    if window is not None:
        i = torch.arange(nq, device=device)[:, None] + (nk - nq)
        j = torch.arange(nk, device=device)[None, :]
        near = (i - j < window) if causal else ((i - j).abs() < window)
        mask = near if mask is None else mask & near
    if mask is not None:
        mask = mask[None, None]
    if key_padding is not None:
        if key_padding.shape[-1] != nk:
            raise ValueError(
                f"attention_mask covers {key_padding.shape[-1]} keys but there are {nk} "
                "(past + current tokens)"
            )
        kp = key_padding.bool()[:, None, None, :]
        own = torch.zeros(nq, nk, dtype=torch.bool, device=device)
        own[torch.arange(nq), torch.arange(nk - nq, nk)] = True
        kp = kp | own
        mask = kp if mask is None else mask & kp
    return mask


class MultiHeadAttention(nn.Module):
    """MHA / GQA over ``(batch, seq, hidden)`` inputs with Llama-style projection names.

    Args:
        hidden_size: Model width.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (must divide ``num_heads``); default ``num_heads``.
        head_dim: Per-head width; default ``hidden_size // num_heads``.
        qk_bias: Bias on the q and k projections only (RoPE + Bias, kexue.fm/archives/9577).
        bias: Bias on all four projections (BERT style).
        normalization: Attention normaliser name (``softmax`` uses the SDPA fast path).
        attention_dropout: Dropout on the attention weights during training.
        window: Sliding-window size (query i sees keys ``i-w+1 … i``); ``None`` = full.
        causal: Causal (decoder) or bidirectional (encoder) attention.
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        *,
        qk_bias: bool = False,
        bias: bool = False,
        normalization: str = "softmax",
        normalization_options: dict[str, Any] | None = None,
        attention_dropout: float = 0.0,
        window: int | None = None,
        causal: bool = True,
    ) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if head_dim is None:
            if hidden_size % num_heads:
                raise ValueError(
                    f"hidden_size ({hidden_size}) must be divisible by num_heads ({num_heads})"
                )
            head_dim = hidden_size // num_heads
        if num_heads % num_kv_heads:
            raise ValueError(
                f"num_heads ({num_heads}) must be divisible by num_kv_heads ({num_kv_heads})"
            )
        self.hidden_size, self.num_heads, self.num_kv_heads = hidden_size, num_heads, num_kv_heads
        self.head_dim = head_dim
        self.normalization = normalization
        self.normalization_options = normalization_options
        self.attention_dropout = attention_dropout
        self.window = window
        self.causal = causal
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=qk_bias or bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=qk_bias or bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=bias)
        # the three position hooks (set by the model or by the user)
        self.rotary: nn.Module | None = None
        self.relpos: Any = None
        self.query_scale: Any = None
        self.bias_fn: Any = None

    # -- helpers -----------------------------------------------------------------------------
    def _split(self, x: Tensor, heads: int) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, heads, self.head_dim).transpose(1, 2)

    def _relpos_active(self) -> bool:
        return self.relpos is not None and not getattr(self.relpos, "is_identity", False)

    def _keep_raw_keys(self) -> bool:
        rotary = self.rotary
        return rotary is not None and (self._relpos_active() or getattr(rotary, "dynamic", False))

    # -- forward -----------------------------------------------------------------------------
    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        *,
        key_padding: Tensor | None = None,
        past: KVCache | None = None,
        use_cache: bool = False,
        return_weights: bool = False,
        mask: Tensor | None = None,
    ) -> tuple[Tensor, KVCache | None, Tensor | None]:
        """Attend over the past cache and ``x``.

        Args:
            x: ``(B, n, hidden)``.
            positions: Absolute positions of the ``n`` tokens, ``(n,)`` or ``(B, n)``.
            key_padding: ``(B, past + n)`` bool, ``True`` = real token (from HF ``attention_mask``).
            past: This layer's cache from earlier calls.
            use_cache: Return the updated cache.
            return_weights: Also return attention weights (explicit path).
            mask: Explicit boolean mask ``(B|1, H|1, n, past + n)`` (``True`` = may attend),
                e.g. a UniLM/prefix mask from :mod:`formerlab.attention.masks`; it replaces
                the causal/window mask (key padding still applies).

        Returns:
            ``(output (B, n, hidden), cache or None, weights or None)``.
        """
        b, n, _ = x.shape
        if positions.shape[-1] != n:
            raise ValueError(f"positions cover {positions.shape[-1]} tokens, x has {n}")
        q = self._split(self.q_proj(x), self.num_heads)
        k = self._split(self.k_proj(x), self.num_kv_heads)
        v = self._split(self.v_proj(x), self.num_kv_heads)
        raw = self._keep_raw_keys()
        if past is not None and self.rotary is not None and past.rotated == raw:
            raise ValueError(
                "the KV cache was built with a different position method (rotated vs raw keys); "
                "re-run the prefill after changing the position method"
            )
        k_pos = positions
        if past is not None and past.positions.dim() == positions.dim() == 1:
            k_pos = torch.cat([past.positions, positions], -1)
        elif past is not None:
            k_pos = torch.cat([_expand_pos(past.positions, b), _expand_pos(positions, b)], -1)
        rotated_k = k
        if self.rotary is not None and not raw:
            rotated_k = self.rotary.rotate(k, positions)
        new_k = rotated_k
        if past is not None:
            new_k = torch.cat([past.keys, new_k], dim=-2)
            v = torch.cat([past.values, v], dim=-2)
        nk = new_k.shape[-2]
        cache = KVCache(new_k, v, k_pos, rotated=not raw) if use_cache else None

        explicit = mask
        plain = past is None and key_padding is None and self.window is None
        mask = None
        if explicit is not None:
            if explicit.dtype != torch.bool or explicit.dim() != 4 or explicit.shape[-2:] != (n, nk):
                raise ValueError(
                    f"mask must be a bool tensor (B|1, H|1, {n}, {nk}), got "
                    f"{explicit.dtype} {tuple(explicit.shape)}"
                )
            mask = explicit
            pad = build_attention_mask(n, nk, causal=False, key_padding=key_padding,
                                       device=x.device)
            if pad is not None:
                mask = mask & pad
        elif not plain or (self.causal and self._relpos_active()):
            mask = build_attention_mask(
                n, nk, causal=self.causal, window=self.window, key_padding=key_padding,
                device=x.device,
            )
        if self.query_scale is not None:
            if mask is not None:
                counts = mask.expand(-1, -1, n, nk).sum(-1)  # (B|1, 1, n) visible keys per row
            elif self.causal:
                counts = torch.arange(1, n + 1, device=x.device)[None, None]
            else:
                counts = torch.full((1, 1, n), nk, device=x.device)
            q_pos = positions if positions.dim() == 2 else positions[None]
            factor = self.query_scale.query_factor(q_pos[:, None, :], counts)
            q = q * factor[..., None].to(q.dtype)
        bias = None
        if self.bias_fn is not None:
            bias = self.bias_fn(positions, k_pos)
        dropout = self.attention_dropout if self.training else 0.0
        weights = None
        if self._relpos_active():
            from ..position.relative import relpos_attention

            inv_freq, factor = self.rotary.frequencies(int(k_pos.max()) + 1)
            if bias is not None or return_weights:
                raise ValueError("relative-position maps do not combine with bias_fn/return_weights")
            out = relpos_attention(
                q, new_k, v, q_positions=positions, k_positions=k_pos, inv_freq=inv_freq,
                relpos=self.relpos, mask=mask, layout=self.rotary.layout,
                rotary_dim=self.rotary.rotary_dim, attention_factor=factor,
            )
        else:
            keys = new_k
            if self.rotary is not None:
                seq_len = int(k_pos.max()) + 1 if raw else None
                q = self.rotary.rotate(q, positions, seq_len)
                if raw:
                    keys = self.rotary.rotate(new_k, k_pos, seq_len)
            res = scaled_dot_product(
                q, keys, v, mask=mask, is_causal=self.causal and mask is None and explicit is None,
                bias=bias,
                normalization=self.normalization,
                normalization_options=self.normalization_options,
                dropout_p=dropout, return_weights=return_weights,
            )
            out, weights = res if return_weights else (res, None)
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.o_proj(out), cache, weights


def _expand_pos(pos: Tensor, batch: int) -> Tensor:
    return pos.expand(batch, -1) if pos.dim() == 1 else pos
