"""Analysis tools: attribution, transport distances, Gaussians, geometry, diagnostics."""

from .attribution import (
    IG_MODES,
    QUADRATURES,
    TOKEN_REDUCTIONS,
    IntegratedGradients,
    embedding_ig,
    token_scores,
)
from .gaussian import (
    gaussian_bhattacharyya,
    gaussian_entropy,
    gaussian_hellinger,
    gaussian_kl,
    gaussian_w2,
    sqrtm_psd,
)
from .textdist import (
    TEXT_DISTANCES,
    TopK,
    rwmd,
    rwrd,
    transport_topk,
    wcd,
    wmd,
    wrd,
    wrd_lower_bound,
    wrd_similarity,
)
from .transport import TRANSPORT_SOLVERS, emd, sinkhorn

__all__ = [
    "IG_MODES",
    "QUADRATURES",
    "TOKEN_REDUCTIONS",
    "IntegratedGradients",
    "embedding_ig",
    "token_scores",
    "TEXT_DISTANCES",
    "TRANSPORT_SOLVERS",
    "TopK",
    "emd",
    "gaussian_bhattacharyya",
    "gaussian_entropy",
    "gaussian_hellinger",
    "gaussian_kl",
    "gaussian_w2",
    "sqrtm_psd",
    "rwmd",
    "rwrd",
    "sinkhorn",
    "transport_topk",
    "wcd",
    "wmd",
    "wrd",
    "wrd_lower_bound",
    "wrd_similarity",
]
