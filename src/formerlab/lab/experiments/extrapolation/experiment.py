"""The ``extrapolation`` experiment: train at ``L``, test at ``4L`` / ``8L`` (/ ``16L``).

One seed trains (or reuses from the cache) every model variant the selected methods need, with
the train config's ``seed`` set to the run's seed, then evaluates every method at each length on
the non-repeated and the repeated set, and the last-``L``-token loss at growing contexts.

Attention entropy: every (method, set, length) row of the repeated and the non-repeated set
carries ``entropy``, the mean attention entropy in nats of the **last** ``entropy_rows`` query
rows of the **first** ``entropy_samples`` sequences of that cell, averaged with equal weight over
those sequences, every layer and every head (:func:`~.._shared.mean_attention_entropy`:
:func:`~formerlab.analysis.entropy.attention_entropy` of the model's attention probabilities).
Accuracy and loss use every sequence through the fused attention kernel, which returns no
weights; only this subset takes the explicit path (about three times slower per sequence), so
the entropy costs ``entropy_samples`` extra forward passes per cell. The last rows see about
``n`` keys, so a uniform row there has entropy ``≈ log n``. The last-``L`` rows carry no entropy.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch

from ....data.batching import window_batch
from ....data.corpora import load_corpus
from ....data.evalsets import non_repeated_set, repeated_set
from ....models.lm import CausalLM
from ....train.eval import evaluate_tokens, last_n_loss
from ...base import Experiment, RunContext, register_experiment
from ...claims import Results
from ...figures import LinePlot, Series, series_over
from ...report import markdown_table
from .._shared import mean_attention_entropy
from .claims import CLAIMS
from .config import PRESETS, ExtrapolationConfig
from .methods import METHODS, Method, variant_changes
from .published import MASTER_TABLE, MASTER_TABLE_SETUP

__all__ = ["Extrapolation", "method_styles"]

POSTS = "https://kexue.fm/archives/9675 (also 9706, 9708, 9603, 9731, 9728, 9948)"

# tab10, then its light shades: one colour per method family
_PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf", "#aec7e8", "#ffbb78", "#98df8a", "#ff9896",
            "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"]
_LINESTYLE = {None: "-", "dagger": "--", "pretrain": ":"}


def method_styles(names: list[str]) -> dict[str, dict[str, str]]:
    """One colour per method family; the log n† twin dashed, the log-n pre-trained one dotted."""
    families = list(dict.fromkeys(METHODS.get(n).family for n in names))
    return {n: {"color": _PALETTE[families.index(METHODS.get(n).family) % len(_PALETTE)],
                "linestyle": _LINESTYLE[METHODS.get(n).logn]} for n in names}


def _train_variants(cfg: ExtrapolationConfig, methods: list[Method], ctx: RunContext,
                    train_tokens: torch.Tensor, corpus_id: str
                    ) -> tuple[dict[str, CausalLM], dict[str, Any]]:
    """Every model variant the methods need, trained with ``seed = ctx.seed`` (or cached)."""
    L = cfg.train_len
    train_cfg = cfg.train.replace(seq_len=L, seed=ctx.seed)

    def batch_fn(step: int, rows: slice) -> tuple[torch.Tensor, None]:
        return window_batch(train_tokens, train_cfg.batch_size, L, seed=train_cfg.seed,
                            step=step, rows=rows), None

    models, info = {}, {}
    for variant in dict.fromkeys(m.variant for m in methods):
        mc = cfg.model.replace(**variant_changes(variant, L, cfg.model.num_layers))
        model, meta = ctx.trained_model(mc, train_cfg, batch_fn, corpus_id=corpus_id)
        model.eval()
        models[variant] = model
        info[variant] = {**meta, "parameters": model.num_parameters()}
    return models, info


def _binned(curve: list[float], points: int) -> list[float]:
    """``curve`` averaged over ``points`` equal bins (fewer if it is shorter)."""
    n = len(curve)
    edges = [round(i * n / min(points, n)) for i in range(min(points, n) + 1)]
    return [sum(curve[a:b]) / (b - a) for a, b in itertools.pairwise(edges)]


def eval_sets(cfg: ExtrapolationConfig, test_tokens: torch.Tensor, seed: int
              ) -> dict[tuple[str, int], torch.Tensor]:
    """The ``(num_samples, n)`` tokens of every ``(set, length)`` cell of one seed."""
    sets = {}
    for n in cfg.lengths:
        sets[("non_repeated", n)] = non_repeated_set(test_tokens, n, cfg.num_samples).tokens
        sets[("repeated", n)] = repeated_set(test_tokens, n, cfg.num_samples,
                                             train_len=cfg.train_len, seed=seed).tokens
    return sets


def _evaluate(cfg: ExtrapolationConfig, methods: list[Method], models: dict[str, CausalLM],
              test_tokens: torch.Tensor, ctx: RunContext
              ) -> tuple[list[dict[str, Any]], dict[str, list[float]]]:
    """Rows of every (method, set, length) and (method, context); per-position loss curves."""
    L, top = cfg.train_len, max(cfg.lengths)
    sets = eval_sets(cfg, test_tokens, ctx.seed)
    c_max = max(cfg.last_n_multipliers)
    last_n_samples = non_repeated_set(test_tokens, L * c_max + 1, cfg.num_samples).tokens
    bar = None
    if ctx.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(methods) * (len(sets) + 1), desc=f"evaluate (seed {ctx.seed})",
                   unit="eval", dynamic_ncols=True, leave=False)
    rows, curves = [], {}
    for m in methods:
        model = models[m.variant]
        who = {"method": m.name, "label": m.label, "family": m.family, "variant": m.variant}
        for (set_name, n), tokens in sets.items():
            m.configure(model, L, n)
            s = evaluate_tokens(model, tokens, batch_size=cfg.eval_batch_size, train_len=L)
            device = next(model.parameters()).device
            entropy = mean_attention_entropy(model, tokens[:cfg.entropy_samples].to(device),
                                             cfg.entropy_rows)
            rows.append({**who, "set": set_name, "length": n, "k": n // L, "longest": n == top,
                         "accuracy": s["accuracy"], "loss": s["loss"],
                         "accuracy_beyond": s["accuracy_beyond"],
                         "loss_beyond": s["loss_beyond"], "entropy": entropy})
            if set_name == "non_repeated" and n == top:
                curves[m.name] = _binned(s["per_position_loss"], cfg.curve_points)
            if bar is not None:
                bar.update(1)
        m.configure(model, L, L * c_max)
        for r in last_n_loss(model, last_n_samples, L, tuple(cfg.last_n_multipliers),
                             batch_size=cfg.eval_batch_size):
            rows.append({**who, "set": "last_n", "length": r["context"], "k": r["multiplier"],
                         "longest": r["multiplier"] == c_max, "loss": r["loss"]})
        model.reset_position_method()
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return rows, curves


@register_experiment
class Extrapolation(Experiment):
    """Which position scheme keeps a language model working far beyond its training length?

    Byte-level language models trained at ``L`` on the default corpus (cached by config hash),
    evaluated at ``L``, ``4L``, ``8L`` (``16L``) on a **non-repeated** set (natural text) and a
    **repeated** set (a chunk of ``P ∈ [L, n/2]`` tokens tiled, which rewards looking back beyond
    ``L``), plus the loss on the last ``L`` tokens with growing context (kexue.fm/archives/9948),
    in the layout of the blog's master table (kexue.fm/archives/9675, 9706, 9708, 9603).
    """

    name = "extrapolation"
    title = "train at L, test at 4L/8L: which position scheme keeps working?"
    post = POSTS
    config = ExtrapolationConfig
    presets = PRESETS
    claims = CLAIMS

    def run(self, config: ExtrapolationConfig, ctx: RunContext
            ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        corpus = load_corpus(ctx.corpus)
        methods = [METHODS.get(n) for n in config.methods]
        models, training = _train_variants(config, methods, ctx, corpus.tokens("train"),
                                           corpus.provenance)
        ctx.log(f"evaluating {len(methods)} methods at {config.lengths}")
        rows, curves = _evaluate(config, methods, models, corpus.tokens("test"), ctx)
        entropy = {"rows": config.entropy_rows,
                   "sequences": min(config.entropy_samples, config.num_samples)}
        return rows, {"training": training, "per_position_loss": curves,
                      "corpus": corpus.describe(), "entropy": entropy}

    # -- the report ----------------------------------------------------------------------------
    def table(self, results: Results) -> str:
        rows = results.select(k=1)
        L = rows[0]["length"]
        lengths = sorted(x for x in results.distinct("length", set="repeated") if x != L)
        names = results.distinct("method")
        seeds = results.seeds
        header = ["method", f"{L} (train)"]
        for n in lengths:
            header += [f"{n} rep.", f"{n} non-rep."]
        header.append("blog: 512 / 4096 rep. / non-rep.")
        body = []
        for name in names:
            m = METHODS.get(name)
            line: list[Any] = [m.label, results.fmt("accuracy", 100, 2, method=name,
                                                    set="non_repeated", length=L)]
            for n in lengths:
                line += [results.fmt("accuracy", 100, 2, method=name, set=s, length=n)
                         for s in ("repeated", "non_repeated")]
            pub = MASTER_TABLE.get(name)
            line.append(f"{pub[1]:.2f} / {pub[2]:.2f} / {pub[3]:.2f}" if pub else "–")
            body.append(line)
        spread = (f"mean ± std over {len(seeds)} seeds ({', '.join(map(str, seeds))})"
                  if len(seeds) > 1 else f"one seed ({seeds[0]})")
        text = (f"Next-token accuracy (%), {spread}; byte-level LM trained at {L} tokens. The last "
                f"column is the blog's ({MASTER_TABLE_SETUP}), **for orderings only**: the raw "
                "numbers are not comparable (another model, data, tokenizer and lengths).\n\n"
                + markdown_table(header, body))
        same = [(n, METHODS.get(n).same_as) for n in names if METHODS.get(n).same_as]
        if same:
            text += ("\n\n‡ Equal to another row by construction, not an independent result ("
                     + ", ".join(f"{_lbl(a)} = {_lbl(b)}" for a, b in same) + "): dynamic NTK "
                     "takes k = n / L from the length n of the sequence, which on whole "
                     "sequences of one length is exactly the factor the static NTK-aware schedule "
                     "is given. The two differ only in the last-L loss below, where the static "
                     "schedule keeps the factor of the longest context.")
        return (text + "\n\n" + self._last_n_table(results, names, L) + "\n\n"
                + self._entropy_table(results, names, L, lengths))

    @staticmethod
    def _last_n_table(results: Results, names: list[str], L: int) -> str:
        contexts = sorted(results.distinct("length", set="last_n"))
        if not contexts:
            return ""
        body = [[METHODS.get(n).label]
                + [results.fmt("loss", 1, 3, method=n, set="last_n", length=c) for c in contexts]
                for n in names]
        return (f"Loss (nats) on the last {L} tokens with growing context (every context is "
                "scored on the same targets; static schedules use the factor of the longest "
                "context throughout):\n\n"
                + markdown_table(["method", *(f"context {c}" for c in contexts)], body))

    @staticmethod
    def _entropy_table(results: Results, names: list[str], L: int, lengths: list[int]) -> str:
        if not any("entropy" in r for r in results.rows):
            return ""  # a run from before the entropy was measured
        header = ["method", f"{L} (train)"]
        for n in lengths:
            header += [f"{n} rep.", f"{n} non-rep."]
        body = []
        for name in names:
            line = [METHODS.get(name).label,
                    results.fmt("entropy", 1, 3, method=name, set="non_repeated", length=L)]
            for n in lengths:
                line += [results.fmt("entropy", 1, 3, method=name, set=s, length=n)
                         for s in ("repeated", "non_repeated")]
            body.append(line)
        uniform = ", ".join(f"log {n} = {math.log(n):.3f}" for n in [L, *lengths])
        info = next((results.extras[s]["entropy"] for s in results.seeds
                     if "entropy" in results.extras.get(s, {})), None)
        what = (f"the last {info['rows']} query rows of the first {info['sequences']} "
                "sequences of each cell" if info else "the last query rows of the first "
                "sequences of each cell")
        return (f"Mean attention entropy (nats) of {what}, averaged over those sequences, every "
                "layer and every head (accuracy and loss above use every sequence); a uniform "
                f"row over n keys has {uniform}:\n\n" + markdown_table(header, body))

    def figures(self, results: Results) -> list[LinePlot]:
        names = results.distinct("method")
        styles = method_styles(names)
        L = results.select(k=1)[0]["length"]
        plots = []
        for set_name in ("repeated", "non_repeated"):
            series = [series_over(results, "accuracy", "length", METHODS.get(n).label, scale=100,
                                  style=styles[n], method=n, set=set_name) for n in names]
            title = set_name.replace("_", "-")
            plots.append(LinePlot(
                f"accuracy_{set_name}", f"Accuracy vs test length ({title} set)",
                "test length (tokens)", "next-token accuracy (%)",
                [s for s in series if s is not None], logx=True, vline=L,
                caption=f"Mean over seeds, band ±1 std; dashed vertical line: training length "
                        f"{L}. One colour per family; log n† dashed, log-n pre-trained dotted."))
        series = [series_over(results, "loss", "length", METHODS.get(n).label, style=styles[n],
                              method=n, set="last_n") for n in names]
        plots.append(LinePlot(
            "last_n_loss", f"Loss on the last {L} tokens vs context length", "context (tokens)",
            "loss (nats)", [s for s in series if s is not None], logx=True, vline=L,
            caption="The same targets at every context: falling = longer context is used; "
                    "rising = the method breaks beyond the training length."))
        curves = self._curves(results, names, styles)
        if curves:
            top = max(results.distinct("length", set="non_repeated"))
            plots.append(LinePlot(
                "loss_by_position", f"Per-position loss at length {top} (non-repeated)",
                "position", "loss (nats)", curves, vline=L,
                caption="Loss of predicting token t+1 by position t (binned); beyond the dashed "
                        "line the model sees positions it was never trained on."))
        return plots

    @staticmethod
    def _curves(results: Results, names: list[str], styles: dict[str, dict[str, str]]
                ) -> list[Series]:
        out = []
        for n in names:
            per_seed = [results.extras[s]["per_position_loss"][n] for s in results.seeds
                        if n in results.extras.get(s, {}).get("per_position_loss", {})]
            if not per_seed:
                continue
            width = len(per_seed[0])
            top = max(results.distinct("length", set="non_repeated"))
            x = [(i + 0.5) * (top - 1) / width for i in range(width)]
            mean = [sum(c[i] for c in per_seed) / len(per_seed) for i in range(width)]
            std = None
            if len(per_seed) > 1:
                std = [math.sqrt(sum((c[i] - mean[i]) ** 2 for c in per_seed)
                                 / (len(per_seed) - 1)) for i in range(width)]
            out.append(Series(METHODS.get(n).label, x, mean, std, dict(styles[n])))
        return out

    def notes(self, results: Results) -> str:
        L = results.select(k=1)[0]["length"]
        lines = ["## Setup", ""]
        for seed in results.seeds:
            training = results.extras.get(seed, {}).get("training", {})
            parts = [f"{v} {i['parameters'] / 1e6:.2f}M parameters"
                     + (" (cached)" if i.get("cached") else
                        f", trained in {i.get('train_seconds', '?')} s, final loss "
                        f"{i.get('final_loss', float('nan')):.3f}")
                     for v, i in training.items()]
            if parts:
                lines.append(f"- Seed {seed}: " + "; ".join(parts) + ".")
        lines += [
            f"- Inference-time methods reuse the RoPE model with k = n / {L} at test length n; "
            "trained variants are separate models trained with the same data and seed.",
            f"- Non-repeated set: evenly spaced windows of the test split. Repeated set: a chunk "
            f"of P tokens, P drawn per sequence (and per seed) from [{L}, n/2], tiled to n, so "
            f"copying needs a look-back beyond {L}.",
            "- The last-L loss feeds the last c·L + 1 tokens of each sequence and scores only "
            "the last L predictions, so every context is scored on the same targets.",
        ]
        return "\n".join(lines)

    def report_title(self, config: ExtrapolationConfig, preset: str) -> str:
        return (f"Length extrapolation: trained at {config.train_len}, tested up to "
                f"{max(config.lengths)} ({preset} preset)")


def _lbl(name: str) -> str:
    return METHODS.get(name).label
