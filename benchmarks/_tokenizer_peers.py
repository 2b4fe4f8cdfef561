"""Peers of formerlab's unigram tokenizer for ``bench_tokenizer.py``: Hugging Face ``tokenizers``.

Hugging Face ``tokenizers`` (the Rust library) is set up to match sentencepiece's settings in the
benchmark: its ``Unigram`` model trained by ``UnigramTrainer`` on the same lines at the same
vocabulary size, no normaliser, no pre-tokenizer, one thread. The choices, and why:

- single thread: the library reads ``TOKENIZERS_PARALLELISM`` at every batch call and, when it
  is false, runs the batch serially on the calling thread (no thread pool is started: the
  process's thread count stays the same). ``RAYON_NUM_THREADS=1`` alone is honoured by rayon, but
  the library still hands the batch to a one-worker pool; both are set here, at import time and
  before ``tokenizers`` itself is imported (lazily, inside the functions below);
- no pre-tokenizer: each line is one "word", so pieces may span spaces, as formerlab's and
  sentencepiece's (``split_by_whitespace=False``) do. ``Metaspace(split=False)`` would also keep
  lines whole, but it rewrites every space as the 3-byte ``▁``, which changes the bytes being
  counted; ``Whitespace`` / ``ByteLevel`` split at spaces, which costs compression on code
  (splitting before each space, tried once on 1 MB of training lines at 8000 pieces: 2.2 bytes
  per token against 4.3 for whole lines, and no faster to encode);
- byte fallback: the installed model supports it (``Unigram(..., byte_fallback=True)`` spells an
  unknown character as its UTF-8 bytes ``<0x00>`` … ``<0xFF>``), but ``UnigramTrainer`` adds
  none of those 256 pieces (and ``Unigram(byte_fallback=True)`` without a vocabulary comes out
  with the flag off). So the trainer is asked for ``vocab_size - 256`` pieces
  (``<unk>`` included) and the model is rebuilt with the 256 byte pieces appended: the total is
  the benchmark's vocabulary size and every held-out character is covered, as in sentencepiece's
  ``byte_fallback``. The byte pieces (and ``<unk>``) also sit in the library's piece trie, so
  they get a score below any path of single characters spelling the same text, so that a literal
  ``<0x41>`` or ``<unk>`` in the source is never read as one of them;
- encode: ``Tokenizer.encode_batch`` (and ``encode_batch_fast``, which skips the offsets) with
  the ids taken out of each ``Encoding``, the user-visible equivalent of formerlab's
  ``encode_batch`` and sentencepiece's ``encode(list)``. The model keeps a cache of encoded
  lines (up to 10,000 lines shorter than 256 bytes); it is cleared before every timed pass, so
  a pass pays for every line it has not seen in that pass, as the other two do.

Sampling is not timed: ``Unigram(alpha=..., nbest_size=None)`` does draw from the full lattice,
but its forward pass multiplies the accumulated forward scores by ``alpha`` again at every
position, so for ``alpha < 1`` the segmentations of three or more pieces are drawn with the wrong
probabilities (on a toy vocabulary at ``alpha = 0.5`` the frequency of one segmentation was 0.159
against an exact 0.183 over 40,000 draws); it also takes no seed and is fixed per model rather
than per call. It is not a peer for exact sampling; sentencepiece's is.
"""

from __future__ import annotations

import json
import os
import time

os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["RAYON_NUM_THREADS"] = "1"

BYTE_PIECES = [f"<0x{b:02X}>" for b in range(256)]
THREAD_SETTINGS = {k: os.environ[k] for k in ("TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")}
SAMPLING_NOTE = ("not timed: tokenizers' Unigram(alpha=...) forward pass rescales accumulated "
                 "scores by alpha at every position, so for alpha < 1 it does not draw from "
                 "p(x)^alpha (checked by enumeration on a toy vocabulary); unseeded, per model")


def train_tokenizers(train: list[str], vocab_size: int):
    """Train a ``tokenizers`` Unigram model with byte fallback on ``train``.

    Args:
        train: the training lines.
        vocab_size: total number of ids, ``<unk>`` and the 256 byte pieces included.

    Returns:
        ``(tokenizer, seconds)``: the ``tokenizers.Tokenizer`` and the training wall time
        (rebuilding the model with its byte pieces included).
    """
    from tokenizers import Tokenizer, decoders, models, trainers

    start = time.perf_counter()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size - len(BYTE_PIECES),
                                      show_progress=False, unk_token="<unk>")
    trained = Tokenizer(models.Unigram())
    trained.train_from_iterator(train, trainer)
    spec = json.loads(trained.to_str())["model"]
    pieces = [(piece, score) for piece, score in spec["vocab"]]
    unk_id = spec["unk_id"]
    floor = min(score for i, (_, score) in enumerate(pieces) if i != unk_id)
    # below six single characters (the length of "<0x41>"), so text never prefers these pieces
    reserved = floor * len(BYTE_PIECES[0]) - 1.0
    pieces[unk_id] = (pieces[unk_id][0], reserved)
    pieces += [(piece, reserved) for piece in BYTE_PIECES]
    tok = Tokenizer(models.Unigram(pieces, unk_id, True))
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return tok, time.perf_counter() - start


def tokenizers_encoder(tok, *, fast: bool = False):
    """A function encoding a list of lines to lists of ids, from a cold model cache.

    Args:
        tok: a ``tokenizers.Tokenizer`` from :func:`train_tokenizers`.
        fast: use ``encode_batch_fast`` (no offsets) instead of ``encode_batch``.

    Returns:
        ``encode(lines) -> list[list[int]]``.
    """
    batch = tok.encode_batch_fast if fast else tok.encode_batch

    def encode(lines: list[str]) -> list[list[int]]:
        tok.model._clear_cache()
        return [e.ids for e in batch(lines, add_special_tokens=False)]

    return encode


def tokenizers_decode(tok, ids: list[int]) -> str:
    """Decode one line's ids (byte pieces fused back into characters)."""
    return tok.decode(ids, skip_special_tokens=False)


def tokenizers_version() -> str:
    import tokenizers

    return tokenizers.__version__


def bytepiece_status() -> str:
    """Why bytepiece (kexue.fm/archives/9752's own tokenizer) is or is not in the benchmark."""
    try:
        import bytepiece  # noqa: F401
    except ImportError:
        return ("absent: it cannot be installed here (the registry has only its source "
                "archive, whose setup script needs Cython without declaring it, and its "
                "Tokenizer needs pyahocorasick compiled in bytes mode, AHOCORASICK_BYTES=1, "
                "while the registry's pyahocorasick wheel is the str build)")
    return "installed but skipped: not part of this benchmark's protocol yet"
