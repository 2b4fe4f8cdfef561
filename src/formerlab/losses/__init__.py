"""Training objectives: the language-model loss and the blog's losses and regularisers."""

from .lm import causal_lm_loss

__all__ = ["causal_lm_loss"]
