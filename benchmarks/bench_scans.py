"""Parallel scans vs the sequential loop, and LRU decoding cost against the position.

1. ``linear_scan`` of an LRU-shaped recurrence (complex64 states, time-invariant ``λ``) at
   n = 4096 for three widths ``batch × states`` = 1×64, 4×128, 8×256: every registered method
   against ``sequential`` (forward; forward+backward at 4×128). Target: ``associative`` and
   ``chunked`` ≥ 5× the loop. The loop costs one op dispatch per step whatever the width; the
   parallel scans make a few passes over the whole tensor, so their advantage shrinks as the
   width grows and the CPU becomes memory-bound.
2. ``LRU.step`` (d_model 256, d_state 256, batch 4) after prefixes of 1k … 16k tokens: the time of
   one decoding token must stay flat (max/min ≤ 1.3), since the state is one vector.
3. The LRU layer forward at n = 4096 with each scan (context for 1).

Timing alternates the candidates (``_common.interleaved``), one thread by default (a shared
2-core machine). Writes ``benchmarks/results/bench_scans.json``.

    python benchmarks/bench_scans.py [--repeats 7] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import formerlab  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from _common import interleaved, write  # type: ignore[import-not-found]  # noqa: E402
from formerlab.recurrent import LRU, SCANS, linear_scan  # noqa: E402

N_SCAN, BATCH, STATES = 4096, 4, 128
WIDTHS = ((1, 64), (4, 128), (8, 256))
DECODE_POSITIONS = (1024, 2048, 4096, 8192, 16384)


def scan_problem(batch: int, states: int):
    g = torch.Generator().manual_seed(0)
    r = 0.9 + 0.099 * torch.rand(states, generator=g)
    lam = torch.polar(r, 6.28 * torch.rand(states, generator=g))
    b = torch.randn(batch, N_SCAN, states, generator=g, dtype=torch.complex64)
    return lam, b


def bench_forward(batch: int, states: int, repeats: int) -> dict:
    lam, b = scan_problem(batch, states)
    with torch.inference_mode():
        ref = linear_scan(lam, b, dim=1)
        for m in SCANS:
            err = linear_scan(lam, b, dim=1, method=m) - ref
            assert float(err.abs().max() / ref.abs().max()) < 1e-4, m
        t = interleaved({m: (lambda m=m: linear_scan(lam, b, dim=1, method=m))
                         for m in SCANS}, repeats=repeats)
    return {m: {"forward_ms": 1e3 * t[m]["min_s"], "forward_median_ms": 1e3 * t[m]["median_s"],
                "speedup_vs_sequential": t["sequential"]["min_s"] / t[m]["min_s"]}
            for m in SCANS}


def bench_scans(repeats: int) -> dict:
    lam, b = scan_problem(BATCH, STATES)
    with torch.inference_mode():
        fwd = interleaved({m: (lambda m=m: linear_scan(lam, b, dim=1, method=m))
                           for m in SCANS}, repeats=repeats)

    lam_g, b_g = lam.clone().requires_grad_(), b.clone().requires_grad_()

    def fwd_bwd(m):
        x = linear_scan(lam_g, b_g, dim=1, method=m)
        x.real.sum().backward()

    both = interleaved({m: (lambda m=m: fwd_bwd(m)) for m in SCANS}, repeats=max(3, repeats // 2))
    out = {}
    for m in SCANS:
        out[m] = {"forward_ms": 1e3 * fwd[m]["min_s"], "fwd_bwd_ms": 1e3 * both[m]["min_s"],
                  "forward_speedup_vs_sequential": fwd["sequential"]["min_s"] / fwd[m]["min_s"],
                  "fwd_bwd_speedup_vs_sequential":
                      both["sequential"]["min_s"] / both[m]["min_s"],
                  "forward_median_ms": 1e3 * fwd[m]["median_s"]}
    return out


def bench_decode(repeats: int) -> dict:
    model = LRU(256, 256, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    u_t = torch.randn(BATCH, 256, generator=g)
    states = {}
    with torch.inference_mode():
        for p in DECODE_POSITIONS:
            _, states[p] = model(torch.randn(BATCH, p, 256, generator=g), use_cache=True)
        fns = {str(p): (lambda s=states[p]: [model.step(u_t, s) for _ in range(20)])
               for p in DECODE_POSITIONS}
        t = interleaved(fns, repeats=repeats)
    per_token = {p: 1e6 * t[p]["min_s"] / 20 for p in t}
    return {"per_token_us": per_token,
            "max_over_min": max(per_token.values()) / min(per_token.values())}


def bench_layer(repeats: int) -> dict:
    model = LRU(256, 128, generator=torch.Generator().manual_seed(0))
    u = torch.randn(BATCH, N_SCAN, 256, generator=torch.Generator().manual_seed(2))

    def run(m):
        model.scan = m
        return model(u)

    with torch.inference_mode():
        t = interleaved({m: (lambda m=m: run(m)) for m in SCANS}, repeats=max(3, repeats // 2))
    return {m: {"forward_ms": 1e3 * t[m]["min_s"],
                "speedup_vs_sequential": t["sequential"]["min_s"] / t[m]["min_s"]} for m in SCANS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    widths = {f"{b}x{n}": bench_forward(b, n, args.repeats) for b, n in WIDTHS}
    print(f"linear_scan forward, n = {N_SCAN}, complex64, speedup over sequential (best of "
          f"{args.repeats}, threads {torch.get_num_threads()})")
    print(f"{'batch x states':15s} " + " ".join(f"{m:>12s}" for m in SCANS) + "   sequential ms")
    for key, r in widths.items():
        print(f"{key:15s} " + " ".join(f"{r[m]['speedup_vs_sequential']:11.1f}×" for m in SCANS)
              + f"   {r['sequential']['forward_ms']:.1f}")
    scans = bench_scans(args.repeats)
    print(f"linear_scan, batch {BATCH}, {STATES} complex64 states, n = {N_SCAN} (best of "
          f"{args.repeats}, threads {torch.get_num_threads()})")
    print(f"{'method':14s} {'fwd ms':>8s} {'fwd x':>7s} {'fwd+bwd ms':>11s} {'fwd+bwd x':>10s}")
    for m, r in scans.items():
        print(f"{m:14s} {r['forward_ms']:8.2f} {r['forward_speedup_vs_sequential']:6.1f}× "
              f"{r['fwd_bwd_ms']:11.2f} {r['fwd_bwd_speedup_vs_sequential']:9.1f}×")
    decode = bench_decode(args.repeats)
    print("LRU.step per token (µs) after a prefix of n tokens: "
          + ", ".join(f"{p}: {v:.1f}" for p, v in decode["per_token_us"].items())
          + f"; max/min {decode['max_over_min']:.2f} (target ≤ 1.3)")
    layer = bench_layer(args.repeats)
    print("LRU(256, 128) forward at n = 4096: "
          + ", ".join(f"{m} {r['forward_ms']:.1f} ms ({r['speedup_vs_sequential']:.1f}×)"
                      for m, r in layer.items()))
    targets = {f"{m}_forward_speedup_ge_5_at_{key}": r[m]["speedup_vs_sequential"] >= 5
               for key, r in widths.items() for m in ("associative", "chunked")}
    targets["decode_flat_within_1.3"] = decode["max_over_min"] <= 1.3
    print("targets:", targets)
    path = write("bench_scans", {
        "config": {"n": N_SCAN, "batch": BATCH, "states": STATES, "dtype": "complex64",
                   "repeats": args.repeats, "decode_positions": list(DECODE_POSITIONS),
                   "log2_n": math.log2(N_SCAN)},
        "forward_by_width": widths, "scans": scans, "decode": decode, "layer_forward": layer, "targets": targets})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
