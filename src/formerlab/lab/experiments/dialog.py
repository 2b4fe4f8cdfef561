"""DialoGPT-style multi-turn training (kexue.fm/archives/7718): which tokens should carry the loss?

Su trains a unidirectional LM on whole dialogues ``[CLS] u_0 [SEP] u_1 [SEP] …`` with the loss on
every utterance: each is the response to the turns before it, and all of a dialogue's responses
train in one pass, where a seq2seq model trains one response per sample. This experiment trains a
tiny byte-level LM (speaker segment embeddings) on synthetic multi-turn dialogues whose user turns
are random and whose bot turns are determined by the history (greetings, echoes, recalling a name
or a liking stated earlier, small sums), once per loss layout:

=============  ==================================================================================
``all``        every utterance (Su's choice)
``responses``  the bot's turns only (labels ``−100`` on the user's turns)
``last``       only the final response (one response per sample, as CDial-GPT)
``unilm``      only the final response, history under a bidirectional prefix mask (the seq2seq
               alternative; report only)
=============  ==================================================================================

Every model sees the same dialogues (fresh ones each step, seeded by step) and is scored on a
held-out set: NLL per byte of every bot turn (``response_nll``, causal models) and of the final
bot turn (``last_nll``, each model with its own mask), and greedy exact match of the final
response (``last_accuracy``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from ...config import Config, TrainConfig
from ...data.batching import step_generator
from ...generate.dialog import ChatBot, DialogueCollator, build_dialogue_lm_example
from ...models.config import ModelConfig
from ...models.lm import CausalLM
from ...tokenize.tokenizer import UnigramTokenizer
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
from ..report import markdown_table

__all__ = ["VARIANTS", "DialogConfig", "DialogExperiment", "byte_tokenizer", "synthetic_dialogue"]

POST = "https://kexue.fm/archives/7718"
VARIANTS = ("all", "responses", "last", "unilm")
LABELS = {"all": "loss on every utterance (Su)", "responses": "loss on the bot's turns only",
          "last": "loss on the final response only", "unilm": "UniLM prefix mask, final response"}
NAMES = ("ann", "bob", "cy", "dee", "eve", "fay", "gus", "hal")
THINGS = ("tea", "jazz", "chess", "rain", "figs", "kites", "maps", "owls")


def byte_tokenizer() -> UnigramTokenizer:
    """Bytes only: ``<pad>`` 0, ``<bos>`` 1 (the start), ``<eos>`` 2 (the separator), byte ``b`` is
    ``3 + b``."""
    return UnigramTokenizer({}, backend="python")


def synthetic_dialogue(generator: torch.Generator, exchanges: int) -> list[str]:
    """A dialogue of ``exchanges`` user/bot pairs; the user's turns are random, the bot's follow
    from the history; the last exchange is always a question about it."""

    def pick(options: tuple[str, ...]) -> str:
        return options[int(torch.randint(len(options), (1,), generator=generator))]

    state: dict[str, str] = {}
    turns: list[str] = []
    for e in range(exchanges):
        kind = int(torch.randint(3 if e == exchanges - 1 else 5, (1,), generator=generator))
        if e == exchanges - 1:
            kind += 2  # a question: who / what / sum
        if kind == 0:
            state["name"] = pick(NAMES)
            turns += [f"i am {state['name']}", f"hi {state['name']}"]
        elif kind == 1:
            state["thing"] = pick(THINGS)
            turns += [f"i like {state['thing']}", f"{state['thing']} is fun"]
        elif kind == 2:
            turns += ["who am i", state.get("name", "no idea")]
        elif kind == 3:
            turns += ["what do i like", state.get("thing", "no idea")]
        else:
            a, b = (int(x) for x in torch.randint(5, (2,), generator=generator))
            turns += [f"{a} plus {b}", str(a + b)]
    return turns


@dataclasses.dataclass
class DialogConfig(Config):
    """Model size, training budget, data shape and which loss layouts to train."""

    variants: tuple[str, ...] = VARIANTS
    hidden: int = 64
    layers: int = 2
    heads: int = 4
    steps: int = 400
    batch_size: int = 32
    lr: float = 3e-3
    min_exchanges: int = 2
    max_exchanges: int = 4
    eval_dialogues: int = 200
    maxlen: int = 192

    def validate(self) -> None:
        self.variants = tuple(self.variants)
        for v in self.variants:
            if v not in VARIANTS:
                raise ValueError(f"variants must be among {list(VARIANTS)}, got {v!r}")
        if not 1 <= self.min_exchanges <= self.max_exchanges:
            raise ValueError(f"need 1 <= min_exchanges <= max_exchanges, got {self.min_exchanges}, "
                             f"{self.max_exchanges}")
        for name in ("hidden", "layers", "heads", "steps", "batch_size", "eval_dialogues"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def _dialogues(cfg: DialogConfig, g: torch.Generator, count: int) -> list[list[str]]:
    span = cfg.max_exchanges - cfg.min_exchanges + 1
    return [synthetic_dialogue(g, cfg.min_exchanges + int(torch.randint(span, (1,), generator=g)))
            for _ in range(count)]


def _loss_on(variant: str) -> str:
    return "last" if variant == "unilm" else variant


def _train(cfg: DialogConfig, variant: str, tok: UnigramTokenizer, ctx: RunContext) -> CausalLM:
    model_cfg = ModelConfig(vocab_size=tok.vocab_size, hidden_size=cfg.hidden, num_layers=cfg.layers,
                            num_heads=cfg.heads, type_vocab_size=2, max_position_embeddings=cfg.maxlen,
                            pad_token_id=0)
    model = CausalLM(model_cfg)
    model.reset_parameters(ctx.generator)
    collate = DialogueCollator(0, mask="unilm" if variant == "unilm" else "causal")

    def batch(step: int, rows: slice) -> dict[str, torch.Tensor]:
        g = step_generator(ctx.seed, step, stream=7)  # the same dialogues for every variant
        dialogs = _dialogues(cfg, g, cfg.batch_size)[rows]
        return collate([build_dialogue_lm_example(d, tok, cfg.maxlen, loss_on=_loss_on(variant))
                        for d in dialogs])

    train_cfg = TrainConfig(steps=cfg.steps, batch_size=cfg.batch_size, seq_len=cfg.maxlen, lr=cfg.lr,
                            warmup_steps=min(50, cfg.steps // 10), weight_decay=0.01,
                            log_every=max(1, cfg.steps))
    ctx.train(model, model_cfg, train_cfg, batch)
    return model.eval()


@torch.no_grad()
def _nll(model: CausalLM, examples: list, mask: str, device: torch.device) -> float:
    total, count = 0.0, 0
    collate = DialogueCollator(0, mask=mask)
    for s in range(0, len(examples), 64):
        batch = {k: v.to(device) for k, v in collate(examples[s:s + 64]).items()}
        logits = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                       token_type_ids=batch["token_type_ids"]).logits[:, :-1].float()
        labels = batch["labels"][:, 1:]
        keep = labels != -100
        nll = torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum")
        total, count = total + float(nll), count + int(keep.sum())
    return total / max(count, 1)


def _evaluate(model: CausalLM, variant: str, dialogs: list[list[str]], tok: UnigramTokenizer,
              cfg: DialogConfig, device: torch.device) -> dict[str, float]:
    mask = "unilm" if variant == "unilm" else "causal"
    resp = [build_dialogue_lm_example(d, tok, cfg.maxlen, loss_on="responses") for d in dialogs]
    last = [build_dialogue_lm_example(d, tok, cfg.maxlen, loss_on="last") for d in dialogs]
    out = {"last_nll": _nll(model, last, mask, device),
           "response_nll": math.nan if variant == "unilm" else _nll(model, resp, "causal", device)}
    if variant != "unilm":
        bot = ChatBot(model, tok, maxlen=cfg.maxlen)
        hits = [tok.decode(bot.respond_ids(d[:-1], top_k=1, max_len=16), errors="replace") == d[-1]
                for d in dialogs]
        out["last_accuracy"] = sum(hits) / len(hits)
    return out


def _within(metric: str, a: str, b: str, margin: float, label: str):
    """Claim check: ``a`` is no worse than ``b`` by more than ``margin`` (lower is better)."""

    def check(results: Results) -> Verdict:
        va = results.values(metric, variant=a)
        vb = results.values(metric, variant=b)
        seeds = sorted(set(va) & set(vb))
        if not seeds:
            return Verdict(NOT_TESTED, f"{label}: not measured")
        diffs = {s: va[s] - vb[s] for s in seeds}
        ok = [d <= margin for d in diffs.values()]
        status = REPRODUCED if all(ok) else NOT_REPRODUCED if not any(ok) else INCONCLUSIVE
        text = ", ".join(f"{d:+.3f}" for d in diffs.values())
        return Verdict(status, f"{label}: {metric} {a} − {b} = {text} nats per byte over "
                       f"{len(seeds)} seed(s) (no worse than +{margin:g} wanted)",
                       {"differences": diffs})

    return check


@register_experiment
class DialogExperiment(Experiment):
    """Train the same tiny LM with each loss layout; score the responses on held-out dialogues."""

    name = "dialog"
    title = "DialoGPT-style multi-turn LM: where the loss goes"
    post = POST
    config = DialogConfig
    presets = {
        "micro": lambda: DialogConfig(variants=("all", "responses", "last"), hidden=32, layers=1,
                                      heads=2, steps=25, batch_size=8, eval_dialogues=16),
        "quick": lambda: DialogConfig(),
        "full": lambda: DialogConfig(hidden=128, layers=4, steps=2000, eval_dialogues=500),
    }
    claims = [
        Claim("one-pass-beats-one-response", "A whole multi-turn dialogue as one LM sequence "
              "trains every response in one pass: with the same dialogues it models the responses "
              "better than training one response per sample.", POST,
              Ordering("response_nll", {"variant": "all"}, {"variant": "last"},
                       higher_is_better=False, margin=0.05,
                       labels=("loss on every utterance", "final response only"))),
        Claim("no-need-to-mask-users", "Every utterance is the response to the ones before it, so "
              "the loss can go on all of them (Su does not mask): the responses come out no worse "
              "than with the user turns masked.", POST,
              _within("response_nll", "all", "responses", 0.05,
                      "loss on every utterance vs on the bot's turns only")),
    ]

    def run(self, config: DialogConfig, ctx: RunContext) -> list[dict[str, Any]]:
        tok = byte_tokenizer()
        held_out = _dialogues(config, step_generator(ctx.seed, 0, stream=11), config.eval_dialogues)
        rows = []
        for variant in config.variants:
            ctx.log(f"training with loss layout {variant!r}")
            model = _train(config, variant, tok, ctx)
            metrics = _evaluate(model, variant, held_out, tok, config, ctx.device)
            rows.append({"variant": variant, "label": LABELS[variant], **metrics})
        return rows

    def table(self, results: Results) -> str:
        body = [[LABELS[v], results.fmt("response_nll", 1, 3, variant=v) or "–",
                 results.fmt("last_nll", 1, 3, variant=v), results.fmt("last_accuracy", 100, 1, variant=v)
                 or "–"] for v in VARIANTS if results.select(variant=v)]
        return ("Held-out dialogues (mean ± std over seeds): NLL per byte of every bot turn and of "
                "the final bot turn, and greedy exact match of the final response.\n\n"
                + markdown_table(["loss layout", "bot-turn NLL", "final-turn NLL",
                                  "final-turn exact match %"], body))
