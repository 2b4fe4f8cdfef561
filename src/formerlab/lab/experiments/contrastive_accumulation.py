"""Exact gradient accumulation for contrastive losses (kexue.fm/archives/8471; GradCache,
arXiv 2101.06983; SimCSE, arXiv 2104.08821).

InfoNCE couples every pair of a batch, so summing the losses of micro-batches ("plain gradient
accumulation") optimises a different, smaller-batch objective. The post's remedy computes the
representation gradient ``G = ∂L/∂h`` of the whole batch on detached representations and then
back-propagates ``⟨h_chunk, sg(G_chunk)⟩`` chunk by chunk: the gradient of the large batch with
the activations of one chunk, for one extra forward pass.

Setup: SimCSE on a small float64 :class:`~formerlab.models.Encoder` (Post-Norm, dropout on, mean
pooling) over windows of the default corpus; each window appears twice (rows ``2k``, ``2k+1``),
the two dropout draws being its two views. For every number of chunks the experiment measures,
against the full-batch gradient with the same dropout masks (the batch encoded chunk by chunk
from the same RNG state, one backward through the whole loss):

- ``exact``: :class:`~formerlab.losses.ContrastiveAccumulator` (RNG replayed per chunk);
- ``exact_no_replay``: the same without RNG replay (the situation the post describes: the
  no-grad and the grad forward draw different dropout masks);
- ``plain``: each chunk's own InfoNCE, gradients summed (scaled by 1/chunks);
- ``full``: the full batch in one forward (the memory and time baseline).

Metrics: the relative gradient error ``‖g − g_full‖/‖g_full‖``, the peak bytes held for backward
at once (:func:`~formerlab.nn.recompute.peak_saved_activation_bytes`, parameters excluded) and
the step time (report only: timings depend on the machine's load).
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ...config import Config
from ...data.batching import window_batch
from ...data.corpora import load_corpus
from ...losses import ContrastiveAccumulator, capture_rng_state, info_nce, replay_rng, split_batch
from ...models.config import ModelConfig
from ...models.encoder import Encoder
from ...nn.recompute import peak_saved_activation_bytes
from ..base import Experiment, RunContext, register_experiment
from ..claims import AllOf, Claim, ForEach, Results, Threshold, Trend, Verdict
from ..figures import LinePlot, series_over
from ..report import markdown_table

__all__ = ["METHODS", "AccumulationConfig", "ContrastiveAccumulation"]

POST = "https://kexue.fm/archives/8471"

#: method -> label (``full`` is the reference; the others are measured per number of chunks)
METHODS = {
    "full": "full batch (one backward)",
    "exact": "ContrastiveAccumulator (RNG replay)",
    "exact_no_replay": "ContrastiveAccumulator without RNG replay",
    "plain": "plain gradient accumulation",
}

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


@dataclasses.dataclass
class AccumulationConfig(Config):
    """SimCSE batch (``pairs`` sentences × 2 dropout views, ``seq_len`` bytes), the encoder, the
    numbers of chunks to split the batch into, and the timing repeats."""

    pairs: int = 16
    seq_len: int = 32
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    dropout: float = 0.1
    temperature: float = 0.05
    chunks: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8, 16])
    dtype: str = "float64"
    timing_repeats: int = 3

    def validate(self) -> None:
        for name in ("pairs", "seq_len", "hidden", "layers", "heads", "timing_repeats"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {self.dtype!r}")
        rows = 2 * self.pairs
        bad = [c for c in self.chunks if isinstance(c, bool) or not isinstance(c, int) or c < 1
               or rows % c or (rows // c) % 2]
        if not self.chunks or bad:
            raise ValueError(f"chunks must be positive ints splitting the {rows} rows into "
                             f"chunks of whole pairs (an even chunk size), got {self.chunks!r} "
                             f"(invalid: {bad})")


def _encoder(cfg: AccumulationConfig, generator: torch.Generator, device: torch.device
             ) -> Encoder:
    mc = ModelConfig(vocab_size=256, hidden_size=cfg.hidden, num_layers=cfg.layers,
                     num_heads=cfg.heads, position="learned", norm="layernorm",
                     norm_position="post", ffn="gelu", max_position_embeddings=cfg.seq_len,
                     dropout=cfg.dropout, attention_dropout=cfg.dropout)
    model = Encoder(mc)
    model.reset_parameters(generator)
    return model.to(device=device, dtype=_DTYPES[cfg.dtype]).train()


def _flat_grad(model: torch.nn.Module) -> Tensor:
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return g


def _methods(encode: Callable[[Tensor], Tensor], loss_fn: Callable[[Tensor], Tensor],
             ids: Tensor, chunk_size: int) -> dict[str, Callable[[], Tensor]]:
    """One training step per method (forward + backward); each returns the logged loss."""
    exact = ContrastiveAccumulator(encode, loss_fn, chunk_size)
    no_replay = ContrastiveAccumulator(encode, loss_fn, chunk_size, preserve_rng=False)

    def full() -> Tensor:
        loss = loss_fn(encode(ids))
        loss.backward()
        return loss.detach()

    def plain() -> Tensor:
        chunks = split_batch(ids, chunk_size)
        total = torch.zeros((), dtype=torch.float64)
        for c in chunks:
            loss = loss_fn(encode(c)) / len(chunks)
            loss.backward()
            total += loss.detach().double().cpu()
        return total

    return {"full": full, "exact": lambda: exact.step(ids),
            "exact_no_replay": lambda: no_replay.step(ids), "plain": plain}


def _reference(encode: Callable[[Tensor], Tensor], loss_fn: Callable[[Tensor], Tensor],
               ids: Tensor, chunk_size: int) -> Tensor:
    """The full-batch loss with the dropout masks the chunked methods draw (chunk by chunk from
    the same RNG state), back-propagated in one pass."""
    loss = loss_fn(torch.cat([encode(c) for c in split_batch(ids, chunk_size)]))
    loss.backward()
    return loss.detach()


def _timed(fn: Callable[[], Any], model: torch.nn.Module) -> float:
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    model.zero_grad(set_to_none=True)
    return dt


def _chunks(c: int) -> str:
    return f"{c} chunk{'s' if c != 1 else ''}"


def _error_beyond(method: str, log10_limit: float, above: bool, label: str
                  ) -> Callable[[int], Threshold]:
    """Per number of chunks: log10 of the relative gradient error above/below a limit."""
    return lambda c: Threshold("log10_grad_error", {"method": method, "chunks": c}, log10_limit,
                               above=above, label=f"log10 {label}, {_chunks(c)}")


def _memory_check(results: Results) -> Verdict:
    """Every chunking's peak within 1.5× of full/chunks, and non-increasing along chunks."""
    bound = ForEach("chunks", lambda c: Threshold(
        "memory_x_chunks", {"method": "exact", "chunks": c}, 1.5, above=False,
        label=f"peak × chunks / full, {_chunks(c)}"), where={"method": "exact"})
    trend = Trend("memory_ratio", {"method": "exact"}, "chunks", "non_increasing", 0.0,
                  label="accumulator peak / full")
    return AllOf([bound, trend])(results)


@register_experiment
class ContrastiveAccumulation(Experiment):
    """Gradient error and peak activation memory of exact vs plain accumulation per chunking."""

    name = "contrastive-accumulation"
    title = "exact gradient accumulation for contrastive losses: gradient error and memory"
    post = POST
    config = AccumulationConfig
    presets = {
        "micro": lambda: AccumulationConfig(pairs=4, seq_len=16, hidden=32, layers=1, heads=2,
                                            chunks=[1, 2, 4], timing_repeats=1),
        "quick": lambda: AccumulationConfig(pairs=32, seq_len=64, hidden=128, layers=2,
                                            chunks=[1, 2, 4, 8, 16, 32]),
        "full": lambda: AccumulationConfig(pairs=128, seq_len=128, hidden=256, layers=4,
                                           chunks=[1, 2, 4, 8, 16, 32, 64, 128],
                                           timing_repeats=5),
    }
    claims = [
        Claim("accumulator-is-exact",
              "Computing the representation gradient of the whole batch first and then "
              "back-propagating chunk by chunk gives exactly the large batch's gradient, for every "
              "chunk size (relative error below 1e-10 in float64).", POST,
              ForEach("chunks", _error_beyond("exact", -10, False, "accumulator error"),
                      where={"method": "exact"})),
        Claim("plain-accumulation-is-not",
              "Plain gradient accumulation (each chunk's own contrastive loss) is not the large "
              "batch's objective: its gradient differs (by more than 1%) whenever the batch is "
              "split.", POST,
              ForEach("chunks", _error_beyond("plain", -2, True, "plain accumulation error"),
                      where={"method": "plain"}, keep=lambda c: c > 1)),
        Claim("dropout-breaks-exactness",
              "With dropout the no-gradient and the gradient forward passes draw different masks, "
              "so the accumulated gradient is no longer exact (relative error above 1e-6) — "
              "unless the RNG state is replayed, which the accumulator does.", POST,
              ForEach("chunks", _error_beyond("exact_no_replay", -6, True, "no-replay error"),
                      where={"method": "exact_no_replay"})),
        Claim("memory-falls-as-one-over-chunks",
              "The peak activation memory is that of one chunk: it falls roughly as 1/chunks "
              "(within a factor 1.5 of full/chunks, never rising as the chunks get smaller).",
              POST,
              _memory_check),
    ]

    def run(self, config: AccumulationConfig, ctx: RunContext) -> list[dict[str, Any]]:
        rows = 2 * config.pairs
        corpus = load_corpus(ctx.corpus)
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=ctx.generator))
        sentences = window_batch(corpus.tokens("train"), config.pairs, config.seq_len,
                                 seed=seed, step=0)
        ids = sentences.repeat_interleave(2, 0).to(ctx.device)  # rows 2k, 2k+1: two views
        model = _encoder(config, ctx.generator, ctx.device)

        def encode(x: Tensor) -> Tensor:
            return model(x).last_hidden_state.mean(1)

        def loss_fn(h: Tensor) -> Tensor:
            return info_nce(h, temperature=config.temperature)

        start = capture_rng_state()  # every method and reference starts from this state
        out = self._measure(model, encode, loss_fn, ids, rows, ["full"], start,
                            config.timing_repeats)
        for c in config.chunks:
            out += self._measure(model, encode, loss_fn, ids, rows // c,
                                 ["exact", "exact_no_replay", "plain"], start,
                                 config.timing_repeats)
        base = out[0]
        for r in out:
            r["memory_ratio"] = r["peak_bytes"] / base["peak_bytes"]
            r["memory_x_chunks"] = r["memory_ratio"] * r["chunks"]
            r["time_ratio"] = r["step_ms"] / base["step_ms"]
        return out

    @staticmethod
    def _measure(model: Encoder, encode: Callable[[Tensor], Tensor],
                 loss_fn: Callable[[Tensor], Tensor], ids: Tensor, size: int, names: list[str],
                 start: Any, repeats: int) -> list[dict[str, Any]]:
        """Rows of ``names`` at chunk size ``size``: error against the reference, peak bytes
        (parameters excluded) and the best of ``repeats`` interleaved timings."""
        params = list(model.parameters())
        fns = _methods(encode, loss_fn, ids, size)
        with replay_rng(start):
            ref_loss = float(_reference(encode, loss_fn, ids, size))
        ref = _flat_grad(model)
        times = dict.fromkeys(names, float("inf"))
        for rep in range(repeats + 1):  # the first round warms up; interleaved against load
            for n in names:
                with replay_rng(start):
                    dt = _timed(fns[n], model)
                times[n] = min(times[n], dt) if rep else times[n]
        rows = []
        for n in names:
            with replay_rng(start):
                loss = float(fns[n]())
            err = float((_flat_grad(model) - ref).norm() / ref.norm())
            with replay_rng(start):
                peak = peak_saved_activation_bytes(fns[n], params)
            model.zero_grad(set_to_none=True)
            rows.append({"method": n, "label": METHODS[n], "chunks": ids.shape[0] // size,
                         "chunk_size": size, "rows": ids.shape[0], "grad_error": err,
                         "log10_grad_error": math.log10(max(err, 1e-18)), "loss": loss,
                         "loss_error": abs(loss - ref_loss), "peak_bytes": peak,
                         "step_ms": 1000 * times[n]})
        return rows

    def table(self, results: Results) -> str:
        first = results.rows[0]
        body = []
        for n, label in METHODS.items():
            for c in results.distinct("chunks", method=n):
                w = {"method": n, "chunks": c}
                err = results.stat("grad_error", **w)
                body.append([label, c, results.select(**w)[0]["chunk_size"],
                             f"{max(err.values.values()):.1e}",
                             results.fmt("peak_bytes", 2**-20, 3, **w),
                             results.fmt("memory_ratio", 1, 3, **w),
                             results.fmt("time_ratio", 1, 2, **w)])
        return (f"SimCSE on a float64 encoder, {first['rows']} rows (pairs of dropout views); "
                "gradient error = ‖g − g_full‖/‖g_full‖ against one backward through the whole "
                "batch with the same dropout masks (largest over seeds); peak memory = bytes "
                "held for backward at once; time relative to the full batch (report only).\n\n"
                + markdown_table(["method", "chunks", "chunk size", "gradient error",
                                  "peak MB", "memory vs full", "time vs full"], body))

    def figures(self, results: Results) -> list[LinePlot]:
        err = [series_over(results, "log10_grad_error", "chunks", METHODS[n], method=n)
               for n in ("exact", "exact_no_replay", "plain")]
        mem = [series_over(results, "memory_ratio", "chunks", METHODS[n], method=n)
               for n in ("exact", "plain")]
        chunks = sorted(results.distinct("chunks"))
        ideal = series_over(results, "memory_ratio", "chunks", "1 / chunks", method="exact")
        if ideal is not None:
            ideal.y, ideal.y_std, ideal.style = [1 / c for c in ideal.x], None, {"ls": "--"}
        return [
            LinePlot("gradient_error", "Gradient error vs the full batch", "chunks",
                     "log10 relative error (exact 0 shown as -18)",
                     [s for s in err if s is not None], logx=True,
                     caption="Relative error of the accumulated gradient against one backward "
                             "through the whole batch (same dropout masks)."),
            LinePlot("peak_memory", "Peak activation memory vs chunks", "chunks",
                     "peak bytes / full batch", [s for s in (*mem, ideal) if s is not None],
                     logx=True, caption=f"Chunks {chunks}; the dashed line is 1/chunks."),
        ]

    def notes(self, results: Results) -> str:
        return ("The full-batch reference encodes the batch chunk by chunk from the same RNG "
                "state as the accumulator, so both see the same dropout masks; with one chunk the "
                "plain method is the full batch. The accumulator's extra cost is one forward pass "
                "without gradient.")

