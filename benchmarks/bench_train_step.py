"""Tokens/s of one training step (forward + backward + AdamW) of our decoder vs an
x-transformers ``Decoder`` of the same size, same batch, measured in the same run.

Both models: pre-norm RMSNorm, RoPE, SwiGLU FFN with inner size 4·d, tied embeddings, no
biases, SDPA attention. Run: ``python benchmarks/bench_train_step.py`` (writes
``benchmarks/results/train_step.json``). Target: ratio (ours / x-transformers) ≥ 1.0.
"""

from __future__ import annotations

import argparse

import torch

from _common import interleaved, write  # type: ignore[import-not-found]
from formerlab import ModelConfig
from formerlab.models import CausalLM


def build_ours(dim: int, depth: int, heads: int, vocab: int) -> torch.nn.Module:
    cfg = ModelConfig(vocab_size=vocab, hidden_size=dim, num_layers=depth, num_heads=heads,
                      intermediate_size=4 * dim, ffn="swiglu", norm="rmsnorm")
    return CausalLM(cfg)


def build_xt(dim: int, depth: int, heads: int, vocab: int, seq: int) -> torch.nn.Module:
    from x_transformers import Decoder, TransformerWrapper

    return TransformerWrapper(
        num_tokens=vocab, max_seq_len=seq, use_abs_pos_emb=False, tie_embedding=True,
        attn_layers=Decoder(dim=dim, depth=depth, heads=heads, rotary_pos_emb=True,
                            use_rmsnorm=True, ff_glu=True, ff_swish=True, ff_no_bias=True,
                            attn_flash=True),
    )


def params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    vocab = 256
    torch.manual_seed(0)
    ours, xt = build_ours(args.dim, args.depth, args.heads, vocab), build_xt(
        args.dim, args.depth, args.heads, vocab, args.seq)
    ids = torch.randint(0, vocab, (args.batch, args.seq))
    opt_o = torch.optim.AdamW(ours.parameters(), lr=1e-4)
    opt_x = torch.optim.AdamW(xt.parameters(), lr=1e-4)

    def step_ours() -> None:
        loss = ours(ids, labels=ids).loss
        loss.backward()
        opt_o.step()
        opt_o.zero_grad(set_to_none=True)

    def step_xt() -> None:
        logits = xt(ids[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, vocab), ids[:, 1:].reshape(-1))
        loss.backward()
        opt_x.step()
        opt_x.zero_grad(set_to_none=True)

    res = interleaved({"formerlab": step_ours, "x_transformers": step_xt}, repeats=args.repeats)
    tokens = args.batch * args.seq
    for v in res.values():
        v["tokens_per_s"] = tokens / v["median_s"]
    ratio = res["formerlab"]["tokens_per_s"] / res["x_transformers"]["tokens_per_s"]
    payload = {
        "shape": vars(args),
        "parameters": {"formerlab": params(ours), "x_transformers": params(xt)},
        "results": res,
        "ratio_tokens_per_s_ours_over_x_transformers": ratio,
        "target": ">= 1.0",
    }
    path = write("train_step", payload)
    print(f"params: ours {params(ours):,}  x-transformers {params(xt):,}")
    for k, v in res.items():
        print(f"{k:<16} {v['tokens_per_s']:>10,.0f} tokens/s  (median {v['median_s'] * 1e3:.1f} ms)")
    print(f"ratio ours / x-transformers: {ratio:.3f}  -> {path}")


if __name__ == "__main__":
    main()
