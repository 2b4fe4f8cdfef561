"""Training objectives: the language-model loss, EMO (kexue.fm/archives/9797), contrastive losses
with exact gradient accumulation (kexue.fm/archives/8471) and generalisation regularisers
(kexue.fm/archives/7466). The package depends on torch only (models import it, not the reverse)."""

from .contrastive import (
    ContrastiveAccumulator,
    cached_backward,
    capture_rng_state,
    info_nce,
    replay_forward_backward,
    replay_rng,
    split_batch,
)
from .emo import cosine_cost_matrix, emd_exact, emo_ce_loss, emo_loss
from .lm import causal_lm_loss
from .regularizers import (
    CONSISTENCY_DISTANCES,
    double_backward_attention,
    embedding_perturbation,
    fgm_loss,
    fgm_perturb,
    gradient_penalty,
    noise_consistency_regularizer,
    noisy_loss,
    pgd_loss,
    vat_direction,
    vat_loss,
)

__all__ = [
    "CONSISTENCY_DISTANCES",
    "ContrastiveAccumulator",
    "cached_backward",
    "capture_rng_state",
    "causal_lm_loss",
    "cosine_cost_matrix",
    "double_backward_attention",
    "emd_exact",
    "embedding_perturbation",
    "emo_ce_loss",
    "emo_loss",
    "fgm_loss",
    "fgm_perturb",
    "gradient_penalty",
    "info_nce",
    "noise_consistency_regularizer",
    "noisy_loss",
    "pgd_loss",
    "replay_forward_backward",
    "replay_rng",
    "split_batch",
    "vat_direction",
    "vat_loss",
]
