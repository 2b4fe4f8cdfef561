"""Helpers shared by the model experiments: training-curve extras and preset-measured margins.

A margin is the smallest difference that counts, and that depends on how noisy the measurement
is: a 12-step micro run spreads far more from seed to seed than a 300-step quick run. The model
experiments therefore keep each preset's margin in its config (the seed spread measured for that
preset, or a stated minimal effect) and copy it into the compared rows; :class:`RowMarginOrdering`
reads it back, so the verdict uses the margin of the preset that was run.
"""

from __future__ import annotations

import dataclasses
import math

from ..claims import Ordering, Results, Verdict
from ..figures import Series

__all__ = ["RowMarginOrdering", "curve_series", "loss_curve"]


def loss_curve(losses: list[float], every: int) -> dict[str, list[float]]:
    """The per-step losses averaged over windows of ``every`` steps: ``{"step", "loss"}``."""
    every = max(1, every)
    steps, means = [], []
    for i in range(0, len(losses), every):
        chunk = losses[i:i + every]
        steps.append(i + len(chunk))
        means.append(sum(chunk) / len(chunk))
    return {"step": steps, "loss": means}


def curve_series(results: Results, key: str, label: str) -> Series | None:
    """A :class:`Series` of the curve ``extras[seed]["curves"][key]`` (mean ± std over seeds)."""
    curves = [results.extras[s]["curves"][key] for s in results.seeds
              if key in results.extras.get(s, {}).get("curves", {})]
    if not curves:
        return None
    n = min(len(c["loss"]) for c in curves)
    ys = [[c["loss"][i] for c in curves] for i in range(n)]
    mean = [sum(y) / len(y) for y in ys]
    std = None
    if len(curves) > 1:
        std = [math.sqrt(sum((v - m) ** 2 for v in y) / (len(y) - 1)) for y, m in zip(ys, mean)]
    return Series(label, [float(x) for x in curves[0]["step"][:n]], mean, std)


@dataclasses.dataclass
class RowMarginOrdering:
    """An :class:`~formerlab.lab.claims.Ordering` whose margin is the run's own: the largest
    ``column`` value of the compared rows (``ordering.margin`` when no row carries one)."""

    ordering: Ordering
    column: str = "margin"

    def __call__(self, results: Results) -> Verdict:
        o = self.ordering
        rows = results.select(**o.better) + results.select(**o.worse)
        margins = [float(r[self.column]) for r in rows if r.get(self.column) is not None]
        return dataclasses.replace(o, margin=max(margins, default=o.margin))(results)
