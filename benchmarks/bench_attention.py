"""Our MultiHeadAttention vs transformers' LlamaAttention vs x-transformers' Attention.

Same shapes (batch 4, n 512, d 512, 8 heads of 64, causal, RoPE, float32, CPU), forward and
forward+backward, best of several repeats, all measured in one run. ``speedup = their time /
our time`` (target ≥ 1.0). Writes ``benchmarks/results/bench_attention.json``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from formerlab.attention import MultiHeadAttention
from formerlab.position.rope import RotaryEmbedding

B, N, D, H = 4, 512, 512, 8
REPEATS = int(os.environ.get("BENCH_REPEATS", "10"))
OUT = Path(__file__).parent / "results" / "bench_attention.json"


def _once(fn, backward: bool) -> float:
    t0 = time.perf_counter()
    if backward:
        fn().sum().backward()
    else:
        with torch.no_grad():
            fn()
    return time.perf_counter() - t0


def interleaved_best(fns: dict, backward: bool) -> dict[str, float]:
    """Best of ``REPEATS``, the implementations alternating inside every repeat so that load
    changes on a shared machine hit all of them alike."""
    for fn in fns.values():
        _once(fn, backward)  # warm-up
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(REPEATS):
        for name, fn in fns.items():
            times[name].append(_once(fn, backward))
    return {k: min(v) for k, v in times.items()}


def ours():
    attn = MultiHeadAttention(D, H)
    attn.rotary = RotaryEmbedding(D // H)
    pos = torch.arange(N)
    return attn, lambda x: attn(x, pos)[0]


def llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    cfg = LlamaConfig(hidden_size=D, num_attention_heads=H, num_key_value_heads=H,
                      attn_implementation="sdpa")
    cfg._attn_implementation = "sdpa"
    attn = LlamaAttention(cfg, layer_idx=0)
    rope = LlamaRotaryEmbedding(cfg)
    pos = torch.arange(N)[None]

    def run(x):
        cos, sin = rope(x, pos)  # computed per call, as our module does
        return attn(x, position_embeddings=(cos, sin), attention_mask=None, is_causal=True)[0]

    return attn, run


def xtransformers():
    from x_transformers.x_transformers import Attention
    from x_transformers.x_transformers import RotaryEmbedding as XRope

    attn = Attention(D, dim_head=D // H, heads=H, causal=True, flash=True)
    rope = XRope(D // H)

    def run(x):
        return attn(x, rotary_pos_emb=rope.forward_from_seq_len(N))

    return attn, run


def main() -> None:
    # one thread by default: on a shared 2-core machine, OpenMP barriers of a 2-thread run stall
    # whenever another process holds a core, which distorts ratios; BENCH_THREADS=2 to override
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    torch.manual_seed(0)
    x = torch.randn(B, N, D, requires_grad=True)
    results: dict[str, dict] = {}
    fns = {}
    for name, build in (("formerlab", ours), ("transformers LlamaAttention", llama),
                        ("x-transformers Attention", xtransformers)):
        try:
            _, fn = build()
            fn(x)
            fns[name] = (lambda fn=fn: fn(x))
        except Exception as exc:  # a peer library may change its API
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    fwd = interleaved_best(fns, backward=False)
    bwd = interleaved_best(fns, backward=True)
    for name in fns:
        results[name] = {"forward_ms": 1000 * fwd[name], "fwd_bwd_ms": 1000 * bwd[name]}
    base = results["formerlab"]
    print(f"shapes: batch {B}, n {N}, d {D}, heads {H}; best of {REPEATS}; "
          f"threads {torch.get_num_threads()}; load {os.getloadavg()}")
    print(f"{'implementation':32s} {'fwd ms':>9s} {'fwd+bwd ms':>11s} {'fwd speedup':>12s} "
          f"{'fwd+bwd speedup':>16s}")
    for name, r in results.items():
        if "error" in r:
            print(f"{name:32s} error: {r['error']}")
            continue
        r["forward_speedup_of_ours"] = r["forward_ms"] / base["forward_ms"]
        r["fwd_bwd_speedup_of_ours"] = r["fwd_bwd_ms"] / base["fwd_bwd_ms"]
        print(f"{name:32s} {r['forward_ms']:9.2f} {r['fwd_bwd_ms']:11.2f} "
              f"{r['forward_speedup_of_ours']:11.2f}× {r['fwd_bwd_speedup_of_ours']:15.2f}×")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"shapes": {"batch": B, "n": N, "d": D, "heads": H},
                               "repeats": REPEATS, "loadavg": os.getloadavg(),
                               "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "python": platform.python_version(),
                               "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
