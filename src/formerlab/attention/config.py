"""The ``attention`` sub-config of :class:`formerlab.ModelConfig`: how scores become weights.

Hugging Face's flat keys map here (``attention_bias`` → ``bias``, ``attention_dropout`` →
``dropout``); the normaliser and its options come from :data:`formerlab.attention.NORMALIZERS`
(``softmax``, ``softmax_plus`` with ``base_len``/``min_len``, ``squared_relu``, ``l2`` ...).
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..config import Config
from .normalize import NORMALIZERS, check_normalizer

__all__ = ["AttentionConfig"]


@dataclasses.dataclass
class AttentionConfig(Config):
    """Attention settings shared by every attention-based mixer of a model.

    Args:
        normalization: A :data:`~formerlab.attention.NORMALIZERS` name.
        normalization_options: Options of that normaliser, e.g. ``{"base_len": 512}`` for
            ``softmax_plus`` (kexue.fm/archives/8823); unknown options raise ``ValueError``.
        qk_bias: Bias on the q and k projections only (RoPE + Bias, kexue.fm/archives/9577).
        bias: Bias on every attention projection (BERT, Qwen2's q/k/v are ``qkv_bias``).
        qkv_bias: Bias on q, k and v but not on the output (Qwen2).
        dropout: Dropout on the attention weights during training.
    """

    normalization: str = "softmax"
    normalization_options: dict[str, Any] | None = None
    qk_bias: bool = False
    bias: bool = False
    qkv_bias: bool = False
    dropout: float = 0.0

    def validate(self) -> None:
        self.normalization = NORMALIZERS.canonical(self.normalization)
        check_normalizer(self.normalization, self.normalization_options)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"attention dropout must be in [0, 1), got {self.dropout}")
