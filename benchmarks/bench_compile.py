"""Training-step tokens/s of a ``CausalLM`` under ``torch.compile`` vs eager, same run.

The model compiles with ``fullgraph=True`` (the forward has no host syncs); the benchmark
reports the compiled / eager ratio of one step (forward + backward + AdamW) after warm-up, and the
one-off compilation time. Run: ``python benchmarks/bench_compile.py`` (writes
``benchmarks/results/bench_compile.json``). On a 2-core CPU the gain is small (the step is
matmul-bound); the number tells CUDA users what to expect from the graph itself.
"""

from __future__ import annotations

import argparse
import time

import torch

from _common import interleaved, write  # type: ignore[import-not-found]
from formerlab import ModelConfig
from formerlab.models import CausalLM


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=256, hidden_size=args.dim, num_layers=args.depth,
                      num_heads=args.heads, intermediate_size=4 * args.dim)
    eager = CausalLM(cfg)
    compiled_model = CausalLM(cfg)
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, fullgraph=True)
    ids = torch.randint(0, 256, (args.batch, args.seq))
    opts = {"eager": torch.optim.AdamW(eager.parameters(), lr=1e-4),
            "compiled": torch.optim.AdamW(compiled_model.parameters(), lr=1e-4)}

    def step(model, opt):
        def run() -> None:
            model(ids, labels=ids).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return run

    t0 = time.perf_counter()
    step(compiled, opts["compiled"])()
    compile_s = time.perf_counter() - t0
    times = interleaved({"eager": step(eager, opts["eager"]),
                         "compiled": step(compiled, opts["compiled"])}, repeats=args.repeats)
    tokens = args.batch * args.seq
    tps = {k: tokens / v["min_s"] for k, v in times.items()}
    payload = {"config": vars(args), "compile_seconds": compile_s, "tokens_per_s": tps,
               "times": times, "ratio_compiled_over_eager": tps["compiled"] / tps["eager"]}
    print(f"compiled / eager tokens/s: {payload['ratio_compiled_over_eager']:.2f} "
          f"(compile {compile_s:.0f} s)")
    write("bench_compile", payload)


if __name__ == "__main__":
    main()
