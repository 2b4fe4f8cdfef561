"""Token mixers built on attention: the kernel entry point, normalisers, masks, MHA/GQA."""

from .kernel import causal_mask, repeat_kv, scaled_dot_product
from .multihead import KVCache, MultiHeadAttention, build_attention_mask
from .normalize import NORMALIZERS, attention_normalize, register_normalizer

__all__ = [
    "NORMALIZERS",
    "KVCache",
    "MultiHeadAttention",
    "attention_normalize",
    "build_attention_mask",
    "causal_mask",
    "register_normalizer",
    "repeat_kv",
    "scaled_dot_product",
]
