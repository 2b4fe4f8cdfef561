"""Text corpora read byte-level (vocabulary 256), split train/valid/test **by file**.

The embedded default corpus is real English and code that ships with every Python install: the
standard library's ``.py`` sources (``sysconfig.get_paths()["stdlib"]``), without the test suites
(``test/``, ``tests/``, ``idle_test/``) and without ``site-packages``. On CPython 3.11 that is 734
files, about 12 MB. Files are taken in sorted relative-path order and assigned to a split by a
hash of their relative path (90% / 5% / 5%), so the split is stable, leak-free (no file is in two
splits) and the same on every machine with the same Python version. The Python version is
recorded as the corpus's provenance.

Users can point ``--corpus`` at a text file or a folder instead: a folder is split by file like
the default corpus; a single file is split by contiguous byte ranges (90/5/5).
"""

from __future__ import annotations

import dataclasses
import hashlib
import platform
import sysconfig
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["SPLITS", "TextCorpus", "default_corpus", "load_corpus", "stdlib_source_files"]

SPLITS = ("train", "valid", "test")
_EXCLUDED_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
_TEXT_SUFFIXES = {".txt", ".md", ".rst", ".py", ".json", ".csv", ".html", ".xml", ".c", ".h",
                  ".js", ".ts", ".java", ".go", ".rs", ".tex", ".yaml", ".yml", ".toml", ".cfg"}
FILE_SEPARATOR = b"\n\n"


def _split_of(rel_path: str, fractions: tuple[float, float] = (0.90, 0.05)) -> str:
    h = int.from_bytes(hashlib.sha256(rel_path.encode()).digest()[:8], "big") / 2**64
    if h < fractions[0]:
        return "train"
    return "valid" if h < fractions[0] + fractions[1] else "test"


def stdlib_source_files() -> tuple[Path, list[Path]]:
    """The standard library root and its non-test ``.py`` files in sorted relative order."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(
        (p for p in root.rglob("*.py") if not (_EXCLUDED_DIRS & set(p.relative_to(root).parts))),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    return root, files


@dataclasses.dataclass
class TextCorpus:
    """A byte-level corpus: a name, provenance, and per-split file lists (or byte ranges)."""

    name: str
    provenance: str
    root: Path
    files: dict[str, list[Path]]
    byte_ranges: dict[str, tuple[int, int]] | None = None  # single-file corpora
    _cache: dict[str, Tensor] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def split_bytes(self, split: str) -> bytes:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        if self.byte_ranges is not None:
            data = self.files["train"][0].read_bytes()
            lo, hi = self.byte_ranges[split]
            return data[lo:hi]
        return FILE_SEPARATOR.join(p.read_bytes() for p in self.files[split])


    def tokens(self, split: str = "train") -> Tensor:
        """The split as a 1-D ``int64`` tensor of byte values (cached in memory)."""
        if split not in self._cache:
            data = self.split_bytes(split)
            if not data:
                raise ValueError(f"corpus {self.name!r} has an empty {split!r} split")
            self._cache[split] = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        return self._cache[split]

    def describe(self) -> dict[str, object]:
        """Sizes and provenance (for reports)."""
        out: dict[str, object] = {"name": self.name, "provenance": self.provenance}
        for split in SPLITS:
            out[f"{split}_files"] = len(self.files.get(split, []))
            out[f"{split}_bytes"] = int(self.tokens(split).numel())
        return out


def default_corpus() -> TextCorpus:
    """The embedded default corpus: the Python standard library sources (see module docstring)."""
    root, files = stdlib_source_files()
    if not files:
        raise ValueError(f"no standard-library sources found under {root}")
    splits: dict[str, list[Path]] = {s: [] for s in SPLITS}
    for p in files:
        splits[_split_of(p.relative_to(root).as_posix())].append(p)
    prov = (
        f"Python {platform.python_version()} standard library .py sources at {root} "
        f"(without test suites and site-packages)"
    )
    return TextCorpus("python-stdlib", prov, root, splits)


def _is_text(path: Path) -> bool:
    if path.suffix.lower() in _TEXT_SUFFIXES:
        return True
    try:
        head = path.read_bytes()[:4096]
    except OSError:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return b"\x00" not in head


def load_corpus(path: str | Path | None = None) -> TextCorpus:
    """The default corpus (``path=None``) or the text files at ``path`` (a file or a folder).

    Raises:
        ValueError: if ``path`` does not exist or holds no readable text.
    """
    if path is None or str(path) in ("", "default", "python-stdlib"):
        return default_corpus()
    path = Path(path).expanduser()
    if not path.exists():
        raise ValueError(f"corpus path {path} does not exist")
    if path.is_file():
        size = path.stat().st_size
        if size == 0 or not _is_text(path):
            raise ValueError(f"corpus file {path} holds no readable text")
        a, b = int(size * 0.90), int(size * 0.95)
        ranges = {"train": (0, a), "valid": (a, b), "test": (b, size)}
        return TextCorpus(path.name, f"file {path}", path.parent, {"train": [path]}, ranges)
    files = sorted(
        (p for p in path.rglob("*") if p.is_file() and p.stat().st_size > 0 and _is_text(p)),
        key=lambda p: p.relative_to(path).as_posix(),
    )
    if not files:
        raise ValueError(f"corpus folder {path} holds no readable text files")
    splits = {s: [] for s in SPLITS}
    for p in files:
        splits[_split_of(p.relative_to(path).as_posix())].append(p)
    if len(files) < 3 or not splits["train"]:
        raise ValueError(
            f"corpus folder {path} has {len(files)} text file(s); a folder needs enough files "
            "for a by-file split (or pass a single file, which is split by byte ranges)"
        )
    for s in ("valid", "test"):  # guarantee non-empty eval splits for small folders
        if not splits[s]:
            splits[s].append(splits["train"].pop())
    return TextCorpus(path.name, f"folder {path}", path, splits)
