"""mkdocs hooks: pages generated from the stored result files, so no figure is typed by hand.

Markers in a page are replaced when the site is built:

- ``<!-- generated: benchmarks -->`` — one table per ``benchmarks/results/*.json`` (its ratios
  and targets, flattened);
- ``<!-- generated: benchmark NAME -->`` — the same table for ``benchmarks/results/NAME.json`` only;
- ``<!-- generated: lab NAME [PRESET] -->`` — the claims and the main table of the stored lab run
  ``benchmarks/results/lab/NAME-PRESET/results.json`` (``quick`` by default; seeds, verdicts,
  evidence);
- ``<!-- value: NAME a.b.c [FORMAT] -->`` — one number of ``benchmarks/results/NAME.json`` inside
  a sentence (keys or list indices joined by dots, ``FORMAT`` a Python format spec, ``.2f`` by
  default), so prose quotes the stored measurement instead of a typed copy of it.
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


def _lab(name: str, preset: str | None = None) -> str:
    preset = preset or "quick"
    path = RESULTS / "lab" / f"{name}-{preset}" / "results.json"
    if not path.is_file():
        return (f"_No stored run of `{name}` yet "
                f"(`formerlab lab run {name} --preset {preset} --seeds 3`)._")
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


def _generate_run() -> tuple[dict[str, Any] | None, str]:
    """The stored generate benchmark's chat example and the date it was measured."""
    path = RESULTS / "bench_generate.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return data.get("chat"), data.get("machine", {}).get("date", "")


def chat_example() -> str:
    """The chat example's answer and time, from the stored generate benchmark."""
    chat, when = _generate_run()
    if not chat:
        return "_No stored run of the chat example yet (`python benchmarks/bench_generate.py`)._"
    return (f"Measured by `benchmarks/bench_generate.py` ({when}, float32, "
            f"{chat['new_tokens']} tokens in {chat['seconds']:.1f} s):\n\n```text\n"
            f"{chat['answer'].strip()}\n```")


def chat_time() -> str:
    chat, _ = _generate_run()
    if not chat:
        return "not measured yet"
    return f"{chat['seconds']:.1f} s ({chat['new_tokens']} tokens, float32)"


VALUE = re.compile(r"<!-- value: ([A-Za-z0-9_]+) ([^\s]+)(?: ([^\s]+))? -->")


def stored_value(name: str, keys: str, spec: str | None = None) -> str:
    """One number of a stored benchmark, formatted (``KeyError`` naming what is missing)."""
    path = RESULTS / f"{name}.json"
    if not path.is_file():
        raise KeyError(f"no stored benchmark {name!r} ({path})")
    value: Any = json.loads(path.read_text())
    for key in keys.split("."):  # dict keys, or list indices
        if isinstance(value, list) and key.isdigit() and int(key) < len(value):
            value = value[int(key)]
        elif isinstance(value, dict) and key in value:
            value = value[key]
        else:
            raise KeyError(f"{name}.json has no {keys!r} (missing {key!r})")
    if not isinstance(value, (int, float)):
        raise KeyError(f"{name}.json's {keys!r} is not a number: {value!r}")
    return format(value, spec or ".2f")


def on_page_markdown(markdown: str, **_: Any) -> str:
    markdown = VALUE.sub(lambda m: stored_value(*m.groups()), markdown)
    markdown = markdown.replace("<!-- generated: chat-example -->", chat_example())
    markdown = markdown.replace("<!-- generated: benchmarks -->", _benchmarks())
    markdown = re.sub(r"<!-- generated: benchmark ([A-Za-z0-9_]+) -->",
                      lambda m: _one_benchmark(m.group(1)), markdown)
    return re.sub(r"<!-- generated: lab ([a-z0-9-]+)(?: ([a-z0-9-]+))? -->",
                  lambda m: _lab(m.group(1), m.group(2)), markdown)


# -- the README's measured parts ------------------------------------------------------------------
#
# The README is not built by mkdocs, so its numbers are written into it by
# ``python docs/_hooks.py readme`` from the same stored files, between ``<!-- NAME -->`` and
# ``<!-- /NAME -->``; a test checks that what is there is what the files say.

README = ROOT / "README.md"
HEADLINE_RUN = RESULTS / "lab" / "extrapolation-quick" / "results.json"
FRESH_CLONE = RESULTS / "fresh_clone.json"


def headline_table() -> str:
    """The main table of the stored extrapolation quick run (its caption and rows)."""
    if not HEADLINE_RUN.is_file():
        return "_No stored run yet (`formerlab lab run extrapolation --preset quick --seeds 3`)._"
    data = json.loads(HEADLINE_RUN.read_text())
    table = data.get("table_md", "").strip()
    # the caption and the first table; footnotes and further tables stay on the lab page
    keep, seen_table = [], False
    for line in table.splitlines():
        if line.startswith("|"):
            seen_table = True
        elif seen_table:
            break
        keep.append(line)
    verdicts = [f"{c['status']}" for c in data.get("claims", [])]
    counts = {s: verdicts.count(s) for s in dict.fromkeys(verdicts)}
    summary = ", ".join(f"{n} {s}" for s, n in counts.items())
    return "\n".join(keep).strip() + (f"\n\nClaims checked on this run: {summary}." if summary else "")


def fresh_times() -> str:
    """The fresh-clone times of ``make test`` and ``make demo`` (``benchmarks/fresh_clone.py``)."""
    parts = json.loads(FRESH_CLONE.read_text()).get("parts", {}) if FRESH_CLONE.is_file() else {}
    said = []
    if "test" in parts:
        t = parts["test"]
        summary = t.get("pytest") or ("failed" if t["returncode"] else "no pytest summary")
        said.append(f"`make test` took {t['seconds'] / 60:.0f} min ({summary}; "
                    f"pytest {t.get('pytest_seconds', '?')} s; commit {t['commit']}, {t['date']})")
    if "demo" in parts:
        d = parts["demo"]
        said.append(f"`make demo` {d['seconds'] / 60:.0f} min ({d.get('detail', '')}"
                    f"{'; commit ' + d['commit'] if 'commit' in d else ''}, {d['date']}"
                    f"{'; timed by hand from a log' if 'source' in d else ''})")
    return " and ".join(said) + " on 2 CPU cores, no GPU" if said else "not measured yet"


README_PARTS = {"fresh-times": fresh_times, "headline-table": headline_table,
                "chat-time": chat_time}


def readme_part(name: str, text: str | None = None) -> str | None:
    """The text between ``<!-- name -->`` and ``<!-- /name -->`` in ``text`` (the README)."""
    text = README.read_text() if text is None else text
    m = re.search(rf"<!-- {name} -->(.*?)<!-- /{name} -->", text, re.S)
    return None if m is None else m.group(1).strip()


def write_readme() -> None:
    """Fill every measured part of the README from the stored result files."""
    text = README.read_text()
    for name, make in README_PARTS.items():
        body = make()
        sep = "\n\n" if "\n" in body else ""
        text = re.sub(rf"<!-- {name} -->(?:.*?<!-- /{name} -->)?",
                      lambda _m, n=name, b=body, s=sep: f"<!-- {n} -->{s}{b}{s}<!-- /{n} -->",
                      text, count=1, flags=re.S)
    README.write_text(text)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["readme"]:
        raise SystemExit("usage: python docs/_hooks.py readme")
    write_readme()
