"""Writing an experiment's outputs: ``results.json``, ``table.md``, figures and ``report.html``.

``results.json`` holds everything needed to rebuild the human-facing files (the tidy rows, the
table, the notes, the figure list and the run metadata), so ``formerlab report DIR`` can
regenerate ``table.md`` and ``report.html`` without re-running anything. The HTML page embeds
its figures as base64 and needs no network.
"""

from __future__ import annotations

import base64
import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .base import ExperimentReport, Figure

__all__ = ["load_report", "markdown_table", "rebuild_report", "save_line_plot", "write_report"]

RESULTS_NAME, TABLE_NAME, HTML_NAME = "results.json", "table.md", "report.html"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats are printed with two decimals."""

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def save_line_plot(
    path: Path,
    series: dict[str, tuple[Sequence[float], Sequence[float]]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logx: bool = False,
    vline: float | None = None,
    styles: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """Save a line plot of ``{label: (xs, ys)}`` as PNG (matplotlib, Agg backend).

    ``styles`` maps a label to extra ``plot`` keyword arguments (colour, linestyle ...); without
    it, more than ten series take their colours from the 20-colour ``tab20`` map.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    palette = plt.get_cmap("tab20") if len(series) > 10 else None
    for i, (label, (xs, ys)) in enumerate(series.items()):
        kw: dict[str, Any] = {"marker": "o" if len(xs) < 20 else None, "ms": 3}
        if palette is not None:
            kw["color"] = palette(i % 20)
        kw.update((styles or {}).get(label, {}))
        ax.plot(list(xs), list(ys), label=label, **kw)
    if logx:
        ax.set_xscale("log", base=2)
    if vline is not None:
        ax.axvline(vline, color="grey", ls="--", lw=1)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _md_to_html(md: str) -> str:
    """Just enough Markdown for our reports: headings, tables, lists, paragraphs, code, bold."""

    def inline(text: str) -> str:
        text = html.escape(text)
        text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
        return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)

    out, lines, i = [], md.splitlines(), 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            cells = [[c.strip() for c in r.strip().strip("|").split("|")] for r in block]
            body = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
            out.append("<table><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells[0])
                       + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body]
            out.append("</tbody></table>")
            continue
        m = re.match(r"^(#{1,4}) (.*)", line)
        if m:
            level = len(m.group(1)) + 1
            out.append(f"<h{level}>{inline(m.group(2))}</h{level}>")
        elif line.startswith(("- ", "* ")):
            items = []
            while i < len(lines) and lines[i].startswith(("- ", "* ")):
                items.append(f"<li>{inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
            continue
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
        i += 1
    return "\n".join(out)


_CSS = """body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;
padding:4px 8px;text-align:right}th{background:#f3f3f3}td:first-child{text-align:left}
img{max-width:100%;border:1px solid #eee}code{background:#f5f5f5;padding:0 3px}
.meta{font-size:12px;color:#555;white-space:pre-wrap}"""


def _render(data: dict[str, Any], out_dir: Path) -> None:
    title = data["title"]
    md = f"# {title}\n\n{data['table_md']}\n"
    if data.get("notes"):
        md += f"\n{data['notes']}\n"
    (out_dir / TABLE_NAME).write_text(md)
    figs = []
    for fig in data.get("figures", []):
        p = out_dir / fig["path"]
        if p.is_file():
            b64 = base64.b64encode(p.read_bytes()).decode()
            figs.append(f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(fig["path"])}">'
                        f"<figcaption>{html.escape(fig.get('caption', ''))}</figcaption></figure>")
    meta = html.escape(json.dumps(data.get("meta", {}), indent=1, default=str))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body>{_md_to_html(md)}\n{''.join(figs)}\n"
            f"<h3>Run metadata</h3><div class='meta'>{meta}</div></body></html>\n")
    (out_dir / HTML_NAME).write_text(page)


def write_report(name: str, report: ExperimentReport, out_dir: Path) -> dict[str, Path]:
    """Write ``results.json``, ``table.md`` and ``report.html`` into ``out_dir``."""
    out_dir = Path(out_dir)
    figures = []
    for fig in report.figures:
        p = Path(fig.path)
        rel = p.relative_to(out_dir) if p.is_absolute() and out_dir in p.parents else Path(p.name)
        figures.append({"path": rel.as_posix(), "caption": fig.caption})
    data = {
        "experiment": name,
        "title": report.title,
        "meta": report.meta,
        "rows": report.rows,
        "table_md": report.table_md,
        "notes": report.notes,
        "figures": figures,
    }
    (out_dir / RESULTS_NAME).write_text(json.dumps(data, indent=1, default=str) + "\n")
    _render(data, out_dir)
    return {"results": out_dir / RESULTS_NAME, "table": out_dir / TABLE_NAME,
            "html": out_dir / HTML_NAME}


def load_report(out_dir: Path) -> tuple[str, ExperimentReport]:
    """Read ``results.json`` back into ``(experiment name, ExperimentReport)``."""
    path = Path(out_dir) / RESULTS_NAME
    if not path.is_file():
        raise ValueError(f"{path} does not exist: is {out_dir} a lab results folder?")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    missing = [k for k in ("experiment", "title", "rows", "table_md") if k not in data]
    if missing:
        raise ValueError(f"{path} lacks the key(s) {missing}")
    figs = [Figure(Path(out_dir) / f["path"], f.get("caption", "")) for f in data.get("figures", [])]
    return data["experiment"], ExperimentReport(
        data["title"], data["rows"], data["table_md"], figs, data.get("notes", ""),
        data.get("meta", {}),
    )


def rebuild_report(out_dir: Path) -> dict[str, Path]:
    """Regenerate ``table.md`` and ``report.html`` from ``results.json``."""
    name, report = load_report(out_dir)
    return write_report(name, report, Path(out_dir))
