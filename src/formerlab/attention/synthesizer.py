"""Synthesizer: attention whose logits are synthesised instead of computed from ``q·k``
(Tay et al., arXiv 2005.00743; kexue.fm/archives/7430).

Output ``softmax(B)·X W_v`` (then ``W_o``), per head, with ``B`` one of (n = ``max_len``):

=====================  =============================================================================
``dense``              ``relu(X W₁ + b₁) W₂ + b₂``; row ``i`` depends on ``x_i`` only (a "fixed K")
``random``             a learned ``R ∈ R^{n×n}`` (``fixed=True``: frozen at init); input-independent
``factorized_dense``   ``B₁ ∈ R^{n×a}``, ``B₂ ∈ R^{n×b}`` from two dense branches, ``ab = n``; column
                       ``c`` of ``B`` is ``B₁[:, c mod a] ⊙ B₂[:, c div a]``
``factorized_random``  ``R₁ R₂ᵀ`` with ``R_i ∈ R^{n×k}`` (rank ≤ k)
``vanilla``            the usual ``q kᵀ/√d_h``
mixture (a list)       ``Σ α_i B_i`` with ``α = softmax(θ)`` learned (``θ`` starts at 0: uniform)
=====================  =============================================================================

Per head the dense branch maps ``d_model → d_head → n`` (with one head: ``W₁ ∈ R^{d×d}``,
``W₂ ∈ R^{d×n}`` as in the paper). Shorter inputs use the top-left ``n×n`` slice. Su's reading:
Random skips ``QKᵀ`` entirely; in dialogue Dense/Random beat vanilla, in transfer (T5 pre-train +
fine-tune) they fall behind.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.state import LayerState
from .cache import KVCache, as_kv_cache
from .core import visibility_mask
from .normalize import attention_normalize

__all__ = ["SYNTHESIZER_KINDS", "SynthesizerAttention", "factorized_expand"]

SYNTHESIZER_KINDS = ("dense", "random", "factorized_dense", "factorized_random", "vanilla")


def factorized_expand(b1: Tensor, b2: Tensor) -> Tensor:
    """``(…, n, a)``, ``(…, n, b)`` → ``(…, n, a·b)`` with column ``c = B₁[:, c mod a] ⊙ B₂[:, c div a]``."""
    a, b = b1.shape[-1], b2.shape[-1]
    left = b1.repeat(*([1] * (b1.dim() - 1)), b)  # column c -> c mod a
    right = b2.repeat_interleave(a, dim=-1)  # column c -> c div a
    return left * right


class SynthesizerAttention(nn.Module):
    """Multi-head Synthesizer attention over ``(batch, seq, d_model)``.

    Args:
        d_model: Model width.
        n_heads: Heads (must divide ``d_model``).
        max_len: ``n``, the largest sequence length (size of the synthesised matrices).
        kind: One of :data:`SYNTHESIZER_KINDS` or a list of them (a learned mixture).
        fixed: Freeze the ``random`` matrix (Fixed Random: no gradient).
        k: Rank of ``factorized_random``.
        a: ``a`` of ``factorized_dense`` (must divide ``max_len``); default: the divisor of
            ``max_len`` closest to ``√max_len``.
        causal: Mask future positions (position ``t`` is then independent of later inputs).
        generator: Seeds the initialisation.
    """

    owner = "synthesizer"

    def __init__(self, d_model: int, n_heads: int, max_len: int, kind: str | list[str] = "dense",
                 fixed: bool = False, k: int = 8, a: int | None = None, causal: bool = False,
                 *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        kinds = [kind] if isinstance(kind, str) else list(kind)
        if not kinds:
            raise ValueError("kind must be a name or a non-empty list of names")
        for kd in kinds:
            if kd not in SYNTHESIZER_KINDS:
                raise ValueError(f"unknown synthesizer kind {kd!r}; valid kinds: "
                                 f"{', '.join(SYNTHESIZER_KINDS)}")
        if len(set(kinds)) != len(kinds):
            raise ValueError(f"mixture kinds must be distinct, got {kinds}")
        self.d_model, self.n_heads, self.max_len = d_model, n_heads, max_len
        self.d_head = d_model // n_heads
        self.kinds, self.causal, self.fixed = kinds, causal, fixed
        H, dh, n = n_heads, self.d_head, max_len

        def param(*shape: int, std: float, trainable: bool = True) -> nn.Parameter:
            t = torch.empty(*shape)
            with torch.no_grad():
                t.normal_(0.0, std, generator=generator)
            return nn.Parameter(t, requires_grad=trainable)

        self.v_proj = nn.Linear(d_model, d_model)
        self.o_proj = nn.Linear(d_model, d_model)
        if "vanilla" in kinds:
            self.q_proj = nn.Linear(d_model, d_model)
            self.k_proj = nn.Linear(d_model, d_model)
        if "dense" in kinds:
            self.dense_in = nn.Linear(d_model, H * dh)
            self.dense_w2 = param(H, dh, n, std=1.0 / math.sqrt(dh))
            self.dense_b2 = nn.Parameter(torch.zeros(H, n))
        if "random" in kinds:
            self.random = param(H, n, n, std=1.0, trainable=not fixed)
        if "factorized_random" in kinds:
            if k <= 0:
                raise ValueError(f"k must be positive, got {k}")
            self.k = k
            self.random_r1 = param(H, n, k, std=k ** -0.25)
            self.random_r2 = param(H, n, k, std=k ** -0.25)
        if "factorized_dense" in kinds:
            if a is None:
                divs = [x for x in range(1, n + 1) if n % x == 0]
                a = min(divs, key=lambda x: (abs(x - math.sqrt(n)), x))
            if a <= 0 or n % a:
                raise ValueError(f"a ({a}) must be a positive divisor of max_len ({n})")
            self.a, self.b = a, n // a
            self.fdense_in = nn.Linear(d_model, H * dh)
            self.fdense_w_a = param(H, dh, self.a, std=1.0 / math.sqrt(dh))
            self.fdense_w_b = param(H, dh, self.b, std=1.0 / math.sqrt(dh))
        if len(kinds) > 1:
            self.mixture_logits = nn.Parameter(torch.zeros(len(kinds)))
        for lin in (m for m in self.modules() if isinstance(m, nn.Linear)):
            with torch.no_grad():
                lin.weight.normal_(0.0, 1.0 / math.sqrt(lin.in_features), generator=generator)
                lin.bias.zero_()

    # -- the synthesised logits ----------------------------------------------------------------
    def _split(self, t: Tensor) -> Tensor:
        b, n, _ = t.shape
        return t.view(b, n, self.n_heads, self.d_head).transpose(1, 2)

    @staticmethod
    def _rows(table: Tensor, q_pos: Tensor) -> Tensor:
        """Rows ``q_pos`` of a per-head ``(H, L, ·)`` table as ``(B|1, H, m, ·)``."""
        if q_pos.dim() == 1:
            return table[:, q_pos][None]
        return table[:, q_pos].permute(1, 0, 2, 3)

    @staticmethod
    def _cols(t: Tensor, k_pos: Tensor) -> Tensor:
        """Columns ``k_pos`` of ``(B|1, H, m, L)`` logits: ``(B|1, H, m, nk)``."""
        if k_pos.dim() == 1:
            return t[..., k_pos]
        t = t.expand(k_pos.shape[0], -1, -1, -1)
        return torch.gather(t, -1, k_pos[:, None, None, :].expand(*t.shape[:3], -1))

    def _logits(self, kind: str, x: Tensor, q_pos: Tensor, k_pos: Tensor,
                keys: Tensor | None) -> Tensor:
        """``(B|1, H, m, nk)`` logits of one kind: query rows at ``q_pos``, key columns at
        ``k_pos`` (the synthesised matrices are indexed by absolute position)."""
        if kind == "vanilla":
            q = self._split(self.q_proj(x))
            return torch.matmul(q, keys.transpose(-1, -2)) / math.sqrt(self.d_head)  # type: ignore[union-attr]
        if kind == "dense":
            h = self._split(F.relu(self.dense_in(x)))  # (B, H, m, dh)
            out = torch.einsum("bhnd,hdm->bhnm", h, self.dense_w2) + self.dense_b2[None, :, None]
            return self._cols(out, k_pos)
        if kind == "random":
            return self._cols(self._rows(self.random, q_pos), k_pos)
        if kind == "factorized_random":
            r = torch.matmul(self._rows(self.random_r1, q_pos), self.random_r2.transpose(-1, -2))
            return self._cols(r, k_pos)
        h = self._split(F.relu(self.fdense_in(x)))
        b1 = torch.einsum("bhnd,hda->bhna", h, self.fdense_w_a)
        b2 = torch.einsum("bhnd,hdc->bhnc", h, self.fdense_w_b)
        return self._cols(factorized_expand(b1, b2), k_pos)

    def mixture_weights(self) -> Tensor:
        """``α`` over :attr:`kinds` (``[1.0]`` for a single kind)."""
        if len(self.kinds) == 1:
            return torch.ones(1)
        return torch.softmax(self.mixture_logits, dim=0)

    def set_mixture_weights(self, alphas: list[float] | Tensor) -> None:
        """Set ``α`` exactly (zeros allowed: ``θ = log α``)."""
        if len(self.kinds) == 1:
            raise ValueError("set_mixture_weights needs a mixture (kind given as a list)")
        a = torch.as_tensor(alphas, dtype=self.mixture_logits.dtype)
        if a.shape != (len(self.kinds),) or bool((a < 0).any()) or abs(float(a.sum()) - 1) > 1e-6:
            raise ValueError(f"alphas must be {len(self.kinds)} non-negative numbers summing to 1, "
                             f"got {a.tolist()}")
        with torch.no_grad():
            self.mixture_logits.copy_(torch.log(a))

    def logits(self, x: Tensor, q_positions: Tensor | None = None,
               k_positions: Tensor | None = None, keys: Tensor | None = None) -> Tensor:
        """The mixed ``(B|1, H, m, nk)`` logits of the ``m`` rows of ``x`` before masking.

        Positions default to ``0 … m-1`` for both (self-attention of ``x``); ``keys`` are the
        vanilla branch's cached and new keys.
        """
        if q_positions is None:
            q_positions = torch.arange(x.shape[1], device=x.device)
        if k_positions is None:
            k_positions = q_positions
        if "vanilla" in self.kinds and keys is None:
            keys = self._split(self.k_proj(x))
        alphas = self.mixture_weights().to(x.dtype)
        out = None
        for w, kind in zip(alphas, self.kinds):
            if len(self.kinds) > 1 and float(w.detach()) == 0.0:
                continue  # exact one-hot mixtures: skip (avoids 0·(−inf) and wasted work)
            t = self._logits(kind, x, q_positions, k_positions, keys)
            t = t if len(self.kinds) == 1 else w * t
            out = t if out is None else out + t
        return out

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
        """Token-mixer protocol (as :class:`~formerlab.attention.MultiHeadAttention`).

        The synthesised matrices are indexed by absolute position (``positions``, default
        ``past … past + n - 1``; a left-padded batch passes positions that count real tokens);
        ``key_padding`` is ``(B, past + n)`` (True = real token). With ``use_cache`` the values
        (and the vanilla branch's keys) are cached: decoding token by token equals the full
        forward. Returns ``(out, state, weights)``.
        """
        if x.dim() != 3 or x.shape[-1] != self.d_model:
            raise ValueError(f"x must be (batch, seq, {self.d_model}), got {tuple(x.shape)}")
        b, n, _ = x.shape
        cache = as_kv_cache(state, self.owner)
        past = 0 if cache is None else cache.length
        if positions is None:
            positions = torch.arange(past, past + n, device=x.device)
        if past + n > self.max_len or (
                positions.numel() and not torch.compiler.is_compiling()
                and int(positions.max()) >= self.max_len):
            raise ValueError(
                f"{past} cached + {n} new tokens exceed the synthesizer's max_len "
                f"{self.max_len} (its matrices cover max_len positions)"
            )
        v = self._split(self.v_proj(x))
        keys = self._split(self.k_proj(x)) if "vanilla" in self.kinds else v[..., :0]
        k_pos = positions
        if use_cache or cache is not None:
            cache = cache if cache is not None else KVCache(owner=self.owner)
            keys, v, k_pos = cache.update(keys, v, positions)
        scores = self.logits(x, positions, k_pos, keys if "vanilla" in self.kinds else None)
        nk = past + n
        m = visibility_mask(n, nk, causal=self.causal, window=None, key_padding=key_padding,
                            explicit=mask, device=x.device, need=True)
        weights = attention_normalize(scores, m, "softmax")
        out = torch.matmul(weights.expand(b, -1, -1, -1), v)
        out = self.o_proj(out.transpose(1, 2).reshape(b, n, self.d_model))
        return out, (cache if use_cache else None), (weights if return_weights else None)
