"""The ``tokenizer-sampling`` lab experiment (micro preset) and the ``formerlab`` CLI wiring."""

from __future__ import annotations

import json

import pytest
import torch

from formerlab.lab.base import EXPERIMENTS, RunContext


@pytest.mark.slow
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


def test_formerlab_cli_runs_the_tokenizer_commands(tmp_path, capsys, toy):
    """``formerlab tokenizer ...`` through the top-level parser and ``formerlab.cli.main``."""
    from formerlab import cli
    from formerlab.tokenize import UnigramTokenizer

    tok = UnigramTokenizer(toy.WATCHING)
    vocab = tok.save(tmp_path / "vocab.json")
    args = cli.build_parser().parse_args(["tokenizer", "stats", "--vocab", str(vocab)])
    assert args.command == "tokenizer" and args.tokenizer_command == "stats"
    assert cli.main(["tokenizer", "stats", "--vocab", str(vocab)]) == 0
    stats = json.loads(capsys.readouterr().out)
    # 256 byte pieces ("w" among them), wat/ing, watch/ching, atching, and 3 special tokens
    assert stats["pieces_by_length"] == {"1": 256, "3": 2, "5": 2, "7": 1}
    assert stats["vocab_size"] == 256 + 5 + 3 == tok.vocab_size
    assert cli.main(["tokenizer", "encode", "--vocab", str(vocab), "watching"]) == 0
    ids = [int(i) for i in capsys.readouterr().out.split()]
    assert ids == tok.encode("watching") and tok.decode(ids) == "watching"
    assert cli.main(["tokenizer", "stats", "--vocab", str(tmp_path / "missing.json")]) == 2
    assert "error" in capsys.readouterr().err
