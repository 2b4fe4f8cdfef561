"""formerlab ``FSQ`` and ``VectorQuantizer`` vs vector-quantize-pytorch at the same shapes:
forward + backward time in training mode.

- FSQ levels [8, 5, 5, 5] (K = 1000) on z (16, 1024, 4); outputs checked equal.
- VQ with K = 512 codes of dim 64, EMA decay 0.99, commitment 0.25, straight-through estimator
  (the peer with ``rotation_trick=False`` so both run the same algorithm; its default rotation
  trick is timed too, for reference), z (16, 256, 64).

One thread by default (a shared 2-core machine), candidates timed in alternation. Reports
``speedup = t_peer / t_formerlab`` (target ≥ 1.0) and writes ``benchmarks/results/bench_quantize.json``.

    python benchmarks/bench_quantize.py [--reps 15] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import formerlab  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT / "src"))

import torch  # noqa: E402

from _common import interleaved, write  # type: ignore[import-not-found]  # noqa: E402
from formerlab.quantize import FSQ, VectorQuantizer  # noqa: E402


def step(module, z, with_loss: bool):
    def run():
        x = z.detach().requires_grad_(True)
        out = module(x)
        total = out[0].sum() + (out[2] if with_loss else 0)
        total.backward()

    return run


def bench_fsq(peer_mod, reps: int) -> dict:
    levels = [8, 5, 5, 5]
    z = torch.randn(16, 1024, 4, generator=torch.Generator().manual_seed(0)) * 2
    ours, peer = FSQ(levels), peer_mod.FSQ(levels)
    a, b = ours(z), peer(z)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1].long())
    quiet = FSQ(levels, track_usage=False)
    t = interleaved({"formerlab": step(ours, z, False), "formerlab_no_usage": step(quiet, z, False),
                     "peer": step(peer, z, False)}, repeats=reps)
    return {"shape": list(z.shape), "levels": levels, "times": t,
            "speedup": t["peer"]["min_s"] / t["formerlab"]["min_s"],
            "speedup_no_usage": t["peer"]["min_s"] / t["formerlab_no_usage"]["min_s"]}


def bench_vq(peer_mod, reps: int) -> dict:
    k, d = 512, 64
    z = torch.randn(16, 256, d, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(0)
    peer = peer_mod.VectorQuantize(dim=d, codebook_size=k, decay=0.99, commitment_weight=0.25,
                                   threshold_ema_dead_code=0, rotation_trick=False)
    rot = peer_mod.VectorQuantize(dim=d, codebook_size=k, decay=0.99, commitment_weight=0.25,
                                  threshold_ema_dead_code=0)
    ours = VectorQuantizer(k, d, ema_decay=0.99, commitment_weight=0.25)
    ours.codebook = peer.codebook.detach().clone()
    for m in (peer, rot, ours):
        m.train()
    t = interleaved({"formerlab": step(ours, z, True), "peer": step(peer, z, True),
                     "peer_rotation_trick": step(rot, z, True)}, repeats=reps)
    return {"shape": list(z.shape), "num_codes": k, "times": t,
            "speedup": t["peer"]["min_s"] / t["formerlab"]["min_s"],
            "speedup_vs_rotation_trick": t["peer_rotation_trick"]["min_s"] / t["formerlab"]["min_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import vector_quantize_pytorch as peer_mod

    fsq, vq = bench_fsq(peer_mod, args.reps), bench_vq(peer_mod, args.reps)
    print(f"threads {torch.get_num_threads()}, load {os.getloadavg()}, best of {args.reps}")
    for name, r in (("FSQ [8,5,5,5]", fsq), ("VQ 512x64", vq)):
        ms = {k: 1e3 * v["min_s"] for k, v in r["times"].items()}
        print(f"{name:14} " + "  ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
              + f"  speedup {r['speedup']:.2f}x (target >= 1.0)")
    print(f"FSQ without usage counting: {fsq['speedup_no_usage']:.2f}x; "
          f"VQ vs the peer's default rotation trick: {vq['speedup_vs_rotation_trick']:.2f}x")
    path = write("bench_quantize", {"threads": torch.get_num_threads(), "repeats": args.reps,
                                    "fsq": fsq, "vq": vq, "target_min_speedup": 1.0,
                                    "loadavg_at_end": os.getloadavg()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
