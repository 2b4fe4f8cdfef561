"""Quantisers: the VQ-VAE vector quantiser and FSQ (kexue.fm/archives/9826, 9844).

A low layer: imports only torch, numpy and :mod:`formerlab.registry`. Both quantisers are
registered in :data:`QUANTIZERS` (``"vq"``, ``"fsq"``) and report code usage as plain numbers.
"""

from .common import QUANTIZERS, build_quantizer, code_counts, round_ste, usage_statistics
from .fsq import FSQ, FSQ_VARIANTS, FSQOutput, FSQVariant, recommended_levels
from .vq import EMA_UPDATES, VectorQuantizer, VQOutput, kmeans

__all__ = [
    "EMA_UPDATES",
    "FSQ",
    "FSQOutput",
    "FSQVariant",
    "FSQ_VARIANTS",
    "QUANTIZERS",
    "VQOutput",
    "VectorQuantizer",
    "build_quantizer",
    "code_counts",
    "kmeans",
    "recommended_levels",
    "round_ste",
    "usage_statistics",
]
