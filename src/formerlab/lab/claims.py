"""Claims of the blog as data, and verdicts computed from the measured rows over seeds.

An experiment declares :class:`Claim` objects: the statement, the post it comes from, and a check
over the :class:`Results` (every seed's rows). A check returns a :class:`Verdict`:

- ``reproduced`` — the claim holds for every seed (or the seed intervals separate);
- ``not reproduced`` — the opposite holds for every seed;
- ``inconclusive`` — the spread overlaps, or a single seed shows a difference inside the claim's
  ``margin`` (a difference inside the spread is a tie, never a win);
- ``not tested`` — the run did not measure what the claim needs (e.g. a smaller preset).

Checks: :class:`Ordering` (``a`` beats ``b`` on a metric, paired by seed), :class:`NotWorse`
(``a`` loses at most a margin against ``b``), :class:`Chain`
(``a > b > c``), :class:`Threshold` (a metric beyond a value), :class:`Trend` (a metric along a
column, e.g. loss vs context, never rises by more than a tolerance) and :class:`AllOf`.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import statistics
from collections.abc import Callable, Iterable
from typing import Any

__all__ = [
    "INCONCLUSIVE",
    "NOT_REPRODUCED",
    "NOT_TESTED",
    "REPRODUCED",
    "AllOf",
    "Chain",
    "Check",
    "Claim",
    "ForEach",
    "NotWorse",
    "Ordering",
    "Results",
    "Stat",
    "Threshold",
    "Trend",
    "Verdict",
]

REPRODUCED, NOT_REPRODUCED = "reproduced", "not reproduced"
INCONCLUSIVE, NOT_TESTED = "inconclusive", "not tested"


@dataclasses.dataclass(frozen=True)
class Stat:
    """A metric over seeds: mean, sample std (0 for one seed), the per-seed values."""

    mean: float
    std: float
    values: dict[int, float]

    @property
    def n(self) -> int:
        return len(self.values)

    def fmt(self, scale: float = 1.0, digits: int = 2) -> str:
        if self.n == 1:
            return f"{self.mean * scale:.{digits}f}"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


class Results:
    """Every seed's rows of one run, with selection and per-seed statistics.

    Args:
        rows: Tidy result rows; each carries a ``seed`` column.
        extras: Per-seed extra data (curves too long for rows), ``{seed: {...}}``.
    """

    def __init__(self, rows: list[dict[str, Any]], extras: dict[int, dict[str, Any]] | None = None
                 ) -> None:
        self.rows = rows
        self.extras = extras or {}

    @property
    def seeds(self) -> list[int]:
        return sorted({r["seed"] for r in self.rows})

    def select(self, **where: Any) -> list[dict[str, Any]]:
        return [r for r in self.rows if all(r.get(k) == v for k, v in where.items())]

    def values(self, metric: str, **where: Any) -> dict[int, float]:
        """``{seed: value}`` of ``metric`` in the rows matching ``where`` (one row per seed)."""
        out: dict[int, float] = {}
        for r in self.select(**where):
            v = r.get(metric)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                continue
            if r["seed"] in out:
                raise ValueError(f"{where} matches several rows of seed {r['seed']} for {metric!r}")
            out[r["seed"]] = float(v)
        return out

    def stat(self, metric: str, **where: Any) -> Stat | None:
        vals = self.values(metric, **where)
        if not vals:
            return None
        xs = list(vals.values())
        return Stat(statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0, vals)

    def mean(self, metric: str, **where: Any) -> float | None:
        s = self.stat(metric, **where)
        return None if s is None else s.mean

    def fmt(self, metric: str, scale: float = 1.0, digits: int = 2, **where: Any) -> str | None:
        s = self.stat(metric, **where)
        return None if s is None else s.fmt(scale, digits)

    def distinct(self, column: str, **where: Any) -> list[Any]:
        return list(dict.fromkeys(r[column] for r in self.select(**where) if column in r))


@dataclasses.dataclass
class Verdict:
    """A claim's outcome with its evidence (numbers, per-seed values)."""

    status: str
    evidence: str
    values: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"status": self.status, "evidence": self.evidence, "values": self.values}


class Check:
    """Base class: ``check(results) -> Verdict``; subclasses are small dataclasses."""

    def __call__(self, results: Results) -> Verdict:
        raise NotImplementedError


def _label(where: dict[str, Any], label: str | None) -> str:
    return label or ", ".join(f"{v}" for v in where.values())


def _not_measured(results: Results, metric: str, where: dict[str, Any], label: str) -> Verdict:
    """``not tested``, saying why: the first selector value no row of the run has."""
    rows = results.rows
    for key, value in where.items():
        seen = {r.get(key) for r in rows}
        if value not in seen:
            have = ", ".join(sorted(map(repr, seen))) if len(seen) <= 6 else f"{len(seen)} values"
            return Verdict(NOT_TESTED, f"{label} was not measured: no row of this run has "
                           f"{key}={value!r} (it has {have})")
    rows = [r for r in rows if all(r.get(k) == v for k, v in where.items())]
    if rows and all(r.get(metric) is None for r in rows):
        return Verdict(NOT_TESTED, f"{label} was not measured: its rows have no {metric!r}")
    return Verdict(NOT_TESTED, f"{label} was not measured: no row of this run matches {where}")


@dataclasses.dataclass
class Ordering(Check):
    """``better`` beats ``worse`` on ``metric`` (by more than ``margin``), paired by seed.

    Args:
        metric: The row column compared.
        better, worse: Row selectors (``{"method": "rerope", "length": 1024}``).
        higher_is_better: ``False`` for losses.
        margin: The smallest difference that counts (in the metric's unit); with one seed a
            difference inside it is a tie.
        scale: Display scale of the evidence (100 for accuracies shown in %).
        labels: Display names of the two sides.
    """

    metric: str
    better: dict[str, Any]
    worse: dict[str, Any]
    higher_is_better: bool = True
    margin: float = 0.0
    scale: float = 1.0
    labels: tuple[str | None, str | None] = (None, None)

    def __call__(self, results: Results) -> Verdict:
        a, b = results.stat(self.metric, **self.better), results.stat(self.metric, **self.worse)
        la, lb = _label(self.better, self.labels[0]), _label(self.worse, self.labels[1])
        if a is None or b is None:
            return _not_measured(results, self.metric, *((self.better, la) if a is None
                                                         else (self.worse, lb)))
        seeds = sorted(set(a.values) & set(b.values))
        sign = 1.0 if self.higher_is_better else -1.0
        diffs = [sign * (a.values[s] - b.values[s]) for s in seeds]
        evidence = (f"{la} {a.fmt(self.scale)} vs {lb} {b.fmt(self.scale)} "
                    f"({len(seeds)} seed{'s' if len(seeds) != 1 else ''}")
        evidence += ", margin " + f"{self.margin * self.scale:g})" if self.margin else ")"
        values = {"better": a.values, "worse": b.values, "differences": dict(zip(seeds, diffs))}
        if all(d > self.margin for d in diffs):
            status = REPRODUCED
        elif all(d < -self.margin for d in diffs):
            status = NOT_REPRODUCED
        elif len(seeds) > 1 and sign * (a.mean - b.mean) > a.std + b.std + self.margin:
            status = REPRODUCED  # the intervals separate
        elif len(seeds) > 1 and sign * (b.mean - a.mean) > a.std + b.std + self.margin:
            status = NOT_REPRODUCED
        else:
            status = INCONCLUSIVE
            evidence += ": inside the spread, a tie"
        return Verdict(status, evidence, values)


@dataclasses.dataclass
class NotWorse(Check):
    """``a`` is not worse than ``b`` on ``metric`` by more than ``margin``, for every seed
    ("adding log n† does not hurt").

    ``reproduced``: every seed's difference is within ``margin`` or in ``a``'s favour;
    ``not reproduced``: every seed's is beyond it; ``inconclusive``: the seeds disagree.
    """

    metric: str
    a: dict[str, Any]
    b: dict[str, Any]
    margin: float
    scale: float = 1.0
    label: str = ""
    higher_is_better: bool = True

    def __call__(self, results: Results) -> Verdict:
        sa, sb = results.stat(self.metric, **self.a), results.stat(self.metric, **self.b)
        if sa is None or sb is None:
            return _not_measured(results, self.metric, self.a if sa is None else self.b,
                                 self.label)
        seeds = sorted(set(sa.values) & set(sb.values))
        sign = 1.0 if self.higher_is_better else -1.0
        diffs = [sign * (sa.values[s] - sb.values[s]) for s in seeds]
        ok = [d >= -self.margin for d in diffs]
        status = REPRODUCED if all(ok) else NOT_REPRODUCED if not any(ok) else INCONCLUSIVE
        shown = ", ".join(f"{d * self.scale:+.2f}" for d in diffs)
        return Verdict(status, f"{self.label} {shown}".strip(),
                       {"differences": dict(zip(seeds, diffs))})


@dataclasses.dataclass
class Chain(Check):
    """``items[0] > items[1] > …`` on ``metric``: every consecutive :class:`Ordering`."""

    metric: str
    items: list[dict[str, Any]]
    higher_is_better: bool = True
    margin: float = 0.0
    scale: float = 1.0
    labels: list[str] | None = None

    def __call__(self, results: Results) -> Verdict:
        labels = self.labels or [None] * len(self.items)
        parts = [Ordering(self.metric, self.items[i], self.items[i + 1], self.higher_is_better,
                          self.margin, self.scale, (labels[i], labels[i + 1]))(results)
                 for i in range(len(self.items) - 1)]
        return _combine(parts, " > ")


@dataclasses.dataclass
class Threshold(Check):
    """``metric`` of the rows ``where`` is ``above`` (or below) ``value`` for every seed."""

    metric: str
    where: dict[str, Any]
    value: float
    above: bool = True
    scale: float = 1.0
    label: str | None = None

    def __call__(self, results: Results) -> Verdict:
        s = results.stat(self.metric, **self.where)
        name = _label(self.where, self.label)
        if s is None:
            return _not_measured(results, self.metric, self.where, name)
        ok = [(v > self.value) == self.above for v in s.values.values()]
        rel = ">" if self.above else "<"
        evidence = (f"{name} {s.fmt(self.scale)} ({rel} {self.value * self.scale:g} wanted, "
                    f"{s.n} seed{'s' if s.n != 1 else ''})")
        status = REPRODUCED if all(ok) else NOT_REPRODUCED if not any(ok) else INCONCLUSIVE
        return Verdict(status, evidence, {"values": s.values})


@dataclasses.dataclass
class Trend(Check):
    """``metric`` along ``over`` (sorted) never rises (``direction="non_increasing"``) or never
    falls (``"non_decreasing"``) by more than ``tolerance``, for every seed."""

    metric: str
    where: dict[str, Any]
    over: str
    direction: str = "non_increasing"
    tolerance: float = 0.0
    label: str | None = None

    def __call__(self, results: Results) -> Verdict:
        if self.direction not in ("non_increasing", "non_decreasing"):
            raise ValueError(f"direction must be non_increasing or non_decreasing, got {self.direction!r}")
        name = _label(self.where, self.label)
        xs = sorted(results.distinct(self.over, **self.where))
        if len(xs) < 2:
            return Verdict(NOT_TESTED, f"{name}: fewer than two points along {self.over}")
        stats = [results.stat(self.metric, **self.where, **{self.over: x}) for x in xs]
        sign = 1.0 if self.direction == "non_increasing" else -1.0
        held = []
        for seed in results.seeds:
            curve = [s.values.get(seed) for s in stats if s is not None]
            if None in curve or len(curve) < 2:
                continue
            held.append(all(sign * (b - a) <= self.tolerance for a, b in itertools.pairwise(curve)))
        evidence = f"{name}: " + " → ".join(s.fmt(digits=3) for s in stats if s is not None)
        evidence += f" along {self.over} {xs} (tolerance {self.tolerance:g}, {len(held)} seeds)"
        status = (NOT_TESTED if not held else REPRODUCED if all(held)
                  else NOT_REPRODUCED if not any(held) else INCONCLUSIVE)
        return Verdict(status, evidence, {"points": xs})


@dataclasses.dataclass
class AllOf(Check):
    """Every check holds (one not reproduced makes the whole not reproduced)."""

    checks: list[Check]

    def __call__(self, results: Results) -> Verdict:
        return _combine([c(results) for c in self.checks], "; ")


@dataclasses.dataclass
class ForEach(Check):
    """``make(x)`` holds for every value ``x`` of column ``over`` in the rows ``where``.

    Combined like :class:`AllOf`, so a claim such as "for every chunk size" holds whatever sizes
    a preset measures.

    Args:
        over: The column (e.g. ``"chunks"``, ``"codebook_size"``).
        make: ``x -> Check`` for one value.
        where: Restrict the rows whose values of ``over`` are collected.
        keep: Only values with ``keep(x)`` true (e.g. ``lambda c: c > 1``).
    """

    over: str
    make: Callable[[Any], Check]
    where: dict[str, Any] = dataclasses.field(default_factory=dict)
    keep: Callable[[Any], bool] | None = None

    def __call__(self, results: Results) -> Verdict:
        xs = sorted(x for x in results.distinct(self.over, **self.where)
                    if self.keep is None or self.keep(x))
        if not xs:
            return Verdict(NOT_TESTED, f"no rows with a value of {self.over!r}")
        return AllOf([self.make(x) for x in xs])(results)


def _combine(parts: Iterable[Verdict], sep: str) -> Verdict:
    parts = list(parts)
    statuses = {p.status for p in parts}
    if statuses == {REPRODUCED}:
        status = REPRODUCED
    elif NOT_REPRODUCED in statuses:
        status = NOT_REPRODUCED
    elif statuses == {NOT_TESTED}:
        status = NOT_TESTED
    else:
        status = INCONCLUSIVE
    return Verdict(status, sep.join(p.evidence for p in parts),
                   {"parts": [p.to_dict() for p in parts]})


@dataclasses.dataclass
class Claim:
    """A claim of the blog that an experiment checks.

    Args:
        id: Short stable identifier (``"rerope-beats-ntk"``).
        statement: The claim in one sentence, as the post makes it.
        post: The post's URL (kexue.fm/archives/NNNN).
        check: A :class:`Check` (or any ``fn(results) -> Verdict``).
    """

    id: str
    statement: str
    post: str
    check: Check | Callable[[Results], Verdict]

    def evaluate(self, results: Results) -> dict[str, Any]:
        try:
            verdict = self.check(results)
        except (KeyError, ValueError, ZeroDivisionError) as exc:  # a broken check is reported
            verdict = Verdict(NOT_TESTED, f"the check failed: {exc}")
        return {"id": self.id, "statement": self.statement, "post": self.post,
                **verdict.to_dict()}
