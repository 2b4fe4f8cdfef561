"""Per-layer attention specs: HWFA and HWFA2 layer schedules, sliding-window masks.

- **HWFA** (Hybrid Window-Full Attention, kexue.fm/archives/9603): layers ``1 … L-1`` use
  sliding-window attention with RoPE, the last layer full attention without position encoding
  (NoPE) and with pretraining log-n. A stack of window layers has receptive field
  ``(w-1)·layers + 1``; choose ``w`` so that ``(w-1)(L-1) + 1 ≤ α·N`` with ``α ≤ 3/4``. Su's
  GAU-α run (N = 512, L = 24) used ``w = 16`` although 17 is admissible: :func:`max_window` returns
  the largest admissible window and :func:`hwfa_specs` accepts an override.
- **HWFA2** (kexue.fm/archives/9731): larger windows; one or two full layers placed mid-stack,
  RoPE during training and ReRoPE (``w = 256``) at inference. The post fixes neither the exact
  layer index (we use 0-based ``round(j·L/(num_full+1))``) nor whether the full layers use log-n
  (default off).

Window semantics: query ``i`` sees keys ``i-w+1 … i`` (``w`` keys including itself).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from torch import Tensor

__all__ = [
    "LAYER_POS",
    "LayerSpec",
    "hwfa2_specs",
    "hwfa_specs",
    "max_window",
    "receptive_field",
    "sliding_window_mask",
    "to_hf_layer_types",
]

LAYER_POS = ("rope", "nope", "rope_train_rerope_infer")
_LOGN = (None, "pretrain", "dagger")


def _pos_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


@dataclass(frozen=True)
class LayerSpec:
    """How one attention layer sees positions.

    Attributes:
        window: Sliding-window size (keys ``i-w+1 … i``) or ``None`` for full (causal) attention.
        pos: ``"rope"``, ``"nope"`` (no position encoding) or ``"rope_train_rerope_infer"``.
        logn: ``None``, ``"pretrain"`` (per-row log-n) or ``"dagger"`` (inference-only log-n†).
        rerope_window: ReRoPE window used at inference by ``"rope_train_rerope_infer"``.
        mixer: The token mixer of this layer (a name of ``formerlab.models.MIXERS``); ``None``
            = the model's ``mixer`` (hybrid stacks: LRU layers between attention layers ...).
        mixer_options: Options of this layer's mixer (default: the model's ``mixer_options``
            when the mixer is the model's, else the mixer's defaults).
    """

    window: int | None = None
    pos: str = "rope"
    logn: str | None = None
    rerope_window: int = 256
    mixer: str | None = None
    mixer_options: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.window is not None:
            _pos_int("window", self.window)
        if self.pos not in LAYER_POS:
            raise ValueError(f"unknown pos {self.pos!r}; valid: {', '.join(LAYER_POS)}")
        if self.logn not in _LOGN:
            raise ValueError(f"unknown logn {self.logn!r}; valid: None, 'pretrain', 'dagger'")
        _pos_int("rerope_window", self.rerope_window)
        if self.mixer is not None and (not isinstance(self.mixer, str) or not self.mixer):
            raise ValueError(f"mixer must be a mixer name or None, got {self.mixer!r}")
        if self.mixer_options is not None and not isinstance(self.mixer_options, dict):
            raise ValueError(f"mixer_options must be a dict or None, got {self.mixer_options!r}")

    @property
    def is_full(self) -> bool:
        return self.window is None

    def __hash__(self) -> int:  # mixer_options is a dict: hash what identifies the spec
        return hash((self.window, self.pos, self.logn, self.rerope_window, self.mixer))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LayerSpec:
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - allowed)
        if unknown:
            raise ValueError(f"unknown LayerSpec key(s) {unknown}; allowed: {sorted(allowed)}")
        return cls(**d)


def receptive_field(window: int, num_layers: int) -> int:
    """Receptive field ``(w-1)·num_layers + 1`` of a stack of sliding-window layers."""
    return (_pos_int("window", window) - 1) * _pos_int("num_layers", num_layers) + 1


def max_window(num_layers: int, train_len: int, alpha: float = 0.75) -> int:
    """Largest ``w`` with ``(w-1)(L-1) + 1 ≤ α·N`` (17 for L = 24, N = 512, α = 3/4)."""
    _pos_int("num_layers", num_layers)
    _pos_int("train_len", train_len)
    if num_layers < 2:
        raise ValueError("HWFA needs at least 2 layers (window layers plus one full layer)")
    if not 0 < alpha <= 1:
        raise ValueError(f"alpha must lie in (0, 1], got {alpha}")
    budget = alpha * train_len
    w = math.floor((budget - 1) / (num_layers - 1)) + 1
    if w < 1:
        raise ValueError(f"no window fits: alpha·train_len = {budget} is too small for {num_layers} layers")
    return w


def hwfa_specs(
    num_layers: int, train_len: int, alpha: float = 0.75, window: int | None = None
) -> list[LayerSpec]:
    """HWFA: ``L-1`` window layers (RoPE) then one full NoPE layer with pretraining log-n.

    ``window`` overrides :func:`max_window` (Su's run used 16 where 17 is admissible).
    """
    w = max_window(num_layers, train_len, alpha) if window is None else _pos_int("window", window)
    return [LayerSpec(window=w, pos="rope")] * (num_layers - 1) + [
        LayerSpec(window=None, pos="nope", logn="pretrain")
    ]


def hwfa2_specs(
    num_layers: int,
    window: int,
    num_full: int = 1,
    rerope_window: int = 256,
    logn: str | None = None,
) -> list[LayerSpec]:
    """HWFA2: window layers (RoPE) with ``num_full`` full layers at 0-based ``round(j·L/(num_full+1))``.

    The full layers use RoPE in training and ReRoPE (``rerope_window``) at inference.
    """
    _pos_int("num_layers", num_layers)
    _pos_int("window", window)
    if num_full not in (1, 2):
        raise ValueError(f"num_full must be 1 or 2 (post 9731), got {num_full!r}")
    if num_layers <= num_full:
        raise ValueError(f"num_layers ({num_layers}) must exceed num_full ({num_full})")
    full = {round(j * num_layers / (num_full + 1)) for j in range(1, num_full + 1)}
    full_spec = LayerSpec(window=None, pos="rope_train_rerope_infer", logn=logn, rerope_window=rerope_window)
    win_spec = LayerSpec(window=window, pos="rope")
    return [full_spec if i in full else win_spec for i in range(num_layers)]


def to_hf_layer_types(specs: list[LayerSpec]) -> list[str]:
    """Hugging Face ``layer_types``: ``"sliding_attention"`` or ``"full_attention"`` per layer."""
    return ["full_attention" if s.window is None else "sliding_attention" for s in specs]


def sliding_window_mask(q_positions: Tensor, k_positions: Tensor, window: int | None) -> Tensor:
    """Causal sliding-window bool mask, True = attend: ``0 ≤ i - j < window`` (``None``: ``j ≤ i``).

    Positions ``(nq,)``/``(nk,)`` give ``(nq, nk)``; batched ``(B, n)`` give ``(B, 1, nq, nk)``, ready
    for ``scaled_dot_product_attention(attn_mask=...)``.
    """
    if window is not None:
        _pos_int("window", window)
    if q_positions.dim() != k_positions.dim() or q_positions.dim() not in (1, 2):
        raise ValueError("positions must both be (n,) or both (B, n)")
    rel = q_positions[..., :, None] - k_positions[..., None, :]
    mask = rel >= 0
    if window is not None:
        mask = mask & (rel < window)
    return mask[:, None] if mask.dim() == 3 else mask
