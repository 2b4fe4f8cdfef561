"""The blog's claims about length extrapolation, as checks over the rows of every seed.

Rows carry ``method``, ``set`` (``repeated``, ``non_repeated``, ``last_n``), ``length``, ``k``
(``length / L``) and ``longest`` (the preset's longest test length or context), so one claim
reads the same in every preset. Margins are the smallest difference that counts:

- :data:`ACC_MARGIN` — 0.5 accuracy points between two methods on the same sequences (paired
  by seed). Over two seeds of the micro preset a paired difference moved by 0.2–0.6 points
  (log n† − plain: −0.39 and +0.20 for NTK-RoPE-old), and a few tenths of a point is inside
  the seed spread at 16 sequences per cell, so a smaller gap is a tie;
- :data:`SET_MARGIN` — 1 point between the repeated and the non-repeated set: two different
  sets of sequences (the repeated one redrawn per seed), so the difference carries the sampling
  noise of both;
- :data:`LOSS_MARGIN` — 0.03 nats on the last-``L``-token loss (the same targets at every
  context), about twice its seed-to-seed std over two micro seeds (0.01–0.02 nats);
- :data:`FAR_MARGIN` — 5 points for the claims the posts phrase as "far worse" / "≫"
  (published gaps: 69 and 57 points), ten times :data:`ACC_MARGIN`.

The identities at the training length are exact: a single differing bit is ``not reproduced``.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

from ...claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    Check,
    Claim,
    NotWorse,
    Ordering,
    Results,
    Trend,
    Verdict,
)
from .methods import METHODS, NTK_FAMILY, identity_pairs

__all__ = ["ACC_MARGIN", "CLAIMS", "FAR_MARGIN", "LOSS_MARGIN", "SET_MARGIN", "Dominates",
           "Each", "NotWorse", "SameAtTrainLength"]

ACC_MARGIN = 0.005
SET_MARGIN = 0.01
LOSS_MARGIN = 0.03
FAR_MARGIN = 0.05

P9675 = "https://kexue.fm/archives/9675"
P9706 = "https://kexue.fm/archives/9706"
P9708 = "https://kexue.fm/archives/9708"
P9603 = "https://kexue.fm/archives/9603"
P9948 = "https://kexue.fm/archives/9948"


def _label(name: str) -> str:
    return METHODS.get(name).label if name in METHODS else name


def _combine(parts: list[Verdict], skipped: list[str], sep: str = "; ") -> Verdict:
    """Every measured part holds; parts the run did not measure are named and left out."""
    measured = [p for p in parts if p.status != NOT_TESTED]
    statuses = {p.status for p in measured}
    if not measured:
        status = NOT_TESTED
    elif statuses == {REPRODUCED}:
        status = REPRODUCED
    elif NOT_REPRODUCED in statuses:
        status = NOT_REPRODUCED
    else:
        status = INCONCLUSIVE
    evidence = sep.join(p.evidence for p in measured) or "nothing was measured"
    if skipped:
        evidence += f" (not measured: {', '.join(skipped)})"
    return Verdict(status, evidence, {"parts": [p.to_dict() for p in measured],
                                      "not_measured": skipped})


@dataclasses.dataclass
class Each(Check):
    """Every check holds, over the ones this run measured (the others are named, not counted)."""

    checks: list[Check]
    names: list[str] | None = None

    def __call__(self, results: Results) -> Verdict:
        parts = [c(results) for c in self.checks]
        names = self.names or [f"part {i + 1}" for i in range(len(parts))]
        skipped = [n for n, p in zip(names, parts) if p.status == NOT_TESTED]
        return _combine(parts, skipped)


@dataclasses.dataclass
class Dominates(Check):
    """Groups in order: every measured member of a group beats every measured member of the
    next (an :class:`~formerlab.lab.claims.Ordering` per pair, paired by seed)."""

    metric: str
    groups: list[tuple[str, list[str]]]
    where: dict[str, Any]
    margin: float
    scale: float = 100.0

    def __call__(self, results: Results) -> Verdict:
        measured = [(title, [n for n in names if results.select(method=n, **self.where)])
                    for title, names in self.groups]
        missing = [n for (_, names), (_, got) in zip(self.groups, measured)
                   for n in names if n not in got]
        if any(not got for _, got in measured):
            return Verdict(NOT_TESTED, "a group was not measured: "
                           + ", ".join(t for t, got in measured if not got))
        parts = []
        for (_, upper), (_, lower) in itertools.pairwise(measured):
            for a in upper:
                for b in lower:
                    parts.append((a, b, Ordering(self.metric, {"method": a, **self.where},
                                                 {"method": b, **self.where},
                                                 margin=self.margin, scale=self.scale)(results)))
        verdict = _combine([p for *_, p in parts], missing)
        groups = " > ".join(
            f"{title} {{" + ", ".join(f"{_label(n)} {results.fmt(self.metric, self.scale, 2, method=n, **self.where)}"
                                     for n in got) + "}"
            for title, got in measured)
        seeds = len(results.seeds)
        length = results.select(**self.where)[0]["length"]
        failed = [f"{_label(a)} vs {_label(b)}: {p.status}" for a, b, p in parts
                  if p.status != REPRODUCED]
        verdict.evidence = (f"{groups} (% at {length}, {seeds} seed{'s' if seeds != 1 else ''}, "
                            f"margin {self.margin * self.scale:g})"
                            + (f"; {'; '.join(failed)}" if failed else "")
                            + (f" (not measured: {', '.join(missing)})" if missing else ""))
        return verdict


@dataclasses.dataclass
class SameAtTrainLength(Check):
    """Every identity pair (:func:`~.methods.identity_pairs`) has the same accuracy and loss at the
    training length on both sets, for every seed, bit for bit."""

    def __call__(self, results: Results) -> Verdict:
        at_l = results.select(k=1)
        if not at_l:
            return Verdict(NOT_TESTED, "the training length was not measured")
        L = at_l[0]["length"]
        pairs = identity_pairs(results.distinct("method"), L)
        if not pairs:
            return Verdict(NOT_TESTED, "no schedule, log n† or covering-window row was measured")
        differ, compared = [], 0
        for method, ref in pairs:
            for set_name in ("repeated", "non_repeated"):
                for metric in ("accuracy", "loss"):
                    a = results.values(metric, method=method, set=set_name, length=L)
                    b = results.values(metric, method=ref, set=set_name, length=L)
                    for seed in sorted(set(a) & set(b)):
                        compared += 1
                        if a[seed] != b[seed]:
                            differ.append(f"{method} vs {ref} ({set_name}, {metric}, seed {seed}: "
                                          f"{a[seed]:.6f} vs {b[seed]:.6f})")
        if differ:
            return Verdict(NOT_REPRODUCED, f"{len(differ)} of {compared} values differ at {L}: "
                           + "; ".join(differ[:5]), {"differ": differ})
        return Verdict(REPRODUCED, f"{len(pairs)} methods equal their baseline at L = {L}: "
                       f"{compared} accuracies and losses identical, bit for bit",
                       {"pairs": pairs})


LONG_REP = {"set": "repeated", "longest": True}
LONG_NON = {"set": "non_repeated", "longest": True}


def _at(method: str, **where: Any) -> dict[str, Any]:
    return {"method": method, **where}


def _logn_pairs(names: tuple[str, ...]) -> Each:
    return Each([NotWorse("accuracy", _at(f"{n}-logn_dagger", **LONG_REP), _at(n, **LONG_REP),
                          ACC_MARGIN, 100, f"{_label(n)}: log n† − plain")
                 for n in names], list(names))


def _last_n_flat(name: str) -> Trend:
    return Trend("loss", {"method": name, "set": "last_n"}, over="length",
                 tolerance=LOSS_MARGIN, label=f"{_label(name)} last-L loss")


#: the claims, in the order of the report
CLAIMS = [
    Claim("identity-at-train-length",
          "At the training length every inference-time schedule is the baseline itself (k = 1), "
          "log n† = max(1, log_L n) is 1, and ReRoPE / Leaky ReRoPE with w ≥ n are plain RoPE.",
          P9706, SameAtTrainLength()),
    Claim("rerope-ntk-baseline",
          "On the repeated set far beyond the training length, ReRoPE (w in [L/4, L/2]) beats "
          "every NTK variant, which beats direct extrapolation.",
          P9708, Dominates("accuracy", [("ReRoPE", ["rerope", "rerope-w_quarter"]),
                                        ("NTK", list(NTK_FAMILY)), ("baseline", ["baseline"])],
                           LONG_REP, ACC_MARGIN)),
    Claim("logn-dagger-ntk",
          "Adding log n† to NTK-RoPE at inference does not hurt (and usually helps).",
          P9706, _logn_pairs(NTK_FAMILY)),
    Claim("logn-dagger-rerope",
          "Adding log n† to ReRoPE at inference does not hurt (and usually helps).",
          P9708, _logn_pairs(("rerope", "rerope-w_quarter"))),
    Claim("pi-worse-than-baseline",
          "Position interpolation without fine-tuning is worse than direct extrapolation beyond "
          "the training length.",
          P9675, Each([Ordering("accuracy", _at("baseline", **where), _at("pi", **where),
                                margin=ACC_MARGIN, scale=100,
                                labels=(f"baseline ({s})", f"PI ({s})"))
                       for s, where in (("repeated", LONG_REP), ("non-repeated", LONG_NON))],
                      ["repeated", "non-repeated"])),
    Claim("baseline-last-n-rises",
          "With plain RoPE the loss on the last L tokens rises once the context exceeds the "
          "training length.",
          P9948, Ordering("loss", _at("baseline", set="last_n", k=1),
                          _at("baseline", set="last_n", longest=True), higher_is_better=False,
                          margin=LOSS_MARGIN, labels=("baseline at context L",
                                                      "baseline at the longest context"))),
    Claim("rerope-last-n-flat",
          "With ReRoPE the loss on the last L tokens does not rise as the context grows.",
          P9948, Each([_last_n_flat("rerope"), _last_n_flat("rerope-w_quarter")],
                      ["rerope", "rerope-w_quarter"])),
    Claim("repeated-easier",
          "The repeated set scores far above the non-repeated one for the methods that keep "
          "global dependency (NTK, ReRoPE, HWFA): later copies are retrieved by looking back.",
          P9675, Each([Ordering("accuracy", _at(n, **LONG_REP), _at(n, **LONG_NON),
                                margin=SET_MARGIN, scale=100,
                                labels=(f"{_label(n)} repeated", "non-repeated"))
                       for n in ("ntk_old", "ntk_fixed", "ntk_mixed", "rerope", "hwfa")],
                      ["ntk_old", "ntk_fixed", "ntk_mixed", "rerope", "hwfa"])),
    Claim("rerope-full-window-collapses",
          "ReRoPE with w = L collapses, while w = L/4 works (far worse: by more than 5 points).",
          P9708, Ordering("accuracy", _at("rerope-w_quarter", **LONG_REP),
                          _at("rerope-w_full", **LONG_REP), margin=FAR_MARGIN, scale=100,
                          labels=("ReRoPE w=L/4", "ReRoPE w=L"))),
    Claim("hwfa-beats-baseline",
          "HWFA (window layers + one full NoPE log-n layer) extrapolates far better than the "
          "RoPE baseline (by more than 5 points).",
          P9603, Ordering("accuracy", _at("hwfa", **LONG_REP), _at("baseline", **LONG_REP),
                          margin=FAR_MARGIN, scale=100, labels=("HWFA", "baseline"))),
]
