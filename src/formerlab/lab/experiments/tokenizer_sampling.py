"""Perfect vs legacy Viterbi sampling (kexue.fm/archives/9811, 9768; tokenizer: 9752).

The post's "watching" example: with the vocabulary ``{watch, ing, wat, ching, w, atching}`` and
equal piece scores, the three segmentations ``watch|ing``, ``wat|ching`` and ``w|atching`` are
equally likely. The legacy pairwise sampler (kexue.fm/archives/9768) replaces the incumbent
back-pointer with probability ``sigmoid(α·Δ) = 1/2`` at each new arrival, so it draws them with
probabilities 1/4, 1/4, 1/2, the 1/2 going to whichever piece arrives last at the final byte;
the perfect sampler (weighted reservoir over ``Z_s e^{αv}``, kexue.fm/archives/9811) gives 1/3
each, in any arrival order. Both arrival orders are sampled: longest piece first (BytePiece's
automaton, the compiled engine) and shortest first (the pure-Python reference).

A richer lattice over the same word (every letter and a few fragments) is sampled at each
``alpha`` and compared with the brute-force distribution ``p^α/Z``: total variation and a
chi-square goodness-of-fit p-value (bins with fewer than 5 expected draws pooled).

Rows (one seed): ``segmentation`` rows (empirical vs exact probability of each segmentation of
the equal-score example) and ``fit`` rows (one per example, sampler, order and α: ``samples``,
``total_variation``, ``chi_square_p`` against the exact distribution and, for the legacy sampler
on the equal-score example, ``legacy_model_p`` against the post's 1/4, 1/4, 1/2).
"""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Mapping
from typing import Any

import torch

from ...config import Config
from ...tokenize import UnigramLattice, numba_available
from ...tokenize import reference as ref
from ..base import Experiment, RunContext, register_experiment
from ..claims import NOT_TESTED, AllOf, Claim, Results, Threshold, Verdict
from ..figures import LinePlot, Series
from ..report import markdown_table

__all__ = ["RICH", "WATCHING", "TokenizerSampling", "TokenizerSamplingConfig", "chi_square_p",
           "legacy_watching_model"]

POST, LEGACY_POST = "https://kexue.fm/archives/9811", "https://kexue.fm/archives/9768"
LONGEST, SHORTEST = "longest first", "shortest first"

#: a goodness-of-fit p-value below this rejects "the sampler draws this distribution"
P_MIN = 1e-3
#: the pure-Python reference is slow: shortest-first runs draw at most this many samples
REFERENCE_SAMPLES = 20_000

#: The post's example: every piece log(0.1), so the three segmentations tie.
WATCHING = {p: math.log(0.1) for p in (b"watch", b"ing", b"wat", b"ching", b"w", b"atching")}

#: A richer lattice over the same word: letters, fragments and the post's pieces.
RICH = {
    **{bytes([c]): math.log(0.25) for c in b"watching"},
    b"watch": math.log(0.02), b"ing": math.log(0.06), b"wat": math.log(0.03),
    b"ching": math.log(0.01), b"atching": math.log(0.005), b"ch": math.log(0.1),
    b"at": math.log(0.1), b"in": math.log(0.08), b"tch": math.log(0.04),
}
TEXT = b"watching"

Seg = tuple[bytes, ...]


def _label(seg: Seg) -> str:
    return "|".join(p.decode("utf-8", errors="backslashreplace") for p in seg)


def chi_square_p(samples: list[Seg], probs: Mapping[Seg, float], min_expected: float = 5.0
                 ) -> float:
    """Pearson goodness-of-fit p-value of ``samples`` against ``probs``.

    Bins expecting fewer than ``min_expected`` draws are pooled into one; draws outside the
    support of ``probs`` land in the pooled bin (so they lower the p-value). The survival
    function of the chi-square law is the regularised upper incomplete gamma function.
    """
    n = len(samples)
    if n == 0:
        raise ValueError("samples must be non-empty")
    counts = Counter(samples)
    obs, exp, rest_obs, rest_exp = [], [], 0.0, 0.0
    for seg, p in probs.items():
        if p * n >= min_expected:
            obs.append(counts.get(seg, 0))
            exp.append(p * n)
        else:
            rest_obs += counts.get(seg, 0)
            rest_exp += p * n
    rest_obs += sum(c for seg, c in counts.items() if seg not in probs)
    if rest_obs or rest_exp:
        if rest_exp == 0.0:
            return 0.0  # draws the distribution gives no mass
        obs.append(rest_obs)
        exp.append(rest_exp)
    if len(obs) < 2:
        return 1.0
    stat = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    dof = torch.tensor((len(obs) - 1) / 2, dtype=torch.float64)
    return float(torch.special.gammaincc(dof, torch.tensor(stat / 2, dtype=torch.float64)))


def legacy_watching_model(order: str) -> dict[Seg, float]:
    """The legacy sampler's distribution on the equal-score example (the post's 1/4, 1/4, 1/2).

    Every end position but the last has one match; at the last byte ``m`` equal candidates
    arrive, each replacing the incumbent with probability ``sigmoid(0) = 1/2``: the ``i``-th
    arrival survives with probability ``2^-(m-i+1)`` (``i ≥ 2``), the first with ``2^-(m-1)``.
    """
    last = [m for m in ref.find_matches(TEXT, WATCHING, longest_first=order == LONGEST)
            if m.end == len(TEXT)]
    out = {}
    m = len(last)
    for i, match in enumerate(last, start=1):
        prefix = TEXT[:match.start]
        out[(prefix, TEXT[match.start:])] = 0.5 ** (m - 1 if i == 1 else m - i + 1)
    return out


@dataclasses.dataclass
class TokenizerSamplingConfig(Config):
    """Samples per run and the ``alpha`` values of the rich lattice."""

    samples: int = 20_000
    alphas: list[float] = dataclasses.field(default_factory=lambda: [1.0])

    def validate(self) -> None:
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 100:
            raise ValueError(f"samples must be an int >= 100, got {self.samples!r}")
        if not self.alphas or any(a < 0 for a in self.alphas):
            raise ValueError(f"alphas must be a non-empty list of values >= 0, got {self.alphas}")


def _sampler(lattice: UnigramLattice, vocab: dict[bytes, float], alpha: float, n: int,
             sampler: str, order: str, generator: torch.Generator) -> list[Seg]:
    if order == LONGEST:  # the engine's canonical order
        return lattice.sample_many(TEXT, alpha, n, generator, sampler=sampler)
    matches = ref.find_matches(TEXT, vocab, longest_first=False)
    rng = ref.SplitMix64(int(torch.randint(0, 2 ** 62, (1,), generator=generator)))
    draw = ref.perfect_sample if sampler == "perfect" else ref.legacy_sample
    return [tuple(draw(TEXT, matches, alpha, rng)) for _ in range(min(n, REFERENCE_SAMPLES))]


def _fit(example: str, sampler: str, order: str, alpha: float, samples: list[Seg],
         exact: dict[Seg, float]) -> dict[str, Any]:
    counts = Counter(samples)
    tv = 0.5 * sum(abs(counts.get(k, 0) / len(samples) - p) for k, p in exact.items())
    tv += 0.5 * sum(c for k, c in counts.items() if k not in exact) / len(samples)
    return {"kind": "fit", "example": example, "sampler": sampler, "order": order,
            "alpha": alpha, "segmentations": len(exact), "samples": len(samples),
            "total_variation": tv, "chi_square_p": chi_square_p(samples, exact)}


def _fit_where(sampler: str, example: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "fit", "example": example, "sampler": sampler, **extra}


class _EveryAlpha:
    """A :class:`Threshold` on the rich lattice for every measured ``alpha``."""

    def __init__(self, sampler: str, above: bool) -> None:
        self.sampler, self.above = sampler, above

    def __call__(self, results: Results) -> Verdict:
        alphas = sorted(results.distinct("alpha", **_fit_where(self.sampler, "rich")))
        if not alphas:
            return Verdict(NOT_TESTED, f"{self.sampler} was not run on the rich lattice")
        return AllOf([Threshold("chi_square_p", _fit_where(self.sampler, "rich", alpha=a), P_MIN,
                                above=self.above, label=f"{self.sampler} χ² p-value, α = {a:g}")
                      for a in alphas])(results)


def _both_orders(sampler: str, metric: str, above: bool, what: str) -> AllOf:
    return AllOf([Threshold(metric, _fit_where(sampler, "watching", order=o), P_MIN, above=above,
                            label=f"{sampler} ({o}) {what}") for o in (LONGEST, SHORTEST)])


@register_experiment
class TokenizerSampling(Experiment):
    """Sample both examples with both samplers; the verdicts are goodness-of-fit tests."""

    name = "tokenizer-sampling"
    title = "perfect vs legacy Viterbi sampling: 'watching' 1/3 each vs 1/4, 1/4, 1/2"
    post = POST + " (also " + LEGACY_POST + ")"
    config = TokenizerSamplingConfig
    presets = {"micro": lambda: TokenizerSamplingConfig(samples=2_000, alphas=[1.0]),
               "quick": lambda: TokenizerSamplingConfig(samples=20_000, alphas=[0.2, 1.0]),
               "full": lambda: TokenizerSamplingConfig(samples=200_000,
                                                       alphas=[0.0, 0.2, 1.0, 3.0])}
    claims = [
        Claim("perfect-watching-uniform", "The perfect sampler draws watch|ing, wat|ching and "
              "w|atching with probability 1/3 each, whatever the arrival order.", POST,
              _both_orders("perfect", "chi_square_p", True, "χ² p-value vs 1/3 each")),
        Claim("legacy-watching-biased", "The legacy sampler does not: it draws them with "
              "1/4, 1/4, 1/2, the 1/2 going to the last arrival.", POST,
              AllOf([_both_orders("legacy", "chi_square_p", False, "χ² p-value vs 1/3 each"),
                     _both_orders("legacy", "legacy_model_p", True,
                                  "χ² p-value vs 1/4, 1/4, 1/2 (last arrival 1/2)")])),
        Claim("perfect-exact", "Perfect sampling draws every segmentation with probability "
              "p(seg)^α / Z (the full-lattice distribution of Subword Regularization).", POST,
              _EveryAlpha("perfect", above=True)),
        Claim("legacy-inexact", "The legacy pairwise sampler does not draw p(seg)^α / Z.",
              LEGACY_POST, _EveryAlpha("legacy", above=False)),
    ]

    def run(self, config: TokenizerSamplingConfig, ctx: RunContext) -> tuple[list[dict], dict]:
        backend = "numba" if numba_available() else "python"
        n, g = config.samples, ctx.generator
        rows: list[dict[str, Any]] = []
        lat = UnigramLattice(WATCHING, backend=backend)
        exact = lat.exact_distribution(TEXT, 1.0)
        for sampler in ("perfect", "legacy"):
            for order in (LONGEST, SHORTEST):
                samples = _sampler(lat, WATCHING, 1.0, n, sampler, order, g)
                counts = Counter(samples)
                fit = _fit("watching", sampler, order, 1.0, samples, exact)
                if sampler == "legacy":
                    fit["legacy_model_p"] = chi_square_p(samples, legacy_watching_model(order))
                rows.append(fit)
                rows += [{"kind": "segmentation", "example": "watching", "sampler": sampler,
                          "order": order, "segmentation": _label(seg),
                          "empirical": counts.get(seg, 0) / len(samples), "exact": p}
                         for seg, p in exact.items()]
        rich = UnigramLattice(RICH, backend=backend)
        histograms = {}
        for alpha in config.alphas:
            rich_exact = rich.exact_distribution(TEXT, alpha)
            top = sorted(rich_exact, key=lambda k: -rich_exact[k])[:14]
            histograms[str(alpha)] = {"segmentations": [_label(k) for k in top],
                                      "exact": [rich_exact[k] for k in top]}
            for sampler in ("perfect", "legacy"):
                samples = _sampler(rich, RICH, alpha, n, sampler, LONGEST, g)
                rows.append(_fit("rich", sampler, LONGEST, alpha, samples, rich_exact))
                counts = Counter(samples)
                histograms[str(alpha)][sampler] = [counts.get(k, 0) / len(samples) for k in top]
        return rows, {"backend": backend, "histograms": histograms}

    def table(self, results: Results) -> str:
        segs = results.distinct("segmentation", kind="segmentation")
        runs = [(s, o) for s in ("perfect", "legacy") for o in (LONGEST, SHORTEST)]
        exact = {r["segmentation"]: r["exact"] for r in results.select(kind="segmentation")}
        body = [[seg, f"{exact[seg]:.3f}",
                 *[results.fmt("empirical", 1, 3, kind="segmentation", segmentation=seg,
                               sampler=s, order=o) for s, o in runs]] for seg in segs]
        out = ("Equal-score example: empirical probability of each segmentation (mean ± std over "
               f"{len(results.seeds)} seed(s)).\n\n"
               + markdown_table(["segmentation", "exact", *[f"{s} ({o})" for s, o in runs]],
                                body))
        fits = [[ex, s, o, f"{a:g}", r["segmentations"], r["samples"],
                 results.fmt("total_variation", 1, 4, **w),
                 _fmt_p(results.values("chi_square_p", **w)),
                 _fmt_p(results.values("legacy_model_p", **w))]
                for r in results.select(kind="fit", seed=results.seeds[0])
                for ex, s, o, a in [(r["example"], r["sampler"], r["order"], r["alpha"])]
                for w in [_fit_where(s, ex, order=o, alpha=a)]]
        return out + "\n\n" + markdown_table(
            ["example", "sampler", "arrival order", "α", "segmentations", "samples",
             "TV distance", "χ² p vs p^α/Z", "χ² p vs 1/4, 1/4, 1/2"], fits)

    def figures(self, results: Results) -> list[LinePlot]:
        plots = []
        first = results.extras.get(results.seeds[0], {}).get("histograms", {})
        for alpha, h in first.items():
            xs = [float(i + 1) for i in range(len(h["segmentations"]))]
            series = [Series("exact p^α/Z", xs, h["exact"], style={"color": "black"})]
            for sampler in ("perfect", "legacy"):
                seeds = [results.extras[s]["histograms"][alpha][sampler] for s in results.seeds
                         if alpha in results.extras.get(s, {}).get("histograms", {})]
                mean = [sum(c) / len(c) for c in zip(*seeds)]
                series.append(Series(sampler, xs, mean, style={"ls": "--"}))
            plots.append(LinePlot(
                f"rich_alpha_{alpha}", f"'watching', rich lattice, α = {alpha}: the most likely "
                "segmentations", "segmentation (rank by exact probability)", "probability",
                series, caption="Ranks: " + ", ".join(f"{i + 1} = {s}" for i, s in
                                                     enumerate(h["segmentations"]))))
        return plots

    def notes(self, results: Results) -> str:
        backends = sorted({e.get("backend", "?") for e in results.extras.values()})
        return (f"Lattice backend: {', '.join(backends)}. A χ² p-value below {P_MIN:g} rejects "
                "the distribution; shortest-first runs use the pure-Python reference sampler "
                f"(at most {REFERENCE_SAMPLES:,} samples). The legacy sampler's bias depends on "
                "the arrival order of the candidates at each end position, which is why both "
                "orders are sampled.")


def _fmt_p(values: dict[int, float]) -> str:
    if not values:
        return "–"
    return ", ".join(f"{v:.2g}" for v in values.values())
