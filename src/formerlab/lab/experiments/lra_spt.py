"""Never train from scratch: self-pretraining on LRA ListOps, for attention and for an LRU.

Amos, Berant & Gupta (arXiv 2310.02980), read by Su in kexue.fm/archives/9787: on Long Range
Arena, vanilla Transformers trail linear RNNs / SSMs (S4, LRU ...) when trained from scratch, but
the gap is mostly a missing prior — self-pretraining (SPT) on the task's own training inputs
(masked LM, mask ratio 0.5, no external data) lifts every model, Transformers most, and closes
most of the gap. Su's reading: LRA's fine-grained tokens need locality as well as long range; a
linear RNN has it built in, a Transformer must learn it, and pre-training teaches it.

The CPU-sized plan: ListOps generated with LRA's semantics (:func:`formerlab.data.
listops_dataset`, fixed data across seeds), a bidirectional encoder of ``mha`` layers (pre-norm,
RoPE) and one of bidirectional ``lru`` layers at equal width and depth, each trained twice from
the same initialisation: from scratch, and after SPT with a freshly initialised head
(:func:`formerlab.train.transfer_backbone`). Both arms fine-tune for the same number of steps.
One row per (architecture, arm) with the test accuracy; majority-class and chance (10%) rows.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import torch

from ...config import Config, TrainConfig
from ...data.listops import ClassificationDataset, listops_dataset
from ...models.config import ModelConfig
from ...models.encoder import Encoder
from ...models.heads import SequenceClassifier
from ...train.pretrain import (
    evaluate_classifier,
    self_pretrain,
    train_classifier,
    transfer_backbone,
)
from ..base import Experiment, RunContext, register_experiment
from ..claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    Claim,
    Ordering,
    Results,
    Verdict,
)
from ..figures import LinePlot, Series
from ..report import markdown_table

__all__ = ["LRASPT", "LRASPTConfig"]

POST = "https://kexue.fm/archives/9787"
ARMS = ("scratch", "spt")
LABELS = {"mha": "Transformer (MHA + RoPE)", "lru": "LRU"}
#: one test accuracy on 1000 examples has a binomial std of ≈ 1.5 points near 40%; a difference
#: of 2 points is the smallest this study counts
MARGIN = 0.02


@dataclasses.dataclass
class LRASPTConfig(Config):
    """Data, models and schedule of the study (see the module docstring)."""

    n_train: int = 20000
    n_test: int = 1000
    max_depth: int = 6
    max_args: int = 8
    min_len: int = 64
    max_len: int = 256
    data_seed: int = 0
    archs: list[str] = dataclasses.field(default_factory=lambda: ["mha", "lru"])
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    d_state: int | None = None
    objective: str = "mlm"
    mask_prob: float = 0.5
    spt_steps: int = 1000
    ft_steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    spt_lr: float = 1e-3
    warmup: float = 0.1
    bucket: int = 50
    pooling: str = "mean"

    def validate(self) -> None:
        bad = [a for a in self.archs if a not in LABELS]
        if bad:
            raise ValueError(f"archs must be among {sorted(LABELS)}, got {bad}")
        if self.objective != "mlm":
            raise ValueError("the encoders of this study pre-train with objective 'mlm'")
        for name in ("n_train", "n_test", "spt_steps", "ft_steps", "batch_size", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@functools.lru_cache(maxsize=2)
def _data(n_train: int, n_test: int, max_depth: int, max_args: int, min_len: int, max_len: int,
          seed: int) -> tuple[ClassificationDataset, ClassificationDataset]:
    data = listops_dataset(n_train + n_test, max_depth, max_args, min_len, max_len, seed)
    return data.split(n_train, n_test)


def _model_config(cfg: LRASPTConfig, arch: str) -> ModelConfig:
    opts = {"d_state": cfg.d_state or cfg.hidden} if arch == "lru" else None
    return ModelConfig(vocab_size=18, hidden_size=cfg.hidden, num_layers=cfg.layers,
                       num_heads=cfg.heads, mixer=arch, mixer_options=opts, pad_token_id=0,
                       max_position_embeddings=cfg.max_len + 8)


def _train_cfg(cfg: LRASPTConfig, steps: int, lr: float) -> TrainConfig:
    return TrainConfig(steps=steps, lr=lr, batch_size=cfg.batch_size, weight_decay=0.01,
                       warmup_steps=max(1, int(cfg.warmup * steps)), schedule="cosine")


def _curve(losses: list[float], points: int = 50) -> list[float]:
    """Mean loss over ``points`` equal windows (the stored curve)."""
    w = max(1, math.ceil(len(losses) / points))
    return [sum(losses[i:i + w]) / len(losses[i:i + w]) for i in range(0, len(losses), w)]


def run_arm(cfg: LRASPTConfig, arch: str, arm: str, init: dict[str, torch.Tensor],
            train: ClassificationDataset, test: ClassificationDataset,
            generator: torch.Generator, device: torch.device) -> dict[str, Any]:
    """Train one arm from the initial weights ``init``; returns its row and curves."""
    mc = _model_config(cfg, arch)
    model = SequenceClassifier(Encoder(mc), 10, pooling=cfg.pooling, generator=generator)
    model.load_state_dict(init)
    model.to(device)
    out: dict[str, Any] = {"arch": arch, "arm": arm, "label": LABELS[arch],
                           "params": sum(p.numel() for p in model.parameters())}
    curves: dict[str, list[float]] = {}
    if arm == "spt":
        fit = self_pretrain(model, train, cfg.objective, cfg.mask_prob, cfg.spt_steps,
                            train=_train_cfg(cfg, cfg.spt_steps, cfg.spt_lr),
                            generator=generator, bucket=cfg.bucket)
        out["spt_loss"], curves["spt"] = fit.final_loss, _curve(fit.losses)
        fresh = SequenceClassifier(Encoder(mc), 10, pooling=cfg.pooling,
                                   generator=generator).to(device)
        transfer_backbone(model, fresh)  # every weight but the head
        model = fresh
    fit = train_classifier(model, train, cfg.ft_steps, train=_train_cfg(cfg, cfg.ft_steps, cfg.lr),
                           generator=generator, bucket=cfg.bucket)
    out["ft_loss"], curves["ft"] = fit.final_loss, _curve(fit.losses)
    out["accuracy"] = evaluate_classifier(model, test)
    out["train_accuracy"] = evaluate_classifier(model, train.subset(slice(0, len(test))))
    return {"row": out, "curves": curves}


def _gap_closed(results: Results) -> Verdict:
    """SPT closes at least half of the scratch gap between the LRU and the Transformer."""
    acc = {(a, m): results.values("accuracy", arch=a, arm=m) for a in LABELS for m in ARMS}
    seeds = sorted(set.intersection(*(set(v) for v in acc.values())))
    if not seeds:
        return Verdict(NOT_TESTED, "needs both architectures in both arms")
    before = {s: acc["lru", "scratch"][s] - acc["mha", "scratch"][s] for s in seeds}
    after = {s: acc["lru", "spt"][s] - acc["mha", "spt"][s] for s in seeds}
    values = {"gap_scratch": before, "gap_spt": after}
    gaps = ", ".join(f"seed {s}: {100 * before[s]:+.1f} → {100 * after[s]:+.1f}" for s in seeds)
    evidence = f"LRU − Transformer accuracy, scratch → SPT (points): {gaps}"
    if any(before[s] <= 2 * MARGIN for s in seeds):
        return Verdict(INCONCLUSIVE, evidence + f"; a scratch gap below {200 * MARGIN:g} points "
                       "leaves nothing measurable to close", values)
    closed = [after[s] <= 0.5 * before[s] for s in seeds]
    status = REPRODUCED if all(closed) else NOT_REPRODUCED if not any(closed) else INCONCLUSIVE
    return Verdict(status, evidence + " (half or more closed wanted)", values)


def _ordering(metric_arch: tuple[str, str], other: tuple[str, str]) -> Ordering:
    (a, m), (b, n) = metric_arch, other
    return Ordering("accuracy", {"arch": a, "arm": m}, {"arch": b, "arm": n}, margin=MARGIN,
                    scale=100, labels=(f"{LABELS[a]} {m}", f"{LABELS[b]} {n}"))


@register_experiment
class LRASPT(Experiment):
    """Scratch vs self-pretrained, Transformer vs LRU, on CPU-sized ListOps."""

    name = "lra-spt"
    title = "Never train from scratch: self-pretraining on LRA ListOps (Transformer vs LRU)"
    post = POST
    config = LRASPTConfig
    presets = {
        "micro": lambda: LRASPTConfig(n_train=64, n_test=32, max_depth=3, max_args=4, min_len=4,
                                      max_len=24, hidden=16, layers=1, heads=2, spt_steps=3,
                                      ft_steps=3, batch_size=16, bucket=0),
        "quick": lambda: LRASPTConfig(n_train=8000, n_test=1000, spt_steps=800, ft_steps=800,
                                      lr=2e-3, spt_lr=2e-3),
        "full": lambda: LRASPTConfig(n_train=20000, n_test=1000, max_depth=8, hidden=128,
                                     layers=4, spt_steps=4000, ft_steps=4000),
    }
    claims = [
        Claim("spt-lifts-transformer", "Self-pretraining on the task's own inputs lifts a "
              "vanilla Transformer well above its from-scratch accuracy.", POST,
              _ordering(("mha", "spt"), ("mha", "scratch"))),
        Claim("spt-lifts-lru", "Self-pretraining lifts the linear RNN too (every architecture "
              "gains).", POST, _ordering(("lru", "spt"), ("lru", "scratch"))),
        Claim("lru-beats-scratch-transformer", "Trained from scratch, the linear RNN beats the "
              "Transformer on LRA.", POST, _ordering(("lru", "scratch"), ("mha", "scratch"))),
        Claim("spt-closes-gap", "With self-pretraining the Transformer closes much of its gap to "
              "the linear RNN (at least half, both pre-trained).", POST, _gap_closed),
    ]

    def run(self, config: LRASPTConfig, ctx: RunContext) -> tuple[list[dict], dict]:
        c = config
        train, test = _data(c.n_train, c.n_test, c.max_depth, c.max_args, c.min_len, c.max_len,
                            c.data_seed)
        rows: list[dict[str, Any]] = [
            {"arch": "baseline", "arm": "majority", "label": "majority class",
             "accuracy": test.majority_accuracy()},
            {"arch": "baseline", "arm": "chance", "label": "chance", "accuracy": 0.1}]
        curves: dict[str, dict[str, list[float]]] = {}
        for arch in c.archs:
            init_model = SequenceClassifier(Encoder(_model_config(c, arch)), 10,
                                            pooling=c.pooling)
            init_model.backbone.reset_parameters(ctx.generator)
            init_model.reset_head(ctx.generator)
            init = {k: v.clone() for k, v in init_model.state_dict().items()}  # shared by arms
            for arm in ARMS:
                ctx.log(f"{arch} {arm}")
                got = run_arm(c, arch, arm, init, train, test, ctx.generator, ctx.device)
                rows.append(got["row"])
                curves[f"{arch}/{arm}"] = got["curves"]
        return rows, {"curves": curves, "mean_length": float(train.lengths.float().mean())}

    def table(self, results: Results) -> str:
        body = []
        for arch in [*LABELS, "baseline"]:
            for arm in (*ARMS, "majority", "chance"):
                if not results.select(arch=arch, arm=arm):
                    continue
                r = results.select(arch=arch, arm=arm)[0]
                body.append([r["label"], arm, results.fmt("accuracy", 100, 1, arch=arch, arm=arm),
                             results.fmt("train_accuracy", 100, 1, arch=arch, arm=arm) or "–",
                             results.fmt("ft_loss", 1, 3, arch=arch, arm=arm) or "–",
                             f"{r['params']:,}" if "params" in r else "–"])
        return ("ListOps test accuracy (10 classes; mean ± std over seeds, fixed data); the SPT "
                "arm pre-trains with masked LM on the training inputs, then fine-tunes with a "
                "fresh head for as many steps as the scratch arm.\n\n"
                + markdown_table(["model", "arm", "test acc %", "train acc % (first n_test)",
                                  "final fine-tune loss", "parameters"], body))

    def figures(self, results: Results) -> list[LinePlot]:
        series = []
        for key in [f"{a}/{m}" for a in LABELS for m in ARMS]:
            curves = [results.extras[s]["curves"][key]["ft"] for s in results.seeds
                      if key in results.extras.get(s, {}).get("curves", {})]
            if not curves:
                continue
            n = min(len(c) for c in curves)
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(n)]
            std = None
            if len(curves) > 1:
                std = [math.sqrt(sum((c[i] - mean[i]) ** 2 for c in curves) / (len(curves) - 1))
                       for i in range(n)]
            arch, arm = key.split("/")
            series.append(Series(f"{LABELS[arch]}, {arm}", list(range(1, n + 1)), mean, std))
        return [LinePlot("finetune_loss", "ListOps fine-tuning loss", "window (of the run)",
                         "cross-entropy (nats)", series,
                         caption="Fine-tuning loss in 50 windows of the run (mean over seeds, "
                                 "band ±1 std); SPT arms start from the pre-trained backbone.")]

    def notes(self, results: Results) -> str:
        lengths = [results.extras[s].get("mean_length") for s in results.seeds
                   if results.extras.get(s)]
        mean_len = f"{lengths[0]:.0f}" if lengths and lengths[0] else "?"
        return (f"Training sequences average {mean_len} tokens. The post's numbers come from "
                "runs of tens of thousands of steps at length 2000; this CPU plan measures the "
                "direction of the effect at a few hundred to a few thousand steps, with the "
                "accuracy margin set to the test set's sampling error (2 points).")
