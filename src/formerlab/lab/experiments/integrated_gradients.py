"""Integrated gradients on a real sentence encoder (kexue.fm/archives/7533; arXiv 1703.01365).

The output is the similarity of a sentence pair under all-MiniLM-L6-v2: the cosine of the
mean-pooled embeddings, ``F(A) = cos(pool(enc(A)), pool(enc(B)))`` with ``B`` fixed (then the
roles swap). The token embeddings of ``A`` are attributed against the post's baseline "no token"
(zero token embeddings; positions and segments stay), so completeness reads

    Σ_i IG_i = F(x) − F(x̄) = cos(A, B) − cos(∅_A, B).

Estimators of the path integral, each measured by its completeness gap
``|Σ IG − (F(x) − F(x̄))| / |F(x) − F(x̄)|`` per pair:

- Su's sum ``(1/n) Σ_k ∇F((1 − k/n) x + (k/n) x̄)`` — a left Riemann sum seen from the baseline —
  at several ``n`` (the post's demo uses 20 points);
- Gauss–Legendre at a few ``n`` (the textbook's best quadrature);
- the formula on the demo's grid ``α = 0, 1/19, …, 1`` (unweighted mean);
- the bert4keras demo itself: the gradient layer returns ``∇F(ẽ) ⊙ ẽ`` at the scaled input
  ``ẽ = α e``, an extra weight ``α`` per point, so its sum is not ``F(x) − F(x̄)``;
- gradient × input (one point at the input): the first-order Taylor term the post argues against.

Token importances (the post's display: L2 norm over the hidden size, min–max normalised,
[CLS]/[SEP] dropped) of the formula and of the demo are compared by rank correlation, and shown
per token with the signed share of ``F(x) − F(x̄)`` each token carries — as text bars in the
notes and as a coloured heat map (:func:`heatmap_html`), written to ``ig_heatmap.html`` in the run
folder and embedded in ``report.html``. Everything is deterministic: every seed repeats the same
numbers.
"""

from __future__ import annotations

import dataclasses
import html
import statistics
from typing import Any

import torch
import torch.nn.functional as F

from ...analysis import embedding_ig, token_scores
from ...config import Config
from ..base import Experiment, RunContext, register_experiment
from ..claims import Claim, Ordering, Results, Threshold, Trend
from ..figures import LinePlot, Series
from ..report import HtmlSection, markdown_table
from ._minilm import ENCODERS, MINILM_KIND, TextEncoder, rank_correlation, text_encoder

__all__ = ["ESTIMATORS", "HEATMAP_NAME", "PAIRS", "POST_STEPS", "IGConfig",
           "IntegratedGradientsExperiment", "heatmap_html"]

POST = "https://kexue.fm/archives/7533"
#: the demo's number of points (α = i/19, i = 0 … 19)
POST_STEPS = 20
#: completeness tolerance: "between 20 and 300 steps are enough to approximate the integral
#: (within 5%)" (Sundararajan et al., arXiv 1703.01365, section 4)
TOLERANCE = 0.05

#: sentence-similarity pairs: paraphrases, related, contrasting and unrelated sentences
PAIRS: list[tuple[str, str]] = [
    ("A man is playing a guitar.", "A person plays an acoustic guitar."),
    ("The movie was not good, the acting was terrible.", "The film was bad and the actors were awful."),
    ("The cat is sleeping on the sofa.", "A kitten naps on the couch."),
    ("How do I reset my password?", "What is the way to change my login password?"),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("He bought a new laptop for work.", "A dog is running along the beach."),
    ("The weather is sunny and warm.", "It is a cold and rainy day."),
    ("Return the sine of x, measured in radians.", "Return the cosine of x, measured in radians."),
    ("Children are playing football in the park.", "Kids kick a ball on the grass."),
    ("The train to London is delayed by an hour.", "The London train will arrive an hour late."),
    ("The team won the championship last night.", "Last night the team lost the final."),
    ("Open the file and read its contents.", "Read the contents of the file after opening it."),
    ("The doctor examined the patient carefully.", "A physician checked the sick man thoroughly."),
    ("She is cooking pasta in the kitchen.", "A woman is preparing spaghetti."),
    ("Water boils at one hundred degrees Celsius.", "At 100 degrees Celsius water starts to boil."),
    ("A plane is taking off from the airport.", "An aircraft departs from the runway."),
]

#: estimator id -> (label, quadrature method, weighting mode)
ESTIMATORS: dict[str, tuple[str, str, str]] = {
    "su_sum": ("Su's sum (left Riemann)", "riemann_left", "textbook"),
    "gauss_legendre": ("Gauss–Legendre", "gausslegendre", "textbook"),
    "demo_grid": ("formula on the demo's grid", "uniform_endpoints", "textbook"),
    "demo": ("bert4keras demo (α-weighted)", "uniform_endpoints", "bert4keras_demo"),
    "grad_x_input": ("gradient × input (one point)", "riemann_right", "textbook"),
}


@dataclasses.dataclass
class IGConfig(Config):
    """Sentence pairs (the first ``pairs`` of :data:`PAIRS`), step counts, sides attributed.

    Args:
        pairs: How many pairs of :data:`PAIRS` (in order).
        steps: Step counts of Su's sum.
        gauss_legendre_steps: Step counts of Gauss–Legendre.
        sides: ``"a"`` attributes the first sentence (the second fixed), ``"b"`` the second.
        max_length: Truncation in word pieces.
        encoder: ``"minilm"`` (the real weights, required) or ``"auto"`` (a tiny random encoder
            when the weight package is absent; claims are then not tested).
    """

    pairs: int = 6
    steps: list[int] = dataclasses.field(default_factory=lambda: [5, 10, 20, 50])
    gauss_legendre_steps: list[int] = dataclasses.field(default_factory=lambda: [5, 10, 20])
    sides: list[str] = dataclasses.field(default_factory=lambda: ["a", "b"])
    max_length: int = 32
    encoder: str = "minilm"

    def validate(self) -> None:
        if not 1 <= self.pairs <= len(PAIRS):
            raise ValueError(f"pairs must be in [1, {len(PAIRS)}], got {self.pairs}")
        for name in ("steps", "gauss_legendre_steps"):
            vals = getattr(self, name)
            if not vals or any(not isinstance(n, int) or n < 2 for n in vals):
                raise ValueError(f"{name} must be a non-empty list of ints >= 2, got {vals}")
        if not self.sides or not set(self.sides) <= {"a", "b"}:
            raise ValueError(f"sides must be a non-empty subset of ['a', 'b'], got {self.sides}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {self.max_length}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {list(ENCODERS)}, got {self.encoder!r}")


def _estimators(cfg: IGConfig) -> list[tuple[str, int]]:
    out = [("su_sum", n) for n in cfg.steps]
    out += [("gauss_legendre", n) for n in cfg.gauss_legendre_steps]
    return [*out, ("demo_grid", POST_STEPS), ("demo", POST_STEPS), ("grad_x_input", 1)]


def _side(enc: TextEncoder, text: str, other: str, cfg: IGConfig) -> tuple[list[dict], dict]:
    """Every estimator on one sentence against the fixed other one; rows and a token table."""
    model = enc.model
    ids_list, tokens = enc.tokenize(text, cfg.max_length)
    ids = torch.tensor([ids_list], device=enc.device)
    other_ids = torch.tensor([enc.tokenize(other, cfg.max_length)[0]], device=enc.device)
    with torch.no_grad():
        target = model(other_ids).last_hidden_state.mean(1)

    def output(out: Any) -> torch.Tensor:  # one unpadded sentence: the mean is the pooling
        return F.cosine_similarity(out.last_hidden_state.mean(1), target, dim=-1)

    emb = model.embed_tokens
    with torch.no_grad():
        e = emb(ids)
        f_x = float(output(model(inputs_embeds=e)))
        f_base = float(output(model(inputs_embeds=torch.zeros_like(e))))
    delta_f = f_x - f_base
    rows, attrs = [], {}
    for est, n in _estimators(cfg):
        _, method, mode = ESTIMATORS[est]
        attr, gap = embedding_ig(model, ids, output_fn=output, baseline="zeros", mode=mode,
                                 n_steps=n, method=method, return_convergence_delta=True)
        attrs[(est, n)] = attr
        total = float(attr.sum())
        rows.append({"method": est, "steps": n, "f_input": f_x, "f_baseline": f_base,
                     "delta_f": delta_f, "attr_sum": total, "gap": float(gap),
                     "rel_gap": abs(float(gap)) / max(abs(delta_f), 1e-12),
                     "sum_ratio": total / delta_f if delta_f else float("nan")})
    textbook = attrs.get(("su_sum", POST_STEPS), attrs[("demo_grid", POST_STEPS)])
    demo = attrs[("demo", POST_STEPS)]
    l2_t, l2_d = token_scores(textbook)[0], token_scores(demo)[0]
    share = token_scores(textbook, reduce="sum", normalize=None, drop_special=False)[0]
    keep = slice(1, len(tokens) - 1)
    table = {"text": text, "other": other, "tokens": tokens, "share": share.tolist(),
             "textbook_l2": l2_t.tolist(), "demo_l2": l2_d.tolist(), "delta_f": delta_f,
             "f_input": f_x, "f_baseline": f_base,
             "rank_corr": rank_correlation(l2_t[keep], l2_d[keep])}
    return rows, table


def _summaries(rows: list[dict], kind: str) -> list[dict]:
    out = []
    for est, n in dict.fromkeys((r["method"], r["steps"]) for r in rows):
        sel = [r for r in rows if r["method"] == est and r["steps"] == n]
        out.append({"kind": "summary", "encoder": kind, "method": est, "steps": n,
                    "mean_rel_gap": statistics.fmean(r["rel_gap"] for r in sel),
                    "max_rel_gap": max(r["rel_gap"] for r in sel),
                    "mean_sum_ratio": statistics.fmean(r["sum_ratio"] for r in sel),
                    "cases": len(sel)})
    return out


def _where(est: str, steps: int) -> dict[str, Any]:
    return {"kind": "summary", "encoder": MINILM_KIND, "method": est, "steps": steps}


def _bar(score: float, width: int = 8) -> str:
    full = max(0, min(width, round(score * width)))
    return "█" * full + "·" * (width - full)


#: the heat map's page in the run folder (``ig_heatmap.html``)
HEATMAP_NAME = "ig_heatmap"
_HEATMAP_CSS = """.ig-pair{margin:1em 0;padding:.2em 1em;border:1px solid #ddd}
.ig-tokens{line-height:2.3;font-size:16px}.ig-tok{padding:2px 3px;margin:0 1px;border-radius:3px;
border:1px solid #eee}.ig-stats{font-size:13px;color:#444}.ig-fixed{color:#666}"""


def _colour(share: float, scale: float) -> str:
    """Red for a positive share of ΔF, blue for a negative one, opacity ``|share| / scale``."""
    x = max(-1.0, min(1.0, share / scale)) if scale > 0 else 0.0
    rgb = "214,39,40" if x >= 0 else "31,119,180"
    return f"rgba({rgb},{abs(x) * 0.85:.3f})"


def _gap_row(rows: list[dict], pair: int, side: str) -> dict | None:
    """The row whose attributions give the shares: Su's sum at 20 points, else the demo grid."""
    for est in ("su_sum", "demo_grid"):
        for r in rows:
            if (r.get("pair"), r.get("side"), r["method"], r["steps"]) == \
                    (pair, side, est, POST_STEPS):
                return r
    return None


def _sentence_html(t: dict, gap: dict | None) -> str:
    scale = max((abs(v) for v in t["share"]), default=0.0)
    spans = []
    for tok, share, l2, demo in zip(t["tokens"], t["share"], t["textbook_l2"], t["demo_l2"]):
        tip = html.escape(f"{tok}: share of ΔF {share:+.4f}; formula {l2:.2f}; demo {demo:.2f}",
                          quote=True)
        spans.append(f"<span class='ig-tok' style='background:{_colour(share, scale)}' "
                     f"title='{tip}'>{html.escape(tok)}</span>")
    stats = (f"F(x) = cos {t['f_input']:.4f}, F(x̄) = {t['f_baseline']:.4f}, "
             f"ΔF = {t['delta_f']:+.4f}")
    if gap is not None:
        stats += (f"; Σ IG = {gap['attr_sum']:+.4f} ({ESTIMATORS[gap['method']][0]}, "
                  f"{gap['steps']} points): completeness gap {gap['gap']:+.4f} = "
                  f"{100 * gap['rel_gap']:.2f}% of |ΔF|")
    return (f"<div class='ig-tokens'>{' '.join(spans)}</div>"
            f"<p class='ig-stats'>{html.escape(stats)}</p>")


def heatmap_html(tables: list[dict], rows: list[dict]) -> str:
    """The token attributions of every pair as an HTML fragment (no scripts, text escaped).

    Per pair, both sentences: an attributed one has its tokens coloured by their signed share
    of ``F(x) − F(x̄)`` (red raises the similarity, blue lowers it; the strength is relative to
    the sentence's largest ``|share|``; hovering shows the numbers), with ``F(x)``, ``F(x̄)``,
    ``Σ IG`` and the completeness gap; a sentence the run did not attribute is shown plain.

    Args:
        tables: The run's per-sentence token tables (``extras[seed]["tokens"]``).
        rows: The ``kind == "pair"`` rows of the same seed (for ``Σ IG`` and the gap).
    """
    by_pair: dict[int, dict[str, dict]] = {}
    for t in tables:
        by_pair.setdefault(t["pair"], {})[t["side"]] = t
    parts = ["<p>Each token's signed share of F(x) − F(x̄) (integrated gradients of its "
             "embedding, summed over the hidden size; the shares add up to Σ IG): "
             "<span class='ig-tok' style='background:rgba(214,39,40,0.6)'>raises</span> or "
             "<span class='ig-tok' style='background:rgba(31,119,180,0.6)'>lowers</span> the "
             "similarity, strength relative to the sentence's largest share. Hover a token for "
             "its share and the post's display scores (formula, demo).</p>"]
    for p, sides in by_pair.items():
        any_t = next(iter(sides.values()))
        first, second = ((any_t["text"], any_t["other"]) if any_t["side"] == "a"
                         else (any_t["other"], any_t["text"]))
        block = [f"<div class='ig-pair'><h3>Pair {p}</h3>"]
        for side, sentence in (("a", first), ("b", second)):
            block.append(f"<p><b>Sentence {side}</b></p>")
            if side in sides:
                block.append(_sentence_html(sides[side], _gap_row(rows, p, side)))
            else:
                block.append(f"<p class='ig-fixed'>{html.escape(sentence)} (held fixed, not "
                             "attributed in this run)</p>")
        parts.append("\n".join(block) + "</div>")
    return "\n".join(parts)


@register_experiment
class IntegratedGradientsExperiment(Experiment):
    """Completeness of integrated gradients on MiniLM, the post's sum vs the demo's weighting."""

    name = "integrated-gradients"
    title = "integrated gradients on MiniLM sentence similarity: completeness and the demo"
    post = POST
    config = IGConfig
    presets = {
        "micro": lambda: IGConfig(pairs=1, steps=[5, 20], gauss_legendre_steps=[5],
                                  sides=["a"], max_length=16, encoder="auto"),
        "quick": lambda: IGConfig(pairs=4),
        "full": lambda: IGConfig(pairs=len(PAIRS), steps=[5, 10, 20, 50, 100, 200],
                                 gauss_legendre_steps=[5, 10, 20, 50]),
    }
    claims = [
        Claim("completeness-at-post-steps",
              "Integrated gradients decompose the output change: the attributions add up to "
              "F(x) − F(x̄) (completeness), here within 5% for every pair with the post's sum at "
              "its 20 points.", POST,
              Threshold("max_rel_gap", _where("su_sum", POST_STEPS), TOLERANCE, above=False,
                        scale=100, label="largest completeness gap (% of F(x) − F(x̄)), Su's sum, "
                                         "20 points")),
        Claim("gap-shrinks-with-steps",
              "The sum approximates the integral: the completeness gap shrinks as the number of "
              "points grows.", POST,
              Trend("mean_rel_gap", {"kind": "summary", "encoder": MINILM_KIND,
                                     "method": "su_sum"}, "steps", "non_increasing",
                    label="mean completeness gap of Su's sum")),
        Claim("gradient-is-not-enough",
              "A plain gradient (the first-order Taylor term, gradient × input) does not "
              "decompose the output change; the path integral does.", POST,
              Ordering("mean_rel_gap", _where("su_sum", POST_STEPS), _where("grad_x_input", 1),
                       higher_is_better=False, margin=TOLERANCE, scale=100,
                       labels=("Su's sum, 20 points (gap %)", "gradient × input (gap %)"))),
        Claim("demo-is-integrated-gradients",
              "The post's bert4keras demo (token embeddings scaled by α, gradient × scaled "
              "input, 20 points) computes these integrated gradients: its attributions add up "
              "to F(x) − F(x̄) within 5%.", POST,
              Threshold("max_rel_gap", _where("demo", POST_STEPS), TOLERANCE, above=False,
                        scale=100, label="largest completeness gap of the demo (%)")),
    ]

    def run(self, config: IGConfig, ctx: RunContext) -> tuple[list[dict], dict]:
        enc = text_encoder(config.encoder, ctx.generator).to(ctx.device)
        ctx.log(f"encoder: {enc.kind} on {enc.device}")
        rows, tables = [], []
        for i, (a, b) in enumerate(PAIRS[:config.pairs]):
            for side in config.sides:
                text, other = (a, b) if side == "a" else (b, a)
                side_rows, table = _side(enc, text, other, config)
                rows += [{"kind": "pair", "encoder": enc.kind, "pair": i, "side": side, **r}
                         for r in side_rows]
                tables.append({"pair": i, "side": side, **table})
            ctx.log(f"pair {i + 1}/{config.pairs} done")
        summary = _summaries(rows, enc.kind)
        corr = [t["rank_corr"] for t in tables]
        summary.append({"kind": "rank", "encoder": enc.kind, "mean_rank_corr": statistics.fmean(corr),
                        "min_rank_corr": min(corr), "cases": len(corr)})
        return rows + summary, {"tokens": tables}

    def table(self, results: Results) -> str:
        body = []
        for est, n in dict.fromkeys((r["method"], r["steps"]) for r in results.select(kind="summary")):
            w = {"kind": "summary", "method": est, "steps": n}
            body.append([ESTIMATORS[est][0], n, results.fmt("mean_rel_gap", 100, 2, **w),
                         results.fmt("max_rel_gap", 100, 2, **w),
                         results.fmt("mean_sum_ratio", 1, 3, **w)])
        rank = results.select(kind="rank")
        enc = results.rows[0].get("encoder", "?")
        text = (f"Completeness gap |Σ IG − (F(x) − F(x̄))| as % of |F(x) − F(x̄)| over every "
                f"pair and side (encoder: {enc}); Σ IG / (F(x) − F(x̄)) is 1 for an exact "
                "integral.\n\n" + markdown_table(
                    ["estimator", "points", "mean gap %", "largest gap %", "Σ IG / ΔF"], body))
        if rank:
            text += ("\n\nToken ranking of the demo vs the formula (Spearman over the tokens of "
                     f"each sentence, [CLS]/[SEP] dropped): mean "
                     f"{results.fmt('mean_rank_corr', 1, 3, kind='rank')}, lowest "
                     f"{results.fmt('min_rank_corr', 1, 3, kind='rank')}.")
        return text + "\n\n" + self._pair_table(results)

    def _pair_table(self, results: Results) -> str:
        seed = results.seeds[0]
        cols = [(r["method"], r["steps"]) for r in results.select(kind="summary", seed=seed)]
        keep = [c for c in cols if c[0] in ("su_sum", "demo")]
        body = []
        for p, side in dict.fromkeys((r["pair"], r["side"]) for r in
                                     results.select(kind="pair", seed=seed)):
            sel = {(r["method"], r["steps"]): r for r in
                   results.select(kind="pair", seed=seed, pair=p, side=side)}
            first = next(iter(sel.values()))
            body.append([f"{p}{side}", f"{first['f_input']:.3f}", f"{first['f_baseline']:.3f}",
                         f"{first['delta_f']:.3f}",
                         *[f"{sel[c]['attr_sum']:.3f} ({100 * sel[c]['rel_gap']:.1f}%)"
                           for c in keep]])
        head = ["pair/side", "F(x) = cos", "F(x̄)", "ΔF",
                *[f"{'Σ demo' if e == 'demo' else 'Σ Su'} n={n}" for e, n in keep]]
        return ("Per pair (side a attributes the first sentence, b the second; gap in "
                "brackets):\n\n" + markdown_table(head, body))

    def figures(self, results: Results) -> list[LinePlot]:
        series = []
        for est in ("su_sum", "gauss_legendre"):
            xs = sorted(results.distinct("steps", kind="summary", method=est))
            stats = [results.stat("mean_rel_gap", kind="summary", method=est, steps=n) for n in xs]
            pts = [(n, s) for n, s in zip(xs, stats) if s is not None]
            if pts:
                series.append(Series(ESTIMATORS[est][0], [float(n) for n, _ in pts],
                                     [100 * s.mean for _, s in pts]))
        demo = results.stat("mean_rel_gap", kind="summary", method="demo", steps=POST_STEPS)
        if demo is not None:
            series.append(Series("bert4keras demo", [float(POST_STEPS)], [100 * demo.mean],
                                 style={"linestyle": "none", "marker": "x", "ms": 8}))
        xs = [s.x for s in series if s.x]
        if xs:
            lo, hi = min(min(x) for x in xs), max(max(x) for x in xs)
            series.append(Series("5% tolerance", [lo, hi], [100 * TOLERANCE] * 2,
                                 style={"linestyle": "--", "color": "grey", "marker": None}))
        return [LinePlot("completeness_gap", "Completeness gap of integrated gradients (MiniLM)",
                         "points of the sum", "mean gap (% of F(x) − F(x̄))", series, logx=True,
                         vline=POST_STEPS,
                         caption="Mean |Σ IG − ΔF| / |ΔF| over the pairs and sides; dashed: the "
                                 "post's 20 points.")]

    def notes(self, results: Results) -> str:
        seed = results.seeds[0]
        tables = results.extras.get(seed, {}).get("tokens", [])
        if not tables:
            return ""
        parts = ["Per-token attributions (first seed). *share*: the token's signed part of "
                 "F(x) − F(x̄) (Su's sum, 20 points; the shares add up to ΔF); *formula* and "
                 "*demo*: the post's display score (L2 norm over the hidden size, min–max over "
                 "the sentence, [CLS]/[SEP] dropped), with a bar as a text heat map; the "
                 f"coloured heat map is in {HEATMAP_NAME}.html (and at the end of report.html)."]
        for t in tables:
            body = [[tok, f"{s:+.4f}", f"{a:.2f} {_bar(a)}", f"{d:.2f} {_bar(d)}"]
                    for tok, s, a, d in zip(t["tokens"], t["share"], t["textbook_l2"], t["demo_l2"])]
            parts.append(f"**Pair {t['pair']}{t['side']}**: “{t['text']}” against “{t['other']}” "
                         f"(cos {t['f_input']:.3f}, baseline {t['f_baseline']:.3f}; rank "
                         f"correlation formula/demo {t['rank_corr']:.2f})\n\n"
                         + markdown_table(["token", "share of ΔF", "formula", "demo"], body))
        return "\n\n".join(parts)

    def html_sections(self, results: Results) -> list[HtmlSection]:
        seed = results.seeds[0]
        tables = results.extras.get(seed, {}).get("tokens", [])
        if not tables:
            return []
        body = heatmap_html(tables, results.select(kind="pair", seed=seed))
        return [HtmlSection(HEATMAP_NAME, "Token attributions: heat map (first seed)", body,
                            _HEATMAP_CSS)]

    def report_title(self, config: IGConfig, preset: str) -> str:
        return (f"Integrated gradients on MiniLM: {config.pairs} sentence pairs ({preset} "
                "preset)")
