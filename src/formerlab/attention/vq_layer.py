"""The Transformer-VQ layer: GAU-style attention over vector-quantised keys, in linear time.

Lingle, "Transformer-VQ: Linear-Time Transformers via Vector Quantization" (arXiv 2309.16354),
read by Su in kexue.fm/archives/9844 ("really GAU-VQ"). Per head ``h``::

    q = LN(x W_q) · d_k^(−1/4)         k = LN(x W_k) · d_k^(−1/4)      (parameter-free LayerNorm)
    v = SiLU(x W_v)                    g = SiLU(x W_g)                  (the GAU gate)
    k̂ = k + sg(C[z] − k),  z = argmin_s ‖k − c_s‖²                     (straight-through)
    y = (VQAttn(q, k̂, v) ⊙ g) W_o

The quantiser is :class:`formerlab.quantize.VectorQuantizer` (one codebook per head, EMA
updates, commitment loss ``‖k − sg(C[z])‖²``); the attention is :func:`formerlab.attention.vq.
vq_attention` (block form for decoders, the code form for encoders), whose cache makes decoding
``O(ℓ + S)`` per token at any position.

**Window bias.** A learned relative bias ``g_h(r)`` for distances ``r = 0 … ℓ`` (zero beyond).
The block form adds the bias only inside the window (the query's block and the one before),
which always contains every distance ``r ≤ ℓ``, so with ``g(r) = 0`` for ``r > ℓ`` the layer
equals quadratic softmax attention over ``K̂`` with the Toeplitz bias ``g(i − j)`` exactly — for
every alignment of the blocks. That is what makes a left-padded batch equal its rows alone. (The
official code uses Transformer-XL's content-dependent biases over the whole window instead.)

**Commitment loss → training loss.** In training mode the layer stores the quantiser's
commitment loss of its latest forward in ``aux_loss`` (``None`` in eval mode);
:func:`formerlab.models.auxiliary_loss` sums it over a model and
:class:`~formerlab.models.CausalLM` / :class:`~formerlab.models.SequenceClassifier` add it to
``loss``. ``commitment_weight`` is the official ``c_beta`` (1e-4): the weight of the squared error
summed over the key dimensions and heads, averaged over tokens. With gradient checkpointing the
forward runs twice, so the EMA codebook update happens twice per step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.state import LayerState
from ..quantize.vq import VectorQuantizer
from .vq import vq_attention
from .vq_cache import VQAttentionState

__all__ = ["TransformerVQLayer"]


class TransformerVQLayer(nn.Module):
    """Transformer-VQ attention over ``(batch, seq, hidden)``, a token mixer of formerlab models.

    Args:
        hidden_size: Model width.
        key_size: ``d_k`` per head (128 in the paper).
        expansion: Total value / gate width ``d_v·heads`` (default ``2·hidden_size``, GAU).
        num_heads: Heads, each with its own codebook (1 in the paper).
        num_codes: Codebook size ``S`` (512 in the paper).
        block_len: ``ℓ`` (512 in the paper; a sequence need not be a multiple of it).
        causal: Decoder (block form with a cache) or encoder (bidirectional code form).
        commitment_weight: ``c_beta`` (see the module docstring).
        ema_decay: EMA rate of the codebook (``c_gamma``, 0.99).
        window_bias: Learn the relative bias ``g(r)``, ``r ≤ ℓ`` (causal only).
        grad_through_cache: Let gradients flow through the cached value means.
        kmeans_init: Initialise each codebook by k-means on the first training batch of keys.
        threshold_dead: Revive codes whose EMA count falls below this (0 = never).
        bias: Biases on the projections.

    ``forward(x, positions=None, *, key_padding=None, mask=None, state=None, use_cache=False,
    return_weights=False) -> (y, state, None)`` follows the token-mixer protocol; ``positions``
    are not used (the window bias is relative), ``key_padding`` ``(B, past + n)`` marks real
    tokens, ``state`` is a :class:`~formerlab.attention.vq_cache.VQAttentionState`.
    """

    owner = "vq"

    def __init__(self, hidden_size: int, key_size: int = 128, expansion: int | None = None,
                 num_heads: int = 1, num_codes: int = 512, block_len: int = 512, *,
                 causal: bool = True, commitment_weight: float = 1e-4, ema_decay: float = 0.99,
                 window_bias: bool = True, grad_through_cache: bool = False,
                 kmeans_init: bool = False, threshold_dead: float = 0.0, bias: bool = False
                 ) -> None:
        super().__init__()
        expansion = 2 * hidden_size if expansion is None else expansion
        for name, value in (("hidden_size", hidden_size), ("key_size", key_size),
                            ("expansion", expansion), ("num_heads", num_heads),
                            ("num_codes", num_codes), ("block_len", block_len)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if expansion % num_heads:
            raise ValueError(f"expansion ({expansion}) must be divisible by num_heads "
                             f"({num_heads})")
        if not commitment_weight >= 0:
            raise ValueError(f"commitment_weight must be >= 0, got {commitment_weight!r}")
        self.hidden_size, self.key_size, self.expansion = hidden_size, key_size, expansion
        self.num_heads, self.num_codes, self.block_len = num_heads, num_codes, block_len
        self.causal, self.grad_through_cache = causal, grad_through_cache
        self.commitment_weight = commitment_weight
        self.q_proj = nn.Linear(hidden_size, num_heads * key_size, bias=bias)
        self.kvg_proj = nn.Linear(hidden_size, num_heads * key_size + 2 * expansion, bias=bias)
        self.o_proj = nn.Linear(expansion, hidden_size, bias=bias)
        # VectorQuantizer averages over dimensions and heads; c_beta weighs their sum
        self.quantizer = VectorQuantizer(
            num_codes, key_size, ema_decay=ema_decay,
            commitment_weight=commitment_weight * key_size * num_heads, use_ema=True,
            num_codebooks=num_heads, kmeans_init=kmeans_init, threshold_dead=threshold_dead)
        self.window_bias = (nn.Parameter(torch.zeros(num_heads, block_len + 1))
                            if window_bias and causal else None)
        self.aux_loss: Tensor | None = None
        self.init_mixer_()

    @torch.no_grad()
    def init_mixer_(self, generator: torch.Generator | None = None) -> None:
        """What a model's init scheme does not cover: codebooks drawn like the normalised keys
        (entries ``N(0, 1/√d_k)``, so codes and keys have the same norm ``d_k^(1/4)``) and a zero
        window bias. The projections are left to the scheme."""
        shape = tuple(self.quantizer.codebook.shape)
        dev = self.quantizer.embed.device
        draw = torch.randn(shape, generator=generator, dtype=torch.float64) * self.key_size**-0.25
        self.quantizer.codebook = draw.to(dev)
        if self.window_bias is not None:
            self.window_bias.zero_()

    @property
    def codebook(self) -> Tensor:
        """``(S, d_k)`` (one head) or ``(heads, S, d_k)``."""
        return self.quantizer.codebook

    def relative_bias(self) -> Tensor | None:
        """The window bias ``(heads, 1, 2ℓ)`` of :func:`vq_attention` (``g(r)``, zero for
        ``r > ℓ``), or ``None``."""
        if self.window_bias is None:
            return None
        return F.pad(self.window_bias, (0, self.block_len - 1))[:, None, :]

    def _quantize(self, k: Tensor, valid: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(k̂, codes)`` of keys ``(B, n, H, d)``; sets :attr:`aux_loss` in training."""
        if self.num_heads == 1:
            k = k[:, :, 0]
        if self.training:
            out = self.quantizer(k, mask=valid)
            self.aux_loss = out.loss
            k_hat, idx = out.quantized, out.indices
        else:
            self.aux_loss = None
            idx, codes = self.quantizer.nearest(k)
            k_hat = k + (codes - k).detach()
        if self.num_heads == 1:
            k_hat, idx = k_hat[:, :, None], idx[:, :, None]
        return k_hat, idx

    def forward(
        self,
        x: Tensor,
        positions: Tensor | None = None,
        *,
        key_padding: Tensor | None = None,
        mask: Tensor | None = None,
        state: LayerState | None = None,
        use_cache: bool = False,
        return_weights: bool = False,
    ) -> tuple[Tensor, LayerState | None, Tensor | None]:
        if x.dim() != 3 or x.shape[-1] != self.hidden_size:
            raise ValueError(f"x must be (batch, seq, {self.hidden_size}), got {tuple(x.shape)}")
        if mask is not None:
            raise ValueError("a 'vq' layer takes no explicit attention mask (its block form has "
                             "its own causal structure); pass a (batch, seq) padding mask")
        if state is not None:
            if not isinstance(state, VQAttentionState):
                raise TypeError(f"state must be a VQAttentionState, got {type(state).__name__}")
            state.expect(self.owner)
        if not self.causal and (state is not None or use_cache):
            raise ValueError("a bidirectional 'vq' layer keeps no decoding state")
        b, n, _ = x.shape
        valid = self._valid(key_padding, b, n, 0 if state is None else state.length)
        h, dk = self.num_heads, self.key_size
        q = F.layer_norm(self.q_proj(x).view(b, n, h, dk), (dk,)) * dk**-0.25
        k, v, g = self.kvg_proj(x).split([h * dk, self.expansion, self.expansion], dim=-1)
        k = F.layer_norm(k.view(b, n, h, dk), (dk,)) * dk**-0.25
        v = F.silu(v).view(b, n, h, -1).transpose(1, 2)
        k_hat, codes = self._quantize(k, valid)
        out, new = vq_attention(
            q.transpose(1, 2), k_hat.transpose(1, 2), codes.transpose(1, 2), v, self.codebook,
            causal=self.causal, block_len=self.block_len, window_bias=self.relative_bias(),
            cache=state, grad_through_cache=self.grad_through_cache,
            use_cache=use_cache and self.causal,
            key_mask=None if valid is None else valid[:, None, :])
        y = self.o_proj(out.transpose(1, 2).reshape(b, n, self.expansion) * F.silu(g))
        if new is not None:
            new.owner = self.owner
        return y, (new if use_cache else None), None

    @staticmethod
    def _valid(key_padding: Tensor | None, b: int, n: int, past: int) -> Tensor | None:
        if key_padding is None:
            return None
        if key_padding.shape != (b, past + n):
            raise ValueError(f"key_padding must be (batch, past + seq) = {(b, past + n)}, got "
                             f"{tuple(key_padding.shape)}")
        return key_padding[:, past:].bool()

    def extra_repr(self) -> str:
        return (f"hidden={self.hidden_size}, d_k={self.key_size}, e={self.expansion}, "
                f"heads={self.num_heads}, S={self.num_codes}, block_len={self.block_len}, "
                f"causal={self.causal}")
