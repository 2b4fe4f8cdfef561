"""Exact contrastive accumulation (kexue.fm/archives/8471): peak activation memory, step time
and gradient error of ``ContrastiveAccumulator`` against the full batch and against plain
gradient accumulation (per-chunk losses, which is not the large-batch objective).

SimCSE on a formerlab ``Encoder`` (hidden 128, 2 layers, dropout 0.1, mean pooling), 32
sentences × 2 dropout views = 64 rows of 64 tokens, chunks of 8 rows (8 chunks). Memory is the
peak of bytes held for backward at once (``peak_saved_activation_bytes``, parameters excluded);
gradient errors are ‖g − g_full‖/‖g_full‖ with the same dropout masks. Targets: peak memory
≤ 1/chunks + a small constant of the full batch; time ≤ 1.5× the full batch. Writes
``benchmarks/results/bench_contrastive.json``.

    python benchmarks/bench_contrastive.py [--reps 5] [--threads 1]
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
from formerlab import ModelConfig  # noqa: E402
from formerlab.losses import ContrastiveAccumulator, info_nce, split_batch  # noqa: E402
from formerlab.models import Encoder  # noqa: E402
from formerlab.nn.recompute import peak_saved_activation_bytes  # noqa: E402

ROWS, SEQ, CHUNK = 64, 64, 8


def build():
    cfg = ModelConfig(vocab_size=1000, hidden_size=128, num_layers=2, num_heads=4,
                      position="learned", norm="layernorm", norm_position="post", ffn="gelu",
                      max_position_embeddings=SEQ, dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    model = Encoder(cfg).train()
    ids = torch.randint(1, 1000, (ROWS // 2, SEQ), generator=torch.Generator().manual_seed(0))
    ids = ids.repeat_interleave(2, 0)  # rows 2k, 2k+1: two dropout views of sentence k

    def encode(x):
        return model(x).last_hidden_state.mean(1)

    return model, encode, ids


def loss_fn(h):
    return info_nce(h, temperature=0.05)


def flat_grad(model):
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model, encode, ids = build()
    acc = ContrastiveAccumulator(encode, loss_fn, CHUNK)

    def full():
        loss_fn(encode(ids)).backward()

    def exact():
        acc.step(ids)

    def naive():  # plain gradient accumulation: each chunk's own SimCSE loss
        chunks = split_batch(ids, CHUNK)
        for c in chunks:
            (loss_fn(encode(c)) / len(chunks)).backward()

    def chunked_full():  # the full-batch gradient with the accumulator's dropout masks
        loss_fn(torch.cat([encode(c) for c in split_batch(ids, CHUNK)])).backward()

    params = list(model.parameters())
    peak = {name: peak_saved_activation_bytes(fn, params)
            for name, fn in (("full", full), ("exact", exact), ("naive", naive))}
    model.zero_grad(set_to_none=True)
    grads = {}
    for name, fn in (("full", chunked_full), ("exact", exact), ("naive", naive)):
        torch.manual_seed(1)
        fn()
        grads[name] = flat_grad(model)
    err = {k: float((grads[k] - grads["full"]).norm() / grads["full"].norm())
           for k in ("exact", "naive")}

    def timed(fn):
        def run():
            fn()
            model.zero_grad(set_to_none=True)
        return run

    t = interleaved({"full": timed(full), "exact": timed(exact), "naive": timed(naive)},
                    repeats=args.reps, warmup=1)
    chunks = ROWS // CHUNK
    mem = {k: peak[k] / peak["full"] for k in ("exact", "naive")}
    time_ratio = {k: t[k]["min_s"] / t["full"]["min_s"] for k in ("exact", "naive")}
    print(f"SimCSE, Encoder d=128 × 2 layers, {ROWS} rows × {SEQ} tokens, chunks of {CHUNK} "
          f"({chunks} chunks); threads {torch.get_num_threads()}; load {os.getloadavg()}")
    print(f"{'':22} {'peak MB':>8} {'vs full':>8} {'step ms':>8} {'vs full':>8} {'grad err':>9}")
    for k, label in (("full", "full batch"), ("exact", "ContrastiveAccumulator"),
                     ("naive", "plain accumulation")):
        r_mem = peak[k] / peak["full"]
        r_t = t[k]["min_s"] / t["full"]["min_s"]
        e = err.get(k, 0.0)
        print(f"{label:22} {peak[k] / 2**20:8.2f} {r_mem:8.3f} {1e3 * t[k]['min_s']:8.1f} "
              f"{r_t:8.2f} {e:9.2e}")
    print(f"targets: memory ≤ 1/{chunks} + small constant ({1 / chunks:.3f} + …), time ≤ 1.5×")
    path = write("bench_contrastive", {
        "threads": torch.get_num_threads(), "repeats": args.reps,
        "rows": ROWS, "seq": SEQ, "chunk_size": CHUNK, "chunks": acc.last_chunks,
        "peak_saved_bytes": peak, "memory_ratio": mem, "times": t, "time_ratio": time_ratio,
        "relative_grad_error": err, "targets": {"memory_ratio": f"<= 1/{chunks} + small",
                                                "time_ratio": 1.5},
        "loadavg_at_end": os.getloadavg()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
