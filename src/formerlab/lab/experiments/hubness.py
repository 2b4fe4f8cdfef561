"""Hubness on real sentence embeddings (kexue.fm/archives/9147; Radovanović et al., JMLR 2010).

The post: among points in high dimension a few ("hubs") appear in very many other points' k-NN
lists, so the k-occurrence ``N_k(x) = #{j : x ∈ kNN(x_j)}`` grows more and more right-skewed with
the dimension; hubs are the points near the centre of the data, close to everyone. Here the points
are all-MiniLM-L6-v2 embeddings (mean pooled) of standard-library docstrings, and the dimension is
varied by PCA: the centred data's top ``d`` principal directions are kept and every embedding is
expressed in them (``X_d = X V_d``, its mean kept inside that subspace); "full" is the raw
384-dimensional embedding.

Per dimension, the skewness of ``N_k`` under

- squared Euclidean distance (the post's; translation invariant, so centring changes nothing);
- cosine similarity (the encoder's own similarity);
- cosine after centring (subtract the mean first; Suzuki et al., 2013) — the remedy the post's
  explanation suggests, since hubs are the points near the centre;
- CSLS (Conneau et al., arXiv 1710.04087): ``2 cos(x, y) − r(y)``, ``r(y)`` the mean cosine of
  ``y`` to its own nearest neighbours, which penalises points close to everyone.

Controls: the post's own setting, ``N(0, I)`` points of the same count in each dimension, and the
Spearman correlation of ``N_k`` with closeness to the centre. Each seed draws its own subset of
docstrings (all of them when the preset asks for more than there are) and its own Gaussian points.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ...analysis import hubness_stats, k_occurrence
from ...config import Config
from ..base import Experiment, RunContext, register_experiment
from ..claims import AllOf, Claim, Ordering, Results, Threshold, Trend
from ..figures import LinePlot, series_over
from ..report import markdown_table
from ._minilm import (
    ENCODERS,
    MINILM_KIND,
    rank_correlation,
    sentence_embeddings,
    stdlib_docstrings,
    text_encoder,
)

__all__ = ["METRICS", "HubnessConfig", "HubnessExperiment", "pca_coordinates"]

POST = "https://kexue.fm/archives/9147"
#: the smallest skewness difference that counts: about 2.5 × the seed-to-seed standard deviation
#: of the skewness (0.07–0.12) measured over subsets of 1 500 docstrings
MARGIN = 0.3

#: metric label -> (k_occurrence metric, centre first)
METRICS: dict[str, tuple[str, bool]] = {
    "sqeuclidean": ("sqeuclidean", False),
    "cosine": ("cosine", False),
    "cosine_centred": ("cosine", True),
    "csls": ("csls", False),
}
LABELS = {"sqeuclidean": "squared Euclidean", "cosine": "cosine",
          "cosine_centred": "cosine, centred", "csls": "CSLS"}


@dataclasses.dataclass
class HubnessConfig(Config):
    """Texts per seed, PCA dimensions, neighbours.

    Args:
        texts: Docstrings per seed (a random subset of the pool; the whole pool if larger).
        dims: PCA dimensions (below the encoder's size); the full embedding is always added.
        k: Neighbours of the k-occurrence (the post: 5).
        csls_k: Neighbourhood of the CSLS radius.
        max_length: Truncation in word pieces.
        gaussian_control: Also measure ``N(0, I)`` points in each dimension.
        encoder: ``"minilm"`` (the real weights, required) or ``"auto"`` (a tiny random encoder
            when the weight package is absent; the MiniLM claims are then not tested).
    """

    texts: int = 1500
    dims: list[int] = dataclasses.field(default_factory=lambda: [2, 4, 8, 16, 32, 64, 128, 256])
    k: int = 5
    csls_k: int = 10
    max_length: int = 32
    gaussian_control: bool = True
    encoder: str = "minilm"

    def validate(self) -> None:
        if self.texts < 16:
            raise ValueError(f"texts must be >= 16, got {self.texts}")
        if not self.dims or any(not isinstance(d, int) or d < 1 for d in self.dims):
            raise ValueError(f"dims must be a non-empty list of positive ints, got {self.dims}")
        if not 1 <= self.k < self.texts or not 1 <= self.csls_k < self.texts:
            raise ValueError(f"k and csls_k must be in [1, texts), got {self.k}, {self.csls_k}")
        if self.max_length < 4:
            raise ValueError(f"max_length must be >= 4, got {self.max_length}")
        if self.encoder not in ENCODERS:
            raise ValueError(f"encoder must be one of {list(ENCODERS)}, got {self.encoder!r}")


def pca_coordinates(X: torch.Tensor, dims: list[int]) -> dict[int, torch.Tensor]:
    """``{d: X V_d}``: every point in the top-``d`` principal directions of the centred data
    (the mean is kept inside the subspace, so centring remains a separate choice)."""
    _, _, vh = torch.linalg.svd(X - X.mean(0), full_matrices=False)
    return {d: X @ vh[:d].T for d in dims}


def _hub_rows(X: torch.Tensor, cfg: HubnessConfig, metrics: list[str],
              base: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for label in metrics:
        metric, centre = METRICS[label]
        nk = k_occurrence(X, cfg.k, metric=metric, center=centre, csls_k=cfg.csls_k)
        rows.append({"kind": "hubness", **base, "distance": label, "k": cfg.k, "n": len(X),
                     **hubness_stats(nk, cfg.k)})
    return rows


def _centre_rows(X: torch.Tensor, cfg: HubnessConfig, base: dict[str, Any]) -> list[dict]:
    """Spearman correlation of ``N_k`` with closeness to the centre (and its z-score under
    independence, ``ρ √(N − 1)``)."""
    mu = X.mean(0)
    unit = X / X.norm(dim=1, keepdim=True).clamp_min(1e-12)
    closeness = {"sqeuclidean": -(X - mu).norm(dim=1),
                 "cosine": unit @ (mu / mu.norm().clamp_min(1e-12))}
    rows = []
    for label, near in closeness.items():
        rho = rank_correlation(k_occurrence(X, cfg.k, metric=label), near)
        rows.append({"kind": "centre", **base, "distance": label, "rho": rho,
                     "rho_z": rho * math.sqrt(len(X) - 1)})
    return rows


def _mini(metric: str, data: str = "minilm") -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "hubness", "data": data, "distance": metric}
    if data == "minilm":
        out["encoder"] = MINILM_KIND
    return out


def _grows(metric: str, data: str = "minilm") -> AllOf:
    label = f"{LABELS[metric]} skewness" + (" (N(0, I))" if data == "gaussian" else "")
    return AllOf([
        Ordering("skewness", {**_mini(metric, data), "space": "full"},
                 {**_mini(metric, data), "dim": 2}, margin=MARGIN,
                 labels=(f"{label}, full dimension", f"{label}, 2 dimensions")),
        Trend("skewness", _mini(metric, data), "dim", "non_decreasing", tolerance=MARGIN,
              label=label),
    ])


def _remedy(metric: str) -> Ordering:
    return Ordering("skewness", {**_mini(metric), "space": "full"},
                    {**_mini("cosine"), "space": "full"}, higher_is_better=False, margin=MARGIN,
                    labels=(f"{LABELS[metric]} skewness", "cosine skewness"))


@register_experiment
class HubnessExperiment(Experiment):
    """Skewness of the k-occurrence of MiniLM docstring embeddings vs PCA dimension."""

    name = "hubness"
    title = "hubness of MiniLM sentence embeddings vs dimension; centring and CSLS"
    post = POST
    config = HubnessConfig
    presets = {
        "micro": lambda: HubnessConfig(texts=160, dims=[2, 8, 32], max_length=16,
                                       encoder="auto"),
        "quick": lambda: HubnessConfig(),
        "full": lambda: HubnessConfig(texts=100_000, dims=[2, 3, 4, 6, 8, 12, 16, 24, 32, 48,
                                                           64, 96, 128, 192, 256, 320]),
    }
    claims = [
        Claim("hubness-grows-with-dimension",
              "The k-occurrence distribution grows more skewed with the dimension (a few hubs "
              "appear in very many k-NN lists): squared Euclidean distance, as in the post.",
              POST, _grows("sqeuclidean")),
        Claim("hubness-grows-with-dimension-cosine",
              "The same holds for the encoder's own similarity, the cosine.", POST,
              _grows("cosine")),
        Claim("gaussian-control",
              "For N(0, I) points (the post's setting) hubness grows with the dimension.", POST,
              Ordering("skewness", {**_mini("sqeuclidean", "gaussian"), "space": "full"},
                       {**_mini("sqeuclidean", "gaussian"), "dim": 2}, margin=MARGIN,
                       labels=("N(0, I) skewness, full dimension", "N(0, I) skewness, 2 dims"))),
        Claim("hubs-near-centre",
              "Hubs are the points near the centre of the data (the mean is close to everyone): "
              "N_k rises with closeness to the mean.", POST,
              Threshold("rho_z", {"kind": "centre", "data": "minilm", "encoder": MINILM_KIND,
                                  "distance": "sqeuclidean"}, 3.0,
                        label="Spearman ρ(N_k, −‖x − mean‖) as a z-score ρ√(N−1)")),
        Claim("centring-reduces-hubness",
              "Since hubs sit near the centre, removing the centre — centring the embeddings "
              "before the cosine — reduces hubness.", POST, _remedy("cosine_centred")),
        Claim("csls-reduces-hubness",
              "Penalising points that are close to everyone (CSLS) reduces hubness.", POST,
              _remedy("csls")),
    ]

    def run(self, config: HubnessConfig, ctx: RunContext) -> list[dict[str, Any]]:
        from ..cache import default_cache_dir

        enc = text_encoder(config.encoder, ctx.generator).to(ctx.device)
        pool = stdlib_docstrings()
        n = min(config.texts, len(pool))
        pick = sorted(torch.randperm(len(pool), generator=ctx.generator)[:n].tolist())
        texts = [pool[i] for i in pick]
        ctx.log(f"encoder {enc.kind}: embedding {n} of {len(pool)} docstrings")
        X = sentence_embeddings(enc, texts, max_length=config.max_length,
                                cache_dir=ctx.cache_dir or default_cache_dir(),
                                progress=ctx.log).double()
        full = X.shape[1]
        dims = sorted(d for d in set(config.dims) if d < min(full, n - 1))
        base = {"data": "minilm", "encoder": enc.kind}
        rows = []
        for d, Xd in pca_coordinates(X, dims).items():
            rows += _hub_rows(Xd, config, list(METRICS), {**base, "space": "pca", "dim": d})
        rows += _hub_rows(X, config, list(METRICS), {**base, "space": "full", "dim": full})
        rows += _centre_rows(X, config, {**base, "space": "full", "dim": full})
        if config.gaussian_control:
            for d in [*dims, full]:
                Z = torch.randn(n, d, generator=ctx.generator, dtype=torch.float64)
                rows += _hub_rows(Z, config, ["sqeuclidean"], {
                    "data": "gaussian", "space": "full" if d == full else "pca", "dim": d})
        ctx.log("k-occurrences done")
        return rows

    def table(self, results: Results) -> str:
        dims = sorted(results.distinct("dim", kind="hubness", data="minilm"))
        r0 = results.select(kind="hubness", data="minilm")[0]
        body = []
        for d in dims:
            row = [d if results.select(kind="hubness", data="minilm", dim=d, space="pca")
                   else f"{d} (full)"]
            row += [results.fmt("skewness", 1, 2, kind="hubness", data="minilm", dim=d, distance=m)
                    for m in METRICS]
            row.append(results.fmt("skewness", 1, 2, kind="hubness", data="gaussian", dim=d))
            body.append(row)
        head = ["dimension", *(LABELS[m] for m in METRICS), "N(0, I) control"]
        text = (f"Skewness of N_{r0['k']} over {r0['n']} docstring embeddings (encoder: "
                f"{r0['encoder']}), by the number of principal directions kept; 0 = symmetric, "
                "larger = a few strong hubs.\n\n" + markdown_table(head, body))
        rho = {m: results.fmt("rho", 1, 2, kind="centre", distance=m) for m in ("sqeuclidean",
                                                                                "cosine")}
        if rho["sqeuclidean"] is not None:
            text += ("\n\nHubs and the centre, full dimension: Spearman ρ(N_k, −‖x − mean‖) = "
                     f"{rho['sqeuclidean']} (squared Euclidean), ρ(N_k, cos(x, mean)) = "
                     f"{rho['cosine']} (cosine).")
        robin = [[LABELS[m], results.fmt("robin_hood", 1, 3, kind="hubness", data="minilm",
                                         space="full", distance=m),
                  results.fmt("antihub_occurrence", 100, 1, kind="hubness", data="minilm",
                              space="full", distance=m),
                  results.fmt("max_over_k", 1, 1, kind="hubness", data="minilm", space="full",
                              distance=m)] for m in METRICS]
        return text + "\n\nFull dimension, other measures:\n\n" + markdown_table(
            ["metric", "Robin Hood index", "anti-hubs %", "largest N_k / k"], robin)

    def figures(self, results: Results) -> list[LinePlot]:
        series = [series_over(results, "skewness", "dim", LABELS[m], kind="hubness",
                              data="minilm", distance=m) for m in METRICS]
        series.append(series_over(results, "skewness", "dim", "N(0, I) control, squared "
                                  "Euclidean", style={"linestyle": "--", "color": "grey"},
                                  kind="hubness", data="gaussian"))
        return [LinePlot("skewness_vs_dimension", "Hubness vs dimension (MiniLM docstrings)",
                         "dimension (principal directions kept)", "skewness of N_k",
                         [s for s in series if s is not None], logx=True,
                         caption="Skewness of the k-occurrence vs the number of principal "
                                 "directions; the last point is the raw embedding.")]

    def notes(self, results: Results) -> str:
        return ("Squared Euclidean distances do not change when the data is centred, so the "
                "centred variant is measured for the cosine only. The PCA coordinates keep the "
                "part of the mean that lies in the kept directions: at low dimension the raw and "
                "the centred cosine differ only by that part. Each seed is its own random subset "
                "of the docstrings and its own Gaussian points.")

    def report_title(self, config: HubnessConfig, preset: str) -> str:
        return f"Hubness of MiniLM docstring embeddings, k = {config.k} ({preset} preset)"
