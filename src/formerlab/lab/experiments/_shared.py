"""Helpers shared by the model experiments: training-curve extras, preset-measured margins and
the mean attention entropy of the last query rows (kexue.fm/archives/8823, 9034).

A margin is the smallest difference that counts, and that depends on how noisy the measurement
is: a 12-step micro run spreads far more from seed to seed than a 300-step quick run. The model
experiments therefore keep each preset's margin in its config (the seed spread measured for that
preset, or a stated minimal effect) and copy it into the compared rows; :class:`RowMarginOrdering`
reads it back, so the verdict uses the margin of the preset that was run.
"""

from __future__ import annotations

import dataclasses
import math

import torch

from ...analysis.entropy import attention_entropy
from ..claims import Ordering, Results, Verdict
from ..figures import Series

__all__ = ["RowMarginOrdering", "curve_series", "loss_curve", "mean_attention_entropy"]


def loss_curve(losses: list[float], every: int) -> dict[str, list[float]]:
    """The per-step losses averaged over windows of ``every`` steps: ``{"step", "loss"}``."""
    every = max(1, every)
    steps, means = [], []
    for i in range(0, len(losses), every):
        chunk = losses[i:i + every]
        steps.append(i + len(chunk))
        means.append(sum(chunk) / len(chunk))
    return {"step": steps, "loss": means}


def curve_series(results: Results, key: str, label: str) -> Series | None:
    """A :class:`Series` of the curve ``extras[seed]["curves"][key]`` (mean ± std over seeds)."""
    curves = [results.extras[s]["curves"][key] for s in results.seeds
              if key in results.extras.get(s, {}).get("curves", {})]
    if not curves:
        return None
    n = min(len(c["loss"]) for c in curves)
    ys = [[c["loss"][i] for c in curves] for i in range(n)]
    mean = [sum(y) / len(y) for y in ys]
    std = None
    if len(curves) > 1:
        std = [math.sqrt(sum((v - m) ** 2 for v in y) / (len(y) - 1)) for y, m in zip(ys, mean)]
    return Series(label, [float(x) for x in curves[0]["step"][:n]], mean, std)


@torch.no_grad()
def mean_attention_entropy(model: torch.nn.Module, tokens: torch.Tensor, rows: int, *,
                           batch_size: int = 1) -> float:
    """Mean attention entropy (nats) of the last ``rows`` query rows of ``tokens``.

    The row entropies ``H_i = −Σ_j p_ij log p_ij`` come from
    :func:`~formerlab.analysis.entropy.attention_entropy` on the model's attention probabilities
    (``output_attentions=True``); the result averages the last ``rows`` positions with equal
    weight over every sequence, layer and head. A causal row ``i`` sees ``i + 1`` keys (its
    weights above the diagonal are zero and drop out), so a uniform row has ``log(i + 1)``.

    Args:
        model: A model whose forward accepts ``output_attentions`` (formerlab's ``CausalLM`` /
            ``Encoder``, or a Hugging Face model with eager attention), in eval mode.
        tokens: ``(N, n)`` token ids, on the model's device.
        rows: How many of the last query rows to average, ``1 <= rows <= n``.
        batch_size: Sequences per forward pass (the weights of every layer are held at once:
            ``layers × batch × heads × n²`` floats).

    Returns:
        The mean entropy in nats.
    """
    if tokens.dim() != 2 or tokens.shape[0] < 1:
        raise ValueError(f"tokens must be (num_sequences >= 1, length), got {tuple(tokens.shape)}")
    if not 1 <= rows <= tokens.shape[1]:
        raise ValueError(f"rows must be in [1, {tokens.shape[1]}] (the length), got {rows}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    total, count = 0.0, 0
    for i in range(0, tokens.shape[0], batch_size):
        attentions = model(tokens[i:i + batch_size], output_attentions=True).attentions
        if not attentions or any(a is None for a in attentions):
            raise RuntimeError(f"{type(model).__name__} returned no attention weights with "
                               "output_attentions=True")
        for a in attentions:  # (B, H, n, n) per layer
            h = attention_entropy(a[..., -rows:, :].float())
            total += float(h.sum())
            count += h.numel()
    return total / count


@dataclasses.dataclass
class RowMarginOrdering:
    """An :class:`~formerlab.lab.claims.Ordering` whose margin is the run's own: the largest
    ``column`` value of the compared rows (``ordering.margin`` when no row carries one)."""

    ordering: Ordering
    column: str = "margin"

    def __call__(self, results: Results) -> Verdict:
        o = self.ordering
        rows = results.select(**o.better) + results.select(**o.worse)
        margins = [float(r[self.column]) for r in rows if r.get(self.column) is not None]
        return dataclasses.replace(o, margin=max(margins, default=o.margin))(results)
