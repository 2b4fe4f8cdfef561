"""Lattice backends: the compiled numba kernels and the pure-Python reference, behind one interface.

An :class:`Engine` holds a list of pieces (index ``0 … P−1``) with their scores and runs batched
Viterbi decoding, perfect sampling (kexue.fm/archives/9811), legacy sampling
(kexue.fm/archives/9768), log-partitions and expected counts over texts given as bytes. Texts come
as a list of ``bytes`` or a :class:`Packed` buffer; results are flat ``int32`` piece indices plus
``int64`` offsets (``n + 1`` entries).

Backends are a :class:`~formerlab.registry.Registry`: ``"numba"`` (extra ``fast``; kernels in
:mod:`._kernels`, compiled with ``cache=True`` on first use) and ``"python"``
(:mod:`.reference`). ``"auto"`` picks numba when it imports and otherwise falls back to the
reference with a one-time ``RuntimeWarning``. Both consume the same SplitMix64 uniform stream,
so the same seeds give the same samples on either backend.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Sequence

import numpy as np

from ..registry import Registry
from . import reference as ref

__all__ = [
    "BACKENDS", "Engine", "NumbaEngine", "Packed", "PythonEngine", "make_engine", "pack", "pack_str",
]

BACKENDS: Registry[type[Engine]] = Registry("lattice backend")
_WARNED = False


class Packed:
    """A batch of texts as one ``uint8`` buffer plus ``int64`` offsets (``n + 1`` entries)."""

    __slots__ = ("buf", "offsets")

    def __init__(self, buf: np.ndarray, offsets: np.ndarray) -> None:
        self.buf, self.offsets = buf, offsets

    def __len__(self) -> int:
        return self.offsets.shape[0] - 1

    def __getitem__(self, i: int) -> bytes:
        return self.buf[self.offsets[i] : self.offsets[i + 1]].tobytes()

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def sizes(self) -> np.ndarray:
        return np.diff(self.offsets)

    def take(self, start: int, stop: int) -> Packed:
        """Texts ``start … stop − 1`` as a new batch (views, no copy of the bytes)."""
        lo, hi = self.offsets[start], self.offsets[stop]
        return Packed(self.buf[lo:hi], self.offsets[start : stop + 1] - lo)


def pack(texts: Sequence[bytes] | Packed) -> Packed:
    """Concatenate byte strings into one buffer plus offsets (a :class:`Packed` passes through)."""
    if isinstance(texts, Packed):
        return texts
    offsets = np.zeros(len(texts) + 1, np.int64)
    if texts:
        np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)), out=offsets[1:])
    return Packed(np.frombuffer(b"".join(texts), np.uint8), offsets)


def pack_str(texts: Sequence[object]) -> Packed | None:
    """Fast path for a batch of ``str``: one join and one UTF-8 encode; None if not all ``str``.

    The UTF-8 of a concatenation is the concatenation of the UTF-8s, so only the byte lengths
    are needed per text (``len`` itself for ASCII texts). Lone surrogates also give None, so the
    caller's slow path can name the offending text.
    """
    try:
        data = "".join(texts).encode("utf-8")
    except (TypeError, UnicodeEncodeError):
        return None
    n = len(texts)
    if len(data) == sum(map(len, texts)):  # all ASCII
        lengths = np.fromiter(map(len, texts), np.int64, n)
    else:
        lengths = np.fromiter((len(t) if t.isascii() else len(t.encode("utf-8")) for t in texts),
                              np.int64, n)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Packed(np.frombuffer(data, np.uint8), offsets)


def _unsegmentable(index: int) -> ValueError:
    return ValueError(
        f"text {index} cannot be segmented with this vocabulary "
        "(some byte is not covered by any piece)"
    )


class Engine:
    """Common interface; ``pieces[i]`` has score ``scores[i]``."""

    name = "base"

    def __init__(self, pieces: Sequence[bytes], scores: Sequence[float]) -> None:
        self.pieces = list(pieces)
        self.scores = np.asarray(scores, dtype=np.float64)
        self.max_piece = max((len(p) for p in self.pieces), default=1)

    def with_scores(self, scores: Sequence[float]) -> Engine:
        """The same pieces with new scores (the numba trie is shared, not rebuilt)."""
        return type(self)(self.pieces, scores)

    def viterbi(self, texts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def sample(
        self, texts: Sequence[bytes], alpha: float, seeds: np.ndarray, *, legacy: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def log_partition(self, texts: Sequence[bytes], alpha: float) -> np.ndarray:
        raise NotImplementedError

    def expected_counts(
        self, texts: Sequence[bytes], weights: np.ndarray, alpha: float
    ) -> tuple[np.ndarray, float]:
        raise NotImplementedError

    def viterbi_counts(
        self, texts: Sequence[bytes], weights: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """Weighted Viterbi piece counts and the weighted total Viterbi score."""
        ids, offsets = self.viterbi(texts)
        per_token = np.repeat(np.asarray(weights, np.float64), np.diff(offsets))
        counts = np.bincount(ids, weights=per_token, minlength=len(self.pieces))
        return counts, float(np.dot(per_token, self.scores[ids]))

    def alternative_scores(self) -> np.ndarray:
        """Best score of each piece's bytes split into ≥ 2 pieces (``-inf`` if impossible)."""
        raise NotImplementedError


@BACKENDS.register("python", aliases=("reference",))
class PythonEngine(Engine):
    """The readable reference (:mod:`.reference`); slow, used as oracle and fallback."""

    name = "python"

    def __init__(self, pieces: Sequence[bytes], scores: Sequence[float]) -> None:
        super().__init__(pieces, scores)
        self.vocab = {p: float(v) for p, v in zip(self.pieces, self.scores)}
        self.index = {p: i for i, p in enumerate(self.pieces)}

    def _matches(self, text: bytes, *, longest_first: bool = False) -> list[ref.Match]:
        return ref.find_matches(text, self.vocab, self.max_piece, longest_first=longest_first)

    def _flatten(self, segs: list[list[bytes]]) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array([self.index[p] for seg in segs for p in seg], np.int32)
        offsets = np.zeros(len(segs) + 1, np.int64)
        np.cumsum([len(seg) for seg in segs], out=offsets[1:])
        return ids, offsets

    def _each(self, texts: Sequence[bytes], fn) -> list[list[bytes]]:
        out = []
        for i, text in enumerate(texts):
            try:
                out.append(fn(i, text))
            except ValueError as err:
                raise _unsegmentable(i) from err
        return out

    def viterbi(self, texts):
        return self._flatten(self._each(texts, lambda i, t: ref.viterbi(t, self._matches(t))[0]))

    def sample(self, texts, alpha, seeds, *, legacy=False):
        fn = ref.legacy_sample if legacy else ref.perfect_sample

        def one(i: int, text: bytes) -> list[bytes]:
            matches = self._matches(text, longest_first=legacy)  # legacy: BytePiece's order
            return fn(text, matches, alpha, ref.SplitMix64(int(seeds[i])))

        return self._flatten(self._each(texts, one))

    def log_partition(self, texts, alpha):
        return np.array([ref.log_partition(t, self._matches(t), alpha) for t in texts])

    def expected_counts(self, texts, weights, alpha):
        counts = np.zeros(len(self.pieces))
        loglik = 0.0
        for text, w in zip(texts, weights):
            matches = self._matches(text)
            try:
                fwd, _, per_match = ref.forward_backward(text, matches, alpha)
            except ValueError:
                return counts, float("-inf")
            for (s, e, _), c in zip(matches, per_match):
                counts[self.index[text[s:e]]] += w * c
            loglik += w * fwd[len(text)]
        return counts, loglik

    def alternative_scores(self):
        out = np.full(len(self.pieces), -np.inf)
        for i, piece in enumerate(self.pieces):
            n = len(piece)
            matches = [m for m in self._matches(piece) if (m.start, m.end) != (0, n)]
            try:
                out[i] = ref.viterbi(piece, matches)[1]
            except ValueError:
                pass
        return out


@BACKENDS.register("numba", aliases=("fast",))
class NumbaEngine(Engine):
    """Compiled kernels (:mod:`._kernels`): reversed byte trie + single-pass lattice."""

    name = "numba"

    def __init__(self, pieces: Sequence[bytes], scores: Sequence[float]) -> None:
        from . import _kernels, _trie  # import numba; ImportError when the extra is missing

        super().__init__(pieces, scores)
        self._k = _kernels
        packed = pack(self.pieces)
        pbuf, poffsets = packed.buf, packed.offsets
        self._pbuf, self._poffsets = pbuf, poffsets
        rev = [p[::-1] for p in self.pieces]
        order = sorted(range(len(rev)), key=rev.__getitem__)
        rpacked = pack([rev[i] for i in order])
        trie, pid, dup = _trie.build_trie(rpacked.buf, rpacked.offsets,
                                             np.array(order, np.int32))
        if dup >= 0:
            raise ValueError(f"duplicate piece {self.pieces[dup]!r}")
        self._trie = (trie, pid)
        self._lengths = np.diff(poffsets).astype(np.float64)
        self._ew_alpha: float | None = None
        self._ew: np.ndarray | None = None
        #: use the exp-free scaled-linear kernels when safe (False: always the log-space ones)
        self.linear_sampling = True

    def with_scores(self, scores: Sequence[float]) -> NumbaEngine:
        clone = copy.copy(self)
        clone.scores = np.asarray(scores, dtype=np.float64)
        if clone.scores.shape != self.scores.shape:
            raise ValueError(f"expected {self.scores.shape[0]} scores, got {clone.scores.shape[0]}")
        clone._ew_alpha, clone._ew = None, None
        return clone

    def _args(self, texts: Sequence[bytes] | Packed):
        packed = pack(texts)
        return (packed.buf, packed.offsets, *self._trie, self.scores, self.max_piece)

    def viterbi(self, texts):
        ids, offsets, status = self._k.viterbi_batch(*self._args(texts))
        if status >= 0:
            raise _unsegmentable(int(status))
        return ids, offsets

    def linear_weights(self, alpha: float) -> tuple[np.ndarray | None, float]:
        """``(exp(α·v − c·len), c)`` for the linear-space kernels; None if out of safe range.

        The per-byte shift ``c`` (median of ``α·v/len``) keeps the scaled forward sums near 1.
        """
        if self._ew_alpha != alpha:
            a = alpha * self.scores
            c = float(np.median(a / self._lengths))
            log2w = (a - c * self._lengths) / math.log(2.0)
            safe = log2w.size > 0 and np.abs(log2w).max() <= 200.0
            self._ew = (np.exp2(log2w) if safe else None, c)
            self._ew_alpha = alpha
        return self._ew

    def sample(self, texts, alpha, seeds, *, legacy=False):
        seeds = np.ascontiguousarray(seeds, dtype=np.uint64)
        args = self._args(texts)
        ew = None if legacy or not self.linear_sampling else self.linear_weights(float(alpha))[0]
        if ew is not None:
            ids, offsets, status = self._k.sample_linear_batch(*args[:-2], ew, args[-1], seeds)
            if status < 0:
                return ids, offsets
        kernel = self._k.legacy_batch if legacy else self._k.sample_batch
        ids, offsets, status = kernel(*args, float(alpha), seeds)
        if status >= 0:
            raise _unsegmentable(int(status))
        return ids, offsets

    def log_partition(self, texts, alpha):
        return self._k.log_partition_batch(*self._args(texts), float(alpha))

    def expected_counts(self, texts, weights, alpha):
        packed = pack(texts)
        ew, shift = self.linear_weights(float(alpha))
        if ew is None or not self.linear_sampling:
            ew = np.zeros(0)
        counts, loglik = self._k.expected_counts_batch(
            packed.buf, packed.offsets, np.asarray(weights, np.float64), *self._trie, self.scores,
            self.max_piece, float(alpha), ew, shift, len(self.pieces),
        )
        return counts, float(loglik)

    def viterbi_counts(self, texts, weights):
        packed = pack(texts)
        counts, total = self._k.viterbi_counts_batch(
            packed.buf, packed.offsets, np.asarray(weights, np.float64), *self._trie, self.scores,
            self.max_piece,
        )
        if total == -np.inf:
            raise ValueError("a text cannot be segmented with this vocabulary")
        return counts, float(total)

    def alternative_scores(self):
        return self._k.alternative_scores(
            self._pbuf, self._poffsets, *self._trie, self.scores, self.max_piece
        )


def numba_available() -> bool:
    """True when the compiled backend can be used."""
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def make_engine(backend: str, pieces: Sequence[bytes], scores: Sequence[float]) -> Engine:
    """Build an engine; ``backend`` is ``"auto"`` or a name in :data:`BACKENDS`."""
    global _WARNED
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    if backend == "auto":
        if numba_available():
            return NumbaEngine(pieces, scores)
        if not _WARNED:
            warnings.warn(
                "numba is not installed: the tokenizer lattice falls back to the slow pure-Python "
                "reference; install the 'fast' extra (pip install 'formerlab[fast]')",
                RuntimeWarning,
                stacklevel=3,
            )
            _WARNED = True
        return PythonEngine(pieces, scores)
    if backend not in BACKENDS:
        valid = ", ".join(["auto", *BACKENDS.names(include_aliases=True)])
        raise ValueError(f"unknown lattice backend {backend!r}; valid backends: {valid}")
    cls = BACKENDS.get(backend)
    if cls is NumbaEngine and not numba_available():
        raise ImportError("backend='numba' needs numba: pip install 'formerlab[fast]'")
    return cls(pieces, scores)
