"""The contract between the lab and its experiments.

An experiment is a function ``run(ctx: RunContext) -> ExperimentReport`` registered with
:func:`register_experiment`. The lab writes what it returns: ``results.json`` (tidy rows plus run
metadata), ``table.md`` and ``report.html`` (table, notes and the figures, embedded so the page
works offline). Experiments write their own PNG figures into ``ctx.out_dir`` and list them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from ..registry import Registry

__all__ = [
    "EXPERIMENTS",
    "PRESETS",
    "ExperimentReport",
    "Figure",
    "RunContext",
    "register_experiment",
]

#: ``micro`` is a smoke-test size (seconds), ``quick`` fits a laptop CPU in minutes, ``full`` is
#: the complete study (a GPU or a long CPU run).
PRESETS = ("micro", "quick", "full")


@dataclasses.dataclass
class RunContext:
    """What an experiment gets from the lab."""

    preset: str
    out_dir: Path
    device: torch.device
    seed: int = 0
    progress: bool = True
    cache_dir: Path | None = None
    corpus: str | None = None  # path to text files/folder; None = embedded default corpus

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {list(PRESETS)}, got {self.preset!r}")
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)


@dataclasses.dataclass
class Figure:
    """A figure file inside ``out_dir`` (PNG) with its caption."""

    path: Path
    caption: str = ""


@dataclasses.dataclass
class ExperimentReport:
    """What an experiment returns.

    Args:
        title: Heading of the report.
        rows: Tidy result rows (one dict per measurement) for ``results.json``.
        table_md: The main table as Markdown (``table.md``).
        figures: PNG figures written into ``out_dir``.
        notes: Markdown text: findings, what agreed with the blog and what did not.
        meta: Run metadata (configs, timings, versions) for ``results.json``.
    """

    title: str
    rows: list[dict[str, Any]]
    table_md: str
    figures: list[Figure] = dataclasses.field(default_factory=list)
    notes: str = ""
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)


ExperimentFn = Callable[[RunContext], ExperimentReport]

#: name -> run function; metadata: ``post`` (kexue.fm URL), ``title``, ``presets``
EXPERIMENTS: Registry[ExperimentFn] = Registry("experiment")


def register_experiment(
    name: str, *, post: str, title: str, presets: tuple[str, ...] = PRESETS
) -> Callable[[ExperimentFn], ExperimentFn]:
    """Register ``run(ctx) -> ExperimentReport`` under ``name``.

    Args:
        post: The blog post(s) reproduced, e.g. ``"https://kexue.fm/archives/9708"``.
        title: One line for ``formerlab lab list``.
        presets: The presets this experiment supports.
    """
    return EXPERIMENTS.register(name, post=post, title=title, presets=tuple(presets))
