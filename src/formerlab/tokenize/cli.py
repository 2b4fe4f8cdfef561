"""``formerlab tokenizer train|encode|sample|stats``: the byte-level unigram tokenizer from a shell.

Wired into ``formerlab`` by ``add_subparser(sub)``; also runnable alone as
``python -m formerlab.tokenize.cli``. Perfect sampling: kexue.fm/archives/9811; legacy sampler:
kexue.fm/archives/9768; byte-level vocabularies: kexue.fm/archives/9752.

Examples::

    formerlab tokenizer train src/ --glob '*.py' --vocab-size 8000 --output vocab.json
    formerlab tokenizer encode --vocab vocab.json "def f(x): return x"
    formerlab tokenizer sample --vocab vocab.json --alpha 0.2 --num-samples 5 --seed 0 "watching"
    formerlab tokenizer stats --vocab vocab.json src/ --glob '*.py'
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_subparser", "main"]


def _files(inputs: list[str], pattern: str) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob(pattern) if p.is_file()))
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {item}")
    if not files:
        raise ValueError(f"no input files matched {pattern!r} in {inputs}")
    return files


def _text(args: argparse.Namespace) -> bytes:
    if args.input is not None and args.text is not None:
        raise ValueError("give either TEXT or --input, not both")
    if args.input == "-":
        return sys.stdin.buffer.read()
    if args.input is not None:
        return Path(args.input).read_bytes()
    if args.text is None:
        raise ValueError("give a TEXT argument or --input FILE (- for stdin)")
    return args.text.encode("utf-8")


def _show(piece: bytes) -> str:
    return piece.decode("utf-8", errors="backslashreplace")


def _load(args: argparse.Namespace):
    from . import UnigramTokenizer

    return UnigramTokenizer.load(args.vocab, backend=args.backend)


def _cmd_train(args: argparse.Namespace) -> int:
    from . import UnigramTokenizer

    files = _files(args.inputs, args.glob)
    start = time.perf_counter()
    tok = UnigramTokenizer.train(
        files, args.vocab_size, max_piece_bytes=args.max_piece_bytes, min_count=args.min_count,
        isolate_digits=args.isolate_digits, e_step=args.e_step, num_workers=args.num_workers,
        progress=not args.no_progress, backend=args.backend,
    )
    path = tok.save(args.output)
    print(json.dumps({"output": str(path), "vocab_size": tok.vocab_size, "files": len(files),
                      "seconds": round(time.perf_counter() - start, 2)}))
    return 0


def _cmd_encode(args: argparse.Namespace) -> int:
    tok = _load(args)
    data = _text(args)
    ids = tok.encode(data, add_bos=args.add_bos, add_eos=args.add_eos)
    if args.pieces:
        print(json.dumps([_show(tok.decode_bytes([i], skip_special_tokens=False)) for i in ids],
                         ensure_ascii=False))
    else:
        print(" ".join(map(str, ids)))
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    import torch

    if args.num_samples < 1:
        raise ValueError(f"--num-samples must be >= 1, got {args.num_samples}")
    tok = _load(args)
    data = _text(args)
    gen = torch.Generator().manual_seed(args.seed) if args.seed is not None else None
    rows = tok.encode_batch([data] * args.num_samples, alpha=args.alpha, generator=gen,
                            sampler="legacy" if args.legacy else "perfect")
    for ids in rows:
        if args.ids:
            print(" ".join(map(str, ids)))
        else:
            print(" | ".join(_show(tok.decode_bytes([i])) for i in ids))
    return 0


def _cmd_stats(args: argparse.Namespace) -> int:
    tok = _load(args)
    lengths: dict[int, int] = {}
    for piece in tok.pieces:
        lengths[len(piece)] = lengths.get(len(piece), 0) + 1
    scores = list(tok.pieces.values())
    out: dict[str, Any] = {
        "vocab_size": tok.vocab_size,
        "special_tokens": list(tok.special_tokens),
        "pieces_by_length": dict(sorted(lengths.items())),
        "max_piece_bytes": tok.max_piece_bytes,
        "score_min": min(scores),
        "score_max": max(scores),
        "backend": tok.backend,
        "meta": tok.meta,
    }
    if args.inputs:
        datas = [p.read_bytes() for p in _files(args.inputs, args.glob)]
        n_bytes = sum(map(len, datas))
        tok.encode(b"warm up")
        start = time.perf_counter()
        rows = tok.encode_batch(datas)
        seconds = time.perf_counter() - start
        n_tokens = sum(map(len, rows))
        out.update({
            "input_bytes": n_bytes,
            "tokens": n_tokens,
            "bytes_per_token": round(n_bytes / max(n_tokens, 1), 4),
            "encode_mb_per_s": round(n_bytes / 1e6 / max(seconds, 1e-9), 2),
            "lossless": all(tok.decode_bytes(r) == d for r, d in zip(rows, datas)),
        })
    print(json.dumps(out, indent=1, ensure_ascii=False))
    return 0


def _common(p: argparse.ArgumentParser, *, vocab: bool = True) -> None:
    if vocab:
        p.add_argument("--vocab", required=True, type=Path, help="vocabulary JSON (from train)")
    p.add_argument("--backend", default="auto", choices=["auto", "numba", "python"],
                   help="lattice backend (auto: numba when installed)")


def add_subparser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``tokenizer`` with subcommands ``train|encode|sample|stats`` to an argparse subparsers."""
    tk = subparsers.add_parser(
        "tokenizer", help="byte-level unigram tokenizer: train, encode, sample, stats",
        description="Byte-level unigram tokenizer with Viterbi decoding and exact (perfect) "
                    "sampling ∝ p(segmentation)^alpha (kexue.fm/archives/9811).",
    )
    sub = tk.add_subparsers(dest="tokenizer_command", required=True)

    t = sub.add_parser("train", help="train a vocabulary on files or folders")
    t.add_argument("inputs", nargs="+", help="text files and/or folders (read as bytes)")
    t.add_argument("--glob", default="*", help="file pattern inside folders (default: all files)")
    t.add_argument("--vocab-size", type=int, required=True, help="ids including special tokens")
    t.add_argument("--output", type=Path, required=True, help="where to write the vocabulary JSON")
    t.add_argument("--max-piece-bytes", type=int, default=16, help="longest piece in bytes")
    t.add_argument("--min-count", type=int, default=2, help="minimum n-gram count of a candidate")
    t.add_argument("--isolate-digits", action="store_true", help="every digit its own chunk")
    t.add_argument("--e-step", default="forward_backward", choices=["forward_backward", "viterbi"],
                   help="EM with expected (forward-backward) or Viterbi counts")
    t.add_argument("--num-workers", type=int, default=1, help="processes for reading/chunking")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(t, vocab=False)
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("encode", help="Viterbi-decode a text into ids (or pieces)")
    e.add_argument("text", nargs="?", help="text to encode (or use --input)")
    e.add_argument("--input", help="read the text from a file (- for stdin)")
    e.add_argument("--pieces", action="store_true", help="print pieces (JSON) instead of ids")
    e.add_argument("--add-bos", action="store_true", help="prepend <bos>")
    e.add_argument("--add-eos", action="store_true", help="append <eos>")
    _common(e)
    e.set_defaults(func=_cmd_encode)

    s = sub.add_parser("sample", help="draw segmentations with probability ∝ p^alpha")
    s.add_argument("text", nargs="?", help="text to segment (or use --input)")
    s.add_argument("--input", help="read the text from a file (- for stdin)")
    s.add_argument("--alpha", type=float, default=0.1, help="exponent on probabilities (>= 0)")
    s.add_argument("--num-samples", type=int, default=5, help="how many samples")
    s.add_argument("--seed", type=int, help="seed of a torch.Generator (default: random)")
    s.add_argument("--ids", action="store_true", help="print ids instead of pieces")
    s.add_argument("--legacy", action="store_true",
                   help="the biased pairwise sampler of kexue.fm/archives/9768 (ablation)")
    _common(s)
    s.set_defaults(func=_cmd_sample)

    st = sub.add_parser("stats", help="vocabulary statistics; with inputs: compression, speed")
    st.add_argument("inputs", nargs="*", help="optional files/folders to measure on")
    st.add_argument("--glob", default="*", help="file pattern inside folders")
    _common(st)
    st.set_defaults(func=_cmd_stats)
    return tk


def main(argv: list[str] | None = None) -> int:
    """Standalone entry point: ``python -m formerlab.tokenize.cli tokenizer ...``."""
    parser = argparse.ArgumentParser(prog="formerlab")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"formerlab: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
