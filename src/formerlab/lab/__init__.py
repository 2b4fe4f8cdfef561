"""The lab: registered experiments that reproduce the blog's claims and write their reports.

An experiment (:class:`Experiment`) declares its config, presets and claims; the lab runs it for
one or more seeds (:func:`run_experiment`), computes every claim's verdict with its spread and
writes ``results.json``, ``table.md``, figures and ``report.html``.
"""

from __future__ import annotations

from .base import EXPERIMENTS, STANDARD_PRESETS, Experiment, RunContext, register_experiment
from .claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    AllOf,
    Chain,
    Claim,
    ForEach,
    NotWorse,
    Ordering,
    Results,
    Threshold,
    Trend,
    Verdict,
)
from .figures import LinePlot, Series, series_over
from .report import load_results, markdown_table, rebuild_report, write_report
from .runner import experiment_config, list_experiments, run_experiment

__all__ = [
    "EXPERIMENTS",
    "INCONCLUSIVE",
    "NOT_REPRODUCED",
    "NOT_TESTED",
    "REPRODUCED",
    "STANDARD_PRESETS",
    "AllOf",
    "Chain",
    "ForEach",
    "Claim",
    "Experiment",
    "LinePlot",
    "NotWorse",
    "Ordering",
    "Results",
    "RunContext",
    "Series",
    "Threshold",
    "Trend",
    "Verdict",
    "experiment_config",
    "list_experiments",
    "load_results",
    "markdown_table",
    "rebuild_report",
    "register_experiment",
    "run_experiment",
    "series_over",
    "write_report",
]
