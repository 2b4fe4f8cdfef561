"""Byte-level unigram tokenizer with Viterbi decoding and exact (perfect) Viterbi sampling.

BytePiece-style model (kexue.fm/archives/9752): text is UTF-8 bytes, a piece is a byte string with
score ``log p``, a segmentation's probability is ``∝ Π p(piece)``. ``encode(text)`` returns the
Viterbi segmentation; ``encode(text, alpha=α)`` draws a segmentation with probability
``∝ p(seg)^α`` exactly, at the cost of Viterbi decoding (kexue.fm/archives/9811; Subword
Regularization, arXiv 1804.10959, with an unrestricted candidate list). The legacy pairwise sampler
of kexue.fm/archives/9768 is available as ``sampler="legacy"`` for ablations.

Id layout: the special tokens first (default ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2), then the
pieces sorted by (length, bytes); so with the default specials the single byte ``b`` has id
``3 + b`` and multi-byte pieces follow from id 259. All 256 single bytes are always pieces (a
missing one gets ``byte_score``), so every byte string is encodable and
``decode_bytes(encode(x)) == x``; text is never normalised, so ``decode(encode(s)) == s`` for every
``str``. Special tokens are never produced from text ("<bos>" in a text is just bytes).

Randomness: ``generator: torch.Generator | None``; one 64-bit seed per text is drawn from it and
expanded by a SplitMix64 stream in the kernel (one uniform per lattice match), so the same
generator state gives the same samples on every backend and worker count.
"""

from __future__ import annotations

import gc
import itertools
import json
import math
import operator
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .engine import make_engine, pack, pack_str
from .lattice import (
    DEFAULT_SPECIAL_TOKENS,
    SAMPLERS,
    as_bytes,
    check_alpha,
    check_vocab,
    draw_seeds,
)
from .trainer import learn_vocabulary

__all__ = ["DEFAULT_SPECIAL_TOKENS", "FORMAT_NAME", "FORMAT_VERSION", "UnigramTokenizer",
           "train_unigram"]

FORMAT_NAME = "formerlab-unigram"
FORMAT_VERSION = 1
_PADDING = {False: None, "do_not_pad": None, True: "longest", "longest": "longest",
            "max_length": "max_length"}


def _check_specials(special_tokens: object) -> tuple[str, ...]:
    if isinstance(special_tokens, str) or not isinstance(special_tokens, Iterable):
        raise TypeError("special_tokens must be a sequence of strings, e.g. ('<pad>', '<bos>')")
    out = tuple(special_tokens)
    for tok in out:
        if not isinstance(tok, str) or not tok:
            raise TypeError(f"special tokens must be non-empty strings, got {tok!r}")
    if len(set(out)) != len(out):
        raise ValueError(f"special tokens must be unique, got {list(out)}")
    return out


class UnigramTokenizer:
    """Byte-level unigram tokenizer.

    Args:
        pieces: ``{piece bytes: log-probability}``; missing single bytes are added.
        special_tokens: Names of the special tokens, ids ``0 … k−1`` (``<pad>``, ``<bos>``,
            ``<eos>`` are recognised for padding and ``add_bos``/``add_eos``).
        byte_score: Score given to missing single bytes (default ``min(scores) − 10``, or
            ``log(1/256)`` for an empty vocabulary).
        backend: Lattice backend: ``"auto"`` (numba when installed), ``"numba"``, ``"python"``.
        meta: Free-form metadata saved with the vocabulary (e.g. training settings).

    Example:
        >>> tok = UnigramTokenizer({b"ab": -1.0, b"a": -2.0, b"b": -2.0}, backend="python")
        >>> tok.tokenize("abab")
        [b'ab', b'ab']
        >>> tok.decode(tok.encode("abab", add_bos=True))
        'abab'
    """

    def __init__(
        self,
        pieces: Mapping[bytes, float],
        *,
        special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS,
        byte_score: float | None = None,
        backend: str = "auto",
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        vocab = check_vocab(pieces)
        self.special_tokens = _check_specials(special_tokens)
        if byte_score is None:
            byte_score = min(vocab.values()) - 10.0 if vocab else -math.log(256)
        byte_score = check_vocab({b"x": byte_score})[b"x"]
        for b in range(256):
            vocab.setdefault(bytes([b]), byte_score)
        order = sorted(vocab, key=lambda p: (len(p), p))
        self._pieces = order
        self._scores = np.array([vocab[p] for p in order], np.float64)
        self._backend = backend
        self.meta = dict(meta or {})
        self._build()

    def _build(self) -> None:
        k = len(self.special_tokens)
        self._offset = k
        self._piece_to_id = {p: k + i for i, p in enumerate(self._pieces)}
        self._decode_table = [b""] * k + self._pieces
        self._special_bytes = [t.encode("utf-8") for t in self.special_tokens]
        self._id_objects: np.ndarray | None = None
        self._engine = make_engine(self._backend, self._pieces, self._scores)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        for key in ("_engine", "_piece_to_id", "_decode_table", "_special_bytes", "_id_objects"):
            state.pop(key, None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._build()

    # -- vocabulary ------------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        """Number of ids: special tokens plus pieces."""
        return self._offset + len(self._pieces)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return (
            f"UnigramTokenizer(vocab_size={self.vocab_size}, specials={list(self.special_tokens)},"
            f" max_piece_bytes={self.max_piece_bytes}, backend={self.backend!r})"
        )

    @property
    def backend(self) -> str:
        return self._engine.name

    @property
    def max_piece_bytes(self) -> int:
        return self._engine.max_piece

    def _special_id(self, name: str) -> int | None:
        return self.special_tokens.index(name) if name in self.special_tokens else None

    @property
    def pad_id(self) -> int | None:
        return self._special_id("<pad>")

    @property
    def bos_id(self) -> int | None:
        return self._special_id("<bos>")

    @property
    def eos_id(self) -> int | None:
        return self._special_id("<eos>")

    @property
    def pieces(self) -> dict[bytes, float]:
        """``{piece: score}`` in id order (a copy)."""
        return dict(zip(self._pieces, self._scores.tolist()))

    def piece_to_id(self, piece: bytes | str) -> int:
        """Id of a piece (``str`` is UTF-8 encoded); ``ValueError`` if it is not in the vocab."""
        data = as_bytes(piece, "piece")
        if data not in self._piece_to_id:
            raise ValueError(f"{data!r} is not a piece of this vocabulary")
        return self._piece_to_id[data]

    def id_to_piece(self, token_id: int) -> bytes | str:
        """The piece bytes of an id, or the special token's name."""
        i = self._check_ids([token_id])[0]
        return self.special_tokens[i] if i < self._offset else self._decode_table[i]

    def score(self, token_id: int) -> float:
        """Log-probability of a piece id (``nan`` for special tokens)."""
        i = self._check_ids([token_id])[0]
        return float("nan") if i < self._offset else float(self._scores[i - self._offset])

    # -- encoding --------------------------------------------------------------------------------
    def _plan(self, n: int, alpha, generator, sampler) -> tuple[float | None, np.ndarray | None]:
        """Validate the sampling arguments; return ``(alpha, seeds)`` (both None for Viterbi)."""
        if alpha is None:
            if generator is not None and not isinstance(generator, torch.Generator):
                raise TypeError(
                    f"generator must be a torch.Generator or None, got {type(generator).__name__}"
                )
            return None, None
        SAMPLERS.get(sampler)  # ValueError listing the samplers
        return check_alpha(alpha), draw_seeds(generator, n)

    def _run(self, datas, alpha, generator, sampler) -> tuple[np.ndarray, np.ndarray]:
        alpha, seeds = self._plan(len(datas), alpha, generator, sampler)
        if alpha is None:
            return self._engine.viterbi(datas)
        return self._engine.sample(datas, alpha, seeds, legacy=SAMPLERS.get(sampler))

    def _wrap(self, ids: list[int], add_bos: bool, add_eos: bool) -> list[int]:
        if add_bos:
            if self.bos_id is None:
                raise ValueError("add_bos=True needs a '<bos>' special token")
            ids.insert(0, self.bos_id)
        if add_eos:
            if self.eos_id is None:
                raise ValueError("add_eos=True needs an '<eos>' special token")
            ids.append(self.eos_id)
        return ids

    def encode(
        self,
        text: str | bytes,
        *,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        sampler: str = "perfect",
    ) -> list[int]:
        """Token ids of ``text``.

        Args:
            text: ``str`` (encoded as UTF-8, no normalisation) or bytes.
            alpha: ``None`` → Viterbi decoding; ``α ≥ 0`` → sample a segmentation with
                probability ``∝ exp(α·log p(seg))`` (``0`` = uniform over segmentations).
            generator: Source of randomness for sampling (``None`` → fresh OS entropy).
            add_bos, add_eos: Add ``<bos>``/``<eos>``.
            sampler: ``"perfect"`` (exact, default) or ``"legacy"`` (biased, ablations only).
        """
        ids, _ = self._run([as_bytes(text)], alpha, generator, sampler)
        return self._wrap((ids + self._offset).tolist(), add_bos, add_eos)

    def encode_batch(
        self,
        texts: Iterable[str | bytes],
        *,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        sampler: str = "perfect",
        num_workers: int = 1,
    ) -> list[list[int]]:
        """Encode many texts in one kernel call, or across ``num_workers`` processes.

        The seeds for sampling are drawn in this process, one per text in order, so the result
        does not depend on ``num_workers``.
        """
        if isinstance(texts, (str, bytes, bytearray, memoryview)):
            raise TypeError("encode_batch expects a sequence of texts; use encode() for one text")
        if not isinstance(texts, (list, tuple)):
            texts = list(texts)
        datas = pack_str(texts)  # all-str batch: one join, one encode
        if datas is None:
            try:
                datas = pack([t.encode("utf-8") if type(t) is str else as_bytes(t) for t in texts])
            except UnicodeEncodeError:  # redo slowly for a message naming the text
                datas = pack([as_bytes(t, f"texts[{i}]") for i, t in enumerate(texts)])
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"num_workers must be an integer >= 1, got {num_workers!r}")
        if num_workers > 1 and len(datas) > 1:
            from .parallel import encode_parallel

            alpha, seeds = self._plan(len(datas), alpha, generator, sampler)
            ids, offsets = encode_parallel(self, datas, alpha, seeds, sampler, num_workers)
        else:
            ids, offsets = self._run(datas, alpha, generator, sampler)
        return self._split(ids, offsets, add_bos, add_eos)

    def _split(self, ids: np.ndarray, offsets: np.ndarray, add_bos: bool, add_eos: bool):
        if self._id_objects is None:  # one shared Python int per id: no int allocation per token
            self._id_objects = np.array(range(self._offset, self.vocab_size), dtype=object)
        flat = self._id_objects[ids].tolist()
        bounds = offsets.tolist()
        # building many small lists triggers the cyclic GC again and again (10x slower); the
        # lists hold only ints, so pausing the collector here is safe
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            rows = [flat[a:b] for a, b in itertools.pairwise(bounds)]
        finally:
            if was_enabled:
                gc.enable()
        if add_bos or add_eos:
            rows = [self._wrap(r, add_bos, add_eos) for r in rows]
        return rows

    def tokenize(
        self,
        text: str | bytes,
        *,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
        sampler: str = "perfect",
    ) -> list[bytes]:
        """The pieces (as bytes) of :meth:`encode`."""
        ids, _ = self._run([as_bytes(text)], alpha, generator, sampler)
        return [self._pieces[i] for i in ids.tolist()]

    def log_partition(self, text: str | bytes, alpha: float = 1.0) -> float:
        """``log Σ_seg p(seg)^α`` over all segmentations of ``text`` (float64)."""
        return float(self._engine.log_partition([as_bytes(text)], check_alpha(alpha))[0])

    def expected_counts(self, text: str | bytes, alpha: float = 1.0) -> dict[int, float]:
        """Forward–backward expected count of every id under ``P(seg) ∝ p(seg)^α``."""
        counts, _ = self._engine.expected_counts([as_bytes(text)], np.ones(1), check_alpha(alpha))
        return {int(i) + self._offset: float(counts[i]) for i in np.flatnonzero(counts)}

    def bytes_per_token(self, texts: Iterable[str | bytes], *, alpha: float | None = None) -> float:
        """Compression: total UTF-8 bytes / total tokens of the Viterbi (or sampled) encodings."""
        datas = [as_bytes(t) for t in texts]
        ids, _ = self._run(datas, alpha, None, "perfect")
        return sum(map(len, datas)) / max(len(ids), 1)

    # -- decoding --------------------------------------------------------------------------------
    def _check_ids(self, ids: object) -> list[int]:
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            if ids.ndim > 1:
                raise ValueError(f"ids must be 1-D, got shape {tuple(ids.shape)}; use batch_decode")
            ids = ids.tolist()
        if isinstance(ids, (str, bytes)) or not isinstance(ids, Iterable):
            raise TypeError(f"ids must be a sequence of ints, got {type(ids).__name__}")
        try:
            out = [operator.index(i) for i in ids]
        except TypeError:
            bad = next(i for i in ids if not hasattr(i, "__index__"))
            raise TypeError(f"token ids must be integers, got {bad!r}") from None
        n = self.vocab_size
        for pos, i in enumerate(out):
            if not 0 <= i < n:
                raise ValueError(f"unknown token id {i} at position {pos}; valid ids are 0..{n - 1}")
        return out

    def decode_bytes(self, ids: Iterable[int], *, skip_special_tokens: bool = True) -> bytes:
        """Concatenate the pieces' bytes (special tokens dropped, or their names if kept)."""
        checked = self._check_ids(ids)
        table = self._decode_table
        if not skip_special_tokens:
            table = self._special_bytes + self._pieces
        return b"".join([table[i] for i in checked])

    def decode(
        self, ids: Iterable[int], *, errors: str = "strict", skip_special_tokens: bool = True
    ) -> str:
        """Bytes first, then one UTF-8 decode (pieces may split a character).

        ``errors`` is passed to ``bytes.decode`` (``"strict"`` raises on invalid UTF-8;
        ``"replace"``/``"ignore"`` as usual).
        """
        return self.decode_bytes(ids, skip_special_tokens=skip_special_tokens).decode(
            "utf-8", errors=errors
        )

    def batch_decode(self, sequences: Iterable[Iterable[int]], **kwargs: Any) -> list[str]:
        """:meth:`decode` for each sequence (rows of a 2-D tensor included)."""
        if isinstance(sequences, torch.Tensor | np.ndarray) and sequences.ndim != 2:
            raise ValueError(f"batch_decode expects 2-D ids, got shape {tuple(sequences.shape)}")
        return [self.decode(seq, **kwargs) for seq in sequences]

    # -- Hugging Face style batch call ------------------------------------------------------------
    def __call__(
        self,
        texts: str | bytes | Sequence[str | bytes],
        *,
        padding: bool | str = False,
        truncation: bool = False,
        max_length: int | None = None,
        return_tensors: str | None = None,
        add_bos: bool = False,
        add_eos: bool = False,
        alpha: float | None = None,
        generator: torch.Generator | None = None,
        padding_side: str = "right",
    ) -> dict[str, Any]:
        """Encode like a Hugging Face tokenizer: ``{"input_ids", "attention_mask"}``.

        Args:
            padding: ``False``/``"do_not_pad"``, ``True``/``"longest"`` or ``"max_length"``.
            truncation: Cut sequences to ``max_length`` (keeping ``<bos>``/``<eos>``).
            max_length: Needed by ``truncation`` and ``padding="max_length"``.
            return_tensors: ``None`` (lists) or ``"pt"`` (``torch.long`` tensors).
            padding_side: ``"right"`` or ``"left"``.
        """
        single = isinstance(texts, (str, bytes, bytearray, memoryview))
        batch = [texts] if single else list(texts)
        if padding not in _PADDING:
            raise ValueError(f"padding must be one of {list(_PADDING)}, got {padding!r}")
        pad_mode = _PADDING[padding]
        if return_tensors not in (None, "pt"):
            raise ValueError(f"return_tensors must be None or 'pt', got {return_tensors!r}")
        if padding_side not in ("right", "left"):
            raise ValueError(f"padding_side must be 'right' or 'left', got {padding_side!r}")
        if max_length is not None and (not isinstance(max_length, int) or max_length < 1):
            raise ValueError(f"max_length must be a positive integer, got {max_length!r}")
        if (truncation or pad_mode == "max_length") and max_length is None:
            raise ValueError("truncation=True and padding='max_length' need max_length")
        rows = self.encode_batch(batch, alpha=alpha, generator=generator)
        n_special = int(add_bos) + int(add_eos)
        if truncation:
            if max_length < n_special:
                raise ValueError(f"max_length={max_length} leaves no room for bos/eos")
            rows = [r[: max_length - n_special] for r in rows]
        rows = [self._wrap(r, add_bos, add_eos) for r in rows]
        masks = [[1] * len(r) for r in rows]
        if pad_mode is not None:
            if self.pad_id is None:
                raise ValueError("padding needs a '<pad>' special token")
            width = max(map(len, rows), default=0) if pad_mode == "longest" else max_length
            width = max(width, max(map(len, rows), default=0))
            for r, m in zip(rows, masks):
                fill = width - len(r)
                if padding_side == "right":
                    r.extend([self.pad_id] * fill)
                    m.extend([0] * fill)
                else:
                    r[:0] = [self.pad_id] * fill
                    m[:0] = [0] * fill
        if return_tensors == "pt":
            if len({len(r) for r in rows}) > 1:
                raise ValueError("sequences have different lengths: pass padding=True for tensors")
            out: dict[str, Any] = {
                "input_ids": torch.tensor(rows, dtype=torch.long).reshape(len(rows), -1),
                "attention_mask": torch.tensor(masks, dtype=torch.long).reshape(len(rows), -1),
            }
            return out
        if single:
            return {"input_ids": rows[0], "attention_mask": masks[0]}
        return {"input_ids": rows, "attention_mask": masks}

    # -- persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: format name and version, special tokens, pieces with ids and scores."""
        pieces = []
        for i, (piece, score) in enumerate(zip(self._pieces, self._scores.tolist())):
            entry: dict[str, Any] = {"id": self._offset + i, "bytes": piece.hex(), "score": score}
            try:
                entry["text"] = piece.decode("utf-8")
            except UnicodeDecodeError:
                pass
            pieces.append(entry)
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "special_tokens": list(self.special_tokens),
            "meta": self.meta,
            "pieces": pieces,
        }

    @classmethod
    def from_dict(cls, data: object, *, backend: str = "auto") -> UnigramTokenizer:
        """Inverse of :meth:`to_dict`; malformed or newer-version data raises ``ValueError``."""
        if not isinstance(data, dict):
            raise ValueError(f"vocabulary must be a JSON object, got {type(data).__name__}")
        if data.get("format") != FORMAT_NAME:
            raise ValueError(f"not a {FORMAT_NAME} vocabulary (format={data.get('format')!r})")
        version = data.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise ValueError(f"vocabulary 'version' must be a positive integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ValueError(
                f"vocabulary format version {version} is newer than the supported version "
                f"{FORMAT_VERSION}; upgrade formerlab"
            )
        for key in ("special_tokens", "pieces"):
            if not isinstance(data.get(key), list):
                raise ValueError(f"vocabulary field {key!r} is missing or not a list")
        specials = data["special_tokens"]
        pieces: dict[bytes, float] = {}
        for pos, entry in enumerate(data["pieces"]):
            if not isinstance(entry, dict) or "bytes" not in entry or "score" not in entry:
                raise ValueError(f"vocabulary piece #{pos} needs 'bytes' and 'score' fields")
            try:
                piece = bytes.fromhex(entry["bytes"])
            except (TypeError, ValueError):
                raise ValueError(f"vocabulary piece #{pos}: bad hex {entry['bytes']!r}") from None
            score = entry["score"]
            if isinstance(score, bool) or not isinstance(score, (int, float)):
                raise ValueError(f"vocabulary piece #{pos}: score must be a number, got {score!r}")
            if not math.isfinite(score) or not piece:
                raise ValueError(f"vocabulary piece #{pos}: empty piece or non-finite score")
            if piece in pieces:
                raise ValueError(f"vocabulary piece #{pos}: duplicate piece {piece!r}")
            pieces[piece] = float(score)
        missing = [b for b in range(256) if bytes([b]) not in pieces]
        if missing:
            raise ValueError(f"vocabulary lacks {len(missing)} single-byte pieces, e.g. {missing[0]}")
        try:
            tok = cls(pieces, special_tokens=specials, backend=backend, meta=data.get("meta"))
        except TypeError as err:
            raise ValueError(f"malformed vocabulary: {err}") from None
        for pos, entry in enumerate(data["pieces"]):
            if "id" in entry and entry["id"] != tok._piece_to_id[bytes.fromhex(entry["bytes"])]:
                raise ValueError(
                    f"vocabulary piece #{pos}: id {entry['id']!r} does not match the id layout "
                    "(specials, then pieces sorted by length and bytes)"
                )
        return tok

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON (format version :data:`FORMAT_VERSION`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=0), encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, backend: str = "auto") -> UnigramTokenizer:
        """Read a vocabulary written by :meth:`save`."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: not a valid JSON vocabulary ({err})") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a UTF-8 JSON vocabulary file") from None
        return cls.from_dict(data, backend=backend)

    @classmethod
    def train(
        cls,
        texts_or_files: Iterable[str | bytes | os.PathLike] | str | bytes | os.PathLike,
        vocab_size: int,
        *,
        max_piece_bytes: int = 16,
        min_count: int = 2,
        isolate_digits: bool = False,
        progress: bool = True,
        **kwargs: Any,
    ) -> UnigramTokenizer:
        """Train a vocabulary of ``vocab_size`` ids (special tokens included).

        ``texts_or_files``: texts (``str``/``bytes``) and/or paths (``os.PathLike``). Further
        options (``special_tokens``, ``ensure_unicode``, ``seed_size``, ``em_iterations``,
        ``e_step``, ``shrink``, ``num_workers``, ``backend``, ...) and the algorithm: see
        :func:`formerlab.tokenize.trainer.learn_vocabulary`.
        """
        pieces, specials, meta = learn_vocabulary(
            texts_or_files, vocab_size, max_piece_bytes=max_piece_bytes, min_count=min_count,
            isolate_digits=isolate_digits, progress=progress, **kwargs,
        )
        return cls(pieces, special_tokens=specials, backend=kwargs.get("backend", "auto"),
                   meta=meta)


def train_unigram(
    texts_or_files: Iterable[str | bytes | os.PathLike] | str | bytes | os.PathLike,
    vocab_size: int,
    **kwargs: Any,
) -> UnigramTokenizer:
    """Train a :class:`UnigramTokenizer` of ``vocab_size`` ids (specials included); the options
    of :func:`formerlab.tokenize.trainer.learn_vocabulary`."""
    return UnigramTokenizer.train(texts_or_files, vocab_size, **kwargs)
