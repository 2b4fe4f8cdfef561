"""A GAU layer pair vs an MHA + FFN block at (almost) equal parameters (kexue.fm/archives/9052).

GAU-α ratios at half size: d 384, e = 2d, s = d/6 (64) for the pair (``2·(3ed + sd) ≈ 12.3 d²``)
vs a Pre-Norm block with 6-head MHA and a 4d GELU FFN without biases (``12 d²``). Forward+backward
time (best of several, in this process, models alternating) and peak memory (growth of the
peak RSS ``VmHWM`` of a fresh subprocess running one step, after resetting the mark) at n = 512
and 2048, batch 1, float32 CPU. The FLOPs each model executes in one step are counted by
``torch.utils.flop_counter`` (its attention formulas registered for the CPU flash kernel too) and
the activations autograd saves are summed, so the file says how much of a ratio is work the
design asks for and how much is the rate at which it runs. Writes ``benchmarks/results/bench_gau.json``.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count

from formerlab.attention import MultiHeadAttention
from formerlab.attention.gau import GAULayer
from formerlab.nn.ffn import MLP
from formerlab.nn.norms import RMSNorm
from formerlab.position.rope import RotaryEmbedding

D = 384
LENGTHS = (512, 2048)
REPEATS = int(os.environ.get("BENCH_REPEATS", "5"))
OUT = Path(__file__).parent / "results" / "bench_gau.json"


class MHABlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.n1, self.n2 = RMSNorm(D), RMSNorm(D)
        self.attn = MultiHeadAttention(D, 6, causal=False)
        self.attn.rotary = RotaryEmbedding(D // 6)
        self.ffn = MLP(D, 4 * D, bias=False)

    def forward(self, x):
        x = x + self.attn(self.n1(x), torch.arange(x.shape[1]))[0]
        return x + self.ffn(self.n2(x))


def gau_pair(split_values: bool = False) -> nn.Module:
    return nn.Sequential(*(GAULayer(D, expansion=2 * D, key_size=D // 6, dropout=0.0,
                                    attention_dropout=0.0, split_values=split_values)
                           for _ in range(2)))


#: the GAU pair through the math kernel (values wider than q/k) and through the fused kernel with
#: the values served as key-width heads (exact, O(n) memory, twice the score FLOPs)
BUILD = {"gau_pair": gau_pair, "gau_pair_split": lambda: gau_pair(True), "mha_ffn": MHABlock}


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{key} not in /proc/self/status")


def one_step(name: str, n: int) -> None:
    """Child process: build, reset the peak-RSS mark (``/proc/self/clear_refs`` = 5), run one
    fwd+bwd, print the growth of the peak RSS over the RSS before the step (MB)."""
    torch.manual_seed(0)
    model = BUILD[name]()
    x = torch.randn(1, n, D, requires_grad=True)
    model(x[:, :8]).sum().backward()  # allocator/threads warm-up on a tiny input
    model.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")
    base = _status_kb("VmRSS")
    model(x).sum().backward()
    print(json.dumps({"peak_growth_MB": (_status_kb("VmHWM") - base) / 1024}))


def _flash_flops(q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q, k, v)


def _flash_backward_flops(grad, q, k, v, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad, q, k, v)


#: the counter knows the CUDA attention kernels; the CPU flash kernel gets the same formulas
CPU_FLASH_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _flash_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _flash_backward_flops,
}


def _count_step(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        st = t.untyped_storage()
        if st.data_ptr() not in weights:
            saved[st.data_ptr()] = st.nbytes()
        return t

    with FlopCounterMode(display=False, custom_mapping=CPU_FLASH_FLOPS) as counter:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x).sum()
        loss.backward()
    return {"flops": counter.get_total_flops(), "saved_MB": sum(saved.values()) / 2**20}


def counted(n: int) -> dict[str, dict[str, float]]:
    """What one forward+backward of every model at length ``n`` asks for: the FLOPs of its matmuls
    and attention, and the MB of activations autograd keeps for the backward (distinct storages
    saved by the graph, parameters excluded)."""
    out = {}
    for name, build in BUILD.items():
        torch.manual_seed(0)
        out[name] = _count_step(build(), torch.randn(1, n, D, requires_grad=True))
    return out


def timed(n: int) -> dict[str, float]:
    """Best fwd+bwd time of every model at length ``n``, alternating models inside each repeat."""
    runs = {}
    for name, build in BUILD.items():
        torch.manual_seed(0)
        model = build()
        x = torch.randn(1, n, D, requires_grad=True)
        model(x).sum().backward()  # warm-up
        runs[name] = (model, x)
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(REPEATS):
        for name, (model, x) in runs.items():
            model.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            model(x).sum().backward()
            times[name].append(time.perf_counter() - t0)
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    # one thread by default: on a shared 2-core machine, OpenMP barriers of a 2-thread run stall
    # whenever another process holds a core, which distorts ratios; BENCH_THREADS=2 to override
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    params = {k: sum(p.numel() for p in b().parameters()) for k, b in BUILD.items()}
    res: dict[str, dict] = {}
    for n in LENGTHS:
        t, need = timed(n), counted(n)
        for name in BUILD:
            child = subprocess.run([sys.executable, __file__, "--child", name, str(n)],
                                   capture_output=True, text=True, check=True)
            mem = json.loads(child.stdout.strip().splitlines()[-1])["peak_growth_MB"]
            res[f"{name}@{n}"] = {"fwd_bwd_ms": 1000 * t[name], "peak_MB": mem,
                                  "gflop": need[name]["flops"] / 1e9,
                                  "gflop_per_s": need[name]["flops"] / t[name] / 1e9,
                                  "saved_activations_MB": need[name]["saved_MB"]}
    print(f"d={D}; params: GAU pair {params['gau_pair']:,}, MHA+FFN {params['mha_ffn']:,}; "
          f"best of {REPEATS}; threads {torch.get_num_threads()}; load {os.getloadavg()}")
    print(f"{'n':>6s} {'GAU ms':>9s} {'MHA ms':>9s} {'time ratio':>11s} {'GAU MB':>8s} "
          f"{'MHA MB':>8s} {'mem ratio':>10s} {'FLOP ratio':>11s}")
    ratios = {}
    for n in LENGTHS:
        g, m = res[f"gau_pair@{n}"], res[f"mha_ffn@{n}"]
        gs = res[f"gau_pair_split@{n}"]
        ratios[n] = {"time_gau_over_mha": g["fwd_bwd_ms"] / m["fwd_bwd_ms"],
                     "memory_gau_over_mha": g["peak_MB"] / m["peak_MB"],
                     "time_gau_split_over_mha": gs["fwd_bwd_ms"] / m["fwd_bwd_ms"],
                     "memory_gau_split_over_mha": gs["peak_MB"] / m["peak_MB"],
                     "flops_gau_over_mha": g["gflop"] / m["gflop"],
                     "flops_gau_split_over_mha": gs["gflop"] / m["gflop"],
                     "rate_gau_over_mha": g["gflop_per_s"] / m["gflop_per_s"],
                     "saved_gau_over_mha": g["saved_activations_MB"] / m["saved_activations_MB"],
                     "saved_gau_split_over_mha": gs["saved_activations_MB"] / m["saved_activations_MB"]}
        print(f"{n:6d} {g['fwd_bwd_ms']:9.1f} {m['fwd_bwd_ms']:9.1f} "
              f"{ratios[n]['time_gau_over_mha']:10.2f}× {g['peak_MB']:8.1f} {m['peak_MB']:8.1f} "
              f"{ratios[n]['memory_gau_over_mha']:9.2f}× {ratios[n]['flops_gau_over_mha']:10.2f}×")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"d": D, "params": params, "results": res, "ratios": ratios,
                               "loadavg": os.getloadavg(), "threads": torch.get_num_threads(),
                               "torch": torch.__version__,
                               "python": platform.python_version()}, indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        one_step(sys.argv[2], int(sys.argv[3]))
    else:
        main()
