"""The README's first two commands on a fresh clone, timed: ``make test`` and ``make demo``.

Clones the repository's ``HEAD`` into a temporary folder, empties ``PIP_CACHE_DIR`` and ``FORMERLAB_CACHE``, runs ``bash .ci/run`` (which runs
``make test``) and/or ``make demo``, and records each part's wall time, exit code, commit and, for
the test part, pytest's summary line. Writes ``benchmarks/results/fresh_clone.json``, keeping
the part not run this time as it was; the README's fresh-clone line is generated from that file
(``python docs/_hooks.py readme``).

Run: ``python benchmarks/fresh_clone.py --part test --part demo`` (about half an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

from _common import RESULTS, machine

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"test": ["bash", ".ci/run"], "demo": ["make", "demo"]}
SUMMARY = re.compile(r"^=*\s*((?:\d+ \w+, )*\d+ passed.*?) in ([\d.]+)s", re.M)


def run_part(part: str) -> dict:
    """Clone HEAD, run the part's command with empty caches, return what it took."""
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        subprocess.run(["git", "clone", "-q", str(ROOT), str(work / "main")], check=True)
        env = dict(os.environ, PIP_CACHE_DIR=str(work / "pip-cache"),
                   FORMERLAB_CACHE=str(work / "formerlab-cache"))
        t0 = time.perf_counter()
        res = subprocess.run(COMMANDS[part], cwd=work / "main", env=env, capture_output=True,
                             text=True)
        seconds = time.perf_counter() - t0
    out = {"seconds": round(seconds), "returncode": res.returncode, "commit": commit,
           "date": time.strftime("%Y-%m-%d"), "command": " ".join(COMMANDS[part])}
    found = SUMMARY.findall(res.stdout)
    if part == "test" and found:
        out["pytest"], out["pytest_seconds"] = found[-1][0], round(float(found[-1][1]))
    if res.returncode:
        out["tail"] = res.stdout[-2000:]  # pytest reports failures on stdout
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", action="append", choices=sorted(COMMANDS), required=True)
    ap.add_argument("--out", type=Path, default=RESULTS / "fresh_clone.json")
    args = ap.parse_args()
    data = json.loads(args.out.read_text()) if args.out.is_file() else {}
    data.update(benchmark="fresh_clone", machine=machine())
    parts = data.setdefault("parts", {})
    for part in dict.fromkeys(args.part):
        parts[part] = run_part(part)
        print(part, parts[part], flush=True)
        args.out.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    print("wrote", args.out)


if __name__ == "__main__":
    main()
