"""One module per registered experiment; importing this package registers them all."""

from . import (
    decoder_only,
    dialog,
    entropy_invariance,
    extrapolation,
    gau_vs_mha,
    nbce_retrieval,
    position_probe,
    real_lm_extension,
    tokenizer_sampling,
    unargmaxable,
)

__all__ = ["decoder_only", "dialog", "entropy_invariance", "extrapolation", "gau_vs_mha",
           "nbce_retrieval", "position_probe", "real_lm_extension", "tokenizer_sampling",
           "unargmaxable"]
