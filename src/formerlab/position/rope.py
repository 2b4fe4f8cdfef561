"""Rotary position embedding (RoPE): cos/sin tables, both channel layouts, partial rotary.

RoPE rotates channel pair ``i`` of a query/key at position ``n`` by the angle ``n·θ_i`` so that
``<R_m q, R_n k> = <q, R_{n-m} k>``: scores depend only on the relative position.
RoFormer, kexue.fm/archives/8265, arXiv 2104.09864.

Layouts:

- ``"half"`` (rotate_half, GPT-NeoX, Hugging Face Llama): pair ``i`` is channels ``(i, i + r/2)``;
- ``"interleaved"`` (RoFormer, GPT-J, bert4keras): pair ``i`` is channels ``(2i, 2i + 1)``.

Angles, cos and sin are computed in float32 (float64 if the frequencies are float64) with autocast
disabled, and cast to the activation dtype at the end. Positions may be fractional.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .schedules import ROPE_SCHEDULES, rope_frequencies

__all__ = [
    "LAYOUTS",
    "RotaryEmbedding",
    "apply_rope",
    "convert_rope_layout",
    "rope_angles",
    "rope_cos_sin",
]

LAYOUTS = ("half", "interleaved")


def _check_layout(layout: str) -> None:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {layout!r}")


def rope_angles(positions: Tensor, inv_freq: Tensor) -> Tensor:
    """Angles ``positions[..., n, None] * inv_freq`` in float32/float64, shape ``(..., n, r/2)``."""
    dtype = torch.float64 if inv_freq.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=inv_freq.device.type, enabled=False):
        pos = positions.to(device=inv_freq.device, dtype=dtype)
        return pos[..., None] * inv_freq.to(dtype)


def rope_cos_sin(
    positions: Tensor,
    inv_freq: Tensor,
    attention_factor: float = 1.0,
    layout: str = "half",
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """Cos/sin tables for ``positions`` (any float or int tensor, fractional allowed).

    Args:
        positions: ``(..., n)`` positions.
        inv_freq: ``(r/2,)`` inverse frequencies θ_i.
        attention_factor: Multiplies cos and sin (Hugging Face's ``attention_scaling``; YaRN).
        layout: ``"half"`` or ``"interleaved"``; the tables are laid out to match.
        dtype: Output dtype (default: the computation dtype, float32 or float64).

    Returns:
        ``(cos, sin)``, each ``(..., n, r)``.
    """
    _check_layout(layout)
    ang = rope_angles(positions, inv_freq)
    if layout == "half":
        ang = torch.cat([ang, ang], dim=-1)
    else:
        ang = torch.repeat_interleave(ang, 2, dim=-1)
    cos, sin = ang.cos(), ang.sin()
    if attention_factor != 1.0:
        cos, sin = cos * attention_factor, sin * attention_factor
    if dtype is not None:
        cos, sin = cos.to(dtype), sin.to(dtype)
    return cos, sin


def _rotate(x: Tensor, layout: str) -> Tensor:
    if layout == "half":
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack([-x2, x1], dim=-1).flatten(-2)


def apply_rope(
    x: Tensor, cos: Tensor, sin: Tensor, layout: str = "half", rotary_dim: int | None = None
) -> Tensor:
    """Rotate the first ``rotary_dim`` channels of ``x`` (``(..., n, d)``) by the tables.

    ``cos``/``sin`` must broadcast to ``(..., n, rotary_dim)``; channels ``rotary_dim ... d-1``
    pass through unchanged (partial rotary). The result has ``x``'s dtype and the broadcast shape
    of ``x`` and the tables (one row of ``x`` against two rows of tables gives two rotated rows).
    """
    _check_layout(layout)
    r = cos.shape[-1] if rotary_dim is None else rotary_dim
    if r % 2 or r > x.shape[-1] or r != cos.shape[-1]:
        raise ValueError(
            f"rotary_dim must be even, <= head_dim ({x.shape[-1]}) and match the cos table "
            f"({cos.shape[-1]}), got {r}"
        )
    x_rot, x_pass = (x, None) if r == x.shape[-1] else (x[..., :r], x[..., r:])
    if cos.dtype != x.dtype:  # (checked here: a no-op .to still costs a dispatch per call)
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    if layout == "half":
        # out = x·cos + rotate_half(x)·sin, written without materialising rotate_half(x):
        # one product, then the two halves accumulate in place (views of the fresh tensor)
        # (the read-only halves split in one call each; the written ones are single views, as
        # autograd refuses in-place writes into the outputs of a multi-view split)
        h = r // 2
        out = x_rot * cos
        (x1, x2), (s1, s2) = x_rot.chunk(2, -1), sin.chunk(2, -1)
        out[..., :h].addcmul_(x2, s1, value=-1.0)
        out[..., h:].addcmul_(x1, s2)
    else:
        out = x_rot * cos + _rotate(x_rot, layout) * sin
    if x_pass is None:
        return out
    return torch.cat([out, x_pass.expand(*out.shape[:-1], x_pass.shape[-1])], dim=-1)


def convert_rope_layout(
    weight: Tensor, head_dim: int, src: str, dst: str, rotary_dim: int | None = None
) -> Tensor:
    """Permute the output rows of a q/k projection (or its bias) between RoPE layouts.

    ``weight`` has ``num_heads·head_dim`` rows (any trailing shape). Scores are unchanged when the
    same permutation is applied to q and k.
    """
    _check_layout(src)
    _check_layout(dst)
    if src == dst:
        return weight
    r = head_dim if rotary_dim is None else rotary_dim
    if weight.shape[0] % head_dim:
        raise ValueError(f"rows ({weight.shape[0]}) are not a multiple of head_dim ({head_dim})")
    idx = torch.arange(r)
    to_half = torch.cat([idx[0::2], idx[1::2]])  # new[i] = old[2i], new[i + r/2] = old[2i + 1]
    perm = to_half if dst == "half" else torch.argsort(to_half)
    perm = torch.cat([perm, torch.arange(r, head_dim)])
    heads = weight.shape[0] // head_dim
    w = weight.reshape(heads, head_dim, *weight.shape[1:])
    return w[:, perm].reshape(weight.shape)


class RotaryEmbedding(nn.Module):
    """Rotary embedding with a swappable inverse-frequency schedule.

    Args:
        head_dim: Per-head channel count ``d``.
        base: RoPE base ``b`` (HF ``rope_theta``).
        rope_type: A registered schedule name (:data:`formerlab.position.ROPE_SCHEDULES`).
        partial_rotary_factor: Fraction of channels rotated (``r = int(d·factor)``, even).
        layout: ``"half"`` or ``"interleaved"``.
        max_position_embeddings: Training length, the default ``original_max_position_embeddings``
            of schedules that need one.
        freq_repeat: Compute the schedule for ``rotary_dim / freq_repeat`` channels and repeat
            every frequency ``freq_repeat`` times (a model widened ``k``-fold keeps its exact
            rotations, :func:`formerlab.models.widen_transformer`); ``1`` = the plain schedule.
        **rope_params: Schedule parameters in Hugging Face's vocabulary (``factor``, ...).

    ``forward(positions, seq_len=None)`` returns ``(cos, sin)`` of shape ``(..., n, r)``; dynamic
    schedules use ``seq_len`` (default: ``max(positions) + 1``).
    """

    def __init__(
        self,
        head_dim: int,
        base: float = 10000.0,
        rope_type: str = "default",
        partial_rotary_factor: float = 1.0,
        layout: str = "half",
        max_position_embeddings: int | None = None,
        freq_repeat: int = 1,
        **rope_params: Any,
    ) -> None:
        super().__init__()
        _check_layout(layout)
        if isinstance(freq_repeat, bool) or not isinstance(freq_repeat, int) or freq_repeat < 1:
            raise ValueError(f"freq_repeat must be a positive int, got {freq_repeat!r}")
        if head_dim % freq_repeat:
            raise ValueError(f"head_dim ({head_dim}) must be divisible by freq_repeat ({freq_repeat})")
        self.freq_repeat = freq_repeat
        self.head_dim = head_dim
        self.base = float(base)
        self.partial_rotary_factor = float(partial_rotary_factor)
        self.layout = layout
        self.max_position_embeddings = max_position_embeddings
        self.rotary_dim = int(head_dim * partial_rotary_factor)
        self.register_buffer("inv_freq", torch.empty(0), persistent=False)
        self.set_schedule(rope_type, **rope_params)

    def _apply(self, fn: Any, recurse: bool = True) -> RotaryEmbedding:
        """Moves follow the module; casts never lower the frequencies below float32 (a model
        cast to bfloat16 would otherwise lose its long-range positions)."""
        before = self.inv_freq
        super()._apply(fn, recurse)
        if self.inv_freq.dtype in (torch.float16, torch.bfloat16) and before.dtype in (
                torch.float32, torch.float64):
            self.inv_freq = before.to(device=self.inv_freq.device)
            self._table = None
        return self

    def set_schedule(self, rope_type: str = "default", **rope_params: Any) -> None:
        """Switch the inverse-frequency schedule (e.g. PI or NTK at inference time)."""
        rope_type = ROPE_SCHEDULES.canonical(rope_type)
        params = dict(rope_params)
        if self.max_position_embeddings is not None:
            params.setdefault("max_position_embeddings", self.max_position_embeddings)
        # validate once (raises ValueError on unknown/missing keys)
        inv_freq, factor = self._schedule(rope_type, None, params)
        self.rope_type = rope_type
        self.rope_params = params
        self.dynamic = bool(ROPE_SCHEDULES.meta(rope_type).get("dynamic", False))
        device = self.inv_freq.device
        self.inv_freq = inv_freq.to(device)
        self.attention_factor = float(factor)
        self._table: tuple[Any, ...] | None = None  # memo of the last (positions, cos, sin)

    def frequencies(self, seq_len: int | None = None) -> tuple[Tensor, float]:
        """``(inv_freq, attention_factor)`` for a sequence of ``seq_len`` tokens."""
        if not self.dynamic or seq_len is None:
            return self.inv_freq, self.attention_factor
        inv_freq, factor = self._schedule(self.rope_type, seq_len, self.rope_params)
        return inv_freq.to(self.inv_freq.device), float(factor)

    def _schedule(self, rope_type: str, seq_len: int | None, params: dict[str, Any]
                  ) -> tuple[Tensor, float]:
        inv_freq, factor = rope_frequencies(
            self.head_dim // self.freq_repeat,
            base=self.base,
            rope_type=rope_type,
            seq_len=seq_len,
            partial_rotary_factor=self.partial_rotary_factor,
            **params,
        )
        if self.freq_repeat > 1:
            inv_freq = inv_freq.repeat_interleave(self.freq_repeat)
        return inv_freq, factor

    @property
    def schedule_key(self) -> tuple[Any, ...]:
        """What the rotation of a key depends on besides its position (for cache checks)."""
        params = tuple(sorted((k, repr(v)) for k, v in self.rope_params.items()))
        return (self.rope_type, self.base, self.partial_rotary_factor, self.freq_repeat, params)

    def forward(self, positions: Tensor, seq_len: int | None = None) -> tuple[Tensor, Tensor]:
        if seq_len is None and self.dynamic and positions.numel():
            seq_len = int(positions.max().item()) + 1
        if torch.compiler.is_compiling():  # no host-side memo inside a compiled graph
            inv_freq, factor = self.frequencies(seq_len)
            return rope_cos_sin(positions, inv_freq, factor, self.layout)
        memo = self._table
        if (
            memo is not None
            and memo[1] == seq_len
            and memo[2] is self.inv_freq
            and memo[0].shape == positions.shape
            and memo[0].device == positions.device
            and torch.equal(memo[0], positions)
        ):  # every layer of a forward asks for the same table: compute it once
            return memo[3], memo[4]
        inv_freq, factor = self.frequencies(seq_len)
        cos, sin = rope_cos_sin(positions, inv_freq, factor, self.layout)
        self._table = (positions.detach().clone(), seq_len, self.inv_freq, cos, sin)
        return cos, sin

    def rotate(self, x: Tensor, positions: Tensor, seq_len: int | None = None) -> Tensor:
        """Apply RoPE to ``x`` of shape ``(..., n, d)`` at ``positions`` ``(n,)`` or ``(B, n)``."""
        cos, sin = self(positions, seq_len)
        if cos.dim() == 3:  # (B, n, r) -> (B, 1, n, r) to broadcast over heads
            cos, sin = cos[:, None], sin[:, None]
        return apply_rope(x, cos, sin, self.layout, self.rotary_dim)

    def to_hf_dict(self) -> dict[str, Any]:
        """The schedule as a Hugging Face ``rope_parameters`` dict."""
        out: dict[str, Any] = {"rope_type": self.rope_type, "rope_theta": self.base}
        out.update({k: v for k, v in self.rope_params.items() if k != "max_position_embeddings"})
        if self.partial_rotary_factor != 1.0:
            out["partial_rotary_factor"] = self.partial_rotary_factor
        return out

    @classmethod
    def from_hf_config(cls, cfg: Any, layout: str = "half") -> RotaryEmbedding:
        """Build from a transformers config (v4 ``rope_scaling`` or v5 ``rope_parameters``)."""
        get = cfg.get if isinstance(cfg, dict) else lambda k, d=None: getattr(cfg, k, d)
        params = dict(get("rope_parameters", None) or get("rope_scaling", None) or {})
        head_dim = get("head_dim", None) or get("hidden_size") // get("num_attention_heads")
        base = params.pop("rope_theta", None) or get("rope_theta", 10000.0)
        rope_type = params.pop("rope_type", None) or params.pop("type", None) or "default"
        partial = params.pop("partial_rotary_factor", None) or get("partial_rotary_factor", 1.0)
        return cls(
            head_dim,
            base=base,
            rope_type=rope_type,
            partial_rotary_factor=partial,
            layout=layout,
            max_position_embeddings=get("max_position_embeddings", None),
            **params,
        )

    def extra_repr(self) -> str:
        return (
            f"head_dim={self.head_dim}, rotary_dim={self.rotary_dim}, base={self.base}, "
            f"rope_type={self.rope_type!r}, layout={self.layout!r}"
        )
