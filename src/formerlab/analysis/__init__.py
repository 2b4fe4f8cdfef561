"""Analysis tools: attribution, transport distances, Gaussians, geometry, diagnostics."""

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
    "TEXT_DISTANCES",
    "TRANSPORT_SOLVERS",
    "TopK",
    "emd",
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
