"""The lab: registered experiments that reproduce the blog's claims and write their reports."""

from __future__ import annotations

import time
from pathlib import Path

import torch

from .base import EXPERIMENTS, PRESETS, ExperimentReport, Figure, RunContext, register_experiment
from .report import rebuild_report, write_report

__all__ = [
    "EXPERIMENTS",
    "PRESETS",
    "ExperimentReport",
    "Figure",
    "RunContext",
    "list_experiments",
    "rebuild_report",
    "register_experiment",
    "run_experiment",
    "write_report",
]


def _load_all() -> None:
    from . import experiments  # noqa: F401  (registers the experiments)


def list_experiments() -> list[dict[str, str]]:
    """Every registered experiment with the post it reproduces."""
    _load_all()
    out = []
    for n in EXPERIMENTS:
        meta = EXPERIMENTS.meta(n)
        out.append({"name": n, "title": meta["title"], "post": meta["post"],
                    "presets": ", ".join(meta["presets"])})
    return out


def run_experiment(
    name: str,
    *,
    preset: str = "quick",
    out_dir: str | Path | None = None,
    device: torch.device | str = "auto",
    seed: int = 0,
    progress: bool = True,
    cache_dir: str | Path | None = None,
    corpus: str | None = None,
) -> tuple[ExperimentReport, dict[str, Path]]:
    """Run experiment ``name`` and write its report into ``out_dir`` (default ``runs/NAME-PRESET``)."""
    from ..train.distributed import resolve_device

    _load_all()
    fn = EXPERIMENTS.get(name)
    supported = EXPERIMENTS.meta(name)["presets"]
    if preset not in supported:
        raise ValueError(f"experiment {name!r} supports presets {list(supported)}, got {preset!r}")
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"{name}-{preset}"
    ctx = RunContext(preset=preset, out_dir=out, device=resolve_device(device), seed=seed,
                     progress=progress, cache_dir=Path(cache_dir) if cache_dir else None,
                     corpus=corpus)
    t0 = time.perf_counter()
    report = fn(ctx)
    report.meta.setdefault("experiment", name)
    report.meta.setdefault("wall_seconds", round(time.perf_counter() - t0, 1))
    paths = write_report(EXPERIMENTS.canonical(name), report, out)
    return report, paths
