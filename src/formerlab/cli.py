"""The ``formerlab`` command: ``train``, ``eval``, ``lab list``, ``lab run``, ``report``,
``tokenizer train|encode|sample|stats``.

Every subcommand has ``--help``; ``--device auto`` picks CUDA when present. Data-parallel
training: ``torchrun --nproc_per_node=2 -m formerlab train ...`` (gloo on CPU, NCCL on GPU); the
same for ``torchrun ... -m formerlab lab run NAME ...`` (rank 0 writes and prints).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["build_parser", "main"]


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _dotted_sets(sets: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` items as ``{KEY: value}`` (values read as JSON when they parse)."""
    out = {}
    for item in sets:
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise ValueError(f"--set expects KEY=VALUE (e.g. train.precision=bf16), got {item!r}")
        out[key] = _parse_value(value)
    return out


def _apply_sets(model: dict[str, Any], train: dict[str, Any], sets: list[str]) -> None:
    for key, value in _dotted_sets(sets).items():
        scope, dot, name = key.partition(".")
        if not dot or scope not in ("model", "train"):
            raise ValueError(f"--set expects model.KEY=VALUE or train.KEY=VALUE, got {key!r}")
        (model if scope == "model" else train)[name] = value


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from .config import TrainConfig
    from .data.batching import window_batch
    from .data.corpora import load_corpus
    from .models.config import ModelConfig
    from .models.lm import CausalLM
    from .train.distributed import distributed_session, resolve_device
    from .train.presets import train_preset
    from .train.trainer import Trainer

    base_model, base_train = train_preset(args.preset)
    model_d = base_model.to_dict()
    train_d = base_train.to_dict()
    if args.model_config:
        model_d.update(json.loads(Path(args.model_config).read_text()))
    if args.train_config:
        train_d.update(json.loads(Path(args.train_config).read_text()))
    _apply_sets(model_d, train_d, args.set or [])
    mc, tc = ModelConfig.from_dict(model_d), TrainConfig.from_dict(train_d)
    device = resolve_device(args.device)
    with distributed_session(device) as info:
        if info.enabled and device.type == "cuda":
            device = torch.device("cuda", info.local_rank)
        corpus = load_corpus(args.corpus)
        tokens = corpus.tokens("train")

        def batch_fn(step: int, rows: slice):
            return window_batch(tokens, tc.batch_size, tc.seq_len, seed=tc.seed, step=step,
                                rows=rows), None

        torch.manual_seed(tc.seed)
        model = CausalLM(mc)
        trainer = Trainer(model, mc, tc, batch_fn, out_dir=args.out, device=device,
                          progress=not args.no_progress, dist_info=info)
        summary = trainer.train(resume=args.resume)
    if info.is_main:
        print(json.dumps({"out": str(args.out), "steps": summary.steps,
                          "final_loss": round(summary.final_loss, 5),
                          "tokens_per_second": round(summary.tokens_per_second),
                          "resumed_from": summary.resumed_from}))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .data.corpora import load_corpus
    from .data.evalsets import non_repeated_set, repeated_set
    from .lab.report import markdown_table
    from .models.lm import CausalLM
    from .train.distributed import resolve_device
    from .train.eval import evaluate_tokens

    device = resolve_device(args.device)
    model = CausalLM.from_pretrained(args.checkpoint, device=device)
    train_len = args.train_len
    if train_len is None:
        tc_file = Path(args.checkpoint) / "train_config.json"
        train_len = json.loads(tc_file.read_text())["seq_len"] if tc_file.is_file() else None
    if train_len is None:
        raise ValueError("--train-len is required (no train_config.json beside the checkpoint)")
    params = json.loads(args.rope_params) if args.rope_params else {}
    relpos = json.loads(args.relpos) if args.relpos else None
    model.set_position_method(args.rope_type, rope_params=params, relpos=relpos, logn=args.logn,
                              train_len=train_len)
    tokens = load_corpus(args.corpus).tokens(args.split)
    lengths = [int(x) for x in args.lengths.split(",")]
    rows = []
    for n in lengths:
        for set_name in args.sets.split(","):
            if set_name == "non_repeated":
                es = non_repeated_set(tokens, n, args.num_samples)
            elif set_name == "repeated":
                es = repeated_set(tokens, n, args.num_samples, train_len=train_len)
            else:
                raise ValueError(f"--sets takes repeated and/or non_repeated, got {set_name!r}")
            s = evaluate_tokens(model, es.tokens, train_len=train_len)
            rows.append({"length": n, "set": set_name, "accuracy": s["accuracy"],
                         "loss": s["loss"], "accuracy_beyond": s["accuracy_beyond"]})
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(markdown_table(["length", "set", "accuracy %", "loss"],
                             [[r["length"], r["set"], 100 * r["accuracy"], r["loss"]]
                              for r in rows]))
    return 0


def _cmd_lab_list(args: argparse.Namespace) -> int:
    from .lab import list_experiments

    for e in list_experiments():
        print(f"{e['name']:<26} {e['title']}\n{'':<26} reproduces {e['post']} "
              f"({e['claims']} claims; presets: {e['presets']})")
    return 0


def _cmd_lab_run(args: argparse.Namespace) -> int:
    from .lab import experiment_config, run_experiment
    from .lab.report import claims_markdown
    from .train.distributed import distributed_session, resolve_device

    config = experiment_config(args.name, args.preset, _dotted_sets(args.set)) if args.set else None
    # one process unless under torchrun
    with distributed_session(resolve_device(args.device)) as info:
        data, paths = run_experiment(
            args.name, preset=args.preset, seeds=args.seeds, seed=args.seed, out_dir=args.out,
            device=args.device, progress=not args.no_progress, cache_dir=args.cache_dir,
            corpus=args.corpus, dist_info=info, parallel=args.parallel, config=config,
        )
    if info.is_main:
        print(f"\n# {data['title']}\n\n{claims_markdown(data['claims'])}\n\n"
              f"{data['table_md']}\n")
        print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .lab.report import rebuild_report

    paths = rebuild_report(Path(args.dir))
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    if args.open:
        import webbrowser

        webbrowser.open(paths["html"].resolve().as_uri())
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="formerlab",
        description="Tested Transformer components and a lab reproducing kexue.fm's claims.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a byte-level causal LM on a corpus")
    t.add_argument("--out", required=True, type=Path, help="run folder (checkpoints, metrics)")
    t.add_argument("--preset", default="quick", choices=["micro", "quick", "full"],  # TRAIN_PRESETS
                   help="base model/train settings (a byte-level RoPE LM at three sizes)")
    t.add_argument("--model-config", help="JSON file of ModelConfig keys to override")
    t.add_argument("--train-config", help="JSON file of TrainConfig keys to override")
    t.add_argument("--set", action="append", metavar="SCOPE.KEY=VALUE",
                   help="override one key, e.g. --set model.hidden_size=64 --set train.steps=100")
    t.add_argument("--corpus", help="text file or folder (default: Python stdlib sources)")
    t.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    t.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda:0 ...")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("eval", help="accuracy/loss of a trained model at several lengths")
    e.add_argument("checkpoint", type=Path, help="a model folder (e.g. RUN/final)")
    e.add_argument("--lengths", default="128,512,1024", help="comma-separated test lengths")
    e.add_argument("--sets", default="non_repeated,repeated", help="evaluation sets")
    e.add_argument("--num-samples", type=int, default=16)
    e.add_argument("--train-len", type=int, help="training length (default: from the run)")
    e.add_argument("--rope-type", default="default", help="RoPE schedule at inference")
    e.add_argument("--rope-params", help='JSON, e.g. \'{"factor": 8}\'')
    e.add_argument("--relpos", help='JSON, e.g. \'{"name": "rerope", "window": 32}\'')
    e.add_argument("--logn", choices=["dagger", "pretrain"], help="log-n scaling")
    e.add_argument("--corpus", help="text file or folder (default: Python stdlib sources)")
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--device", default="auto")
    e.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    e.set_defaults(func=_cmd_eval)

    lab = sub.add_parser("lab", help="registered experiments reproducing the blog")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    ll = lab_sub.add_parser("list", help="list experiments and the posts they reproduce")
    ll.set_defaults(func=_cmd_lab_list)
    lr = lab_sub.add_parser("run", help="run one experiment and write its report")
    lr.add_argument("name", help="experiment name (see `formerlab lab list`)")
    lr.add_argument("--preset", default="quick",
                    help="micro (seconds), quick (minutes on a laptop CPU), full, or one the "
                         "experiment adds (see `formerlab lab list`)")
    lr.add_argument("--out", type=Path, help="output folder (default runs/NAME-PRESET)")
    lr.add_argument("--device", default="auto")
    lr.add_argument("--seeds", type=int, default=1,
                    help="seeds per configuration (verdicts use their spread; default 1)")
    lr.add_argument("--seed", type=int, default=0, help="first seed")
    lr.add_argument("--cache-dir", type=Path, help="trained-model cache (default ~/.cache/formerlab)")
    lr.add_argument("--corpus", help="text file or folder (default: Python stdlib sources)")
    lr.add_argument("--parallel", choices=["ddp", "fsdp"],
                    help="under torchrun: DDP or FSDP2 for every training of the run (default: "
                         "each train config's own, ddp)")
    lr.add_argument("--set", action="append", metavar="KEY=VALUE",
                    help="override a field of the preset's config by dotted path, e.g. "
                         "train.precision=bf16 or model.hidden_size=256 (repeatable; a changed "
                         "config is a new run: stored seeds are reused only for the same config)")
    lr.add_argument("--no-progress", action="store_true")
    lr.set_defaults(func=_cmd_lab_run)

    r = sub.add_parser("report", help="rebuild table.md, figures and report.html from results.json")
    r.add_argument("dir", type=Path, help="a lab results folder")
    r.add_argument("--open", action="store_true", help="open report.html in a web browser")
    r.set_defaults(func=_cmd_report)

    from .tokenize.cli import add_subparser as add_tokenizer

    add_tokenizer(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"formerlab: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
