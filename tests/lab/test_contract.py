"""Every registered experiment keeps the lab's contract: presets, claims citing a post, a micro
run whose results.json carries rows with seeds and a verdict for every claim, and a report."""

from __future__ import annotations

import json

import pytest

from formerlab.lab import EXPERIMENTS, STANDARD_PRESETS, list_experiments
from formerlab.lab.claims import INCONCLUSIVE, NOT_REPRODUCED, NOT_TESTED, REPRODUCED

list_experiments()  # registers them all
NAMES = sorted(EXPERIMENTS)
STATUSES = {REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE, NOT_TESTED}


def test_the_lab_has_its_experiments():
    assert {"extrapolation", "position-probe"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_declarations(name):
    exp = EXPERIMENTS.get(name)
    assert set(STANDARD_PRESETS) <= set(exp.presets), f"{name} lacks a standard preset"
    for preset in exp.presets:
        cfg = exp.preset(preset)
        assert type(cfg).from_dict(cfg.to_dict()) == cfg, f"{name}/{preset} does not round-trip"
    assert exp.claims, f"{name} declares no claim of the blog"
    ids = [c.id for c in exp.claims]
    assert len(set(ids)) == len(ids), f"{name}: duplicate claim ids"
    for c in exp.claims:
        assert "kexue.fm/archives/" in c.post and c.statement.strip()
    assert "kexue.fm/archives/" in exp.post


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_micro_run_writes_results_with_verdicts(name, micro_run):
    _data, paths = micro_run(name)
    saved = json.loads(paths["results"].read_text())
    assert saved["experiment"] == name and saved["meta"]["complete"]
    assert saved["rows"] and all("seed" in r for r in saved["rows"])
    assert {"versions", "machine", "seconds", "config"} <= set(saved["meta"])
    assert len(saved["claims"]) == len(EXPERIMENTS.get(name).claims)
    for c in saved["claims"]:
        assert c["status"] in STATUSES and c["evidence"], c
    assert paths["table"].read_text().startswith("# ")
    html = paths["html"].read_text()
    assert "claim of the blog" in html
