"""Long-context targets of the linear-time mixers, as ratios measured in one run.

1. Transformer-VQ attention vs causal ``scaled_dot_product_attention`` at the same width (batch
   1, 4 heads × 64, ``S = 512``, ``ℓ = 128``; the problem and candidates of ``bench_vq.py``),
   forward at n = 8k and 16k. Target: VQ ≥ 4× faster than SDPA at 16k.
2. The mixers as a formerlab model builds them (``vq``, ``lru``, ``linear``, and ``mha`` for
   context; hidden 256, the width of the ``long-context-scaling`` experiment), forward at 8k and
   16k. Target: ``time(16k)/time(8k) ≤ 2.2`` for VQ, LRU and linear attention.
3. Decoding one token after prefixes of 1k … 16k tokens: the ``vq`` mixer with its cache, and
   ``LRU.step`` (``bench_scans.bench_decode``). Target: flat, max/min ≤ 1.3.

Candidates alternate (``_common.interleaved``); one thread by default (a shared 2-core machine).
Writes ``benchmarks/results/bench_long_context.json``.

    python benchmarks/bench_long_context.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import formerlab  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from _common import interleaved, write  # type: ignore[import-not-found]  # noqa: E402
from bench_scans import DECODE_POSITIONS, bench_decode  # type: ignore[import-not-found]  # noqa: E402
from bench_vq import candidates, problem  # type: ignore[import-not-found]  # noqa: E402
from formerlab.lab.experiments.long_context_scaling import (  # noqa: E402
    LongContextConfig,
    build_method,
)

PAIR = (8192, 16384)
STEPS = 20  # decoding steps timed per prefix


def bench_vq_vs_sdpa(repeats: int) -> dict:
    fns = {}
    with torch.inference_mode():
        for n in PAIR:
            for k, fn in candidates(*problem(n), [128]).items():
                fns[(k, n)] = fn
        t = interleaved(fns, repeats=repeats, warmup=1)
    ms = {f"{k}_{n}": 1e3 * v["min_s"] for (k, n), v in t.items()}
    return {"ms": ms, "speedup_at_16k": ms["sdpa_16384"] / ms["vq_l128_16384"],
            "vq_16k_over_8k": ms["vq_l128_16384"] / ms["vq_l128_8192"],
            "sdpa_16k_over_8k": ms["sdpa_16384"] / ms["sdpa_8192"]}


def bench_mixers(repeats: int) -> dict:
    cfg = LongContextConfig()
    g = torch.Generator().manual_seed(0)
    mods = {m: build_method(cfg, m) for m in ("vq", "lru", "linear", "sdpa")}
    xs = {n: torch.randn(1, n, cfg.hidden, generator=g) for n in PAIR}
    pos = {n: torch.arange(n) for n in PAIR}
    with torch.inference_mode():
        t = interleaved({(m, n): (lambda m=m, n=n: mods[m](xs[n], pos[n]))
                         for m in mods for n in PAIR}, repeats=repeats, warmup=1)
    out = {}
    for m in mods:
        a, b = (1e3 * t[(m, n)]["min_s"] for n in PAIR)
        out[m] = {"ms_8k": a, "ms_16k": b, "ratio_16k_over_8k": b / a}
    return out


def bench_vq_decode(repeats: int) -> dict:
    cfg = LongContextConfig()
    layer = build_method(cfg, "vq")
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(4, 1, cfg.hidden, generator=g)
    states = {}
    with torch.inference_mode():
        for p in DECODE_POSITIONS:
            prefix = torch.randn(4, p, cfg.hidden, generator=g)
            _, states[p], _ = layer(prefix, torch.arange(p), use_cache=True)

        def decode(p: int) -> None:
            s = states[p]
            for _ in range(STEPS):
                layer(x_t, torch.arange(p, p + 1), state=s, use_cache=True)

        t = interleaved({str(p): (lambda p=p: decode(p)) for p in DECODE_POSITIONS},
                        repeats=repeats)
    per_token = {p: 1e6 * v["min_s"] / STEPS for p, v in t.items()}
    return {"per_token_us": per_token,
            "max_over_min": max(per_token.values()) / min(per_token.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    vq = bench_vq_vs_sdpa(args.repeats)
    print("VQ attention vs causal SDPA (4 heads × 64, S = 512, ℓ = 128): "
          + ", ".join(f"{k} {v:.1f} ms" for k, v in vq["ms"].items())
          + f"; speedup at 16k {vq['speedup_at_16k']:.2f}× (target ≥ 4)")
    mixers = bench_mixers(args.repeats)
    for m, r in mixers.items():
        print(f"mixer {m:6s} forward: 8k {r['ms_8k']:.1f} ms, 16k {r['ms_16k']:.1f} ms, "
              f"ratio {r['ratio_16k_over_8k']:.2f}")
    vq_dec = bench_vq_decode(args.repeats)
    lru_dec = bench_decode(args.repeats)
    for name, d in (("vq", vq_dec), ("LRU", lru_dec)):
        print(f"{name} decode per token (µs) after n tokens: "
              + ", ".join(f"{p}: {v:.0f}" for p, v in d["per_token_us"].items())
              + f"; max/min {d['max_over_min']:.2f} (target ≤ 1.3)")
    targets = {
        "vq_attention_speedup_ge_4_at_16k": vq["speedup_at_16k"] >= 4,
        **{f"{m}_16k_over_8k_le_2.2": mixers[m]["ratio_16k_over_8k"] <= 2.2
           for m in ("vq", "lru", "linear")},
        "vq_decode_flat_within_1.3": vq_dec["max_over_min"] <= 1.3,
        "lru_decode_flat_within_1.3": lru_dec["max_over_min"] <= 1.3,
    }
    print("targets:", targets)
    path = write("bench_long_context", {
        "config": {"pair": list(PAIR), "repeats": args.repeats, "threads": args.threads,
                   "mixer_width": LongContextConfig().hidden, "decode_steps": STEPS,
                   "decode_positions": list(DECODE_POSITIONS)},
        "vq_vs_sdpa": vq, "mixers": mixers, "vq_decode": vq_dec, "lru_decode": lru_dec,
        "targets": targets})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
