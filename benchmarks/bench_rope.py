"""formerlab ``apply_rope`` vs transformers' ``apply_rotary_pos_emb`` (Llama): speed of rotating q and k.

Both rotate the same float32 q/k with the same cos/sin tables (half layout); the outputs are
checked equal. Reports ``speedup = t_transformers / t_formerlab`` per shape (target ≥ 1.0) and writes
``benchmarks/results/bench_rope.json``.

    python benchmarks/bench_rope.py [--reps 20]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import formerlab  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from _common import timeit as _timeit  # type: ignore[import-not-found]  # noqa: E402
from formerlab.position import apply_rope, rope_cos_sin, rope_frequencies  # noqa: E402

SHAPES = [(1, 8, 1024, 64), (4, 8, 1024, 64), (1, 32, 2048, 128), (8, 8, 256, 64)]


def timeit(fn, reps: int) -> float:
    """Best of ``reps`` runs under inference mode (the least-disturbed run on a shared machine)."""
    with torch.inference_mode():
        return _timeit(fn, repeats=reps, warmup=3)["min_s"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_rope.json"))
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    result = {"config": {"dtype": "float32", "threads": torch.get_num_threads(), "torch": torch.__version__},
              "shapes": {}}
    print(f"{'shape (B,H,n,d)':22} {'formerlab ms':>13} {'transformers ms':>16} {'speedup':>8}")
    for shape in SHAPES:
        b, _, n, d = shape
        g = torch.Generator().manual_seed(0)
        q, k = torch.randn(*shape, generator=g), torch.randn(*shape, generator=g)
        inv, _ = rope_frequencies(d)
        cos, sin = rope_cos_sin(torch.arange(n), inv)  # (n, d) shared by the batch
        cos_b, sin_b = cos.expand(b, n, d), sin.expand(b, n, d)  # transformers' (B, n, d) convention

        def ours(q=q, k=k, cos=cos, sin=sin):
            return apply_rope(q, cos, sin), apply_rope(k, cos, sin)

        def theirs(q=q, k=k, cos=cos_b, sin=sin_b):
            return apply_rotary_pos_emb(q, k, cos, sin)

        with torch.inference_mode():
            for a, c in zip(ours(), theirs()):
                torch.testing.assert_close(a, c)
        t_ours, t_hf = timeit(ours, args.reps), timeit(theirs, args.reps)
        key = "x".join(map(str, shape))
        result["shapes"][key] = {"formerlab_s": t_ours, "transformers_s": t_hf, "speedup": t_hf / t_ours}
        print(f"{key:22} {t_ours * 1e3:13.3f} {t_hf * 1e3:16.3f} {t_hf / t_ours:8.2f}")
    speedups = [v["speedup"] for v in result["shapes"].values()]
    result["geomean_speedup"] = statistics.geometric_mean(speedups)
    result["target_min_speedup"] = 1.0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"geometric-mean speedup {result['geomean_speedup']:.2f} (target >= 1.0); wrote {args.out}")


if __name__ == "__main__":
    main()
