"""Blocks, stacks and complete models (CausalLM; Encoder and presets join later)."""

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
