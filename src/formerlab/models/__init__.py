"""One model, any token mixer: configs, the mixer registry, blocks, CausalLM, Encoder, presets.

- :class:`ModelConfig` (with the ``position`` and ``attention`` sub-configs) describes a model.
- :data:`MIXERS` holds the token mixers a layer can use (``mha``, ``gau``, ``synthesizer``, ``lru``, ``slru``, ``linear``, ``vq``).
- :class:`CausalLM` and :class:`Encoder` share one stack (:class:`TransformerModel`); their
  decoding state is a :class:`Cache` of per-layer states.
- :class:`SequenceClassifier` puts a pooled classification head on any of them.
- Presets ``llama``, ``bert``, ``gau_alpha`` build configs; :func:`widen_transformer` widens a
  model exactly.
"""

from .blocks import Block, DecoderBlock
from .cache import Cache
from .config import ModelConfig
from .encoder import Encoder
from .formats import CheckpointError, convert_gau_config
from .heads import POOLINGS, SequenceClassifier, SequenceClassifierOutput
from .lm import CausalLM, causal_lm_loss
from .mixers import (
    MIXERS,
    GAUOptions,
    LinearOptions,
    LRUOptions,
    SLRUOptions,
    SynthesizerOptions,
    VQOptions,
    auxiliary_loss,
    register_mixer,
)
from .outputs import BaseModelOutput, CausalLMOutput, ModelOutput
from .presets import PRESETS, bert, build_preset, gau_alpha, llama
from .transformer import TransformerModel
from .widen import widen_transformer

__all__ = [
    "MIXERS",
    "POOLINGS",
    "PRESETS",
    "BaseModelOutput",
    "Block",
    "Cache",
    "CausalLM",
    "CausalLMOutput",
    "CheckpointError",
    "DecoderBlock",
    "Encoder",
    "GAUOptions",
    "LRUOptions",
    "LinearOptions",
    "ModelConfig",
    "ModelOutput",
    "SLRUOptions",
    "SequenceClassifier",
    "SequenceClassifierOutput",
    "SynthesizerOptions",
    "TransformerModel",
    "VQOptions",
    "auxiliary_loss",
    "bert",
    "build_preset",
    "causal_lm_loss",
    "convert_gau_config",
    "gau_alpha",
    "llama",
    "register_mixer",
    "widen_transformer",
]
