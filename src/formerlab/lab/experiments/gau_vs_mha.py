"""GAU vs MHA + FFN at equal parameters: quality per step, speed and memory.

GAU-α (kexue.fm/archives/9052; FLASH, arXiv 2202.10447, kexue.fm/archives/8934) replaces each
"Attention + FFN" pair by two Gated Attention Units and reports a model that is *faster and
leaner* than BERT/RoFormer, and beyond length 512 faster and lighter than RoFormerV2, at similar
quality. Here a byte-level causal LM with ``L`` Pre-Norm MHA+SwiGLU blocks is compared with a GAU
LM with ``2L`` units whose expansion ``e`` is chosen so both have the same number of non-embedding
parameters (``2·(3ed + sd) ≈ 4d² + 3d·f``). Both are trained with the same data, optimiser and
seed; then forward+backward time and activation memory (bytes saved for backward, counted with
``torch.autograd.graph.saved_tensors_hooks``) are measured at several lengths.

Training uses :class:`~formerlab.train.Trainer`, which records the loss of every step.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from typing import Any

import torch
from torch import Tensor, nn

from ...config import Config, TrainConfig
from ...data.batching import window_batch
from ...data.corpora import load_corpus
from ...models.config import ModelConfig
from ...models.lm import CausalLM
from ...models.presets import gau_alpha
from ...nn.recompute import saved_activation_bytes
from ...train.trainer import Trainer
from ..base import ExperimentReport, Figure, RunContext, register_experiment
from ..report import markdown_table, save_line_plot

__all__ = ["GAUvsMHAConfig", "equal_param_expansion"]


# --- shared helpers -----------------------------------------------------------------------------
def smooth(xs: list[float], k: int) -> list[float]:
    out, acc = [], 0.0
    for i, x in enumerate(xs):
        acc += x
        if i >= k:
            acc -= xs[i - k]
        out.append(acc / min(i + 1, k))
    return out


def equal_param_expansion(hidden: int, key_size: int, mha_block_params: int) -> int:
    """``e`` such that two GAUs ``2·(3ed + sd + 2s)`` match ``mha_block_params`` (rounded to 8)."""
    e = (mha_block_params / 2 - key_size * hidden - 2 * key_size) / (3 * hidden)
    return max(8, round(e / 8) * 8)


# --- configuration --------------------------------------------------------------------------
@dataclasses.dataclass
class GAUvsMHAConfig(Config):
    """Settings: ``mha`` (the ``L``-block baseline; GAU gets ``2L`` units), key size, training,
    evaluation and the speed-test lengths."""

    mha: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    key_size: int = 32
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval_batches: int = 4
    speed_lengths: list[int] = dataclasses.field(default_factory=lambda: [128, 512])
    speed_batch: int = 4
    speed_repeats: int = 3


def preset_config(preset: str) -> GAUvsMHAConfig:
    if preset == "micro":
        return GAUvsMHAConfig(
            mha=ModelConfig(hidden_size=32, num_layers=1, num_heads=2),
            key_size=16,
            train=TrainConfig(steps=12, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2,
                              log_every=4),
            eval_batches=1, speed_lengths=[32, 64], speed_batch=2, speed_repeats=1)
    if preset == "quick":
        return GAUvsMHAConfig(
            mha=ModelConfig(hidden_size=128, num_layers=2, num_heads=4),
            key_size=32,
            train=TrainConfig(steps=300, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=30,
                              log_every=50),
            eval_batches=8, speed_lengths=[128, 512, 1024], speed_batch=2, speed_repeats=3)
    if preset == "full":
        return GAUvsMHAConfig(
            mha=ModelConfig(hidden_size=256, num_layers=4, num_heads=8),
            key_size=64,
            train=TrainConfig(steps=3000, batch_size=32, seq_len=256, lr=2e-3, warmup_steps=100,
                              log_every=100),
            eval_batches=32, speed_lengths=[256, 512, 1024, 2048], speed_batch=8, speed_repeats=5)
    raise ValueError(f"unknown preset {preset!r}; valid presets: micro, quick, full")


def build_models(cfg: GAUvsMHAConfig) -> dict[str, nn.Module]:
    """The MHA baseline and the parameter-matched GAU model (Pre-Norm, same width, tied head)."""
    m = cfg.mha
    torch.manual_seed(0)
    mha = CausalLM(m)
    block = sum(p.numel() for p in mha.layers[0].parameters()
                if p.dim() > 1)  # matrices only; norms are tiny
    e = equal_param_expansion(m.hidden_size, cfg.key_size, block)
    gcfg = gau_alpha(vocab_size=m.vocab_size, hidden_size=m.hidden_size,
                     num_layers=2 * m.num_layers, expansion=e, key_size=cfg.key_size,
                     normalization="softmax_plus", norm_position="pre", norm_affine=True,
                     embed_norm=False, norm_eps=1e-6, dropout=0.0, attention_dropout=0.0,
                     type_vocab_size=0, max_position_embeddings=m.max_position_embeddings)
    torch.manual_seed(0)
    return {"MHA+FFN": mha, "GAU (softmax_plus)": CausalLM(gcfg)}


def _speed(model: nn.Module, n: int, batch: int, repeats: int, vocab: int,
           device: torch.device) -> tuple[float, int]:
    ids = torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(n)).to(device)
    model.train()
    model(ids, labels=ids).loss.backward()  # warm-up
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        t0 = time.perf_counter()
        model(ids, labels=ids).loss.backward()
        times.append(time.perf_counter() - t0)
    model.zero_grad(set_to_none=True)
    mem = saved_activation_bytes(lambda: model(ids, labels=ids).loss)
    model.zero_grad(set_to_none=True)
    model.eval()
    return min(times), mem


@register_experiment(
    "gau-vs-mha",
    post="https://kexue.fm/archives/9052 (also 8934)",
    title="GAU vs MHA+FFN at equal parameters: quality per step, speed, memory",
)
def run(ctx: RunContext, config: GAUvsMHAConfig | None = None) -> ExperimentReport:
    cfg = config or preset_config(ctx.preset)
    t0 = time.perf_counter()
    corpus = load_corpus(ctx.corpus)
    train_tokens, valid_tokens = corpus.tokens("train"), corpus.tokens("valid")
    tc = cfg.train.replace(seed=ctx.seed)
    L = tc.seq_len

    def batch_fn(step: int, rows: slice) -> tuple[Tensor, None]:
        return window_batch(train_tokens, tc.batch_size, L, seed=tc.seed, step=step,
                            rows=rows), None

    def log(msg: str) -> None:
        if ctx.progress:
            print(f"[gau-vs-mha] {msg}", flush=True)

    models = build_models(cfg)
    rows: list[dict[str, Any]] = []
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        non_emb = params - model.embed_tokens.weight.numel()
        log(f"training {name} ({non_emb:,} non-embedding parameters)")
        summary = Trainer(model, model.config, tc, batch_fn, device=ctx.device,
                          progress=ctx.progress).train()
        losses, secs = summary.losses, summary.seconds
        model.eval()
        curves[name] = (list(range(1, len(losses) + 1)), smooth(losses, max(1, tc.log_every // 2)))
        with torch.no_grad():
            vl = [float(model(ids.to(ctx.device), labels=ids.to(ctx.device)).loss)
                  for ids in (window_batch(valid_tokens, tc.batch_size, L, seed=1234, step=s)
                              for s in range(cfg.eval_batches))]
        row: dict[str, Any] = {
            "model": name, "parameters": params, "non_embedding_parameters": non_emb,
            "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
            "valid_loss": sum(vl) / len(vl), "train_seconds": round(secs, 1),
        }
        for n in cfg.speed_lengths:
            s, mem = _speed(model, n, cfg.speed_batch, cfg.speed_repeats, cfg.mha.vocab_size,
                            ctx.device)
            row[f"fwd_bwd_ms@{n}"] = 1000 * s
            row[f"activation_MB@{n}"] = mem / 2 ** 20
        rows.append(row)

    header = ["model", "non-emb. params", "train loss", "valid loss"]
    header += [f"ms fwd+bwd @{n}" for n in cfg.speed_lengths]
    header += [f"act. MB @{n}" for n in cfg.speed_lengths]
    body = [[r["model"], f"{r['non_embedding_parameters']:,}", r["final_train_loss"],
             r["valid_loss"], *[r[f"fwd_bwd_ms@{n}"] for n in cfg.speed_lengths],
             *[r[f"activation_MB@{n}"] for n in cfg.speed_lengths]] for r in rows]
    table = (f"Byte-level LMs trained {tc.steps} steps at length {L} (batch {tc.batch_size}); "
             f"speed: batch {cfg.speed_batch}, best of {cfg.speed_repeats}, device {ctx.device}.\n\n"
             + markdown_table(header, body))
    fig = save_line_plot(ctx.out_dir / "loss_per_step.png", curves,
                         title="Training loss per step (smoothed)", xlabel="step",
                         ylabel="loss (nats/byte)")
    series = {}
    for r in rows:
        series[r["model"]] = (cfg.speed_lengths, [r[f"fwd_bwd_ms@{n}"] for n in cfg.speed_lengths])
    fig2 = save_line_plot(ctx.out_dir / "speed.png", series, title="Forward+backward time",
                          xlabel="sequence length", ylabel="ms per step", logx=True)
    mha, gau = rows
    ratio_t = {n: gau[f"fwd_bwd_ms@{n}"] / mha[f"fwd_bwd_ms@{n}"] for n in cfg.speed_lengths}
    ratio_m = {n: gau[f"activation_MB@{n}"] / mha[f"activation_MB@{n}"] for n in cfg.speed_lengths}
    longest = max(cfg.speed_lengths)
    notes = "\n".join([
        "## Findings",
        "",
        f"- Quality: valid loss GAU {gau['valid_loss']:.3f} vs MHA+FFN {mha['valid_loss']:.3f} "
        f"nats/byte after {tc.steps} steps ({'GAU better' if gau['valid_loss'] < mha['valid_loss'] else 'MHA better'}).",
        "- Time ratio GAU/MHA (fwd+bwd): " + ", ".join(f"{n}: {v:.2f}×" for n, v in ratio_t.items()),
        "- Activation-memory ratio GAU/MHA: " + ", ".join(f"{n}: {v:.2f}×" for n, v in ratio_m.items()),
        f"- The blog's claim (GAU-α faster and leaner than RoFormerV2, especially beyond 512) was "
        f"measured at base size on accelerators. Here, at the longest length {longest}: GAU is "
        f"{'faster' if ratio_t[longest] < 1 else 'slower'} and "
        f"{'leaner' if ratio_m[longest] < 1 else 'heavier'} in activations than MHA+FFN; the "
        "2× layer count adds per-layer overhead, the single attention head (one score matrix "
        "instead of one per head) saves attention work as n grows.",
        "- Both models call PyTorch's SDPA (the GAU folds softmax_plus's per-row factor "
        "log_512(l_i) into the queries). On CPU, SDPA keeps its fused kernel for MHA but falls "
        "back to the math kernel for the GAU because the value width e differs from the key "
        "width s, so the GAU's n×n matrix is materialised and saved: that, not the GAU design, "
        "is most of the GAU's activation-memory excess here. Timings are wall-clock on a shared "
        "CPU: repeat on an idle machine before trusting ratios near 1.",
        "- Activation memory is the byte count of tensors saved for backward (deterministic), "
        "not the allocator peak.",
    ])
    meta = {"preset": ctx.preset, "seed": ctx.seed, "config": cfg.to_dict(),
            "gau_config": models["GAU (softmax_plus)"].config.to_dict(),
            "corpus": corpus.describe(), "torch": torch.__version__,
            "python": platform.python_version(), "seconds": round(time.perf_counter() - t0, 1)}
    return ExperimentReport(
        title=f"GAU vs MHA+FFN at equal parameters ({ctx.preset} preset)", rows=rows,
        table_md=table,
        figures=[Figure(fig, "Training loss per step (moving average)."),
                 Figure(fig2, "Forward+backward time per step vs length.")],
        notes=notes, meta=meta)
