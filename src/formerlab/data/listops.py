"""Long Range Arena ListOps (Tay et al., arXiv 2011.04006) with the LRA generator's semantics.

An example is a nested list expression over digits and four operators; the label is its value
(10 classes)::

    [MAX 4 3 [MIN 2 3 ] 1 0 [MED 1 5 8 9 2 ] ]   →   5

====================  ========================================================================
``MIN``, ``MAX``      minimum, maximum of the arguments
``MED``               median; for an even count the mean of the two middle values truncated to
                      an integer (``int(np.median(...))``, as LRA)
``SM``                sum modulo 10
====================  ========================================================================

Generation follows google-research/long-range-arena ``lra_benchmarks/data/listops.py``: a node at
depth ``< max_depth`` (the root has depth 1) becomes an operator with probability 0.25, else a
digit; an operator takes ``2 … max_args`` arguments drawn recursively, then its name; nodes at
``max_depth`` are digits. The length counts 2 tokens per operator (``[OP`` and ``]``) and 1 per
digit; samples with ``min_len < length < max_len`` are kept, duplicates dropped. LRA uses
``max_depth = max_args = 10``, lengths in (500, 2000) and 96k / 2k / 2k samples; the CPU-sized
plan of the self-pretraining study (kexue.fm/archives/9787) uses depth 6–8, 5–8 arguments and
lengths in (64, 256). The random draws are made in LRA's order by Python's ``random.Random``.

The token form drops LRA's parentheses around every binary sub-pair; the vocabulary is
``[PAD] [CLS] [MASK] ] [MIN [MAX [MED [SM 0 … 9``. :class:`ClassificationDataset` holds the
encoded examples (right-padded, with an attention mask) and serves seeded random batches.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator

import torch
from torch import Tensor

__all__ = ["CLS_ID", "LISTOPS_VOCAB", "MASK_ID", "OPERATORS", "PAD_ID", "ClassificationDataset",
           "generate_tree", "listops_dataset", "tree_tokens", "tree_value"]

OPERATORS = ("MIN", "MAX", "MED", "SM")
LISTOPS_VOCAB = ["[PAD]", "[CLS]", "[MASK]", "]", *(f"[{op}" for op in OPERATORS),
                 *(str(d) for d in range(10))]
PAD_ID, CLS_ID, MASK_ID = 0, 1, 2
_TOKEN_ID = {t: i for i, t in enumerate(LISTOPS_VOCAB)}
VALUE_P = 0.25  # LRA's probability that a node below the maximum depth is an operator

#: a digit, or ``(operator, [arguments])``
Tree = int | tuple[str, list["Tree"]]


def generate_tree(rng: random.Random, max_depth: int, max_args: int, depth: int = 1
                  ) -> tuple[Tree, int]:
    """One random expression and its length, drawing like LRA's ``generate_tree``.

    Args:
        rng: The random source (``random.Random(seed)``).
        max_depth: Nodes at this depth are digits.
        max_args: An operator takes ``2 … max_args`` arguments.
        depth: Depth of this node (the root is 1).
    """
    r = rng.random() if depth < max_depth else 1.0
    if r > VALUE_P:
        return rng.choice(range(10)), 1
    length = 2
    args = []
    for _ in range(rng.randint(2, max_args)):
        sub, sub_len = generate_tree(rng, max_depth, max_args, depth + 1)
        args.append(sub)
        length += sub_len
    return (rng.choice(OPERATORS), args), length


def tree_value(tree: Tree) -> int:
    """The value of an expression (LRA's ``to_value``)."""
    if isinstance(tree, int):
        return tree
    op, args = tree
    vals = sorted(tree_value(a) for a in args)
    if op == "MIN":
        return vals[0]
    if op == "MAX":
        return vals[-1]
    if op == "SM":
        return sum(vals) % 10
    if op == "MED":
        m = len(vals) // 2
        return vals[m] if len(vals) % 2 else (vals[m - 1] + vals[m]) // 2
    raise ValueError(f"unknown ListOps operator {op!r}; valid operators: {', '.join(OPERATORS)}")


def tree_tokens(tree: Tree) -> list[str]:
    """The token strings of an expression: ``[OP``, the arguments, ``]``."""
    if isinstance(tree, int):
        return [str(tree)]
    op, args = tree
    out = [f"[{op}"]
    for a in args:
        out += tree_tokens(a)
    out.append("]")
    return out


@dataclasses.dataclass
class ClassificationDataset:
    """Encoded sequences with one label each, right-padded.

    Attributes:
        input_ids: ``(N, L)`` token ids (``pad_id`` after each sequence).
        attention_mask: ``(N, L)``, 1 = real token (Hugging Face's convention).
        labels: ``(N,)`` class ids in ``[0, num_labels)``.
        vocab: Token strings by id.
        num_labels: Number of classes.
        pad_id, mask_id: Padding and ``[MASK]`` ids; ``special_ids`` are never masked by MLM.
    """

    input_ids: Tensor
    attention_mask: Tensor
    labels: Tensor
    vocab: list[str]
    num_labels: int
    pad_id: int = PAD_ID
    mask_id: int = MASK_ID
    special_ids: tuple[int, ...] = (PAD_ID, CLS_ID, MASK_ID)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def lengths(self) -> Tensor:
        """Real tokens per example ``(N,)``."""
        return self.attention_mask.sum(-1)

    def subset(self, index: Tensor | slice) -> ClassificationDataset:
        """The examples ``index`` (trimmed to their longest)."""
        mask = self.attention_mask[index]
        width = int(mask.sum(-1).max()) if mask.numel() else 0
        return dataclasses.replace(self, input_ids=self.input_ids[index][:, :width],
                                   attention_mask=mask[:, :width], labels=self.labels[index])

    def split(self, *sizes: int) -> tuple[ClassificationDataset, ...]:
        """Consecutive pieces of ``sizes`` examples (e.g. ``split(20000, 1000, 1000)``)."""
        if sum(sizes) > len(self) or any(s < 0 for s in sizes):
            raise ValueError(f"split sizes {sizes} must be >= 0 and sum to at most the "
                             f"{len(self)} examples")
        out, start = [], 0
        for s in sizes:
            out.append(self.subset(slice(start, start + s)))
            start += s
        return tuple(out)

    def batch(self, index: Tensor) -> dict[str, Tensor]:
        """``input_ids``, ``attention_mask``, ``labels`` of examples ``index``, trimmed."""
        sub = self.subset(index)
        return {"input_ids": sub.input_ids, "attention_mask": sub.attention_mask,
                "labels": sub.labels}

    def batches(self, batch_size: int, steps: int, generator: torch.Generator | None = None,
                *, bucket: int = 0) -> Iterator[dict[str, Tensor]]:
        """``steps`` random batches: a fresh permutation every epoch (``generator`` seeds it).

        Args:
            bucket: If ``> 0``, sort each run of ``bucket·batch_size`` shuffled examples by length
                before cutting it into batches (served in random order): batches of similar
                lengths waste less compute on padding; ``0`` = plain random batches.
        """
        if batch_size < 1 or steps < 0 or bucket < 0:
            raise ValueError(f"batch_size must be >= 1, steps and bucket >= 0, got {batch_size}, "
                             f"{steps}, {bucket}")
        if batch_size > len(self):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(self)} examples")
        queue: list[Tensor] = []
        for _ in range(steps):
            if not queue:
                queue = self._epoch(batch_size, bucket, generator)
            yield self.batch(queue.pop())

    def _epoch(self, batch_size: int, bucket: int, generator: torch.Generator | None
               ) -> list[Tensor]:
        """The batches of one epoch (the last ``len % batch_size`` examples wait for the next)."""
        perm = torch.randperm(len(self), generator=generator)
        usable = len(self) - len(self) % batch_size
        perm = perm[:usable]
        if bucket:
            lengths = self.lengths[perm]
            size = bucket * batch_size
            perm = torch.cat([chunk[lengths[i:i + size].argsort(stable=True)]
                              for i, chunk in zip(range(0, usable, size), perm.split(size))])
        out = list(perm.split(batch_size))
        if bucket:
            order = torch.randperm(len(out), generator=generator)
            out = [out[int(i)] for i in order]
        return out[::-1]  # popped from the end: first batch first

    def majority_accuracy(self) -> float:
        """Accuracy of always answering the most frequent label of this set."""
        counts = torch.bincount(self.labels, minlength=self.num_labels)
        return float(counts.max()) / max(1, len(self))


def _check_args(n: int, max_depth: int, max_args: int, min_len: int, max_len: int) -> None:
    for name, v, lo in (("n", n, 0), ("max_depth", max_depth, 1), ("max_args", max_args, 2),
                        ("min_len", min_len, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if not isinstance(max_len, int) or max_len <= min_len + 1:
        raise ValueError(f"max_len must exceed min_len + 1 (lengths lie strictly between), got "
                         f"min_len={min_len}, max_len={max_len}")
    if max_depth < 2 and min_len >= 1:
        raise ValueError(f"max_depth={max_depth} allows only single digits (length 1), which "
                         f"min_len={min_len} rejects")


def listops_dataset(n: int, max_depth: int = 10, max_args: int = 10, min_len: int = 500,
                    max_len: int = 2000, seed: int = 0, *, add_cls: bool = True,
                    max_tries: int | None = None) -> ClassificationDataset:
    """``n`` distinct ListOps examples with ``min_len < length < max_len`` (LRA semantics).

    Args:
        n: Number of examples (split them with :meth:`ClassificationDataset.split`: examples are
            distinct across the whole set, so the pieces never overlap).
        max_depth, max_args, min_len, max_len: The generator's settings (module docstring).
        seed: Seed of ``random.Random``.
        add_cls: Start every sequence with ``[CLS]`` (not counted in the length).
        max_tries: Give up after this many draws (default ``1000·n + 10⁵``).

    Returns:
        A :class:`ClassificationDataset` (labels = values, 10 classes).
    """
    _check_args(n, max_depth, max_args, min_len, max_len)
    rng = random.Random(seed)
    seen: set[tuple[str, ...]] = set()
    rows: list[list[int]] = []
    labels: list[int] = []
    budget = 1000 * n + 100_000 if max_tries is None else max_tries
    tries = 0
    while len(rows) < n:
        if tries >= budget:
            raise ValueError(f"found only {len(rows)} of {n} expressions with {min_len} < length "
                             f"< {max_len} in {tries} draws (max_depth={max_depth}, max_args="
                             f"{max_args}); widen the length range or raise max_tries")
        tries += 1
        tree, length = generate_tree(rng, max_depth, max_args)
        if not min_len < length < max_len:
            continue
        toks = tuple(tree_tokens(tree))
        if toks in seen:
            continue
        seen.add(toks)
        rows.append(([CLS_ID] if add_cls else []) + [_TOKEN_ID[t] for t in toks])
        labels.append(tree_value(tree))
    width = max((len(r) for r in rows), default=0)
    ids = torch.full((n, width), PAD_ID, dtype=torch.long)
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ClassificationDataset(ids, mask, torch.tensor(labels, dtype=torch.long),
                                 list(LISTOPS_VOCAB), 10)
