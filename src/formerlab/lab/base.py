"""The contract between the lab and its experiments.

An experiment is a class deriving from :class:`Experiment` and registered with
:func:`register_experiment`. It declares, as data:

- ``name``, ``title``, ``post`` (the kexue.fm URL(s) it reproduces);
- ``config``: its :class:`~formerlab.config.Config` dataclass, and ``presets``: factories of that
  config by name (``micro`` is a smoke test in seconds, ``quick`` fits a laptop CPU in minutes,
  ``full`` is the complete study; any other a study needs);
- ``claims``: the blog's claims it checks (:class:`~formerlab.lab.claims.Claim`).

It implements ``run(config, ctx) -> rows`` for **one seed** (tidy dicts; or ``(rows, extras)``),
``table(results) -> Markdown`` and optionally ``figures(results) -> [LinePlot]`` and
``notes(results) -> Markdown`` (descriptive only: verdicts come from the claims). The lab does
the rest: run metadata (versions, machine, seconds), seeding (``torch.manual_seed`` inside a
forked RNG state and an explicit ``ctx.generator``), progress, several seeds, results written
before any figure, verdicts with spread, resuming an interrupted multi-seed run.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch

from ..config import Config
from ..registry import Registry
from .claims import Claim, Results
from .figures import LinePlot

__all__ = ["EXPERIMENTS", "STANDARD_PRESETS", "Experiment", "RunContext", "register_experiment"]

#: the presets every experiment offers (some add their own, e.g. ``medium``)
STANDARD_PRESETS = ("micro", "quick", "full")


@dataclasses.dataclass
class RunContext:
    """What one seed of an experiment gets from the lab.

    Attributes:
        preset: The preset name.
        out_dir: The run folder (write extra files here).
        device: Where to compute.
        seed: This run's seed; ``generator`` is a ``torch.Generator`` seeded with it.
        progress: Show progress bars.
        cache_dir: Trained-model cache (``None``: the default).
        corpus: Text file or folder (``None``: the embedded default corpus).
    """

    preset: str
    out_dir: Path
    device: torch.device
    seed: int = 0
    progress: bool = True
    cache_dir: Path | None = None
    corpus: str | None = None
    generator: torch.Generator = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        self.generator = torch.Generator().manual_seed(self.seed)

    def log(self, message: str) -> None:
        if self.progress:
            print(f"[seed {self.seed}] {message}", flush=True)


class Experiment:
    """Base class of a lab experiment (see the module docstring)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    post: ClassVar[str] = ""
    config: ClassVar[type[Config]]
    presets: ClassVar[dict[str, Callable[[], Config]]] = {}
    claims: ClassVar[list[Claim]] = []

    def preset(self, name: str) -> Config:
        """The config of preset ``name`` (``ValueError`` listing the presets)."""
        if name not in self.presets:
            raise ValueError(f"experiment {self.name!r} has presets {list(self.presets)}, "
                             f"got {name!r}")
        return self.presets[name]()

    def run(self, config: Config, ctx: RunContext
            ) -> list[dict[str, Any]] | tuple[list[dict[str, Any]], dict[str, Any]]:
        """Measure one seed: tidy rows (and optionally a dict of extras)."""
        raise NotImplementedError

    def table(self, results: Results) -> str:
        """The main table as Markdown (mean ± std over seeds)."""
        raise NotImplementedError

    def figures(self, results: Results) -> list[LinePlot]:
        return []

    def notes(self, results: Results) -> str:
        return ""

    def report_title(self, config: Config, preset: str) -> str:
        return f"{self.title} ({preset} preset)"


#: name -> experiment instance
EXPERIMENTS: Registry[Experiment] = Registry("experiment")


def register_experiment(cls: type[Experiment]) -> type[Experiment]:
    """Class decorator: register an :class:`Experiment` subclass under its ``name``."""
    missing = [a for a in ("name", "title", "post") if not getattr(cls, a)]
    if missing or not getattr(cls, "presets", None) or not hasattr(cls, "config"):
        raise TypeError(f"{cls.__name__} must declare name, title, post, config and presets "
                        f"(missing {missing or ['presets/config']})")
    EXPERIMENTS.add(cls.name, cls())
    return cls
