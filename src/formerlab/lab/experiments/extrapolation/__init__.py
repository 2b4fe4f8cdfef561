"""Length extrapolation: train at ``L``, test at ``4L`` and ``8L`` (the blog's master table).

"Transformer升级之路" (kexue.fm/archives/9675, 9706, 9708, 9603, 9731, 9728, 9948) asks which
position scheme keeps a language model working far beyond its training length. The experiment
``extrapolation`` trains small byte-level language models on the default corpus, evaluates every
selected method at ``L``, ``4L``, ``8L`` on a non-repeated and a repeated set plus the
last-``L``-token loss with growing context, and checks the posts' claims over seeds.

- :mod:`.methods` — the evaluated rows (:data:`METHODS`) and the trained model variants;
- :mod:`.config` — :class:`ExtrapolationConfig` and the presets;
- :mod:`.claims` — the claims with their checks and margins;
- :mod:`.experiment` — the registered :class:`Extrapolation` (run, table, figures, notes).
"""

from .claims import CLAIMS
from .config import PRESETS, ExtrapolationConfig, preset_config
from .experiment import Extrapolation, method_styles
from .methods import (
    METHODS,
    MODEL_VARIANTS,
    QUICK_METHODS,
    Method,
    identity_pairs,
    register_method,
    schedule_names,
)

__all__ = [
    "CLAIMS",
    "METHODS",
    "MODEL_VARIANTS",
    "PRESETS",
    "QUICK_METHODS",
    "Extrapolation",
    "ExtrapolationConfig",
    "Method",
    "identity_pairs",
    "method_styles",
    "preset_config",
    "register_method",
    "schedule_names",
]
