"""Before and after a refactor: the train step against x-transformers and attention against
transformers' ``LlamaAttention``, for two checkouts of formerlab in one session.

Each checkout's own ``bench_train_step.py`` and ``bench_attention.py`` run with that checkout's
``src`` first on ``PYTHONPATH``, alternating old, new, old, new so drifting machine load hits both
alike. Every run measures its own peer in the same process, so the ratios (ours / peer) of the
two checkouts are comparable even if the machine's speed changes between runs; the absolute
tokens/s of both are reported too.

    git worktree add /tmp/before <commit>
    python benchmarks/bench_before_after.py --before /tmp/before [--rounds 2]

Writes ``benchmarks/results/bench_before_after.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _common import write  # type: ignore[import-not-found]  # noqa: E402

#: script -> (result file, key path of the ours-over-peer ratio, other key paths reported)
BENCHES = {
    "bench_train_step.py": ("train_step.json", ("ratio_tokens_per_s_ours_over_x_transformers",),
                            {"ours_tokens_per_s": ("results", "formerlab", "tokens_per_s"),
                             "peer_tokens_per_s": ("results", "x_transformers", "tokens_per_s")}),
    "bench_attention.py": ("bench_attention.json",
                           ("results", "transformers LlamaAttention", "forward_speedup_of_ours"),
                           {"fwd_bwd_ratio": ("results", "transformers LlamaAttention",
                                              "fwd_bwd_speedup_of_ours"),
                            "ours_forward_ms": ("results", "formerlab", "forward_ms")}),
}


def _get(d: dict, path: tuple[str, ...]) -> float | None:
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d if isinstance(d, (int, float)) else None


def _run(tree: Path, script: str) -> dict:
    result_file = tree / "benchmarks" / "results" / BENCHES[script][0]
    backup = result_file.read_bytes() if result_file.is_file() else None
    env = {**os.environ, "PYTHONPATH": str(tree / "src")}
    try:
        subprocess.run([sys.executable, str(tree / "benchmarks" / script)], cwd=tree, env=env,
                       check=True, stdout=subprocess.DEVNULL)
        return json.loads(result_file.read_text())
    finally:  # the checkout's stored result stays as it was
        if backup is not None:
            result_file.write_bytes(backup)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", type=Path, help="checkout of the old commit (required)")
    ap.add_argument("--after", type=Path, default=ROOT, help="checkout of the new commit")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    if args.before is None:  # `make bench` runs every script without arguments
        print("bench_before_after: no --before checkout given, nothing to compare (skipped)")
        return
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    commits = {k: subprocess.run(["git", "-C", str(t), "rev-parse", "--short", "HEAD"],
                                 capture_output=True, text=True).stdout.strip()
               for k, t in trees.items()}
    out: dict = {"commits": commits, "rounds": args.rounds, "benchmarks": {}}
    for script, (_, ratio_path, extra) in BENCHES.items():
        runs: dict[str, list[dict]] = {k: [] for k in trees}
        for _ in range(args.rounds):
            for name, tree in trees.items():
                data = _run(tree, script)
                row = {"ratio": _get(data, ratio_path)}
                row.update({k: _get(data, p) for k, p in extra.items()})
                runs[name].append(row)
                print(f"{script} {name} ({commits[name]}): {row}", flush=True)
        summary = {name: {k: statistics.median(r[k] for r in rows if r[k] is not None)
                          for k in rows[0] if any(r[k] is not None for r in rows)}
                   for name, rows in runs.items()}
        b, a = summary["before"].get("ratio"), summary["after"].get("ratio")
        out["benchmarks"][script.removesuffix(".py")] = {
            "runs": runs, "median": summary,
            "ratio_after_over_before": None if not (a and b) else a / b,
            "target": "after >= before (no regression), within the run-to-run spread",
        }
    print("wrote", write("bench_before_after", out))


if __name__ == "__main__":
    main()
