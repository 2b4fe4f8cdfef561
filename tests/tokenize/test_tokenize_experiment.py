"""The ``tokenizer-sampling`` lab experiment (micro preset) and the ``formerlab`` CLI wiring."""

from __future__ import annotations

import pytest
import torch

from formerlab.lab.base import EXPERIMENTS, RunContext


def test_experiment_micro(tmp_path):
    pytest.importorskip("matplotlib")
    from formerlab.lab.experiments import tokenizer_sampling as exp

    assert "tokenizer-sampling" in EXPERIMENTS
    ctx = RunContext(preset="micro", out_dir=tmp_path, device=torch.device("cpu"), seed=0,
                     progress=False)
    report = EXPERIMENTS.get("tokenizer-sampling")(ctx)
    assert report.figures and report.figures[0].path.is_file()
    assert report.figures[0].path.read_bytes()[:4] == b"\x89PNG"
    watch = {(r["sampler"], r["segmentation"]): r["empirical"] for r in report.rows
             if r["example"] == "watching"}
    n = exp.SAMPLES["micro"]
    tol = 5 * (0.25 / n) ** 0.5
    for seg in ("watch|ing", "wat|ching", "w|atching"):
        assert abs(watch[("perfect", seg)] - 1 / 3) < tol
    assert abs(watch[("legacy (longest first)", "watch|ing")] - 0.5) < tol
    assert abs(watch[("legacy (shortest first)", "w|atching")] - 0.5) < tol
    rich = {r["sampler"]: r for r in report.rows if r["example"] == "watching-rich"}
    assert rich["perfect"]["total_variation"] < rich["legacy"]["total_variation"]
    assert "| segmentation |" in report.table_md and "1/4, 1/4, 1/2" in report.notes


def test_formerlab_cli_has_tokenizer_once_wired():
    from formerlab import cli

    parser = cli.build_parser()
    try:
        args = parser.parse_args(["tokenizer", "stats", "--vocab", "v.json"])
    except SystemExit:
        pytest.skip("the lead has not wired `formerlab tokenizer` into formerlab.cli yet")
    assert callable(args.func)
