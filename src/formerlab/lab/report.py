"""Writing a run's outputs: ``results.json`` and ``table.md`` first, then figures, then the HTML.

``results.json`` holds everything needed to rebuild the human-facing files — the tidy rows of every
seed, the claims with their verdicts, the table, the notes, the plot data and the run metadata —
so ``formerlab report DIR`` regenerates ``table.md``, the PNGs and ``report.html`` without
re-running anything. Results are on disk before any figure is drawn: a missing matplotlib or a
plotting error never loses a run. ``report.html`` shows the claims as a table above the numbers,
embeds its figures as base64 and needs no network.

An experiment may add HTML of its own (``Experiment.html_sections``, e.g. a coloured heat map the
Markdown tables cannot show): each :class:`HtmlSection` is stored in ``results.json`` under
``html_sections``, written as a self-contained page ``<name>.html`` in the run folder and embedded
in ``report.html`` after the figures, with a link to that page.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .figures import LinePlot, render

__all__ = ["HTML_NAME", "RESULTS_NAME", "TABLE_NAME", "HtmlSection", "claims_markdown",
           "load_results", "markdown_table", "rebuild_report", "write_report"]

RESULTS_NAME, TABLE_NAME, HTML_NAME = "results.json", "table.md", "report.html"


@dataclasses.dataclass
class HtmlSection:
    """Extra HTML an experiment contributes to its report.

    Attributes:
        name: File stem of the standalone page ``<name>.html`` written into the run folder
            (letters, digits, ``_`` and ``-``; not ``report``, ``results`` or ``table``).
        title: Plain-text heading (escaped here).
        body: An HTML fragment, self-contained (no scripts, no external resources); the
            experiment escapes every piece of text it puts in (``html.escape``).
        style: CSS rules the fragment needs, added to both pages.
    """

    name: str
    title: str
    body: str
    style: str = ""

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", self.name or "") or \
                self.name in ("report", "results", "table"):
            raise ValueError("HtmlSection name must be letters, digits, '_' or '-' and not "
                             f"report/results/table, got {self.name!r}")

    def to_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)

    def page(self) -> str:
        """The section as a standalone HTML page."""
        title = html.escape(self.title)
        return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
                f"<style>{_CSS}\n{self.style}</style></head><body><h1>{title}</h1>\n"
                f"{self.body}\n</body></html>\n")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats are printed with two decimals."""

    def fmt(v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "–"
        return f"{v:.2f}" if isinstance(v, float) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def claims_markdown(claims: list[dict[str, Any]]) -> str:
    """The claims table: statement, post, verdict, evidence."""
    if not claims:
        return ""
    rows = [[c["statement"], c["post"].removeprefix("https://"), f"**{c['status']}**",
             c["evidence"]] for c in claims]
    return markdown_table(["claim of the blog", "post", "verdict", "evidence"], rows)


def _markdown(data: dict[str, Any]) -> str:
    seeds = data.get("meta", {}).get("seeds", [])
    md = f"# {data['title']}\n\n"
    if data.get("claims"):
        md += (f"## Claims ({len(seeds)} seed{'s' if len(seeds) != 1 else ''}: "
               f"{', '.join(map(str, seeds))})\n\n{claims_markdown(data['claims'])}\n\n")
    md += f"## Results\n\n{data['table_md']}\n"
    if data.get("notes"):
        md += f"\n{data['notes']}\n"
    return md


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
            cells = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip())[1:-1]]
                     for r in block]
            body = [r for r in cells[1:] if not all(set(c) <= set("-: ") for c in r)]
            cls = " class='claims'" if cells and cells[0] and cells[0][0] == "claim of the blog" else ""
            out.append(f"<table{cls}><thead><tr>" + "".join(f"<th>{inline(c)}</th>" for c in cells[0])
                       + "</tr></thead><tbody>")
            out += ["<tr>" + "".join(f"<td>{inline(c)}</td>" for c in r) + "</tr>" for r in body]
            out.append("</tbody></table>")
            continue
        m = re.match(r"^(#{1,4}) (.*)", line)
        if m:
            level = len(m.group(1))
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
table.claims td{text-align:left}img{max-width:100%;border:1px solid #eee}
code{background:#f5f5f5;padding:0 3px}.meta{font-size:12px;color:#555;white-space:pre-wrap}"""


def _sections(data: dict[str, Any]) -> list[HtmlSection]:
    return [HtmlSection(**d) for d in data.get("html_sections", [])]


def _html(data: dict[str, Any], md: str, out_dir: Path) -> str:
    sections = _sections(data)
    extra = "".join(f"<section><h2>{html.escape(s.title)}</h2><p><a href='{s.name}.html'>"
                    f"standalone page ({s.name}.html)</a></p>\n{s.body}</section>\n"
                    for s in sections)
    style = "\n".join(s.style for s in sections if s.style)
    figs = []
    for plot in data.get("plots", []):
        p = out_dir / f"{plot['name']}.png"
        if p.is_file():
            b64 = base64.b64encode(p.read_bytes()).decode()
            figs.append(f'<figure><img src="data:image/png;base64,{b64}" alt="{html.escape(plot["title"])}">'
                        f"<figcaption>{html.escape(plot.get('caption', ''))}</figcaption></figure>")
    if data.get("plots") and not figs:
        figs.append("<p><i>Figures were not drawn (matplotlib is missing: "
                    "pip install 'formerlab[lab]', then formerlab report DIR).</i></p>")
    meta = html.escape(json.dumps(data.get("meta", {}), indent=1, default=str))
    title = html.escape(data["title"])
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title>"
            f"<style>{_CSS}\n{style}</style></head><body>{_md_to_html(md)}\n{''.join(figs)}\n"
            f"{extra}<h3>Run metadata</h3><div class='meta'>{meta}</div></body></html>\n")


def write_report(data: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``results.json`` and ``table.md``, then the figures, the pages of the experiment's
    HTML sections and ``report.html``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    results, table = out_dir / RESULTS_NAME, out_dir / TABLE_NAME
    tmp = results.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    tmp.replace(results)  # atomic: an interrupted write never leaves half a file
    md = _markdown(data)
    table.write_text(md)
    paths = {"results": results, "table": table}
    for p in render([LinePlot.from_dict(d) for d in data.get("plots", [])], out_dir):
        paths[p.stem] = p
    for section in _sections(data):
        page = out_dir / f"{section.name}.html"
        page.write_text(section.page())
        paths[section.name] = page
    (out_dir / HTML_NAME).write_text(_html(data, md, out_dir))
    paths["html"] = out_dir / HTML_NAME
    return paths


def load_results(out_dir: Path) -> dict[str, Any]:
    """The contents of ``results.json`` (``ValueError`` naming what is wrong)."""
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
    return data


def rebuild_report(out_dir: Path) -> dict[str, Path]:
    """Regenerate ``table.md``, the figures and ``report.html`` from ``results.json``."""
    return write_report(load_results(out_dir), Path(out_dir))
