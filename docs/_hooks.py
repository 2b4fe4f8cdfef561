"""mkdocs hooks: pages generated from the stored result files, so no figure is typed by hand.

Markers in a page are replaced when the site is built:

- ``<!-- generated: benchmarks -->`` — one table per ``benchmarks/results/*.json`` (its ratios
  and targets, flattened);
- ``<!-- generated: benchmark NAME -->`` — the same table for ``benchmarks/results/NAME.json`` only;
- ``<!-- generated: lab NAME -->`` — the claims and the main table of the stored lab run
  ``benchmarks/results/lab/NAME-quick/results.json`` (seeds, verdicts, evidence).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
_KEYS = ("ratio", "speedup", "target", "met", "exponent", "peak", "relative")


def _flatten(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if isinstance(d, dict):
        for k, v in d.items():
            out += _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(d, (int, float, bool, str)) and any(k in prefix.lower() for k in _KEYS):
        out.append((prefix, d))
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v).replace("|", "\\|")


def _benchmark(path: Path) -> str:
    """One stored benchmark as a table (its summary rows, or its ratios and targets flattened)."""
    data = json.loads(path.read_text())
    rows = data.get("summary")
    if isinstance(rows, list) and rows and all(isinstance(r, dict) and "measure" in r
                                                for r in rows):
        body = [f"| {r['measure']} | {r.get('peer', '')} | {_fmt(r['value'])} | "
                f"{r.get('target', '')} |" for r in rows]
        table = "| measure | peer | value | target |\n|---|---|---|---|\n" + "\n".join(body)
    else:
        items = _flatten({k: v for k, v in data.items() if k not in ("machine",)})
        if not items:
            return ""
        table = "| measurement | value |\n|---|---|\n" + "\n".join(
            f"| `{k}` | {_fmt(v)} |" for k, v in items[:40])
    machine = data.get("machine", {})
    when = machine.get("date", "") if isinstance(machine, dict) else ""
    script = path.stem if path.stem.startswith("bench_") else "bench_" + path.stem
    return (f"### `{path.stem}`\n\nScript `benchmarks/{script}.py`"
            f"{'; measured ' + when if when else ''}.\n\n{table}\n")


def _benchmarks() -> str:
    parts = [p for p in map(_benchmark, sorted(RESULTS.glob("*.json"))) if p]
    return "\n".join(parts) or "_No stored benchmark results._"


def _one_benchmark(name: str) -> str:
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        return f"_No stored result of `{name}` yet (`python benchmarks/{name}.py`)._"
    return _benchmark(path) or "_The stored result has no ratios to show._"


def _lab(name: str) -> str:
    path = RESULTS / "lab" / f"{name}-quick" / "results.json"
    if not path.is_file():
        return f"_No stored run of `{name}` yet (`formerlab lab run {name} --preset quick --seeds 3`)._"
    data = json.loads(path.read_text())
    seeds = data.get("meta", {}).get("seeds", [])
    claims = data.get("claims", [])
    lines = [f"Stored run: `{path.relative_to(ROOT)}` ({len(seeds)} seeds: {seeds}).", ""]
    if claims:
        lines += ["| claim of the blog | verdict | evidence |", "|---|---|---|"]
        lines += [f"| {c['statement']} | **{c['status']}** | {_fmt(c['evidence'])} |" for c in claims]
        lines.append("")
    lines.append(data.get("table_md", ""))
    return "\n".join(lines)


def on_page_markdown(markdown: str, **_: Any) -> str:
    markdown = markdown.replace("<!-- generated: benchmarks -->", _benchmarks())
    markdown = re.sub(r"<!-- generated: benchmark ([A-Za-z0-9_]+) -->",
                      lambda m: _one_benchmark(m.group(1)), markdown)
    return re.sub(r"<!-- generated: lab ([a-z0-9-]+) -->", lambda m: _lab(m.group(1)), markdown)
