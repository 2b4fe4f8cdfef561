"""Running an experiment: seeds, metadata, verdicts, and the report.

:func:`run_experiment` runs one registered experiment for one or more seeds. Each seed runs with
``torch.manual_seed(seed)`` inside a forked RNG state (the caller's global RNG is untouched) and
gets an explicit ``ctx.generator``. After every seed the partial ``results.json`` is written; an
interrupted multi-seed run resumes where it stopped (seeds already measured with the same config
are reused). The claims are evaluated over all seeds, then the report is written: results and
table first, figures after.

Under ``torchrun`` (``dist_info`` with several processes, see :mod:`formerlab.lab.distributed`)
every process runs every seed; the seeds stored by an earlier run are read by rank 0 and broadcast,
only rank 0 writes ``results.json`` and the report and shows progress, and every process waits at
the end until rank 0 has written.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..config import config_hash
from ..train.distributed import DistInfo
from ..train.parallel import PARALLEL_MODES
from .base import EXPERIMENTS, RunContext
from .claims import Results
from .distributed import barrier, from_main, process_device
from .report import RESULTS_NAME, write_report

__all__ = ["list_experiments", "run_experiment"]


def _load_all() -> None:
    from . import experiments  # noqa: F401  (registers the experiments)


def experiment_config(name: str, preset: str, overrides: dict[str, Any] | None = None) -> Any:
    """The config of experiment ``name``'s ``preset``, with fields replaced by dotted path
    (:meth:`~formerlab.config.Config.with_overrides`); pass it to :func:`run_experiment` as
    ``config=``."""
    _load_all()
    cfg = EXPERIMENTS.get(name).preset(preset)
    return cfg.with_overrides(overrides) if overrides else cfg


def list_experiments() -> list[dict[str, str]]:
    """Every registered experiment with the post it reproduces and its presets."""
    _load_all()
    out = []
    for name in EXPERIMENTS:
        exp = EXPERIMENTS.get(name)
        out.append({"name": name, "title": exp.title, "post": exp.post,
                    "presets": ", ".join(exp.presets), "claims": str(len(exp.claims))})
    return out


def _versions() -> dict[str, Any]:
    from .. import __version__

    out = {"formerlab": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for mod in ("numpy", "transformers", "matplotlib"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


def _machine(device: torch.device, dist_info: DistInfo) -> dict[str, Any]:
    return {"platform": platform.platform(), "processor": platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": str(device), "processes": dist_info.world_size,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _previous(out: Path, name: str, key: str) -> tuple[list[dict], dict[int, dict], dict[int, float]]:
    """Rows, extras and seconds of seeds already measured in ``out`` with the same config."""
    path = out / RESULTS_NAME
    if not path.is_file():
        return [], {}, {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return [], {}, {}
    meta = data.get("meta", {})
    if data.get("experiment") != name or meta.get("config_hash") != key:
        return [], {}, {}
    extras = {int(k): v for k, v in data.get("extras", {}).items()}
    return data.get("rows", []), extras, {int(k): v for k, v in meta.get("seed_seconds", {}).items()}


def _assemble(exp: Any, cfg: Any, preset: str, rows: list[dict], extras: dict[int, dict],
              meta: dict[str, Any]) -> dict[str, Any]:
    results = Results(rows, extras)
    claims = [c.evaluate(results) for c in exp.claims] if rows else []
    return {
        "experiment": exp.name,
        "title": exp.report_title(cfg, preset),
        "post": exp.post,
        "claims": claims,
        "table_md": exp.table(results) if rows else "(no seed finished yet)",
        "notes": exp.notes(results) if rows else "",
        "plots": [p.to_dict() for p in exp.figures(results)] if rows else [],
        "html_sections": [s.to_dict() for s in exp.html_sections(results)] if rows else [],
        "rows": rows,
        "extras": {str(k): v for k, v in extras.items()},
        "meta": meta,
    }


def run_experiment(
    name: str,
    *,
    preset: str = "quick",
    seeds: int | list[int] = 1,
    seed: int = 0,
    out_dir: str | Path | None = None,
    device: torch.device | str = "auto",
    progress: bool = True,
    cache_dir: str | Path | None = None,
    corpus: str | None = None,
    config: Any = None,
    dist_info: DistInfo | None = None,
    parallel: str | None = None,
) -> tuple[dict[str, Any], dict[str, Path]]:
    """Run experiment ``name`` and write its report into ``out_dir`` (default ``runs/NAME-PRESET``).

    Args:
        name: A registered experiment (``formerlab lab list``).
        preset: One of the experiment's presets.
        seeds: Number of seeds (``seed, seed+1, …``) or an explicit list.
        seed: First seed when ``seeds`` is a number.
        config: A config object replacing the preset's (same dataclass).
        dist_info: The process group when launched by ``torchrun``
            (:func:`~formerlab.train.init_distributed`; ``None``: one process).
        parallel: ``"ddp"`` or ``"fsdp"`` for every training of the run (``None``: each train
            config's own).

    Returns:
        ``(results dict as written to results.json, written paths)``; on ranks other than 0 the
        paths are empty (only rank 0 writes).
    """
    from ..train.distributed import resolve_device

    if parallel is not None and parallel not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {list(PARALLEL_MODES)} or None, "
                         f"got {parallel!r}")
    info = dist_info or DistInfo()
    progress = progress and info.is_main
    _load_all()
    exp = EXPERIMENTS.get(name)
    cfg = exp.preset(preset) if config is None else type(exp.preset(preset)).coerce(config)
    seed_list = list(range(seed, seed + seeds)) if isinstance(seeds, int) else list(seeds)
    if not seed_list or len(set(seed_list)) != len(seed_list):
        raise ValueError(f"seeds must be a positive count or distinct ints, got {seeds!r}")
    out = Path(out_dir) if out_dir is not None else Path("runs") / f"{exp.name}-{preset}"
    dev = process_device(resolve_device(device), info)
    key = config_hash(cfg, {"preset": preset, "corpus": corpus or "default"})
    old_rows, extras, seconds = from_main(_previous(out, exp.name, key) if info.is_main else None,
                                          info)
    rows = [r for r in old_rows if r.get("seed") in seed_list]
    done = {r["seed"] for r in rows}
    meta: dict[str, Any] = {
        "experiment": exp.name, "preset": preset, "seeds": seed_list, "config": cfg.to_dict(),
        "config_hash": key, "versions": _versions(), "machine": _machine(dev, info),
        "corpus": corpus or "embedded default corpus", "started": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": " ".join(sys.argv),
        "seed_seconds": {str(k): v for k, v in seconds.items() if k in done},
    }
    if done:  # ``seconds`` is this invocation's wall time; these seeds' rows were reused
        meta["reused_seeds"] = sorted(done)
    if parallel is not None:
        meta["parallel"] = parallel
    t0 = time.perf_counter()
    for s in seed_list:
        if s in done:
            if progress:
                print(f"[{exp.name}] seed {s}: reusing the stored results", flush=True)
            continue
        ctx = RunContext(preset=preset, out_dir=out, device=dev, seed=s, progress=progress,
                         cache_dir=Path(cache_dir) if cache_dir else None, corpus=corpus,
                         dist=info, parallel=parallel)
        started = time.perf_counter()
        cuda = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(s)
            got = exp.run(cfg, ctx)
        seed_rows, seed_extras = got if isinstance(got, tuple) else (got, {})
        rows += [{**r, "seed": s} for r in seed_rows]
        if seed_extras:
            extras[s] = seed_extras
        meta["seed_seconds"][str(s)] = round(time.perf_counter() - started, 1)
        meta["seconds"] = round(time.perf_counter() - t0, 1)
        if info.is_main:
            write_report(_assemble(exp, cfg, preset, rows, extras, {**meta, "complete": False}),
                         out)
    meta["seconds"] = round(time.perf_counter() - t0, 1)
    meta["complete"] = True
    data = _assemble(exp, cfg, preset, rows, extras, meta)
    paths = write_report(data, out) if info.is_main else {}
    barrier(info)  # every process leaves once rank 0 has written
    return data, paths
