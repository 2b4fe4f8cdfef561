"""Long-context scaling: time and peak memory of quadratic attention against linear-time mixers.

Transformer-VQ (kexue.fm/archives/9844; arXiv 2309.16354), the LRU (kexue.fm/archives/9554;
arXiv 2303.06349) and linear attention (arXiv 2006.16236) promise cost linear in the sequence
length, where softmax attention is quadratic: doubling ``n`` should roughly double their time
and quadruple attention's. This experiment measures it on the token mixers exactly as a formerlab
model builds them (:data:`formerlab.models.MIXERS`), at equal width: ``mha`` (causal
``scaled_dot_product_attention``), ``vq`` (block form, ``S`` codes, block ``ℓ``), ``lru``
(complex diagonal recurrence, chunked scan) and ``linear`` (chunked causal form), for forward and
forward + backward, ``n`` = 1k … 16k.

Time is the best of ``repeats`` calls after a warm-up (on a shared machine the minimum is the
estimate least disturbed by other processes), the methods interleaved at every length so
drifting load hits them alike. Peak memory is what the call allocates above what was
live before it: ``torch.cuda.max_memory_allocated`` on a GPU; on a CPU the running sum of the
allocations torch's profiler records op by op (temporaries freed inside one op are not seen).
These are measurements of the machine they run on; the claims are ratios of one run's own times.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ...config import Config
from ...models.config import ModelConfig
from ...models.mixers import build_mixer
from ..base import Experiment, RunContext, register_experiment
from ..claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED, Claim, Results, Verdict
from ..figures import LinePlot, series_over
from ..report import markdown_table

__all__ = ["LongContextConfig", "LongContextScaling", "build_method", "peak_memory_mb",
           "time_calls"]

POST = "https://kexue.fm/archives/9844"
POST_LRU = "https://kexue.fm/archives/9554"
LABELS = {"sdpa": "softmax attention (SDPA)", "vq": "Transformer-VQ", "lru": "LRU",
          "linear": "linear attention"}
MODES = ("forward", "backward")


@dataclasses.dataclass
class LongContextConfig(Config):
    """Lengths, methods and the shared width (``hidden``, ``heads`` of 64 by default);
    ``threads``: torch's intra-op threads while measuring (1 keeps a shared machine's timings
    steady; ``None`` leaves torch's setting)."""

    lengths: list[int] = dataclasses.field(default_factory=lambda: [1024, 2048, 4096, 8192,
                                                                    16384])
    methods: list[str] = dataclasses.field(default_factory=lambda: list(LABELS))
    hidden: int = 256
    heads: int = 4
    batch: int = 1
    num_codes: int = 512
    block_len: int = 128
    d_state: int | None = None
    repeats: int = 3
    backward: bool = True
    memory: bool = True
    threads: int | None = 1

    def validate(self) -> None:
        bad = [m for m in self.methods if m not in LABELS]
        if bad:
            raise ValueError(f"methods must be among {list(LABELS)}, got {bad}")
        if not self.lengths or any(n < 1 for n in self.lengths):
            raise ValueError(f"lengths must be positive, got {self.lengths}")
        if self.hidden % self.heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        if self.repeats < 1:
            raise ValueError(f"repeats must be >= 1, got {self.repeats}")


def build_method(cfg: LongContextConfig, method: str) -> nn.Module:
    """The causal mixer of ``method`` at the config's width (eval mode)."""
    head_dim = cfg.hidden // cfg.heads
    options: dict[str, Any] | None = {
        "sdpa": None,
        "vq": {"key_size": head_dim, "num_heads": cfg.heads, "expansion": cfg.hidden,
               "num_codes": cfg.num_codes, "block_len": cfg.block_len},
        "lru": {"d_state": cfg.d_state or cfg.hidden},
        "linear": {},
    }[method]
    mixer = "mha" if method == "sdpa" else method
    mc = ModelConfig(hidden_size=cfg.hidden, num_heads=cfg.heads, num_layers=1, mixer=mixer,
                     mixer_options=options, max_position_embeddings=max(cfg.lengths))
    return build_mixer(mixer, mc, mc.layer_specs()[0], options, causal=True).eval()


def _call(module: nn.Module, x: Tensor, backward: bool) -> Callable[[], None]:
    positions = torch.arange(x.shape[1], device=x.device)
    if not backward:
        def fwd() -> None:
            with torch.inference_mode():
                module(x, positions)
        return fwd
    xg = x.detach().requires_grad_()

    def fwd_bwd() -> None:
        module.zero_grad(set_to_none=True)
        xg.grad = None
        module(xg, positions)[0].sum().backward()
    return fwd_bwd


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: dict[str, Callable[[], None]], repeats: int, device: torch.device
               ) -> dict[str, float]:
    """Best (minimum) seconds of each function over ``repeats`` interleaved calls after one
    warm-up."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def peak_memory_mb(fn: Callable[[], None], device: torch.device) -> float:
    """Peak bytes allocated by ``fn`` above the memory live before it, in MB (module doc)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - start) / 2**20
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    live = peak = 0
    for _, delta in events:
        live += delta
        peak = max(peak, live)
    return peak / 2**20


def measure(cfg: LongContextConfig, device: torch.device, generator: torch.Generator,
            log: Callable[[str], None] = lambda _: None) -> list[dict[str, Any]]:
    """One row per (method, n, mode): ``time_ms``, ``peak_mb``, ``ratio`` = time(n)/time(n/2)."""
    modules = {m: build_method(cfg, m).to(device) for m in cfg.methods}
    rows = []
    for n in sorted(cfg.lengths):
        x = torch.randn(cfg.batch, n, cfg.hidden, generator=generator).to(device)
        for mode in MODES if cfg.backward else MODES[:1]:
            fns = {m: _call(mod, x, mode == "backward") for m, mod in modules.items()}
            times = time_calls(fns, cfg.repeats, device)
            for m in cfg.methods:
                row = {"method": m, "label": LABELS[m], "n": n, "mode": mode,
                       "time_ms": 1e3 * times[m]}
                if cfg.memory:
                    row["peak_mb"] = peak_memory_mb(fns[m], device)
                rows.append(row)
            log(f"n = {n} {mode}: " + ", ".join(f"{m} {1e3 * t:.1f} ms" for m, t in times.items()))
    by_key = {(r["method"], r["n"], r["mode"]): r for r in rows}
    for r in rows:
        half = by_key.get((r["method"], r["n"] // 2, r["mode"])) if r["n"] % 2 == 0 else None
        if half is not None:
            r["ratio"] = r["time_ms"] / half["time_ms"]
    return rows


@dataclasses.dataclass
class DoublingRatio:
    """``time(n)/time(n/2)`` of ``method`` at the largest measured ``n`` is ``≤ at_most`` (or
    ``≥ at_least``) for every seed; lengths below ``min_n`` are overhead-bound: not tested."""

    method: str
    mode: str = "forward"
    at_most: float | None = None
    at_least: float | None = None
    min_n: int = 4096

    def __call__(self, results: Results) -> Verdict:
        ns = [n for n in results.distinct("n", method=self.method, mode=self.mode)
              if results.values("ratio", method=self.method, mode=self.mode, n=n)]
        if not ns or max(ns) < self.min_n:
            return Verdict(NOT_TESTED, f"{self.method} {self.mode}: no doubling at n ≥ "
                           f"{self.min_n} was measured")
        n = max(ns)
        vals = results.values("ratio", method=self.method, mode=self.mode, n=n)
        ok = [(self.at_most is None or v <= self.at_most)
              and (self.at_least is None or v >= self.at_least) for v in vals.values()]
        want = f"≤ {self.at_most}" if self.at_most is not None else f"≥ {self.at_least}"
        evidence = (f"{LABELS[self.method]} {self.mode}: time({n})/time({n // 2}) = "
                    + ", ".join(f"{v:.2f}" for v in vals.values()) + f" ({want} wanted, "
                    f"{len(vals)} seed{'s' if len(vals) != 1 else ''})")
        status = REPRODUCED if all(ok) else NOT_REPRODUCED if not any(ok) else INCONCLUSIVE
        return Verdict(status, evidence, {"ratios": vals, "n": n})


def _linear(method: str, post: str, what: str) -> Claim:
    return Claim(f"{method}-linear-time", f"{what} runs in time linear in the sequence length: "
                 "doubling n at most about doubles the time (ratio ≤ 2.2).", post,
                 DoublingRatio(method, at_most=2.2))


@register_experiment
class LongContextScaling(Experiment):
    """Forward and forward + backward time and memory of four mixers from 1k to 16k tokens."""

    name = "long-context-scaling"
    title = "Long-context scaling: softmax attention vs Transformer-VQ, LRU, linear attention"
    post = POST
    config = LongContextConfig
    presets = {
        "micro": lambda: LongContextConfig(lengths=[64, 128, 256], hidden=32, heads=2,
                                           num_codes=16, block_len=16, repeats=1),
        "quick": lambda: LongContextConfig(),
        "full": lambda: LongContextConfig(lengths=[1024, 2048, 4096, 8192, 16384, 32768],
                                          repeats=5),
    }
    claims = [
        _linear("vq", POST, "Transformer-VQ (attention over quantised keys)"),
        _linear("lru", POST_LRU, "The LRU (a linear recurrence with a parallel scan)"),
        _linear("linear", POST, "Kernelised linear attention"),
        Claim("sdpa-quadratic", "Softmax attention is quadratic: doubling n multiplies its time by "
              "about 4 (ratio ≥ 3 wanted at the longest length).", POST,
              DoublingRatio("sdpa", at_least=3.0)),
    ]

    def run(self, config: LongContextConfig, ctx: RunContext) -> list[dict]:
        before = torch.get_num_threads()
        if config.threads is not None:
            torch.set_num_threads(config.threads)
        try:
            return measure(config, ctx.device, ctx.generator, ctx.log)
        finally:
            torch.set_num_threads(before)

    def table(self, results: Results) -> str:
        out = []
        for mode in results.distinct("mode"):
            ns = sorted(results.distinct("n", mode=mode))
            body = []
            for m in results.distinct("method", mode=mode):
                body.append([LABELS[m]]
                            + [results.fmt("time_ms", 1, 1, method=m, n=n, mode=mode) for n in ns]
                            + [results.fmt("peak_mb", 1, 1, method=m, n=ns[-1], mode=mode)])
            title = "forward" if mode == "forward" else "forward + backward"
            out.append(f"**{title}**: time (ms, best of the run's calls; mean ± std over "
                       "seeds) by length, and peak memory at the longest length.\n\n"
                       + markdown_table(["method", *(f"n={n}" for n in ns),
                                         f"peak MB at {ns[-1]}"], body))
        return "\n\n".join(out)

    def figures(self, results: Results) -> list[LinePlot]:
        plots = []
        for mode in results.distinct("mode"):
            series = [s for m in results.distinct("method", mode=mode)
                      if (s := series_over(results, "time_ms", "n", LABELS[m], method=m,
                                           mode=mode)) is not None]
            plots.append(LinePlot(f"time_{mode}", f"{mode} time vs length", "n (tokens)",
                                  "time (ms)", series, logx=True, logy=True,
                                  caption="Log-log: slope 1 is linear, slope 2 quadratic."))
        return plots

    def notes(self, results: Results) -> str:
        slopes = []
        for m in results.distinct("method", mode="forward"):
            pts = [(n, results.mean("time_ms", method=m, n=n, mode="forward"))
                   for n in sorted(results.distinct("n", method=m, mode="forward"))]
            pts = [(n, t) for n, t in pts if t and n >= 1024] or pts
            if len(pts) >= 2:
                xs, ys = [math.log(n) for n, _ in pts], [math.log(t) for _, t in pts]
                mx, my = statistics.fmean(xs), statistics.fmean(ys)
                slope = (sum((a - mx) * (b - my) for a, b in zip(xs, ys))
                         / sum((a - mx) ** 2 for a in xs))
                slopes.append(f"{LABELS[m]} {slope:.2f}")
        return ("Fitted exponent p of forward time ∝ n^p (lengths ≥ 1k where measured): "
                + ", ".join(slopes) + ". Times are this machine's; on a loaded machine they "
                "drift, which the interleaving spreads over all methods alike.")
