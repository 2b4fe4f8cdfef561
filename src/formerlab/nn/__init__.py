"""Building blocks: norms, feed-forward layers, GELU approximations, init schemes, recompute."""

from .ffn import MLP, SwiGLU, build_ffn
from .norms import RMSNorm, build_norm

__all__ = ["MLP", "RMSNorm", "SwiGLU", "build_ffn", "build_norm"]

# --- activations, initialisation, recompute (issue 4) ---
from .activations import (
    GELU,
    fit_gelu_sigmoid_coefficient,
    fit_gelu_tanh_coefficient,
    gelu,
    get_activation,
)
from .init import (
    NTKLinear,
    Residual,
    ScaledActivation,
    gau_alpha_init_,
    he_,
    lecun_,
    scale_residual_,
    t5_attention_init_,
    tf_truncated_normal_,
    xavier_,
)
from .recompute import (
    disable_recompute,
    enable_recompute,
    recompute,
    recompute_mode,
)

__all__ += [
    "GELU",
    "NTKLinear",
    "Residual",
    "ScaledActivation",
    "disable_recompute",
    "enable_recompute",
    "fit_gelu_sigmoid_coefficient",
    "fit_gelu_tanh_coefficient",
    "gau_alpha_init_",
    "gelu",
    "get_activation",
    "he_",
    "lecun_",
    "recompute",
    "recompute_mode",
    "scale_residual_",
    "t5_attention_init_",
    "tf_truncated_normal_",
    "xavier_",
]
