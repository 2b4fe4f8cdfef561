"""ReRoPE cost vs plain RoPE attention: prefill time and peak memory, decode step time.

Prefill: ``rerope_attention`` (default ``impl="auto"``: two flash passes merged by log-sum-exp on CPU;
and the explicit ``"two_pass"`` blocks) vs RoPE + ``scaled_dot_product_attention(is_causal=True)``
("sdpa") and vs RoPE + explicit matmul/softmax attention ("eager", Hugging Face's eager path), at
n = 1024 and 4096, batch 1, 8 heads, head_dim 64, float32, ReRoPE window 256. Targets:
time and peak memory ≤ 2.2× plain RoPE attention.

Decode: one new token against a cache of n tokens (32 steps): ``ReRoPECache`` (un-rotated keys,
preallocated) + ``rerope_decode_step`` vs a rotated-key cache in preallocated buffers + SDPA. Both
include the cache append. Target ≤ 1.5×.

Peak memory is the growth of the peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``)
during one call, measured in a fresh subprocess per case with glibc's mmap threshold fixed at
64 KiB (large tensors are then mapped and unmapped individually, so RSS follows the live tensors).
Linux only. Writes ``benchmarks/results/bench_rerope.json`` and prints a table.

    python benchmarks/bench_rerope.py [--reps 5] [--window 256] [--no-memory]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import formerlab  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import timeit as _timeit  # type: ignore[import-not-found]  # noqa: E402
from formerlab.position import (  # noqa: E402
    ReRoPECache,
    apply_rope,
    rerope_attention,
    rerope_decode_step,
    rope_cos_sin,
    rope_frequencies,
)

HEADS, HEAD_DIM, BATCH = 8, 64, 1
LENGTHS = (1024, 4096)
PREFILL = ("sdpa", "eager", "rerope", "rerope_two_pass")


def inputs(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(BATCH, HEADS, n, HEAD_DIM, generator=g) for _ in range(3))
    inv, _ = rope_frequencies(HEAD_DIM)
    return q, k, v, inv


def prefill_fn(name: str, n: int, window: int):
    q, k, v, inv = inputs(n)
    pos = torch.arange(n)

    def sdpa():
        cos, sin = rope_cos_sin(pos, inv)
        return F.scaled_dot_product_attention(apply_rope(q, cos, sin), apply_rope(k, cos, sin), v, is_causal=True)

    def eager():
        cos, sin = rope_cos_sin(pos, inv)
        s = apply_rope(q, cos, sin) @ apply_rope(k, cos, sin).transpose(-1, -2) / HEAD_DIM**0.5
        s = s.masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), float("-inf"))
        return torch.softmax(s, -1) @ v

    def rerope():
        return rerope_attention(q, k, v, inv_freq=inv, window=window)

    def rerope_two_pass():
        return rerope_attention(q, k, v, inv_freq=inv, window=window, impl="two_pass")

    return {"sdpa": sdpa, "eager": eager, "rerope": rerope, "rerope_two_pass": rerope_two_pass}[name]


def timeit(fn, reps: int) -> float:
    """Best of ``reps`` runs under inference mode (the least-disturbed run on a shared machine)."""
    with torch.inference_mode():
        return _timeit(fn, repeats=reps, warmup=1)["min_s"]


def decode_times(n: int, window: int, steps: int, reps: int) -> dict[str, float]:
    q, k, v, inv = inputs(n + steps, seed=1)
    pos = torch.arange(n + steps)

    def plain():  # rotated-key cache in preallocated buffers (static-cache style), SDPA
        keys, values = torch.empty_like(k), torch.empty_like(v)
        cos, sin = rope_cos_sin(pos[:n], inv)
        keys[:, :, :n], values[:, :, :n] = apply_rope(k[:, :, :n], cos, sin), v[:, :, :n]
        t0 = time.perf_counter()
        for t in range(n, n + steps):
            cos, sin = rope_cos_sin(pos[t:t + 1], inv)
            keys[:, :, t:t + 1] = apply_rope(k[:, :, t:t + 1], cos, sin)
            values[:, :, t:t + 1] = v[:, :, t:t + 1]
            qt = apply_rope(q[:, :, t:t + 1], cos, sin)
            F.scaled_dot_product_attention(qt, keys[:, :, :t + 1], values[:, :, :t + 1])
        return time.perf_counter() - t0

    def rerope():
        cache = ReRoPECache(inv, capacity=n + steps)  # preallocated, like the baseline
        cache.update(k[:, :, :n], v[:, :, :n])
        t0 = time.perf_counter()
        for t in range(n, n + steps):
            cache.update(k[:, :, t:t + 1], v[:, :, t:t + 1])
            rerope_decode_step(q[:, :, t:t + 1], cache, window)
        return time.perf_counter() - t0

    out = {}
    with torch.inference_mode():
        for name, fn in (("plain", plain), ("rerope", rerope)):
            fn()
            out[name] = min(fn() for _ in range(reps)) / steps
    return out


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def measure_peak_mb(name: str, n: int, window: int) -> float:
    """Peak RSS growth (MiB) of one call in this process (run in a fresh subprocess)."""
    prefill_fn(name, 64, 16)()  # load every code path first
    fn = prefill_fn(name, n, window)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS watermark (VmHWM)
    before = _status_kb("VmRSS")
    with torch.inference_mode():
        fn()
    return (_status_kb("VmHWM") - before) / 1024


def peak_memory_mb(name: str, n: int, window: int) -> float:
    """Peak RSS growth of one call, in a fresh interpreter."""
    code = (
        f"import sys; sys.path.insert(0, {str(ROOT / 'benchmarks')!r}); sys.path.insert(0, {str(ROOT / 'src')!r})\n"
        f"import torch; torch.set_num_threads({torch.get_num_threads()})\n"
        "import bench_rerope as b\n"
        f"print(b.measure_peak_mb({name!r}, {n}, {window}))\n"
    )
    # a fixed mmap threshold makes every large tensor its own mapping, so RSS follows live tensors
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TOP_PAD_": "0"}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    return float(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--no-memory", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_rerope.json"))
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict = {
        "config": {"batch": BATCH, "heads": HEADS, "head_dim": HEAD_DIM, "dtype": "float32",
                   "window": args.window, "threads": torch.get_num_threads(), "torch": torch.__version__},
        "prefill": {}, "decode": {},
    }
    rows = []
    for n in LENGTHS:
        times = {name: timeit(prefill_fn(name, n, args.window), args.reps) for name in PREFILL}
        mem = {} if args.no_memory else {name: peak_memory_mb(name, n, args.window) for name in PREFILL}
        entry = {"time_s": times, "peak_mem_mb": mem}
        for ours in ("rerope", "rerope_two_pass"):
            for base in ("sdpa", "eager"):
                entry[f"time_ratio_{ours}_vs_{base}"] = times[ours] / times[base]
                if mem:
                    entry[f"mem_ratio_{ours}_vs_{base}"] = mem[ours] / max(mem[base], 1e-9)
        result["prefill"][str(n)] = entry
        dec = decode_times(n, args.window, args.steps, args.reps)
        result["decode"][str(n)] = {"step_s": dec, "time_ratio": dec["rerope"] / dec["plain"]}
        for name in PREFILL:
            rows.append((f"prefill n={n}", name, times[name] * 1e3, mem.get(name, float("nan")),
                         times[name] / times["sdpa"], mem.get(name, float("nan")) / mem["sdpa"] if mem else float("nan")))
        rows.append((f"decode n={n}", "plain", dec["plain"] * 1e3, float("nan"), 1.0, float("nan")))
        rows.append((f"decode n={n}", "rerope", dec["rerope"] * 1e3, float("nan"), dec["rerope"] / dec["plain"], float("nan")))
    result["targets"] = {"prefill_time_and_memory_ratio_max": 2.2, "decode_time_ratio_max": 1.5}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{'case':16} {'impl':16} {'ms':>10} {'peak MB':>9} {'t/base':>7} {'m/base':>7}")
    for case, impl, ms, mb, tr, mr in rows:
        print(f"{case:16} {impl:16} {ms:10.2f} {mb:9.1f} {tr:7.2f} {mr:7.2f}")
    print(f"(base = sdpa for prefill, plain cached RoPE for decode; window {args.window}; wrote {args.out})")


if __name__ == "__main__":
    main()
