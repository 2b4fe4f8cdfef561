"""The relative-position flaw (kexue.fm/archives/9105): a probe no softmax + RoPE model can learn.

Task: input ``n`` identical tokens, output the position ``0 … n-1`` of every token. With any
relative position encoding that only changes the pre-softmax logits (RoPE, Toeplitz biases),
identical inputs give identical values ``v_j = v``; softmax rows sum to 1, so every output row is
``Σ_j a_ij v = v`` and, by induction through token-wise layers, every position looks the same:
accuracy is stuck at ``1/n`` and the loss at ``log n``. The post's remedies break the row-sum-to-1
property (``l2`` normalisation, no denominator ``none``) or the symmetry of the input (boundary
tokens ``[CLS] 0 … 0 [SEP]``); an absolute position embedding solves it trivially (control).

Each variant trains the same tiny model on the single probe sequence and reports the training
accuracy (the question is expressivity, not generalisation).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch
import torch.nn.functional as F

from ...config import Config
from ...models.config import ModelConfig
from ...models.lm import CausalLM
from ..base import Experiment, RunContext, register_experiment
from ..claims import AllOf, Claim, Results, Threshold
from ..figures import LinePlot, Series
from ..report import markdown_table

__all__ = ["PROBE_VARIANTS", "PositionProbe", "ProbeConfig", "ProbeVariant", "probe_inputs",
           "train_probe"]

POST = "https://kexue.fm/archives/9105"

CLS, SEP, ZERO = 1, 2, 0


@dataclasses.dataclass(frozen=True)
class ProbeVariant:
    name: str
    label: str
    normalization: str = "softmax"
    position: str = "rope"
    causal: bool = False
    boundary: bool = False
    expect_solvable: bool = True


PROBE_VARIANTS = [
    ProbeVariant("softmax_rope", "softmax + RoPE (bidirectional)", expect_solvable=False),
    ProbeVariant("softmax_rope_causal", "softmax + RoPE (causal)", causal=True,
                 expect_solvable=False),
    ProbeVariant("l2_rope", "l2-normalised attention + RoPE", normalization="l2"),
    ProbeVariant("none_rope", "no denominator (exp only) + RoPE", normalization="none"),
    ProbeVariant("boundary_rope", "softmax + RoPE + [CLS] … [SEP]", boundary=True),
    ProbeVariant("softmax_learned", "softmax + learned absolute positions (control)",
                 position="learned"),
]


def probe_inputs(n: int, boundary: bool = False) -> tuple[torch.Tensor, torch.Tensor, slice]:
    """``(input_ids (1, n'), targets (1, n), probe slice)``: n zeros, optionally between
    ``[CLS]`` and ``[SEP]``; targets are the positions ``0 … n-1`` of the zeros."""
    zeros = [ZERO] * n
    ids = [CLS, *zeros, SEP] if boundary else zeros
    sl = slice(1, n + 1) if boundary else slice(0, n)
    return torch.tensor([ids]), torch.arange(n)[None], sl


def train_probe(variant: ProbeVariant, n: int, *, steps: int, hidden: int = 32, layers: int = 2,
                lr: float = 3e-3, generator: torch.Generator | None = None,
                device: torch.device | str = "cpu") -> dict[str, Any]:
    """Train one variant on the probe; returns accuracy, loss and the loss curve."""
    cfg = ModelConfig(vocab_size=max(n, 3), hidden_size=hidden, num_layers=layers, num_heads=2,
                      position=variant.position, normalization=variant.normalization,
                      max_position_embeddings=n + 2)
    model = CausalLM(cfg)
    model.reset_parameters(generator)
    model = model.to(device)
    ids, target, sl = probe_inputs(n, variant.boundary)
    ids, target = ids.to(device), target.to(device)
    m = ids.shape[1]
    mask = None if variant.causal else torch.ones(1, 1, m, m, dtype=torch.bool, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    curve = []
    for _ in range(steps):
        logits = model(ids, attention_mask=mask).logits[:, sl]
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        curve.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits[:, sl]
        hidden_rows = model(ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    acc = float((logits.argmax(-1) == target).float().mean())
    rows = hidden_rows[0, sl]
    spread = float((rows - rows.mean(0)).abs().max())
    return {"accuracy": acc, "loss": curve[-1], "curve": curve, "row_spread": spread}


@dataclasses.dataclass
class ProbeConfig(Config):
    """Probe length ``n``, training steps and the tiny model's size."""

    n: int = 16
    steps: int = 400
    hidden: int = 32
    layers: int = 2
    lr: float = 3e-3


def _stuck(name: str, label: str) -> AllOf:
    return AllOf([
        Threshold("above_chance", {"variant": name}, 0.05, above=False, scale=100,
                  label=f"{label} accuracy minus chance (%)"),
        Threshold("row_spread", {"variant": name}, 1e-4, above=False,
                  label=f"{label} output-row spread"),
    ])


def _solved(name: str) -> Threshold:
    return Threshold("accuracy", {"variant": name}, 0.9, scale=100, label=f"{name} accuracy")


def _largest(values: dict[int, float]) -> str:
    """The largest spread over seeds (``nan`` when every seed's training diverged)."""
    return f"{max(values.values()):.1e}" if values else "nan"


@register_experiment
class PositionProbe(Experiment):
    """Train every variant on the probe; softmax + RoPE cannot leave chance, the remedies can."""

    name = "position-probe"
    title = "relative-position flaw: n identical tokens -> positions (softmax + RoPE cannot)"
    post = POST
    config = ProbeConfig
    presets = {"micro": lambda: ProbeConfig(n=8, steps=200),
               "quick": lambda: ProbeConfig(n=16, steps=400),
               "full": lambda: ProbeConfig(n=32, steps=1000)}
    claims = [
        Claim("softmax-rope-stuck", "With softmax attention and RoPE (any relative encoding that "
              "only changes the logits), n identical tokens give identical outputs: the probe "
              "stays at chance.", POST,
              _stuck("softmax_rope", "softmax + RoPE")),
        Claim("causal-softmax-rope-stuck", "The same holds for causal attention.", POST,
              _stuck("softmax_rope_causal", "causal softmax + RoPE")),
        Claim("l2-solves", "Attention whose rows do not sum to 1 (l2 normalisation) solves it.",
              POST, _solved("l2_rope")),
        Claim("no-denominator-solves", "Attention without the softmax denominator solves it.",
              POST, _solved("none_rope")),
        Claim("boundary-solves", "Breaking the input's symmetry with [CLS] ... [SEP] solves it.",
              POST, _solved("boundary_rope")),
    ]

    def run(self, config: ProbeConfig, ctx: RunContext) -> tuple[list[dict], dict]:
        rows, curves = [], {}
        chance = 1.0 / config.n
        for v in PROBE_VARIANTS:
            r = train_probe(v, config.n, steps=config.steps, hidden=config.hidden,
                            layers=config.layers, lr=config.lr, generator=ctx.generator,
                            device=ctx.device)
            rows.append({"variant": v.name, "label": v.label, "n": config.n,
                         "accuracy": r["accuracy"], "above_chance": r["accuracy"] - chance,
                         "loss": r["loss"], "row_spread": r["row_spread"]})
            curves[v.name] = r["curve"]
        return rows, {"curves": curves}

    def table(self, results: Results) -> str:
        n = results.rows[0]["n"]
        body = [[label, results.fmt("accuracy", 100, 1, variant=v),
                 results.fmt("loss", 1, 3, variant=v),
                 _largest(results.values("row_spread", variant=v))]
                for v, label in ((v.name, v.label) for v in PROBE_VARIANTS)
                if results.select(variant=v)]
        return (f"Training accuracy on the probe of n = {n} identical tokens (chance "
                f"{100 / n:.1f}%, trivial loss log n = {math.log(n):.2f}); the last column is the "
                "largest spread of the final hidden rows over seeds (0 = every position looks the "
                "same).\n\n" + markdown_table(["variant", "train accuracy %", "final loss",
                                                "output-row spread"], body))

    def figures(self, results: Results) -> list[LinePlot]:
        series = []
        for v in PROBE_VARIANTS:
            curves = [results.extras[s]["curves"][v.name] for s in results.seeds
                      if v.name in results.extras.get(s, {}).get("curves", {})]
            if not curves:
                continue
            steps = len(curves[0])
            mean = [sum(c[i] for c in curves) / len(curves) for i in range(steps)]
            std = None
            if len(curves) > 1:
                std = [math.sqrt(sum((c[i] - mean[i]) ** 2 for c in curves) / (len(curves) - 1))
                       for i in range(steps)]
            series.append(Series(v.label, list(range(1, steps + 1)), mean, std))
        n = results.rows[0]["n"]
        return [LinePlot("probe_loss", f"Position probe, n = {n}: training loss", "step",
                         "cross-entropy (nats)", series,
                         caption="Training loss per variant (mean over seeds, band ±1 std); the "
                                 "softmax + RoPE curves stay at log n.")]

    def notes(self, results: Results) -> str:
        return ("The flaw is exact: with softmax every output row is the same vector (spread ≈ 0 "
                "up to float rounding), so no amount of training helps; the remedies change the "
                "normaliser or the input, not the optimiser.")

    def report_title(self, config: ProbeConfig, preset: str) -> str:
        return f"The relative-position flaw: probe with n = {config.n} ({preset} preset)"
