"""Experiments contribute HTML sections to their report: a standalone page in the run folder,
embedded in report.html with a link, stored in results.json so a rebuild keeps it."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest

from formerlab.config import Config
from formerlab.lab import EXPERIMENTS, Experiment, rebuild_report, run_experiment
from formerlab.lab.report import HtmlSection, write_report


@dataclasses.dataclass
class _Config(Config):
    pass


class _Sections(Experiment):
    name, title, post = "sections-lab-test", "sections", "https://kexue.fm/archives/0"
    config = _Config
    presets = {"micro": _Config}
    claims = []

    def run(self, config, ctx):
        return [{"x": 1, "score": 2.0}]

    def table(self, results):
        return "| x |\n|---|\n| 1 |"

    def html_sections(self, results):
        score = results.rows[0]["score"]
        return [HtmlSection("extra_map", "Map <1>", f"<p class='hot'>score {score}</p>",
                            ".hot{color:red}")]


@contextlib.contextmanager
def _registered():
    EXPERIMENTS.add(_Sections.name, _Sections())
    try:
        yield
    finally:
        EXPERIMENTS._items.pop(_Sections.name)
        EXPERIMENTS._meta.pop(_Sections.name)


def test_a_section_becomes_a_page_and_part_of_the_report(tmp_path):
    with _registered():
        data, paths = run_experiment(_Sections.name, preset="micro", out_dir=tmp_path,
                                     progress=False)
    page = paths["extra_map"]
    assert page == tmp_path / "extra_map.html"
    text = page.read_text()
    assert text.startswith("<!doctype html>") and "<title>Map &lt;1&gt;</title>" in text
    assert "<p class='hot'>score 2.0</p>" in text and ".hot{color:red}" in text
    report = paths["html"].read_text()
    assert "<h2>Map &lt;1&gt;</h2>" in report and "href='extra_map.html'" in report
    assert "<p class='hot'>score 2.0</p>" in report and ".hot{color:red}" in report
    assert report.index("Results") < report.index("Map &lt;1&gt;") < report.index("Run metadata")
    stored = json.loads((tmp_path / "results.json").read_text())["html_sections"]
    assert stored == data["html_sections"] == [
        {"name": "extra_map", "title": "Map <1>", "body": "<p class='hot'>score 2.0</p>",
         "style": ".hot{color:red}"}]
    page.unlink()  # rebuilt from results.json, without the experiment
    assert rebuild_report(tmp_path)["extra_map"].read_text() == text


def test_reports_without_sections_are_unchanged(tmp_path):
    data = {"experiment": "x", "title": "t", "rows": [], "table_md": "no table"}
    paths = write_report(data, tmp_path)
    assert set(paths) == {"results", "table", "html"}
    assert "<section>" not in paths["html"].read_text()


@pytest.mark.parametrize("name", ["", "a b", "../up", "report", "table", "results"])
def test_section_names_are_file_stems(name):
    with pytest.raises(ValueError, match="HtmlSection name"):
        HtmlSection(name, "t", "")
