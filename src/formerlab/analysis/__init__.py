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
from .geometry import ORTHOGONAL_MAPS, apply_orthogonal_map, orthogonal_map
from .logistic import (
    fit_gaussian_binary_classifier,
    fit_gaussian_linear_classifier,
    fit_gaussian_linear_regression,
    shared_covariance,
)
from .similarity import (
    BlockCosine,
    blockwise_cosine,
    cosine,
    local_global_counterexample,
    model_update_alignment,
    pearson_via_cosine,
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
    "ORTHOGONAL_MAPS",
    "BlockCosine",
    "apply_orthogonal_map",
    "blockwise_cosine",
    "cosine",
    "local_global_counterexample",
    "model_update_alignment",
    "orthogonal_map",
    "pearson_via_cosine",
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
    "fit_gaussian_binary_classifier",
    "fit_gaussian_linear_classifier",
    "fit_gaussian_linear_regression",
    "shared_covariance",
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
