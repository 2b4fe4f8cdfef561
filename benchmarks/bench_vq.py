"""Transformer-VQ attention (block form) vs causal ``scaled_dot_product_attention`` by length.

Same width for both: batch 1, 4 heads of 64 (``d_k = d_v = 64``), float32, causal; VQ with
``S = 512`` codes and block lengths ``ℓ = 128`` and ``256`` (no window bias; quantised keys and
codes come from a nearest-code assignment done once, outside the timing). Forward only,
n = 1k … 16k, all candidates at all lengths alternating (``_common.interleaved``), one thread
by default.
Per query VQ scores ``2ℓ + S`` keys and codes, causal SDPA ``n/2`` keys on average. Targets: VQ
≥ 4× faster than SDPA at 16k, ``time(16k)/time(8k) ≤ 2.2`` (linear), and the fitted exponent of
``time ∝ n^p`` over 1k … 16k below 1.3. Writes ``benchmarks/results/bench_vq.json``.

    python benchmarks/bench_vq.py [--repeats 5] [--threads 1] [--block-lens 128 256]
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
import torch.nn.functional as F  # noqa: E402

from _common import interleaved, write  # type: ignore[import-not-found]  # noqa: E402
from formerlab.attention.vq import vq_attention  # noqa: E402

LENGTHS = (1024, 2048, 4096, 8192, 16384)
HEADS, DIM, CODES = 4, 64, 512


def problem(n: int):
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(1, HEADS, n, DIM, generator=g) / DIM**0.25 for _ in range(3))
    codebook = torch.randn(CODES, DIM, generator=g) / DIM**0.25
    codes = torch.cdist(k, codebook[None]).argmin(-1)  # nearest code (the quantiser's job)
    return q, codebook[codes], codes, v, codebook


def candidates(q, kh, codes, v, cb, block_lens):
    fns = {f"vq_l{ell}": (lambda ell=ell: vq_attention(q, kh, codes, v, cb, block_len=ell))
           for ell in block_lens}
    fns["sdpa"] = lambda: F.scaled_dot_product_attention(q, kh, v, is_causal=True, scale=1.0)
    return fns


def fit_exponent(ns, ts) -> float:
    xs, ys = [math.log(n) for n in ns], [math.log(t) for t in ts]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--block-lens", type=int, nargs="+", default=[128, 256])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    names = [f"vq_l{ell}" for ell in args.block_lens]
    rows = {}
    print(f"batch 1, {HEADS} heads × {DIM}, S = {CODES}, float32, best of {args.repeats}, "
          f"threads {torch.get_num_threads()}")
    print(f"{'n':>6s} " + " ".join(f"{k + ' ms':>12s}" for k in [*names, "sdpa"]) + "  speedups")
    with torch.inference_mode():
        fns = {}
        for n in LENGTHS:
            q, kh, codes, v, cb = problem(n)
            if n <= 2048:  # the two compute the same attention (exact given the quantised keys)
                ref = F.scaled_dot_product_attention(q, kh, v, is_causal=True, scale=1.0)
                for ell in args.block_lens:
                    got = vq_attention(q, kh, codes, v, cb, block_len=ell)[0]
                    assert float((got - ref).abs().max()) < 1e-4
            for k, fn in candidates(q, kh, codes, v, cb, args.block_lens).items():
                fns[(k, n)] = fn
        # every candidate at every length alternates, so load drifts hit all lengths alike
        t = interleaved(fns, repeats=args.repeats, warmup=1)
    for n in LENGTHS:
        r = {f"{k}_ms": 1e3 * t[(k, n)]["min_s"] for k in [*names, "sdpa"]}
        for k in names:
            r[f"{k}_speedup"] = r["sdpa_ms"] / r[f"{k}_ms"]
        rows[n] = r
        print(f"{n:6d} " + " ".join(f"{r[k + '_ms']:12.1f}" for k in [*names, "sdpa"]) + "  "
              + " ".join(f"{r[k + '_speedup']:.2f}×" for k in names))
    ns = list(rows)
    summary, targets = {}, {}
    for k in [*names, "sdpa"]:
        summary[k] = {"exponent": fit_exponent(ns, [rows[n][f"{k}_ms"] for n in ns]),
                      "time_16k_over_8k": rows[16384][f"{k}_ms"] / rows[8192][f"{k}_ms"]}
    for k in names:
        targets[k] = {"speedup_ge_4_at_16k": rows[16384][f"{k}_speedup"] >= 4,
                      "time_16k_over_8k_le_2.2": summary[k]["time_16k_over_8k"] <= 2.2,
                      "exponent_lt_1.3": summary[k]["exponent"] < 1.3}
    for k, v in summary.items():
        print(f"{k}: fitted exponent {v['exponent']:.2f}, time(16k)/time(8k) "
              f"{v['time_16k_over_8k']:.2f}")
    print("targets:", targets)
    path = write("bench_vq", {
        "config": {"batch": 1, "heads": HEADS, "dim": DIM, "codes": CODES,
                   "block_lens": args.block_lens, "dtype": "float32", "repeats": args.repeats},
        "lengths": rows, "summary": summary, "targets": targets})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
