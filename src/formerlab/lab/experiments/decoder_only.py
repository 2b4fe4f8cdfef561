"""GPT vs UniLM masks on a small input → output task (kexue.fm/archives/9529, 9547).

Su's controlled comparison: the same decoder, the same data, the loss on the output tokens only;
the **only** difference is the attention mask — causal everywhere (GPT) or bidirectional over the
input and causal over the output (UniLM / prefix LM, from segment ids,
:func:`formerlab.attention.masks.build_mask`). At ≈1B parameters he found that UniLM showed no
advantage and was sometimes worse, and conjectured a low-rank effect of bidirectional attention.
Here: tiny byte-vocabulary decoders on synthetic seq2seq tasks (``reverse``: output the input
backwards; ``sort``: output the input sorted), loss and teacher-forced accuracy on the outputs,
several seeds.
"""

from __future__ import annotations

import dataclasses
import platform
import time
from typing import Any

import torch
from torch import Tensor

from ...attention.masks import build_mask
from ...config import Config, TrainConfig
from ...data.batching import step_generator
from ...models.config import ModelConfig
from ...models.lm import CausalLM
from ...train.trainer import Trainer
from ..base import ExperimentReport, Figure, RunContext, register_experiment
from ..report import markdown_table, save_line_plot
from .gau_vs_mha import smooth

__all__ = ["DecoderOnlyConfig", "seq2seq_batch"]

SEP, IGNORE, FIRST = 1, -100, 2
TASKS = ("reverse", "sort")


def seq2seq_batch(task: str, batch: int, length: int, vocab: int, *, seed: int, step: int
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """``[x, SEP, y]`` with ``y = f(x)``; labels on ``y`` only; segment ids 0 (x, SEP) / 1 (y)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {list(TASKS)}, got {task!r}")
    g = step_generator(seed, step, stream=11)
    x = torch.randint(FIRST, vocab, (batch, length), generator=g)
    y = x.flip(-1) if task == "reverse" else x.sort(-1).values
    ids = torch.cat([x, torch.full((batch, 1), SEP), y], 1)
    labels = torch.full_like(ids, IGNORE)
    labels[:, length + 1:] = y
    seg = torch.cat([torch.zeros(batch, length + 1, dtype=torch.long),
                     torch.ones(batch, length, dtype=torch.long)], 1)
    return ids, labels, seg


@dataclasses.dataclass
class DecoderOnlyConfig(Config):
    """Tasks, sequence length, vocabulary, seeds, model and training settings."""

    tasks: list[str] = dataclasses.field(default_factory=lambda: list(TASKS))
    length: int = 12
    vocab: int = 32
    seeds: list[int] = dataclasses.field(default_factory=lambda: [0, 1])
    eval_batches: int = 4
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def preset_config(preset: str) -> DecoderOnlyConfig:
    if preset == "micro":
        return DecoderOnlyConfig(
            tasks=["reverse"], length=5, vocab=12, seeds=[0], eval_batches=1,
            model=ModelConfig(vocab_size=12, hidden_size=32, num_layers=2, num_heads=2),
            train=TrainConfig(steps=10, batch_size=8, seq_len=11, lr=3e-3, warmup_steps=2,
                              log_every=5))
    if preset == "quick":
        return DecoderOnlyConfig(
            tasks=["reverse", "sort"], length=12, vocab=32, seeds=[0, 1, 2], eval_batches=4,
            model=ModelConfig(vocab_size=32, hidden_size=64, num_layers=2, num_heads=4),
            train=TrainConfig(steps=400, batch_size=32, seq_len=25, lr=3e-3, warmup_steps=25,
                              log_every=50))
    if preset == "full":
        return DecoderOnlyConfig(
            tasks=["reverse", "sort"], length=24, vocab=64, seeds=[0, 1, 2, 3], eval_batches=16,
            model=ModelConfig(vocab_size=64, hidden_size=128, num_layers=4, num_heads=4),
            train=TrainConfig(steps=2000, batch_size=64, seq_len=49, lr=2e-3, warmup_steps=100,
                              log_every=100))
    raise ValueError(f"unknown preset {preset!r}; valid presets: micro, quick, full")


def _mask(kind: str, seg: Tensor) -> Tensor | None:
    if kind == "gpt":
        return None
    return build_mask("unilm", seg.shape[1], segment_ids=seg)


@torch.no_grad()
def _evaluate(model: CausalLM, cfg: DecoderOnlyConfig, task: str, kind: str,
              device: torch.device) -> tuple[float, float, float]:
    losses, correct, exact, total = [], 0, 0, 0
    for s in range(cfg.eval_batches):
        ids, labels, seg = seq2seq_batch(task, 64, cfg.length, cfg.vocab, seed=999, step=s)
        ids, labels = ids.to(device), labels.to(device)
        mask = _mask(kind, seg)
        out = model(ids, attention_mask=None if mask is None else mask.to(device), labels=labels)
        losses.append(float(out.loss))
        pred = out.logits[:, :-1].argmax(-1)
        tgt = labels[:, 1:]
        valid = tgt != IGNORE
        hit = (pred == tgt) & valid
        correct += int(hit.sum())
        total += int(valid.sum())
        exact += int((hit.sum(-1) == valid.sum(-1)).sum())
    return sum(losses) / len(losses), correct / total, exact / (64 * cfg.eval_batches)


@register_experiment(
    "decoder-only",
    post="https://kexue.fm/archives/9529 (also 9547)",
    title="GPT (causal) vs UniLM (prefix) masks on input→output tasks, loss on outputs only",
)
def run(ctx: RunContext, config: DecoderOnlyConfig | None = None) -> ExperimentReport:
    cfg = config or preset_config(ctx.preset)
    t0 = time.perf_counter()
    n = 2 * cfg.length + 1
    mc = cfg.model.replace(vocab_size=cfg.vocab, max_position_embeddings=max(n, 16))
    rows: list[dict[str, Any]] = []
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for task in cfg.tasks:
        for kind in ("gpt", "unilm"):
            for seed in cfg.seeds:
                tc = cfg.train.replace(seed=seed, seq_len=n)

                def batch(step: int, rows: slice, task=task, tc=tc, kind=kind):
                    ids, labels, seg = seq2seq_batch(task, tc.batch_size, cfg.length, cfg.vocab,
                                                     seed=tc.seed, step=step)
                    ids, labels, seg = ids[rows], labels[rows], seg[rows]
                    return {"input_ids": ids, "labels": labels,
                            "attention_mask": _mask(kind, seg)}

                torch.manual_seed(seed)
                model = CausalLM(mc)
                summary = Trainer(model, mc, tc, batch, device=ctx.device, progress=False).train()
                losses, secs = summary.losses, summary.seconds
                model.eval()
                loss, acc, exact = _evaluate(model, cfg, task, kind, ctx.device)
                rows.append({"task": task, "mask": kind, "seed": seed, "eval_loss": loss,
                             "token_accuracy": acc, "exact_match": exact,
                             "final_train_loss": sum(losses[-10:]) / len(losses[-10:]),
                             "train_seconds": round(secs, 1)})
                if seed == cfg.seeds[0]:
                    curves[f"{task}/{kind}"] = (list(range(1, len(losses) + 1)),
                                                smooth(losses, max(1, tc.log_every // 5)))
                if ctx.progress:
                    print(f"[decoder-only] {task} {kind} seed {seed}: loss {loss:.3f} "
                          f"acc {acc:.3f}", flush=True)

    def mean(task: str, kind: str, key: str) -> float:
        vals = [r[key] for r in rows if r["task"] == task and r["mask"] == kind]
        return sum(vals) / len(vals)

    body = [[task, kind.upper() if kind == "gpt" else "UniLM", mean(task, kind, "eval_loss"),
             100 * mean(task, kind, "token_accuracy"), 100 * mean(task, kind, "exact_match")]
            for task in cfg.tasks for kind in ("gpt", "unilm")]
    table = (f"Output-only loss and teacher-forced accuracy (%), mean over seeds {cfg.seeds}; "
             f"input length {cfg.length}, vocabulary {cfg.vocab}, {cfg.train.steps} steps.\n\n"
             + markdown_table(["task", "mask", "eval loss", "token acc. (%)", "exact match (%)"],
                              body))
    fig = save_line_plot(ctx.out_dir / "loss_curves.png", curves,
                         title="Training loss on the outputs (first seed)", xlabel="step",
                         ylabel="loss (nats/token)")
    verdict = []
    for task in cfg.tasks:
        g, u = mean(task, "gpt", "eval_loss"), mean(task, "unilm", "eval_loss")
        verdict.append(f"- {task}: UniLM eval loss {u:.3f} vs GPT {g:.3f} "
                       f"({'UniLM better' if u < g else 'GPT better or equal'}).")
    notes = "\n".join([
        "## Findings", "", *verdict, "",
        "- Su's ≈1B-parameter result: UniLM (bidirectional input) showed **no advantage** over "
        "GPT and was sometimes worse. At this toy scale the bidirectional prefix can help tasks "
        "whose first output depends on the *end* of the input (reverse), because a causal model "
        "must route that information through the SEP position; the comparison is about tiny "
        "models and synthetic data and does not test the low-rank conjecture at scale.",
        "- With a single layer the two masks give *identical* output losses: a target row sees "
        "the same keys under both masks and those keys come straight from the embeddings; the "
        "masks differ only through the source representations of deeper layers.",
        "- Masks come from `build_mask(\"unilm\", n, segment_ids=...)`; everything else "
        "(model, data, seeds, optimiser) is identical between the two rows of a task.",
    ])
    meta = {"preset": ctx.preset, "config": cfg.to_dict(), "torch": torch.__version__,
            "python": platform.python_version(), "seconds": round(time.perf_counter() - t0, 1)}
    return ExperimentReport(title=f"Decoder-only: GPT vs UniLM masks ({ctx.preset} preset)",
                            rows=rows, table_md=table, figures=[Figure(fig, "Loss curves.")],
                            notes=notes, meta=meta)
