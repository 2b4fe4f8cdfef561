"""Token mixers: the kernel entry point, normalisers, masks, MHA/GQA, GAU, Synthesizer, linear attention, Transformer-VQ."""

from .cache import KVCache
from .config import AttentionConfig
from .core import LayerPosition, attend, build_attention_mask
from .kernel import causal_mask, repeat_kv, scaled_dot_product
from .multihead import MultiHeadAttention
from .normalize import NORMALIZERS, attention_normalize, register_normalizer

__all__ = [
    "NORMALIZERS",
    "AttentionConfig",
    "KVCache",
    "LayerPosition",
    "MultiHeadAttention",
    "attend",
    "attention_normalize",
    "build_attention_mask",
    "causal_mask",
    "register_normalizer",
    "repeat_kv",
    "scaled_dot_product",
]

# --- the attention family: normalisers, masks, GAU, Synthesizer, linear attention ---
from .gau import GatedAttentionUnit, GAULayer, ScaleOffset
from .linear import (
    FEATURE_MAPS,
    LinearAttention,
    LinearAttentionState,
    linear_attention,
    linear_attention_matrix,
    linear_attention_recurrent,
    linear_attention_step,
)
from .masks import MASKS, build_mask, pcw_position_ids, prefix_segment_ids, register_mask
from .normalize import attention_entropy, entropy_floor, softmax_plus_factor
from .synthesizer import SYNTHESIZER_KINDS, SynthesizerAttention
from .vq import (
    VQAttentionState,
    vq_attention,
    vq_attention_reference,
    vq_attention_step,
    vq_commitment_loss,
    vq_straight_through,
)
from .vq_layer import TransformerVQLayer

__all__ += [
    "FEATURE_MAPS",
    "MASKS",
    "SYNTHESIZER_KINDS",
    "GAULayer",
    "GatedAttentionUnit",
    "LinearAttention",
    "LinearAttentionState",
    "ScaleOffset",
    "SynthesizerAttention",
    "TransformerVQLayer",
    "VQAttentionState",
    "attention_entropy",
    "build_mask",
    "entropy_floor",
    "linear_attention",
    "linear_attention_matrix",
    "linear_attention_recurrent",
    "linear_attention_step",
    "pcw_position_ids",
    "prefix_segment_ids",
    "register_mask",
    "softmax_plus_factor",
    "vq_attention",
    "vq_attention_reference",
    "vq_attention_step",
    "vq_commitment_loss",
    "vq_straight_through",
]
