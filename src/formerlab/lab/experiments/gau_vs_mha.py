"""GAU-α vs MHA + FFN at equal parameters: quality, time and activation memory per step.

GAU-α (kexue.fm/archives/9052; FLASH, arXiv 2202.10447, kexue.fm/archives/8934) replaces each
"Attention + FFN" pair by two Gated Attention Units and reports a model that matches or beats
RoFormerV2 in quality while being faster and leaner, especially beyond length 512. Here a
byte-level causal LM with ``L`` Pre-Norm MHA + SwiGLU blocks is compared with a GAU-α LM
(:func:`~formerlab.models.presets.gau_alpha`, ``softmax_plus``, attention through the fused kernel
with ``split_values``) with ``2L`` units whose expansion
``e`` makes both stacks the same size (``2·(3ed + sd + 2s) ≈ 4d² + 3d·f``). Both see the same
data stream; then the time of a training step (forward + backward, interleaved between the two
models, best of ``speed_repeats``; the ratios use process CPU time on CPU, wall time on GPUs) and
activation memory (bytes saved for backward, counted with
``torch.autograd.graph.saved_tensors_hooks``: deterministic, not the allocator peak) are measured
at each of ``speed_lengths``.

Rows (one seed): one ``quality`` row per model (``valid_loss``, parameters) and one ``speed`` row
per model and length (``fwd_bwd_ms`` wall, ``fwd_bwd_cpu_ms``, ``activation_MB`` and the ratios
to MHA + FFN of the same seed, ``time_vs_mha`` and ``memory_vs_mha``: 1 for MHA itself).
"""

from __future__ import annotations

import dataclasses
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
from ..base import Experiment, RunContext, register_experiment
from ..claims import NOT_TESTED, AllOf, Claim, Ordering, Results, Verdict
from ..figures import LinePlot, series_over
from ..report import markdown_table
from ._shared import RowMarginOrdering, curve_series, loss_curve

__all__ = ["GAUvsMHA", "GAUvsMHAConfig", "build_models", "equal_param_expansion"]

POST = "https://kexue.fm/archives/9052"
MODELS = {"mha": "MHA+FFN", "gau": "GAU-α (softmax_plus)"}
#: what ``time_vs_mha`` compares: process CPU time on CPU (other jobs on a shared machine do not
#: inflate it; it equals wall time for one thread on a quiet machine), synchronised wall time else
TIMERS = {"cpu": "process CPU time", "wall": "wall-clock time"}

#: smallest valid-loss difference (nats/byte) that counts at the quick preset: over three quick
#: seeds the valid loss spreads by 0.026 (GAU) and 0.040 (MHA), the paired difference by 0.025
QUICK_QUALITY_MARGIN = 0.03
#: smallest time-ratio difference that counts: a stated minimal effect of 10% (the wall-time
#: ratio spread by 0.07–0.14 over three quick seeds on a loaded 2-core CPU)
TIME_MARGIN = 0.10
#: smallest activation-memory ratio difference that counts (saved bytes are deterministic: a
#: stated minimal effect of 5%)
MEMORY_MARGIN = 0.05


def equal_param_expansion(hidden: int, key_size: int, mha_block_params: int) -> int:
    """``e`` such that two GAUs ``2·(3ed + sd + 2s)`` match ``mha_block_params`` (rounded to 8)."""
    e = (mha_block_params / 2 - key_size * hidden - 2 * key_size) / (3 * hidden)
    return max(8, round(e / 8) * 8)


# --- configuration ----------------------------------------------------------------------------
@dataclasses.dataclass
class GAUvsMHAConfig(Config):
    """``mha``: the ``L``-block baseline (the GAU model gets ``2L`` units of the same width);
    ``key_size``: the GAU's ``s``; training; validation batches; the speed-test lengths, batch
    and repeats; ``quality_margin``: the smallest validation-loss difference (nats/byte) that
    counts for this preset (about its measured seed-to-seed spread); ``split_values``: GAU's
    attention through the fused SDPA kernel, its ``e``-wide values served as key-width heads
    (exactly the same output; PyTorch's CPU flash kernel otherwise falls back to the math
    kernel for GAU, so this is the equal-terms comparison with MHA's fused kernel)."""

    mha: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    key_size: int = 32
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    eval_batches: int = 4
    speed_lengths: list[int] = dataclasses.field(default_factory=lambda: [128, 512])
    speed_batch: int = 4
    speed_repeats: int = 3
    quality_margin: float = QUICK_QUALITY_MARGIN
    split_values: bool = True

    def validate(self) -> None:
        for name in ("key_size", "eval_batches", "speed_batch", "speed_repeats"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not self.quality_margin >= 0:
            raise ValueError(f"quality_margin must be >= 0, got {self.quality_margin}")
        if not self.speed_lengths or any(n < 2 for n in self.speed_lengths):
            raise ValueError(f"speed_lengths must be lengths >= 2, got {self.speed_lengths}")


def _micro() -> GAUvsMHAConfig:
    return GAUvsMHAConfig(
        mha=ModelConfig(hidden_size=32, num_layers=1, num_heads=2), key_size=16,
        train=TrainConfig(steps=12, batch_size=4, seq_len=32, lr=3e-3, warmup_steps=2,
                          log_every=4),
        eval_batches=1, speed_lengths=[32, 64], speed_batch=2, speed_repeats=10,
        # 3 micro seeds: std of the paired GAU − MHA valid-loss difference 0.15 (12 steps)
        quality_margin=0.15)


def _quick() -> GAUvsMHAConfig:
    return GAUvsMHAConfig(
        mha=ModelConfig(hidden_size=128, num_layers=2, num_heads=4), key_size=32,
        train=TrainConfig(steps=300, batch_size=16, seq_len=128, lr=3e-3, warmup_steps=30,
                          log_every=50),
        eval_batches=8, speed_lengths=[128, 512, 1024], speed_batch=2, speed_repeats=3,
        quality_margin=QUICK_QUALITY_MARGIN)


def _full() -> GAUvsMHAConfig:
    return GAUvsMHAConfig(
        mha=ModelConfig(hidden_size=256, num_layers=4, num_heads=8), key_size=64,
        train=TrainConfig(steps=3000, batch_size=32, seq_len=256, lr=2e-3, warmup_steps=100,
                          log_every=100),
        eval_batches=32, speed_lengths=[256, 512, 1024, 2048], speed_batch=8, speed_repeats=5,
        quality_margin=QUICK_QUALITY_MARGIN)  # not measured at this size: the quick preset's


def build_models(cfg: GAUvsMHAConfig, generator: torch.Generator | None = None
                 ) -> dict[str, CausalLM]:
    """``{"mha": …, "gau": …}``: the MHA baseline and the parameter-matched GAU-α model
    (Pre-Norm with a learned gain, no dropout, tied head), initialised from ``generator``."""
    m = cfg.mha
    mha = CausalLM(m)
    block = sum(p.numel() for p in mha.layers[0].parameters() if p.dim() > 1)  # norms are tiny
    e = equal_param_expansion(m.hidden_size, cfg.key_size, block)
    gau = CausalLM(gau_alpha(
        vocab_size=m.vocab_size, hidden_size=m.hidden_size, num_layers=2 * m.num_layers,
        expansion=e, key_size=cfg.key_size, normalization="softmax_plus", norm_position="pre",
        norm_affine=True, embed_norm=False, norm_eps=1e-6, dropout=0.0, attention_dropout=0.0,
        type_vocab_size=0, max_position_embeddings=m.max_position_embeddings,
        split_values=cfg.split_values))
    for model in (mha, gau):
        model.reset_parameters(generator)
    return {"mha": mha, "gau": gau}


def _step(model: nn.Module, ids: Tensor) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one forward + backward pass."""
    model.zero_grad(set_to_none=True)
    t0, c0 = time.perf_counter(), time.process_time()
    model(ids, labels=ids).loss.backward()
    if ids.is_cuda:
        torch.cuda.synchronize(ids.device)
    return time.perf_counter() - t0, time.process_time() - c0


def _speed(models: dict[str, nn.Module], n: int, batch: int, repeats: int, vocab: int,
           device: torch.device) -> dict[str, dict[str, float]]:
    """Per model at length ``n``: the best-of-``repeats`` wall and process-CPU seconds of a
    training step (the models interleaved, so machine load hits both alike) and the bytes saved
    for backward."""
    ids = torch.randint(0, vocab, (batch, n), generator=torch.Generator().manual_seed(n))
    ids = ids.to(device)
    for model in models.values():
        model.train()
        _step(model, ids)  # warm-up
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
    for _ in range(repeats):
        for k, model in models.items():
            times[k].append(_step(model, ids))
    out = {}
    for k, model in models.items():
        model.zero_grad(set_to_none=True)
        mem = saved_activation_bytes(lambda model=model: model(ids, labels=ids).loss)
        model.zero_grad(set_to_none=True)
        model.eval()
        out[k] = {"wall": min(w for w, _ in times[k]), "cpu": min(c for _, c in times[k]),
                  "bytes": mem}
    return out


class _AtEveryLength:
    """GAU beats MHA on ``metric`` at every measured length (an :class:`AllOf` of orderings)."""

    def __init__(self, metric: str, margin: float, what: str) -> None:
        self.metric, self.margin, self.what = metric, margin, what

    def __call__(self, results: Results) -> Verdict:
        lengths = sorted(results.distinct("length", model="gau"))
        if not lengths:
            return Verdict(NOT_TESTED, f"{self.what} was not measured")
        return AllOf([Ordering(self.metric, {"model": "gau", "length": n},
                               {"model": "mha", "length": n}, higher_is_better=False,
                               margin=self.margin, labels=(f"GAU/MHA {self.what} @{n}",
                                                           f"MHA @{n}"))
                      for n in lengths])(results)


@register_experiment
class GAUvsMHA(Experiment):
    """Train both models on the same stream, then time and weigh a training step."""

    name = "gau-vs-mha"
    title = "GAU-α vs MHA+FFN at equal parameters: quality, time and activation memory"
    post = POST + " (also https://kexue.fm/archives/8934)"
    config = GAUvsMHAConfig
    presets = {"micro": _micro, "quick": _quick, "full": _full}
    claims = [
        Claim("gau-quality", "At equal parameters, two GAU-α layers in place of each "
              "Attention + FFN pair train at least as well (lower validation loss).", POST,
              RowMarginOrdering(Ordering("valid_loss", {"model": "gau", "kind": "quality"},
                                         {"model": "mha", "kind": "quality"},
                                         higher_is_better=False, margin=QUICK_QUALITY_MARGIN,
                                         labels=("GAU-α valid loss", "MHA+FFN")))),
        Claim("gau-faster", "GAU-α is faster than the Attention + FFN model (time of a "
              "training step, at every measured length).", POST,
              _AtEveryLength("time_vs_mha", TIME_MARGIN, "time")),
        Claim("gau-leaner", "GAU-α is leaner than the Attention + FFN model (activation memory "
              "of a training step, at every measured length).", POST,
              _AtEveryLength("memory_vs_mha", MEMORY_MARGIN, "memory")),
    ]

    def run(self, config: GAUvsMHAConfig, ctx: RunContext) -> tuple[list[dict], dict]:
        corpus = load_corpus(ctx.corpus)
        train_tokens, valid_tokens = corpus.tokens("train"), corpus.tokens("valid")
        tc = config.train.replace(seed=ctx.seed)
        L = tc.seq_len

        def batch_fn(step: int, rows: slice) -> tuple[Tensor, None]:
            return window_batch(train_tokens, tc.batch_size, L, seed=tc.seed, step=step,
                                rows=rows), None

        models = build_models(config, ctx.generator)
        rows: list[dict[str, Any]] = []
        curves = {}
        for key, model in models.items():
            params = sum(p.numel() for p in model.parameters())
            non_emb = params - model.embed_tokens.weight.numel()
            ctx.log(f"training {MODELS[key]} ({non_emb:,} non-embedding parameters)")
            summary = ctx.train(model, model.config, tc, batch_fn)
            model.eval()
            curves[key] = loss_curve(summary.losses, tc.log_every)
            with torch.no_grad():
                vl = [float(model(ids.to(ctx.device), labels=ids.to(ctx.device)).loss)
                      for ids in (window_batch(valid_tokens, tc.batch_size, L, seed=1234, step=s)
                                  for s in range(config.eval_batches))]
            tail = summary.losses[-10:]
            rows.append({"kind": "quality", "model": key, "label": MODELS[key],
                         "layers": model.config.num_layers, "parameters": params,
                         "non_embedding_parameters": non_emb, "valid_loss": sum(vl) / len(vl),
                         "final_train_loss": sum(tail) / len(tail), "steps": tc.steps,
                         "margin": config.quality_margin,
                         "train_seconds": round(summary.seconds, 2)})
        timer = "cpu" if ctx.device.type == "cpu" else "wall"
        for n in config.speed_lengths:
            got = _speed(models, n, config.speed_batch, config.speed_repeats,
                         config.mha.vocab_size, ctx.device)
            base = got["mha"]
            for key, m in got.items():
                rows.append({"kind": "speed", "model": key, "label": MODELS[key], "length": n,
                             "fwd_bwd_ms": 1000 * m["wall"], "fwd_bwd_cpu_ms": 1000 * m["cpu"],
                             "activation_MB": m["bytes"] / 2 ** 20,
                             "time_vs_mha": m[timer] / base[timer],
                             "memory_vs_mha": m["bytes"] / base["bytes"]})
        return rows, {"curves": curves, "device": str(ctx.device), "timer": TIMERS[timer],
                      "gau_config": models["gau"].config.to_dict()}

    def table(self, results: Results) -> str:
        lengths = sorted(results.distinct("length", kind="speed"))
        q = results.select(kind="quality")
        header = ["model", "layers", "non-emb. params", "valid loss", "train loss"]
        metric, timer = self._timer(results)
        unit = "CPU ms" if metric == "fwd_bwd_cpu_ms" else "ms"
        header += [f"{unit} @{n}" for n in lengths] + [f"act. MB @{n}" for n in lengths]
        body = []
        for key, label in MODELS.items():
            first = next((r for r in q if r["model"] == key), None)
            if first is None:
                continue
            body.append([label, first["layers"], f"{first['non_embedding_parameters']:,}",
                         results.fmt("valid_loss", 1, 3, model=key, kind="quality"),
                         results.fmt("final_train_loss", 1, 3, model=key, kind="quality"),
                         *[results.fmt(metric, 1, 1, model=key, length=n) for n in lengths],
                         *[results.fmt("activation_MB", 1, 2, model=key, length=n)
                           for n in lengths]])
        ratios = [["GAU / MHA time", *[results.fmt("time_vs_mha", 1, 2, model="gau", length=n)
                                       for n in lengths]],
                  ["GAU / MHA activation memory",
                   *[results.fmt("memory_vs_mha", 1, 2, model="gau", length=n) for n in lengths]]]
        n_steps = q[0]["steps"] if q else "?"
        return (f"Byte-level LMs trained {n_steps} steps; validation loss in nats/byte; a "
                f"training step (forward + backward) timed ({timer}) and weighed at each length "
                f"(mean ± std over {len(results.seeds)} seed(s)).\n\n" + markdown_table(header, body)
                + "\n\n" + markdown_table(["ratio (same seed)", *[f"@{n}" for n in lengths]],
                                          ratios))

    def figures(self, results: Results) -> list[LinePlot]:
        loss = [s for s in (curve_series(results, k, label) for k, label in MODELS.items()) if s]
        plots = [LinePlot("loss_per_step", "Training loss", "step", "loss (nats/byte)", loss,
                          caption="Training loss (window means; band ±1 std over seeds).")]
        for metric, ylabel, name in ((self._timer(results)[0], "ms per training step", "speed"),
                                     ("activation_MB", "MB saved for backward", "memory")):
            series = [s for s in (series_over(results, metric, "length", label, model=key)
                                  for key, label in MODELS.items()) if s]
            plots.append(LinePlot(name, f"{ylabel} vs length", "sequence length", ylabel,
                                  series, logx=True,
                                  caption=f"{ylabel} at each length (mean over seeds)."))
        return plots

    @staticmethod
    def _timer(results: Results) -> tuple[str, str]:
        """The time column the ratios use and its description."""
        timers = {e.get("timer") for e in results.extras.values()}
        if timers == {TIMERS["cpu"]}:
            return "fwd_bwd_cpu_ms", TIMERS["cpu"]
        return "fwd_bwd_ms", TIMERS["wall"]

    def notes(self, results: Results) -> str:
        devices = sorted({e.get("device", "?") for e in results.extras.values()})
        return "\n".join([
            f"- Device: {', '.join(devices)}; step times are {self._timer(results)[1]} (the two "
            "models interleaved, the best of the repeats kept; on CPU the process CPU time, "
            "which other jobs on a shared machine do not inflate, and the wall time are both in "
            "the rows); activation memory is the byte count of the tensors saved for backward "
            "(deterministic), not the allocator peak.",
            "- Both models call PyTorch's scaled-dot-product attention (the GAU folds "
            "softmax_plus's per-row factor log_512(l_i) into its queries). PyTorch's CPU "
            "kernels are fused only when the value width equals the query width: the MHA heads "
            "qualify, the GAU (value width e, key width s) runs the math kernel, which "
            "materialises and saves its n × n attention matrix. On CPU this, and the doubled "
            "layer count, weigh on the GAU's time and memory.",
            "- The GAU has one attention matrix per layer and 2L layers; MHA has one per head "
            "and L layers.",
        ])
