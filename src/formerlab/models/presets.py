"""Model presets as config factories: ``gau_alpha``, ``llama``, ``bert`` (a :data:`PRESETS` registry).

- ``gau_alpha`` (kexue.fm/archives/9052): 24 GAU layers (two per RoFormerV2 "Attention + FFN"),
  hidden 768, e = 1536, s = 128, vocab 12000, softmax_plus, no biases, interleaved RoPE, Post-Norm
  with the parameter-free RMS norm (ε 1e-12, also on the embeddings), dropout 0.1, 2 segment
  types, GAU-α's initialisation. Any field can be overridden, so the same preset builds a tiny
  CPU model (``gau_alpha(hidden_size=64, num_layers=2, expansion=128, key_size=32)``); build the
  encoder with :class:`formerlab.models.Encoder` or a causal LM with
  :class:`formerlab.models.CausalLM`.
- ``llama``: Pre-Norm RMSNorm, SwiGLU, RoPE (half layout), no biases, untied head (sizes
  ``tiny``/``small``/``smollm2-135m``).
- ``bert``: Post-Norm LayerNorm (ε 1e-12), exact-GELU MLP, biases, learned positions (sizes
  ``tiny``/``mini``/``base``); build with :class:`formerlab.models.Encoder`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..config import Config
from ..registry import Registry
from .config import ModelConfig

__all__ = ["PRESETS", "bert", "build_preset", "gau_alpha", "llama"]

PRESETS: Registry[Callable[..., Config]] = Registry("model preset")

_LLAMA_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=176),
    "small": dict(hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=4,
                  intermediate_size=688),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9,
                         num_kv_heads=3, intermediate_size=1536, rope_theta=100000.0,
                         norm_eps=1e-5, max_position_embeddings=8192, tie_word_embeddings=True),
}

_BERT_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, intermediate_size=256),
    "mini": dict(vocab_size=30522, hidden_size=384, num_layers=6, num_heads=12,
                 intermediate_size=1536),
    "base": dict(vocab_size=30522, hidden_size=768, num_layers=12, num_heads=12,
                 intermediate_size=3072),
}


def _pick(table: dict[str, dict[str, Any]], size: str, name: str) -> dict[str, Any]:
    if size not in table:
        raise ValueError(f"unknown {name} size {size!r}; valid sizes: {', '.join(table)}")
    return dict(table[size])


_GAU_OPTIONS = ("expansion", "key_size", "activation", "use_bias", "split_values")


@PRESETS.register("gau_alpha")
def gau_alpha(**overrides: Any) -> ModelConfig:
    """The GAU-α configuration (``chinese_GAU-alpha-char_L-24_H-768``) with ``overrides``.

    ``expansion``, ``key_size``, ``activation``, ``use_bias`` and ``split_values`` go to the
    ``gau`` mixer's options; every other key is a :class:`~formerlab.models.ModelConfig` key (flat Hugging
    Face keys such as ``rope_theta`` or ``normalization`` included).
    """
    options = {"expansion": 1536, "key_size": 128}
    options.update({k: overrides.pop(k) for k in _GAU_OPTIONS if k in overrides})
    base: dict[str, Any] = dict(
        vocab_size=12000, hidden_size=768, num_layers=24, num_heads=1, mixer="gau",
        mixer_options=options, ffn="none", norm="rmsnorm", norm_affine=False,
        norm_position="post", norm_eps=1e-12, embed_norm=True,
        position={"kind": "rope", "rope_layout": "interleaved", "rope_theta": 10000.0},
        attention={"normalization": "softmax_plus", "dropout": 0.1,
                   "normalization_options": {"base_len": 512}},
        max_position_embeddings=512, type_vocab_size=2, dropout=0.1, init="gau_alpha",
    )
    base.update(overrides)
    return ModelConfig.from_dict(base)


@PRESETS.register("llama")
def llama(size: str = "tiny", **overrides: Any) -> ModelConfig:
    """A Llama-family decoder ``ModelConfig`` (Pre-Norm RMSNorm, SwiGLU, RoPE half layout)."""
    base = dict(ffn="swiglu", norm="rmsnorm", norm_position="pre", position="rope",
                rope_layout="half", tie_word_embeddings=False, norm_eps=1e-5)
    base.update(_pick(_LLAMA_SIZES, size, "llama"))
    base.update(overrides)
    return ModelConfig.from_dict(base)


@PRESETS.register("bert")
def bert(size: str = "tiny", **overrides: Any) -> ModelConfig:
    """A BERT encoder ``ModelConfig`` (Post-Norm LayerNorm, GELU MLP, biases, learned positions)."""
    base = dict(ffn="gelu", norm="layernorm", norm_position="post", norm_eps=1e-12,
                position="learned", max_position_embeddings=512, attention_bias=True,
                mlp_bias=True, tie_word_embeddings=True, dropout=0.1, attention_dropout=0.1,
                embed_norm=True, type_vocab_size=2, pad_token_id=0)
    base.update(_pick(_BERT_SIZES, size, "bert"))
    base.update(overrides)
    return ModelConfig.from_dict(base)


def build_preset(name: str, **overrides: Any) -> Config:
    """The config of preset ``name`` (unknown names raise ``ValueError`` listing them)."""
    return PRESETS.get(name)(**overrides)
