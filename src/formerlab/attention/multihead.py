"""Multi-head and grouped-query attention with a layer state and the position hooks.

``MultiHeadAttention`` projects q/k/v (Llama names ``q_proj``/``k_proj``/``v_proj``/``o_proj``)
and hands the rest to :func:`formerlab.attention.core.attend`. Its position hooks
(:class:`~formerlab.attention.core.LayerPosition`) are what the position family plugs into:

1. ``rotary`` — a :class:`~formerlab.position.RotaryEmbedding` whose inverse-frequency schedule can
   be swapped (PI, NTK, YaRN, dynamic NTK ...);
2. ``relpos`` — a relative-position map ``f(i-j)`` for the scores (ReRoPE, Leaky ReRoPE), computed
   by :func:`formerlab.position.relative.relpos_attention` on un-rotated q/k (``eval_relpos``:
   only outside training, as HWFA2 switches its full layers to ReRoPE at inference);
3. ``query_scale`` — a per-query factor (log-n: the pretraining per-row variant and the inference
   "dagger" variant), any object with ``query_factor(q_positions, visible_counts)``;
4. ``bias_fn(q_positions, k_positions) -> (H, nq, nk)`` — an additive bias (ALiBi).

The cache (:class:`~formerlab.attention.KVCache` or, for raw keys shared by the batch,
:class:`~formerlab.position.ReRoPECache`) keeps **un-rotated** keys whenever the rotation depends
on more than the key's own position (dynamic schedules, relative maps) and rotates them at read
time. For static schedules and relative maps (ReRoPE, Leaky) incremental decoding then equals the
full forward exactly. For dynamic NTK every layer attends with one consistent base (unlike Hugging
Face's cache of rotated keys, huggingface/transformers#25104), which is exact for a single
attention layer; in a deeper model the cached keys/values of later layers were computed from
hidden states under earlier bases, so no key/value cache can reproduce the full forward exactly.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from ..nn.state import LayerState
from .cache import KVCache
from .core import LayerPosition, attend, build_attention_mask

__all__ = ["KVCache", "MultiHeadAttention", "build_attention_mask"]


_HOOKS = ("rotary", "relpos", "eval_relpos", "query_scale", "bias_fn")


class _PositionHooks:
    """``rotary``/``relpos``/``query_scale``/``bias_fn`` attributes backed by ``self.position``.

    The rotary embedding is also registered as a submodule, so ``.to(device)`` moves its
    frequencies with the layer (a model shares one rotary module between its layers).
    """

    position: LayerPosition

    def set_position(self, position: LayerPosition) -> None:
        """Install the position hooks of this layer (done by the model for every layer)."""
        if not isinstance(position, LayerPosition):
            raise TypeError(f"position must be a LayerPosition, got {type(position).__name__}")
        nn.Module.__setattr__(self, "position", position)
        self._modules["rotary"] = position.rotary  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _HOOKS:
            setattr(self.position, name, value)
            if name == "rotary":
                self._modules["rotary"] = value  # type: ignore[attr-defined]
            return
        super().__setattr__(name, value)  # type: ignore[misc]

    def __getattr__(self, name: str) -> Any:
        if name in _HOOKS:
            return getattr(self.__dict__["position"], name)
        return super().__getattr__(name)  # type: ignore[misc]


class MultiHeadAttention(_PositionHooks, nn.Module):
    """MHA / GQA over ``(batch, seq, hidden)`` inputs with Llama-style projection names.

    Args:
        hidden_size: Model width.
        num_heads: Query heads.
        num_kv_heads: Key/value heads (must divide ``num_heads``); default ``num_heads``.
        head_dim: Per-head width; default ``hidden_size // num_heads``.
        qk_bias: Bias on the q and k projections only (RoPE + Bias, kexue.fm/archives/9577).
        bias: Bias on all four projections (BERT style).
        qkv_bias: Bias on q, k and v but not on the output projection (Qwen2).
        normalization: Attention normaliser name (``softmax`` and ``softmax_plus`` use the fused
            SDPA kernel).
        normalization_options: Options of the normaliser (``base_len``/``min_len`` ...).
        attention_dropout: Dropout on the attention weights during training.
        window: Sliding-window size (query i sees keys ``i-w+1 … i``); ``None`` = full.
        causal: Causal (decoder) or bidirectional (encoder) attention.
    """

    owner = "mha"

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        num_kv_heads: int | None = None,
        head_dim: int | None = None,
        *,
        qk_bias: bool = False,
        bias: bool = False,
        qkv_bias: bool = False,
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
        in_bias = qk_bias or bias or qkv_bias
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=in_bias)
        self.k_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=in_bias)
        self.v_proj = nn.Linear(hidden_size, num_kv_heads * head_dim, bias=bias or qkv_bias)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=bias)
        self.set_position(LayerPosition())

    def _split(self, x: Tensor, heads: int) -> Tensor:
        b, n, _ = x.shape
        return x.view(b, n, heads, self.head_dim).transpose(1, 2)

    def forward(
        self,
        x: Tensor,
        positions: Tensor,
        *,
        key_padding: Tensor | None = None,
        mask: Tensor | None = None,
        state: LayerState | None = None,
        use_cache: bool = False,
        return_weights: bool = False,
    ) -> tuple[Tensor, LayerState | None, Tensor | None]:
        """Attend over the cached tokens and ``x``.

        Args:
            x: ``(B, n, hidden)``.
            positions: Absolute positions of the ``n`` tokens, ``(n,)`` or ``(B, n)``.
            key_padding: ``(B, past + n)`` bool, ``True`` = real token (from HF ``attention_mask``).
            mask: Explicit boolean mask ``(B|1, H|1, n, past + n)`` (``True`` = may attend),
                e.g. a UniLM/prefix mask from :mod:`formerlab.attention.masks`; it replaces
                the causal/window mask (key padding still applies).
            state: This layer's state from earlier calls (a KV cache).
            use_cache: Return the (created or) updated state.
            return_weights: Also return attention weights (explicit path).

        Returns:
            ``(output (B, n, hidden), state or None, weights or None)``.
        """
        b, n, _ = x.shape
        q = self._split(self.q_proj(x), self.num_heads)
        k = self._split(self.k_proj(x), self.num_kv_heads)
        v = self._split(self.v_proj(x), self.num_kv_heads)
        out, state, weights = attend(
            q, k, v, positions, pos=self.position, owner=self.owner, causal=self.causal,
            window=self.window, key_padding=key_padding, mask=mask, state=state,
            use_cache=use_cache, normalization=self.normalization,
            options=self.normalization_options,
            dropout_p=self.attention_dropout if self.training else 0.0,
            return_weights=return_weights, training=self.training,
        )
        out = out.transpose(1, 2).reshape(b, n, self.num_heads * self.head_dim)
        return self.o_proj(out), state, weights

    def extra_repr(self) -> str:
        return (f"heads={self.num_heads}, kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
                f"normalization={self.normalization!r}, window={self.window}, causal={self.causal}")
