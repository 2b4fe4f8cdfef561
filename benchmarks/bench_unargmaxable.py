"""Unargmaxable classes: ``find_unargmaxable`` on the full SmolLM2-135M head, and against a
scipy-only baseline on a smaller head.

1. SmolLM2-135M-Instruct's tied head (49 152 × 576, float32, from the packaged GGUF): wall time of
   ``find_unargmaxable`` (screen + exact method) and the classes found, per ``--real-methods``.
   Skipped (with the pip command) when the weights package is missing.
2. A smaller head (default 1 500 Gaussian rows in 24 dimensions plus 30 rows built inside the hull,
   float64): the baseline solves the paper's LP ``max t`` s.t. ``⟨w_k − w_j, z⟩ ≥ t``, ``t ≤ 1``
   with every constraint, one HiGHS call per class (what a scipy-only user writes); formerlab's
   methods run against it, interleaved, and must return the same classes.

Writes ``benchmarks/results/bench_unargmaxable.json``.

    python benchmarks/bench_unargmaxable.py [--methods hull lp] [--real-methods hull lp]
        [--small-n 1500] [--threads 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import formerlab  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT / "src"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import interleaved, write  # type: ignore[import-not-found]  # noqa: E402
from formerlab.generate.unargmaxable import find_unargmaxable  # noqa: E402


def scipy_baseline(W: torch.Tensor) -> list[int]:
    """One full HiGHS LP per class (no screening, every constraint)."""
    from scipy.optimize import linprog

    X = W.double().numpy()
    n, d = X.shape
    found = []
    for k in range(n):
        o = np.r_[0:k, k + 1:n]
        A = np.c_[-(X[k] - X[o]), np.ones(n - 1)]
        res = linprog(np.r_[np.zeros(d), -1.0], A_ub=A, b_ub=np.zeros(n - 1),
                      bounds=[(None, None)] * d + [(None, 1.0)], method="highs")
        if res.x[d] <= 1e-7:
            found.append(k)
    return found


def small_head(n: int, d: int, inside: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n + inside, d, generator=g, dtype=torch.float64)
    for k in range(n, n + inside):
        src = torch.randperm(n, generator=g)[:2 * d]
        W[k] = W[src].mean(0)
    return W


def smollm2(methods: list[str]) -> dict:
    from formerlab.lab.experiments.unargmaxable import smollm2_head

    try:
        W, tokens = smollm2_head()
    except FileNotFoundError as exc:
        print(f"SmolLM2 head skipped: {exc}")
        return {"skipped": str(exc)}
    out: dict = {"shape": list(W.shape)}
    for m in methods:
        t0 = time.perf_counter()
        idx, certs = find_unargmaxable(W, method=m)
        seconds = time.perf_counter() - t0
        out[m] = {"seconds": round(seconds, 1), "unargmaxable": idx.tolist(),
                  "tokens": [tokens[i] for i in idx.tolist()], "solved_by": certs.solved_by}
        print(f"SmolLM2 {tuple(W.shape)} {m}: {len(idx)} unargmaxable in {seconds:.1f} s "
              f"({certs.solved_by})", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--methods", nargs="+", default=["hull", "lp"], help="on the small head")
    ap.add_argument("--real-methods", nargs="+", default=["hull"], help="on SmolLM2's head")
    ap.add_argument("--small-n", type=int, default=1500)
    ap.add_argument("--small-d", type=int, default=24)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--skip-real", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    W = small_head(args.small_n, args.small_d, 30)
    ref = scipy_baseline(W)
    fns = {"scipy_lp_per_class": lambda: scipy_baseline(W)}
    for m in args.methods:
        got = find_unargmaxable(W, method=m)[0].tolist()
        if got != ref:
            raise SystemExit(f"{m} disagrees with the baseline: {len(got)} vs {len(ref)} classes")
        fns[m] = lambda m=m: find_unargmaxable(W, method=m)
    times = interleaved(fns, repeats=args.reps, warmup=0)
    base = times["scipy_lp_per_class"]["median_s"]
    small = {"shape": list(W.shape), "unargmaxable": len(ref), "times": times,
             "speedup_vs_scipy": {m: round(base / times[m]["median_s"], 1) for m in args.methods}}
    print(f"small head {tuple(W.shape)}: {len(ref)} unargmaxable; scipy per-class LP "
          f"{base:.1f} s; " + ", ".join(f"{m} {times[m]['median_s']:.2f} s "
                                         f"({small['speedup_vs_scipy'][m]}×)" for m in args.methods))
    real = {} if args.skip_real else smollm2(args.real_methods)
    path = write("bench_unargmaxable", {"small_head": small, "smollm2": real,
                                        "threads": args.threads})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
