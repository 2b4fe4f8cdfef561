"""Figures as data: an experiment describes its plots, the lab draws them after the results are
safe on disk.

A :class:`LinePlot` holds :class:`Series` (mean over seeds and, with several seeds, the standard
deviation drawn as a band). Plots are stored in ``results.json``, so ``formerlab report DIR``
redraws them. matplotlib is optional (the ``lab`` extra): without it :func:`render` warns once
and the report is written without figures.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["LinePlot", "Series", "render", "series_over"]

_WARNED: list[bool] = []


@dataclasses.dataclass
class Series:
    """One line: ``y`` over ``x``; ``y_std`` (same length) draws a ±1 std band."""

    label: str
    x: list[float]
    y: list[float]
    y_std: list[float] | None = None
    style: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class LinePlot:
    """A line plot written to ``<name>.png``.

    Args:
        name: File stem.
        title, xlabel, ylabel: Texts.
        series: The lines.
        logx: Logarithmic x axis (base 2).
        vline: A dashed vertical line (e.g. the training length).
        caption: Shown under the figure in the report.
        logy: Logarithmic y axis (with ``logx``: a log-log plot, slopes read as exponents).
    """

    name: str
    title: str
    xlabel: str
    ylabel: str
    series: list[Series]
    logx: bool = False
    vline: float | None = None
    caption: str = ""
    logy: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LinePlot:
        d = dict(d)
        d["series"] = [Series(**s) for s in d.get("series", [])]
        return cls(**d)


def series_over(results: Any, metric: str, over: str, label: str, *, scale: float = 1.0,
                style: dict[str, Any] | None = None, **where: Any) -> Series | None:
    """A :class:`Series` of ``metric`` (mean ± std over seeds) along the column ``over``."""
    xs = sorted(results.distinct(over, **where))
    pts = [(x, results.stat(metric, **where, **{over: x})) for x in xs]
    pts = [(x, s) for x, s in pts if s is not None]
    if not pts:
        return None
    multi = any(s.n > 1 for _, s in pts)
    return Series(label, [float(x) for x, _ in pts], [s.mean * scale for _, s in pts],
                  [s.std * scale for _, s in pts] if multi else None, dict(style or {}))


def _matplotlib() -> Any:
    try:
        import matplotlib
    except ImportError:
        if not _WARNED:
            warnings.warn("matplotlib is not installed: the report is written without figures "
                          "(pip install 'formerlab[lab]' to get them)", stacklevel=3)
            _WARNED.append(True)
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def render(plots: Sequence[LinePlot], out_dir: Path) -> list[Path]:
    """Draw every plot as ``out_dir/<name>.png``; returns the written paths ([] without
    matplotlib)."""
    plt = _matplotlib()
    if plt is None:
        return []
    paths = []
    for plot in plots:
        fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
        palette = plt.get_cmap("tab20") if len(plot.series) > 10 else None
        for i, s in enumerate(plot.series):
            kw: dict[str, Any] = {"marker": "o" if len(s.x) < 20 else None, "ms": 3}
            if palette is not None:
                kw["color"] = palette(i % 20)
            kw.update(s.style)
            (line,) = ax.plot(s.x, s.y, label=s.label, **kw)
            if s.y_std is not None:
                lo = [m - d for m, d in zip(s.y, s.y_std)]
                hi = [m + d for m, d in zip(s.y, s.y_std)]
                ax.fill_between(s.x, lo, hi, color=line.get_color(), alpha=0.15, lw=0)
        if plot.logx:
            ax.set_xscale("log", base=2)
        if plot.logy:
            ax.set_yscale("log")
        if plot.vline is not None:
            ax.axvline(plot.vline, color="grey", ls="--", lw=1)
        ax.set_title(plot.title)
        ax.set_xlabel(plot.xlabel)
        ax.set_ylabel(plot.ylabel)
        ax.grid(alpha=0.3)
        if plot.series:
            ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        path = Path(out_dir) / f"{plot.name}.png"
        fig.savefig(path)
        plt.close(fig)
        paths.append(path)
    return paths
