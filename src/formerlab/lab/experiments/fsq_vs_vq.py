"""FSQ vs VQ: codebook utilisation and reconstruction versus codebook size (kexue.fm/archives/9826;
FSQ: Mentzer et al., arXiv 2309.15505; VQ-VAE: arXiv 1711.00937).

Su's argument for FSQ: VQ assigns by ``argmin``, so a few codes win everything and the rest die
("codebook collapse") unless tricks keep them alive; FSQ rounds each of ``d = log_L K`` bounded
coordinates, has no assignment and no auxiliary loss, and keeps (nearly) every code in use as the
codebook grows. Reported crossover: FSQ ≈ VQ at ``K ≈ 1000``, better above, worse well below.

Setup: an MLP autoencoder on scikit-learn's bundled 8×8 digits (1797 real images, no download;
every fifth image held out). The encoder maps an image to ``tokens`` latent vectors, each
quantised, and the decoder reconstructs the image from the codes. At every target size ``K`` the
FSQ levels come from :func:`~formerlab.quantize.recommended_levels` (``K = Π L_i``) and VQ gets a
codebook of exactly ``Π L_i`` codes. Methods (see :data:`METHODS`): FSQ; plain VQ (VQ-VAE: random
codebook learned by its loss, commitment 0.25, no tricks); VQ with its tricks (k-means
initialisation on a sample of the training set's encodings, EMA codebook, dead-code revival).
Each codebook size also gets a ``vq_best`` row: per seed, the VQ variant that reconstructs
better (the generous baseline for the reconstruction claims).

Utilisation is measured after training over every training vector (``images × tokens``; the
presets keep at least about five vectors per code): the fraction of codes used at least once and
the usage perplexity over ``K``. Reconstruction error is the mean squared pixel error (pixels in
``[0, 1]``) on the held-out images.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...config import Config
from ...quantize import FSQ, VectorQuantizer, recommended_levels
from ..base import Experiment, RunContext, register_experiment
from ..claims import NOT_TESTED, AllOf, Claim, ForEach, Ordering, Results, Threshold, Trend, Verdict
from ..figures import LinePlot, series_over
from ..report import markdown_table

__all__ = ["METHODS", "FSQvsVQ", "FSQvsVQConfig", "evaluate_autoencoder", "load_digit_images",
           "train_autoencoder"]

POST = "https://kexue.fm/archives/9826"

#: method -> label
METHODS = {
    "fsq": "FSQ (no auxiliary loss, no tricks)",
    "vq": "VQ, plain (VQ-VAE losses, random init)",
    "vq_tricks": "VQ + k-means init + EMA + dead-code revival",
}


@dataclasses.dataclass
class FSQvsVQConfig(Config):
    """Codebook sizes (targets of :func:`recommended_levels`), methods, the autoencoder and its
    training. ``revive_ratio``: VQ + tricks revives codes whose EMA count falls below this
    fraction of the uniform count ``tokens·batch_size/K``."""

    codebook_sizes: list[int] = dataclasses.field(default_factory=lambda: [256, 1024, 4096])
    methods: list[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    tokens: int = 16
    hidden: int = 256
    vq_dim: int = 8
    steps: int = 1500
    batch_size: int = 32
    lr: float = 1e-3
    commitment_weight: float = 0.25
    ema_decay: float = 0.99
    revive_ratio: float = 0.1
    kmeans_iters: int = 5

    def validate(self) -> None:
        for name in ("tokens", "hidden", "vq_dim", "steps", "batch_size", "kmeans_iters"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        unknown = [m for m in self.methods if m not in METHODS]
        if not self.methods or unknown:
            raise ValueError(f"methods must be a non-empty list of {list(METHODS)}, got "
                             f"{self.methods!r}")
        if not self.codebook_sizes:
            raise ValueError("codebook_sizes must not be empty")
        for k in self.codebook_sizes:
            recommended_levels(k)  # raises ValueError listing the table
        if self.lr <= 0 or not 0.0 <= self.ema_decay < 1.0 or self.revive_ratio < 0:
            raise ValueError(f"need lr > 0, ema_decay in [0, 1), revive_ratio >= 0; got "
                             f"{self.lr}, {self.ema_decay}, {self.revive_ratio}")


def load_digit_images() -> tuple[Tensor, Tensor]:
    """scikit-learn's bundled 8×8 digits as ``(train, test)`` float32 ``(N, 64)`` in ``[0, 1]``;
    every fifth image is held out."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the fsq-vs-vq experiment needs scikit-learn's bundled digits: "
                          "pip install scikit-learn") from exc
    x = torch.tensor(load_digits().data, dtype=torch.float32) / 16.0
    test = torch.arange(x.shape[0]) % 5 == 0
    return x[~test], x[test]


def _mlp(sizes: list[int], generator: torch.Generator) -> nn.Sequential:
    """Linear layers with GELU between, PyTorch's default ranges ``±1/√fan_in`` drawn from the
    explicit generator."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        lin = nn.Linear(a, b)
        with torch.no_grad():
            lin.weight.uniform_(-a ** -0.5, a ** -0.5, generator=generator)
            lin.bias.uniform_(-a ** -0.5, a ** -0.5, generator=generator)
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(nn.GELU())
    return nn.Sequential(*layers)


class _Autoencoder(nn.Module):
    """Image ``(B, 64)`` → ``tokens`` latent vectors → quantiser → image (MLPs of width
    ``hidden``, two hidden layers each way)."""

    def __init__(self, quantizer: nn.Module, code_dim: int, cfg: FSQvsVQConfig,
                 generator: torch.Generator) -> None:
        super().__init__()
        t, h = cfg.tokens, cfg.hidden
        self.tokens, self.code_dim = t, code_dim
        self.encoder = _mlp([64, h, h, t * code_dim], generator)
        self.decoder = _mlp([t * code_dim, h, h, 64], generator)
        self.quantizer = quantizer

    def encode(self, x: Tensor) -> Tensor:
        """``(B, 64)`` images → ``(B, tokens, code_dim)`` latent vectors."""
        return self.encoder(x).reshape(x.shape[0], self.tokens, self.code_dim)

    def forward(self, x: Tensor, generator: torch.Generator | None = None
                ) -> tuple[Tensor, Tensor, Tensor]:
        """``(reconstruction (B, 64), indices (B, tokens), auxiliary loss)``."""
        z = self.encode(x)
        if isinstance(self.quantizer, FSQ):
            q, idx = self.quantizer(z)
            aux = z.new_zeros(())
        else:
            q, idx, aux, _ = self.quantizer(z, generator=generator)
        return self.decoder(q.reshape(x.shape[0], -1)), idx, aux


def _build(method: str, k: int, cfg: FSQvsVQConfig, train: Tensor, generator: torch.Generator
           ) -> _Autoencoder:
    levels = recommended_levels(k)
    size = math.prod(levels)
    if method == "fsq":
        return _Autoencoder(FSQ(levels), len(levels), cfg, generator)
    d = cfg.vq_dim
    tricks = method == "vq_tricks"
    vq = VectorQuantizer(size, d, ema_decay=cfg.ema_decay,
                         commitment_weight=cfg.commitment_weight, use_ema=tricks,
                         threshold_dead=(cfg.revive_ratio * cfg.tokens * cfg.batch_size / size
                                         if tricks else 0.0))
    vq.codebook = torch.empty(size, d).uniform_(-d ** -0.5, d ** -0.5, generator=generator)
    model = _Autoencoder(vq, d, cfg, generator)
    if tricks:  # k-means on a sample of 2K encodings of the training images
        with torch.no_grad():
            z = model.encode(train).reshape(-1, d)
            pick = torch.randperm(z.shape[0], generator=generator)[:2 * size].to(z.device)
            vq.kmeans_init_(z[pick], generator=generator, iters=cfg.kmeans_iters)
    return model


def train_autoencoder(model: _Autoencoder, train: Tensor, cfg: FSQvsVQConfig,
                      generator: torch.Generator) -> list[float]:
    """Adam with cosine decay on MSE + the quantiser's loss; returns the loss per step."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / cfg.steps)))
    model.train()
    curve = []
    for _ in range(cfg.steps):
        idx = torch.randint(0, train.shape[0], (cfg.batch_size,), generator=generator)
        x = train[idx.to(train.device)]
        recon, _, aux = model(x, generator=generator)
        loss = F.mse_loss(recon, x) + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        curve.append(float(loss.detach()))
    return curve


@torch.no_grad()
def evaluate_autoencoder(model: _Autoencoder, train: Tensor, test: Tensor) -> dict[str, float]:
    """Held-out MSE and the codebook usage over every training vector."""
    model.eval()
    test_mse = float(F.mse_loss(model(test)[0], test))
    model.quantizer.reset_usage()
    model(train)
    stats = model.quantizer.usage_stats()
    k, n = stats["num_codes"], stats["total"]
    return {"test_mse": test_mse, "log_test_mse": math.log(test_mse),
            "active_fraction": stats["active_fraction"], "vectors_per_code": n / k,
            "perplexity": stats["perplexity"], "usage": stats["usage"], "vectors": n}


def _at_largest_k(make: Callable[[int], Any]) -> Callable[[Results], Verdict]:
    """The check ``make(K)`` evaluated at the largest codebook the run measured."""
    def fn(results: Results) -> Verdict:
        ks = results.distinct("codebook_size")
        if not ks:
            return Verdict(NOT_TESTED, "no codebook size was measured")
        return make(max(ks))(results)
    return fn


def _collapse(k: int) -> AllOf:
    return AllOf([
        Trend("active_fraction", {"method": "vq"}, "codebook_size", "non_increasing", 0.05,
              label="plain VQ codes used"),
        Ordering("active_fraction", {"method": "fsq", "codebook_size": k},
                 {"method": "vq", "codebook_size": k}, margin=0.1, scale=100,
                 labels=(f"FSQ codes used at K={k} (%)", f"plain VQ at K={k} (%)")),
    ])


def _mse_ordering(k: int, fsq_wins: bool) -> Ordering:
    a, b = {"method": "fsq", "codebook_size": k}, {"method": "vq_best", "codebook_size": k}
    la, lb = f"FSQ ln MSE at K={k}", f"best VQ ln MSE at K={k}"
    return Ordering("log_test_mse", a if fsq_wins else b, b if fsq_wins else a,
                    higher_is_better=False, margin=0.05,
                    labels=(la, lb) if fsq_wins else (lb, la))


def _crossover_side(large: bool) -> Callable[[Results], Verdict]:
    """FSQ beats the best VQ at the largest K (> 1000), or loses at the smallest (< 1000)."""
    def fn(results: Results) -> Verdict:
        ks = [k for k in results.distinct("codebook_size", method="vq_best")
              if (k > 2000 if large else k < 500)]
        if not ks:
            return Verdict(NOT_TESTED, "no codebook size far "
                           f"{'above' if large else 'below'} 1000 with both FSQ and VQ")
        return _mse_ordering(max(ks) if large else min(ks), fsq_wins=large)(results)
    return fn


def _best_vq(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    vqs = [r for r in rows if r["method"] in ("vq", "vq_tricks")]
    if len(vqs) < 2:
        return None
    best = min(vqs, key=lambda r: r["test_mse"])
    return {**best, "method": "vq_best", "label": f"best VQ ({best['method']})",
            "best_of": best["method"]}


@register_experiment
class FSQvsVQ(Experiment):
    """Utilisation and reconstruction of FSQ and VQ autoencoders at equal codebook sizes."""

    name = "fsq-vs-vq"
    title = "FSQ vs VQ: codebook utilisation and reconstruction vs codebook size"
    post = POST
    config = FSQvsVQConfig
    presets = {
        "micro": lambda: FSQvsVQConfig(codebook_sizes=[256, 1024], tokens=4, hidden=64, steps=40,
                                       batch_size=32),
        "quick": lambda: FSQvsVQConfig(),
        # 64 tokens: about 5.6 training vectors per code at K = 16384 (a GPU-sized study)
        "full": lambda: FSQvsVQConfig(codebook_sizes=[256, 1024, 4096, 16384], tokens=64,
                                      steps=6000, batch_size=32),
    }
    claims = [
        Claim("fsq-uses-its-codebook",
              "FSQ keeps (nearly) all of its codes in use at every codebook size (here: at least "
              "90% used on the training vectors).", POST,
              ForEach("codebook_size", lambda k: Threshold(
                  "active_fraction", {"method": "fsq", "codebook_size": k}, 0.9, scale=100,
                  label=f"FSQ codes used at K={k} (%)"), where={"method": "fsq"})),
        Claim("plain-vq-collapses",
              "Plain VQ's argmin assignment collapses: the fraction of codes it uses falls as the "
              "codebook grows, far below FSQ's at the largest size (by more than 10 points).",
              POST, _at_largest_k(_collapse)),
        Claim("tricks-rescue-vq",
              "The collapse is what VQ's tricks (k-means init, EMA, dead-code revival) exist to "
              "fix: with them VQ uses more than 10 points more of its codes than plain VQ at the "
              "largest size.", POST,
              _at_largest_k(lambda k: Ordering(
                  "active_fraction", {"method": "vq_tricks", "codebook_size": k},
                  {"method": "vq", "codebook_size": k}, margin=0.1, scale=100,
                  labels=(f"VQ+tricks codes used at K={k} (%)", f"plain VQ at K={k} (%)")))),
        Claim("fsq-better-for-large-k",
              "For K ≫ 1000 FSQ reconstructs better than VQ (here: than the better VQ variant, "
              "by more than 5% of the MSE).", POST, _crossover_side(large=True)),
        Claim("vq-better-for-small-k",
              "For K ≪ 1000 VQ reconstructs better than FSQ (by more than 5% of the MSE).", POST,
              _crossover_side(large=False)),
    ]

    def run(self, config: FSQvsVQConfig, ctx: RunContext) -> tuple[list[dict], dict]:
        train, test = (t.to(ctx.device) for t in load_digit_images())
        rows, curves = [], {}
        for k in config.codebook_sizes:
            levels = recommended_levels(k)
            size = math.prod(levels)
            at_k = []
            for method in config.methods:
                ctx.log(f"{method} at K={size}")
                model = _build(method, k, config, train, ctx.generator).to(ctx.device)
                curve = train_autoencoder(model, train, config, ctx.generator)
                at_k.append({"method": method, "label": METHODS[method], "target_k": k,
                             "codebook_size": size, "levels": str(levels),
                             "bits_per_image": config.tokens * math.log2(size),
                             "final_train_loss": sum(curve[-20:]) / len(curve[-20:]),
                             **evaluate_autoencoder(model, train, test)})
                curves[f"{method}@{size}"] = curve[:: max(1, len(curve) // 200)]
            best = _best_vq(at_k)
            rows += at_k + ([best] if best else [])
        return rows, {"curves": curves}

    def table(self, results: Results) -> str:
        body = []
        for k in sorted(results.distinct("codebook_size")):
            for m in (*METHODS, "vq_best"):
                w = {"method": m, "codebook_size": k}
                sel = results.select(**w)
                if not sel:
                    continue
                label = METHODS.get(m) or "best VQ per seed: " + ", ".join(
                    sorted({r["best_of"] for r in sel}))
                body.append([k, sel[0]["levels"] if m == "fsq" else "–", label,
                             results.fmt("active_fraction", 100, 1, **w),
                             results.fmt("usage", 100, 1, **w),
                             results.fmt("test_mse", 1000, 2, **w)])
        r0 = results.rows[0]
        return (f"Autoencoders on 8×8 digits, {r0['vectors']:,} training vectors (images × "
                f"{r0['vectors'] // 1437} tokens). Codes used = fraction of the codebook used at "
                "least once on the training vectors; perplexity/K = exp(entropy of code use)/K; "
                "MSE on the held-out images (pixels in [0, 1], ×1000).\n\n"
                + markdown_table(["K", "FSQ levels", "method", "codes used %",
                                  "perplexity / K %", "test MSE ×1e3"], body))

    def figures(self, results: Results) -> list[LinePlot]:
        used = [series_over(results, "active_fraction", "codebook_size", METHODS[m], scale=100,
                            method=m) for m in METHODS]
        mse = [series_over(results, "test_mse", "codebook_size", METHODS[m], scale=1000,
                           method=m) for m in METHODS]
        return [
            LinePlot("utilisation", "Codebook utilisation vs codebook size", "codebook size K",
                     "codes used (%)", [s for s in used if s is not None], logx=True, vline=1000,
                     caption="Fraction of the codebook used on the training vectors; the dashed "
                             "line marks K = 1000."),
            LinePlot("reconstruction", "Held-out reconstruction error vs codebook size",
                     "codebook size K", "test MSE ×1e3", [s for s in mse if s is not None],
                     logx=True, vline=1000),
        ]

    def notes(self, results: Results) -> str:
        return ("VQ's codebook has exactly as many codes as FSQ's implicit one (Π L_i, from the "
                "paper's level table); VQ's code dimension is fixed, FSQ's is len(levels). A "
                "code can only be counted as used if some training vector lands on it, so "
                "utilisation is bounded by the vectors per code.")
