"""Blocks and complete models: CausalLM, Encoder (BERT family), GAU models, presets, widening."""

from .blocks import DecoderBlock
from .lm import CausalLM, CheckpointError, causal_lm_loss
from .outputs import BaseModelOutput, CausalLMOutput, ModelOutput

__all__ = [
    "BaseModelOutput",
    "CausalLM",
    "CausalLMOutput",
    "CheckpointError",
    "DecoderBlock",
    "ModelOutput",
    "causal_lm_loss",
]

# --- encoder, GAU models, presets, widening (issue 4) ---
from .encoder import Encoder
from .gau_lm import GAUAlphaConfig, GAUAlphaEncoder, GAUCausalLM, GAUConfig
from .presets import PRESETS, bert, build_preset, gau_alpha, llama
from .widen import widen_transformer

__all__ += [
    "PRESETS",
    "Encoder",
    "GAUAlphaConfig",
    "GAUAlphaEncoder",
    "GAUCausalLM",
    "GAUConfig",
    "bert",
    "build_preset",
    "gau_alpha",
    "llama",
    "widen_transformer",
]
