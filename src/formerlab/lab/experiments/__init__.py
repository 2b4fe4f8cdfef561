"""One module per registered experiment; importing this package registers them all."""

from . import (
    decoder_only,
    entropy_invariance,
    extrapolation,
    gau_vs_mha,
    position_probe,
    real_lm_extension,
    tokenizer_sampling,
)

__all__ = ["decoder_only", "entropy_invariance", "extrapolation", "gau_vs_mha", "position_probe",
           "real_lm_extension", "tokenizer_sampling"]
