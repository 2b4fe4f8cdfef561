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
from torch import nn

from ..config import Config, TrainConfig
from ..models.config import ModelConfig
from ..registry import Registry
from ..train.distributed import DistInfo
from ..train.trainer import BatchFn, TrainSummary
from .claims import Claim, Results
from .figures import LinePlot
from .report import HtmlSection

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
        dist: This process's rank and world under ``torchrun`` (one process by default); see
            :mod:`formerlab.lab.distributed`.
        parallel: ``"ddp"`` or ``"fsdp"`` for every training of the run (``None``: each train
            config's own ``parallel``).

    Train through :meth:`train` and :meth:`trained_model`: they pass the device, the processes
    and the parallelism to the trainer, so an experiment runs under ``torchrun`` unchanged.
    """

    preset: str
    out_dir: Path
    device: torch.device
    seed: int = 0
    progress: bool = True
    cache_dir: Path | None = None
    corpus: str | None = None
    dist: DistInfo = dataclasses.field(default_factory=DistInfo)
    parallel: str | None = None
    generator: torch.Generator = dataclasses.field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.out_dir = Path(self.out_dir)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.cache_dir is not None:
            self.cache_dir = Path(self.cache_dir)
        self.generator = torch.Generator().manual_seed(self.seed)

    @property
    def is_main(self) -> bool:
        """Whether this process writes and prints (rank 0, or the only process)."""
        return self.dist.is_main

    def log(self, message: str) -> None:
        if self.progress and self.dist.is_main:
            print(f"[seed {self.seed}] {message}", flush=True)

    def _train_config(self, train_config: TrainConfig) -> TrainConfig:
        return train_config if self.parallel is None else train_config.replace(
            parallel=self.parallel)

    def train(self, model: nn.Module, model_config: ModelConfig, train_config: TrainConfig,
              batch_fn: BatchFn, *, out_dir: str | Path | None = None,
              progress: bool | None = None, resume: bool = False) -> TrainSummary:
        """Train ``model`` in place on this run's device and processes.

        Args:
            model, model_config, train_config, batch_fn: As for
                :class:`~formerlab.train.Trainer` (``batch_fn(step, rows)`` returns the given
                rows of the step's global batch).
            out_dir: The trainer's run folder (``None``: nothing written).
            progress: The trainer's progress bar (``None``: the run's setting).
            resume: Continue from the latest checkpoint in ``out_dir``.

        Returns:
            The :class:`~formerlab.train.TrainSummary`; ``model`` itself holds the trained
            weights on :attr:`device`, on every process (a plain module, see
            :func:`~formerlab.lab.distributed.train_in_place`).
        """
        from .distributed import train_in_place

        return train_in_place(model, model_config, self._train_config(train_config), batch_fn,
                              device=self.device, dist_info=self.dist, out_dir=out_dir,
                              progress=self.progress if progress is None else progress,
                              resume=resume)

    def trained_model(self, model_config: ModelConfig, train_config: TrainConfig,
                      batch_fn: BatchFn, *, corpus_id: str) -> tuple[Any, dict[str, object]]:
        """The cached model for these configs, trained on this run's device and processes if
        absent (:func:`formerlab.lab.cache.trained_model` with this run's cache, device,
        progress, log, processes and parallelism).

        Returns:
            ``(CausalLM, info)`` as :func:`~formerlab.lab.cache.trained_model`.
        """
        from .cache import trained_model

        return trained_model(model_config, train_config, batch_fn, corpus_id=corpus_id,
                             cache_dir=self.cache_dir, device=self.device, progress=self.progress,
                             log=self.log, dist_info=self.dist, parallel=self.parallel)


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

    def html_sections(self, results: Results) -> list[HtmlSection]:
        """Extra HTML for the report, e.g. a coloured heat map the Markdown cannot show: each
        :class:`~formerlab.lab.report.HtmlSection` becomes a page of the run folder and a
        section of ``report.html`` (stored in ``results.json``, so ``formerlab report`` keeps
        it)."""
        return []

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
