"""Byte-level unigram tokenizer with exact Viterbi sampling.

- :class:`UnigramTokenizer` — lossless byte-level unigram tokenizer: Viterbi ``encode``, perfect
  sampling ``encode(text, alpha=α)`` ∝ ``p(seg)^α`` (kexue.fm/archives/9811), the legacy pairwise
  sampler (kexue.fm/archives/9768), ``log_partition``, HF-style ``__call__``, versioned JSON
  ``save``/``load`` and ``UnigramTokenizer.train`` (BytePiece-style byte vocabularies,
  kexue.fm/archives/9752).
- :class:`UnigramLattice` — the same lattice over any toy vocabulary, with the brute-force oracle
  :func:`enumerate_segmentations`.
- :mod:`.reference` is the readable pure-Python implementation; :mod:`._kernels` the numba one
  (extra ``fast``), chosen through :data:`BACKENDS`.
"""

from .engine import BACKENDS, make_engine, numba_available
from .lattice import DEFAULT_SPECIAL_TOKENS, SAMPLERS, UnigramLattice
from .reference import Match, SplitMix64, enumerate_segmentations
from .tokenizer import FORMAT_VERSION, UnigramTokenizer, train_unigram

__all__ = [
    "BACKENDS",
    "DEFAULT_SPECIAL_TOKENS",
    "FORMAT_VERSION",
    "SAMPLERS",
    "Match",
    "SplitMix64",
    "UnigramLattice",
    "UnigramTokenizer",
    "enumerate_segmentations",
    "make_engine",
    "numba_available",
    "train_unigram",
]
