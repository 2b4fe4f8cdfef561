"""Diffusion models in Su's notation: DDPM, the SDE / ODE framework, samplers, exact toy data.

Posts: kexue.fm/archives/9152 (DDPM as an autoregressive VAE), 9181 (DDIM), 9209 (the SDE
framework), 9228 (the ODE). :mod:`.schedule` maps Su's letters to the DDPM paper's.
"""

from .ddpm import ddim_sample, ddpm_loss, ddpm_sample, q_sample
from .schedule import DDPM_SCHEDULES, SIGMA_CHOICES, DDPMSchedule
from .sde import (
    ODE_SOLVERS,
    SDE_PRESETS,
    VE,
    VP,
    DDPMLike,
    MarginalSDE,
    dsm_loss,
    eps_to_score,
    make_sde,
    probability_flow,
    probability_flow_sample,
    reverse_sde_sample,
    score_to_eps,
)
from .toy import (
    TOY_DATASETS,
    GaussianMixture,
    energy_distance,
    gaussian_mixture,
    make_toy,
    mode_frequencies,
)

__all__ = [
    "DDPM_SCHEDULES",
    "ODE_SOLVERS",
    "SDE_PRESETS",
    "SIGMA_CHOICES",
    "TOY_DATASETS",
    "VE",
    "VP",
    "DDPMLike",
    "DDPMSchedule",
    "GaussianMixture",
    "MarginalSDE",
    "ddim_sample",
    "ddpm_loss",
    "ddpm_sample",
    "dsm_loss",
    "energy_distance",
    "eps_to_score",
    "gaussian_mixture",
    "make_sde",
    "make_toy",
    "mode_frequencies",
    "probability_flow",
    "probability_flow_sample",
    "q_sample",
    "reverse_sde_sample",
    "score_to_eps",
]
