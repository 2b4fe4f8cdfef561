"""The unigram segmentation lattice over an arbitrary piece vocabulary.

:class:`UnigramLattice` answers every lattice question for a vocabulary ``{piece: log p}``:
matches, Viterbi decoding (kexue.fm/archives/9752), perfect sampling ∝ ``p(seg)^α``
(kexue.fm/archives/9811), the legacy pairwise sampler (kexue.fm/archives/9768), ``log Z``,
forward–backward expected counts and, for tests, the brute-force list of segmentations with their
exact probabilities. Unlike :class:`~formerlab.tokenize.UnigramTokenizer` it does **not** add the
256 single bytes, so toy vocabularies (the post's "watching" example) can be studied exactly; a
text it cannot segment raises ``ValueError``.

Conventions (see :mod:`.reference`): canonical arrival order = end ascending, shorter pieces first;
Viterbi ties go to the longest last piece; samplers take ``generator: torch.Generator | None`` and
draw one 64-bit seed per text from it (``None`` → fresh OS entropy; global RNG never touched).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from numbers import Real

import numpy as np
import torch

from ..registry import Registry
from . import reference as ref
from .engine import Engine, make_engine

__all__ = [
    "DEFAULT_SPECIAL_TOKENS",
    "SAMPLERS",
    "UnigramLattice",
    "as_bytes",
    "check_alpha",
    "draw_seeds",
]

#: special tokens of a new tokenizer (ids 0, 1, 2)
DEFAULT_SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>")

#: Sampling algorithms by name; the value says whether it is the legacy sampler.
SAMPLERS: Registry[bool] = Registry("sampler")
SAMPLERS.add("perfect", False, aliases=("exact",), post="https://kexue.fm/archives/9811")
SAMPLERS.add("legacy", True, aliases=("pairwise",), post="https://kexue.fm/archives/9768")


def as_bytes(text: object, what: str = "text") -> bytes:
    """``str`` → UTF-8 bytes; bytes-like → bytes; anything else → ``TypeError``."""
    if isinstance(text, str):
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError as err:
            raise ValueError(
                f"{what} contains a character that UTF-8 cannot encode "
                f"({text[err.start]!r} at index {err.start}, a lone surrogate?)"
            ) from None
    if isinstance(text, (bytes, bytearray, memoryview)):
        return bytes(text)
    raise TypeError(f"{what} must be str or bytes, got {type(text).__name__}")


def check_alpha(alpha: object) -> float:
    """Validate a sampling exponent: a finite real ``≥ 0``."""
    if isinstance(alpha, bool) or not isinstance(alpha, Real):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    value = float(alpha)
    if not math.isfinite(value) or value < 0:
        raise ValueError(
            f"alpha must be a finite number >= 0 (None selects Viterbi decoding), got {alpha!r}"
        )
    return value


def draw_seeds(generator: torch.Generator | None, n: int) -> np.ndarray:
    """``n`` 64-bit seeds for the SplitMix64 streams, drawn from ``generator``.

    ``generator=None`` uses fresh OS entropy (not reproducible, global RNG untouched).
    """
    if generator is None:
        return np.frombuffer(os.urandom(8 * n), dtype=np.uint64).copy()
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if n == 0:
        return np.zeros(0, np.uint64)
    draws = torch.randint(-(2**63), 2**63 - 1, (n,), generator=generator, dtype=torch.int64)
    return draws.numpy().view(np.uint64).copy()


def check_vocab(vocab: object) -> dict[bytes, float]:
    """Validate ``{piece: score}``: non-empty bytes keys, finite real scores."""
    if not isinstance(vocab, Mapping):
        raise TypeError(f"pieces must be a mapping of bytes to float, got {type(vocab).__name__}")
    out: dict[bytes, float] = {}
    for piece, score in vocab.items():
        if not isinstance(piece, (bytes, bytearray)):
            hint = " (encode str pieces with .encode('utf-8'))" if isinstance(piece, str) else ""
            raise TypeError(f"piece keys must be bytes, got {type(piece).__name__} {piece!r}{hint}")
        if not piece:
            raise ValueError("the empty byte string cannot be a piece")
        if isinstance(score, bool) or not isinstance(score, Real):
            raise TypeError(f"score of piece {bytes(piece)!r} must be a real number, got {score!r}")
        if not math.isfinite(float(score)):
            raise ValueError(f"score of piece {bytes(piece)!r} must be finite, got {score!r}")
        out[bytes(piece)] = float(score)
    return out


class UnigramLattice:
    """Lattice operations for the vocabulary ``vocab`` (``{piece: log-probability}``).

    Args:
        vocab: Pieces (non-empty ``bytes``) and their scores (finite floats).
        backend: ``"auto"`` (numba if installed), ``"numba"`` or ``"python"`` (reference).

    Example:
        >>> lat = UnigramLattice({b"a": math.log(.5), b"b": math.log(.3), b"ab": math.log(.2)},
        ...                      backend="python")
        >>> lat.viterbi(b"ab")
        [b'ab']
        >>> round(math.exp(lat.log_partition(b"ab", alpha=1.0)), 6)
        0.35
    """

    def __init__(self, vocab: Mapping[bytes, float], *, backend: str = "auto") -> None:
        self.vocab = check_vocab(vocab)
        self.pieces = list(self.vocab)
        self.index = {p: i for i, p in enumerate(self.pieces)}
        self.max_piece_bytes = max((len(p) for p in self.pieces), default=1)
        self.engine: Engine = make_engine(backend, self.pieces, list(self.vocab.values()))

    @property
    def backend(self) -> str:
        return self.engine.name

    def __repr__(self) -> str:
        return f"UnigramLattice({len(self.pieces)} pieces, backend={self.backend!r})"

    # -- oracle-style helpers (pure Python) ---------------------------------------------------
    def matches(self, text: str | bytes) -> list[ref.Match]:
        """All ``(start, end, score)`` matches in canonical order (end ascending, shorter first)."""
        return ref.find_matches(as_bytes(text), self.vocab, self.max_piece_bytes)

    def enumerate_segmentations(
        self, text: str | bytes, *, limit: int = 1_000_000
    ) -> list[tuple[bytes, ...]]:
        """Every segmentation (brute force; raises ``ValueError`` beyond ``limit``)."""
        return ref.enumerate_segmentations(as_bytes(text), self.vocab, limit=limit)

    def score(self, segmentation: Sequence[bytes]) -> float:
        """``Σ log p(piece)`` of a segmentation."""
        return ref.segmentation_score(segmentation, self.vocab)

    def exact_distribution(
        self, text: str | bytes, alpha: float = 1.0
    ) -> dict[tuple[bytes, ...], float]:
        """Brute-force ``P(seg) = exp(α·score) / Z`` for every segmentation of a short text."""
        alpha = check_alpha(alpha)
        segs = self.enumerate_segmentations(text)
        if not segs:
            raise ValueError("text cannot be segmented with this vocabulary")
        logw = np.array([alpha * self.score(s) for s in segs])
        probs = np.exp(logw - logw.max())
        probs /= probs.sum()
        return dict(zip(segs, probs.tolist()))

    # -- lattice algorithms (engine) -----------------------------------------------------------
    def _pieces(self, ids: np.ndarray) -> list[bytes]:
        return [self.pieces[i] for i in ids.tolist()]

    def viterbi(self, text: str | bytes) -> list[bytes]:
        """The best segmentation (ties: longest last piece)."""
        data = as_bytes(text)
        ids, _ = self.engine.viterbi([data])
        return self._pieces(ids)

    def sample(
        self,
        text: str | bytes,
        alpha: float,
        generator: torch.Generator | None = None,
        *,
        sampler: str = "perfect",
    ) -> list[bytes]:
        """One segmentation drawn with probability ``∝ exp(α·score)`` (``sampler="perfect"``).

        ``sampler="legacy"`` uses the biased pairwise sampler of kexue.fm/archives/9768.
        """
        data = as_bytes(text)
        legacy = SAMPLERS.get(sampler)
        ids, _ = self.engine.sample(
            [data], check_alpha(alpha), draw_seeds(generator, 1), legacy=legacy
        )
        return self._pieces(ids)

    def legacy_sample(
        self, text: str | bytes, alpha: float, generator: torch.Generator | None = None
    ) -> list[bytes]:
        """The legacy pairwise sampler (kexue.fm/archives/9768): biased towards late arrivals."""
        return self.sample(text, alpha, generator, sampler="legacy")

    def sample_many(
        self,
        text: str | bytes,
        alpha: float,
        num_samples: int,
        generator: torch.Generator | None = None,
        *,
        sampler: str = "perfect",
    ) -> list[tuple[bytes, ...]]:
        """``num_samples`` independent samples of the same text in one engine call."""
        data = as_bytes(text)
        legacy = SAMPLERS.get(sampler)
        seeds = draw_seeds(generator, num_samples)
        ids, offsets = self.engine.sample(
            [data] * num_samples, check_alpha(alpha), seeds, legacy=legacy
        )
        flat = [self.pieces[i] for i in ids.tolist()]
        return [tuple(flat[a:b]) for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist())]

    def log_partition(self, text: str | bytes, alpha: float = 1.0) -> float:
        """``log Σ_seg exp(α·score(seg))`` (float64; ``-inf`` if the text cannot be segmented)."""
        return float(self.engine.log_partition([as_bytes(text)], check_alpha(alpha))[0])

    def expected_counts(self, text: str | bytes, alpha: float = 1.0) -> dict[bytes, float]:
        """Expected number of occurrences of each piece under ``P(seg) ∝ exp(α·score)``."""
        counts, loglik = self.engine.expected_counts(
            [as_bytes(text)], np.ones(1), check_alpha(alpha)
        )
        if loglik == -math.inf:
            raise ValueError("text cannot be segmented with this vocabulary")
        return {self.pieces[i]: float(counts[i]) for i in np.flatnonzero(counts)}
