"""Building blocks: norms, feed-forward layers (activations, init and recompute join later)."""

from .ffn import MLP, SwiGLU, build_ffn
from .norms import RMSNorm, build_norm

__all__ = ["MLP", "RMSNorm", "SwiGLU", "build_ffn", "build_norm"]
