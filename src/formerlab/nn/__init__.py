"""Building blocks: norms, feed-forward layers, GELU approximations, init schemes, recompute."""

from .ffn import FFNS, MLP, SwiGLU, build_ffn
from .norms import NORMS, RMSNorm, build_norm
from .state import Growable, LayerState, RecurrentState, StateMismatchError

__all__ = ["FFNS", "MLP", "NORMS", "Growable", "LayerState", "RMSNorm", "RecurrentState", "StateMismatchError",
           "SwiGLU", "build_ffn", "build_norm"]

# --- activations, initialisation, recompute ---
from .activations import (
    GELU,
    fit_gelu_sigmoid_coefficient,
    fit_gelu_tanh_coefficient,
    gelu,
    get_activation,
)
from .init import (
    INIT_SCHEMES,
    NTKLinear,
    Residual,
    ScaledActivation,
    attach_alpha_ramp,
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
    "INIT_SCHEMES",
    "attach_alpha_ramp",
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
