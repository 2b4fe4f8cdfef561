"""Recompute (activation checkpointing) on a CausalLM: saved-activation bytes and step time.

``CausalLM.gradient_checkpointing_enable()`` (kexue.fm/archives/7367) on a Llama-style model
(d 256, 8 layers, n 256, batch 8): bytes saved for backward (``saved_tensors_hooks``; target ratio
≤ 1/3) and the forward+backward step time (target overhead ≤ 1.4×), one run. Writes
``benchmarks/results/bench_recompute.json``.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import torch

from formerlab.models import CausalLM
from formerlab.models.presets import llama
from formerlab.nn.recompute import saved_activation_bytes

OUT = Path(__file__).parent / "results" / "bench_recompute.json"
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))


def saved_bytes(model, ids) -> int:
    total = saved_activation_bytes(lambda: model(ids, labels=ids).loss)
    model.zero_grad(set_to_none=True)
    return total

def step_times(model, ids) -> tuple[float, float]:
    """Best step time without and with recompute, alternating the two inside every repeat."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for flag in (False, True):  # warm-up
        model.gradient_checkpointing = flag
        model(ids, labels=ids).loss.backward()
    for _ in range(REPEATS):
        for flag in (False, True):
            model.gradient_checkpointing = flag
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            model(ids, labels=ids).loss.backward()
            times[flag].append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    return min(times[False]), min(times[True])


def main() -> None:
    # one thread by default: on a shared 2-core machine, OpenMP barriers of a 2-thread run stall
    # whenever another process holds a core, which distorts ratios; BENCH_THREADS=2 to override
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    torch.manual_seed(0)
    model = CausalLM(llama("small", vocab_size=256, num_layers=8)).train()
    ids = torch.randint(0, 256, (8, 256), generator=torch.Generator().manual_seed(0))
    t_plain, t_ckpt = step_times(model, ids)
    model.gradient_checkpointing_disable()
    plain = {"saved_MB": saved_bytes(model, ids) / 2 ** 20, "step_ms": 1000 * t_plain}
    model.gradient_checkpointing_enable()
    ckpt = {"saved_MB": saved_bytes(model, ids) / 2 ** 20, "step_ms": 1000 * t_ckpt}
    mem_ratio = ckpt["saved_MB"] / plain["saved_MB"]
    time_ratio = ckpt["step_ms"] / plain["step_ms"]
    print(f"Llama-style d=256, 8 layers, batch 8 × 256 tokens; best of {REPEATS}, alternating; "
          f"threads {torch.get_num_threads()}; load {os.getloadavg()}")
    print(f"{'':24s} {'saved MB':>10s} {'step ms':>10s}")
    print(f"{'no recompute':24s} {plain['saved_MB']:10.1f} {plain['step_ms']:10.1f}")
    print(f"{'recompute every layer':24s} {ckpt['saved_MB']:10.1f} {ckpt['step_ms']:10.1f}")
    print(f"saved-bytes ratio {mem_ratio:.3f} (target ≤ 0.333), step-time ratio {time_ratio:.2f}× "
          f"(target ≤ 1.4×)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"plain": plain, "recompute": ckpt, "saved_bytes_ratio": mem_ratio,
                               "step_time_ratio": time_ratio, "loadavg": os.getloadavg(),
                               "threads": torch.get_num_threads(),
                               "torch": torch.__version__, "python": platform.python_version()},
                              indent=1) + "\n")


if __name__ == "__main__":
    main()
