"""generate throughput on the real SmolLM2-135M-Instruct weights: formerlab vs transformers.

1. End to end: greedy decoding of 128 new tokens after a 512-token prompt of real text (the
   standard library's sources through the GGUF tokenizer), batch 1 and batch 8, float32, the same
   GGUF file loaded by both libraries (formerlab's ``CausalLM.from_pretrained``, transformers'
   ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)``); ``<eos>`` disabled so every run
   makes all its steps. Tokens/s = batch × new tokens / wall time of the ``generate`` call
   (prefill included). Target: formerlab ≥ 1.3× transformers.
2. One decoding step against a 512-token cache (each library's own cache, cropped back after
   every step), alternated 25 times: the decode cost without the prefill, min and median.
3. The prefill alone (batch 1): the model on the 512-token prompt, last-position logits only.
4. ReRoPE (``set_position_method(relpos={"name": "rerope", "window": 256})``, the raw-key cache)
   vs plain RoPE inside ``generate`` (batch 1, same prompt), and their decoding steps. Target
   ≤ 1.5×.
5. The generation page's chat example (chat template, greedy to ``<|im_end|>``): its answer,
   token count and time.

Candidates are timed in alternation (``_common.interleaved``) so machine load hits both alike.
Writes ``benchmarks/results/bench_generate.json``.

    python benchmarks/bench_generate.py [--reps 2] [--threads N] [--prompt 512] [--new 128]
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
try:
    import formerlab  # noqa: F401
except ImportError:  # running from a checkout without the editable install
    sys.path.insert(0, str(ROOT / "src"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from _common import interleaved, write  # type: ignore[import-not-found]  # noqa: E402
from formerlab.interop.weights import GGUFTokenizer, packaged_weights  # noqa: E402
from formerlab.models import CausalLM  # noqa: E402


def prompts(tok: GGUFTokenizer, batch: int, n: int) -> torch.Tensor:
    import argparse as a
    import json
    import textwrap

    text = "".join(inspect.getsource(m) for m in (json, textwrap, a))
    ids = tok.encode(text)
    if len(ids) < batch * n:
        raise SystemExit(f"need {batch * n} tokens of text, have {len(ids)}")
    return torch.tensor([ids[i * n:(i + 1) * n] for i in range(batch)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    import transformers

    path = packaged_weights("SmolLM2-135M-Instruct")
    tok = GGUFTokenizer.from_gguf(path)
    ours = CausalLM.from_pretrained(path).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    hf.generation_config.eos_token_id = None  # run every step
    pad = tok.eos_token_id
    results: dict = {"prompt_tokens": args.prompt, "new_tokens": args.new, "dtype": "float32",
                     "transformers": transformers.__version__, "throughput": {}}

    def runs(ids: torch.Tensor, new: int) -> dict:
        def formerlab_generate() -> torch.Tensor:
            return ours.generate(ids, max_new_tokens=new, pad_token_id=pad)

        def transformers_generate() -> torch.Tensor:
            with torch.no_grad():
                return hf.generate(ids, max_new_tokens=new, do_sample=False, pad_token_id=pad)

        a, b = formerlab_generate(), transformers_generate()  # also the warm-up
        same = bool(torch.equal(a, b))
        t = interleaved({"formerlab": formerlab_generate, "transformers": transformers_generate},
                        repeats=args.reps, warmup=0)
        return {"same_tokens": same, **t}

    for batch in args.batches:
        ids = prompts(tok, batch, args.prompt)
        full = runs(ids, args.new)
        step = decode_steps({"formerlab": ours, "transformers": hf}, ids)
        row = {"generate": full, "decode_step": step}
        for lib in ("formerlab", "transformers"):
            row[f"{lib}_tokens_per_s"] = batch * args.new / full[lib]["median_s"]
            row[f"{lib}_tokens_per_s_best"] = batch * args.new / full[lib]["min_s"]
        row["speedup"] = full["transformers"]["median_s"] / full["formerlab"]["median_s"]
        row["speedup_best"] = full["transformers"]["min_s"] / full["formerlab"]["min_s"]
        row["decode_step_speedup"] = (step["transformers"]["median_s"]
                                      / step["formerlab"]["median_s"])
        row["decode_step_speedup_best"] = step["transformers"]["min_s"] / step["formerlab"]["min_s"]
        results["throughput"][f"batch_{batch}"] = row
        print(f"batch {batch}: formerlab {row['formerlab_tokens_per_s']:.2f} tok/s, transformers "
              f"{row['transformers_tokens_per_s']:.2f} tok/s -> {row['speedup']:.2f}x (best "
              f"{row['speedup_best']:.2f}x); one decoding step {row['decode_step_speedup']:.2f}x "
              f"(best {row['decode_step_speedup_best']:.2f}x); same tokens: {full['same_tokens']}",
              flush=True)

    ids = prompts(tok, 1, args.prompt)
    with torch.no_grad():
        pre = interleaved({"formerlab": lambda: ours(ids, use_cache=True, logits_to_keep=1),
                           "transformers": lambda: hf(ids, use_cache=True, logits_to_keep=1)},
                          repeats=args.reps + 1, warmup=1)
    results["prefill_batch_1"] = {**pre, "speedup": pre["transformers"]["median_s"]
                                  / pre["formerlab"]["median_s"]}
    print(f"prefill (batch 1): {results['prefill_batch_1']['speedup']:.2f}x", flush=True)

    rerope = CausalLM.from_pretrained(path).eval()
    rerope.set_position_method(relpos={"name": "rerope", "window": 256})
    t = interleaved({
        "rope": lambda: ours.generate(ids, max_new_tokens=args.new),
        "rerope": lambda: rerope.generate(ids, max_new_tokens=args.new),
    }, repeats=args.reps, warmup=1)
    step = decode_steps({"rope": ours, "rerope": rerope}, ids)
    ratio = t["rerope"]["median_s"] / t["rope"]["median_s"]
    results["rerope_vs_rope"] = {
        "generate": t, "decode_step": step, "window": 256, "ratio": ratio,
        "ratio_best": t["rerope"]["min_s"] / t["rope"]["min_s"],
        "decode_step_ratio": step["rerope"]["median_s"] / step["rope"]["median_s"],
    }
    print(f"ReRoPE / RoPE generate time (batch 1): {ratio:.2f}x (best "
          f"{results['rerope_vs_rope']['ratio_best']:.2f}x), decoding step "
          f"{results['rerope_vs_rope']['decode_step_ratio']:.2f}x", flush=True)
    results["chat"] = chat(ours, tok)
    print(f"chat: {results['chat']['new_tokens']} tokens in {results['chat']['seconds']:.1f} s",
          flush=True)
    print("wrote", write("bench_generate", results))


CHAT_PROMPT = "Give me three tips for a good night's sleep."


def chat(model: CausalLM, tok: GGUFTokenizer, max_new_tokens: int = 96) -> dict:
    """The docs' chat example, timed once after a warm-up: the GGUF chat template, greedy
    decoding to ``<|im_end|>``; the answer and its time are shown on the generation page."""

    ids = tok.apply_chat_template([{"role": "user", "content": CHAT_PROMPT}],
                                  add_generation_prompt=True)
    prompt = torch.tensor([ids])
    model.generate(prompt, max_new_tokens=4, eos_token_id=tok.eos_token_id)  # warm-up
    t0 = time.perf_counter()
    out = model.generate(prompt, max_new_tokens=max_new_tokens, eos_token_id=tok.eos_token_id)
    seconds = time.perf_counter() - t0
    new = out[0, len(ids):].tolist()
    return {"prompt": CHAT_PROMPT, "new_tokens": len(new), "seconds": seconds,
            "tokens_per_s": len(new) / seconds,
            "answer": tok.decode(new, skip_special_tokens=True)}


def decode_steps(models: dict, ids: torch.Tensor, repeats: int = 25) -> dict:
    """One decoding step of each model against its own cache of ``ids``, cropped back to the
    prompt after every step, timed in alternation."""
    import statistics

    n = ids.shape[1]
    steps = {}
    with torch.no_grad():
        for name, model in models.items():
            cache = model(ids, use_cache=True, logits_to_keep=1).past_key_values
            foreign = not isinstance(model, CausalLM)

            def step(model=model, cache=cache, foreign=foreign) -> None:
                out = model(ids[:, -1:], past_key_values=cache, use_cache=True, logits_to_keep=1)
                out.past_key_values.crop(-1 if foreign else n)  # transformers crops by a count

            steps[name] = step
        times: dict[str, list[float]] = {k: [] for k in steps}
        for _ in range(3):
            for fn in steps.values():
                fn()
        for _ in range(repeats):
            for name, fn in steps.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v)} for k, v in times.items()}


if __name__ == "__main__":
    main()
