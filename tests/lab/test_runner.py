"""The lab runner: seeds and their spread, resuming, RNG isolation, results before figures (and
without matplotlib), rebuilding the report."""

from __future__ import annotations

import builtins
import contextlib
import dataclasses
import json

import pytest
import torch

from formerlab.config import Config
from formerlab.lab import (
    EXPERIMENTS,
    Claim,
    Experiment,
    LinePlot,
    Ordering,
    rebuild_report,
    run_experiment,
    series_over,
)
from formerlab.lab import figures as lab_figures


@dataclasses.dataclass
class ToyConfig(Config):
    gap: float = 1.0


class Toy(Experiment):
    """Method a is better than b by ``gap`` plus seed noise drawn from ctx.generator."""

    name, title, post = "toy-lab-test", "toy", "https://kexue.fm/archives/0"
    config = ToyConfig
    presets = {"micro": ToyConfig, "quick": ToyConfig, "full": ToyConfig}
    claims = [Claim("a-beats-b", "a beats b", post,
                    Ordering("score", {"method": "a", "x": 1}, {"method": "b", "x": 1}, margin=0.1))]
    calls: list[int] = []

    def run(self, config, ctx):
        Toy.calls.append(ctx.seed)
        noise = torch.rand(2, generator=ctx.generator).tolist()
        torch.rand(3)  # the global RNG may be used inside a seed: it is forked and restored
        rows = [{"method": "a", "x": x, "score": config.gap + noise[0] + x} for x in (1, 2)]
        rows += [{"method": "b", "x": x, "score": noise[1] + x} for x in (1, 2)]
        return rows, {"note": ctx.seed}

    def table(self, results):
        return f"a: {results.fmt('score', method='a', x=1)}"

    def figures(self, results):
        return [LinePlot("toy", "toy", "x", "score",
                         [series_over(results, "score", "x", m, method=m) for m in "ab"])]


@contextlib.contextmanager
def registered():
    EXPERIMENTS.add(Toy.name, Toy())
    try:
        yield
    finally:
        EXPERIMENTS._items.pop(Toy.name)
        EXPERIMENTS._meta.pop(Toy.name)


def test_seeds_verdicts_resume_and_rng_isolation(tmp_path):
    out = tmp_path / "toy"
    with registered():
        Toy.calls.clear()
        before = torch.get_rng_state()
        data, paths = run_experiment(Toy.name, preset="micro", seeds=2, out_dir=out,
                                     progress=False)
        assert torch.equal(torch.get_rng_state(), before), "the caller's RNG must be untouched"
        assert sorted({r["seed"] for r in data["rows"]}) == [0, 1] and Toy.calls == [0, 1]
        (claim,) = data["claims"]
        assert claim["status"] == "reproduced" and "2 seeds" in claim["evidence"]
        assert data["meta"]["seeds"] == [0, 1] and data["meta"]["complete"]
        assert {"results", "table", "toy", "html"} <= set(paths)
        # a third seed reuses the two stored ones
        data, _ = run_experiment(Toy.name, preset="micro", seeds=3, out_dir=out, progress=False)
        assert Toy.calls == [0, 1, 2] and len(data["rows"]) == 12
        assert data["meta"]["reused_seeds"] == [0, 1]
        assert sorted(data["meta"]["seed_seconds"]) == ["0", "1", "2"]
        # same seed, same numbers; a changed config is not mixed with the stored seeds
        again, _ = run_experiment(Toy.name, preset="micro", seeds=1, out_dir=tmp_path / "b",
                                  progress=False)
        assert again["rows"] == [r for r in data["rows"] if r["seed"] == 0]
        tie, _ = run_experiment(Toy.name, preset="micro", seeds=1, out_dir=out, progress=False,
                                config=ToyConfig(gap=0.0))
        assert Toy.calls[-1] == 0 and len(tie["rows"]) == 4
        assert tie["claims"][0]["status"] in ("inconclusive", "not reproduced")
    html = (out / "report.html").read_text()
    assert "claim of the blog" in html and html.index("Claims") < html.index("Results")


def test_results_are_written_before_figures_and_without_matplotlib(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.split(".")[0] == "matplotlib":
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    monkeypatch.setattr(lab_figures, "_WARNED", [])
    out = tmp_path / "nompl"
    with registered(), pytest.warns(UserWarning, match=r"pip install 'formerlab\[lab\]'"):
        _data, _paths = run_experiment(Toy.name, preset="micro", seeds=1, out_dir=out,
                                     progress=False)
    assert json.loads((out / "results.json").read_text())["claims"][0]["id"] == "a-beats-b"
    assert (out / "table.md").is_file() and not (out / "toy.png").exists()
    assert "matplotlib is missing" in (out / "report.html").read_text()
    monkeypatch.setattr(builtins, "__import__", real_import)
    rebuilt = rebuild_report(out)  # with matplotlib back, the figures are drawn from the JSON
    assert rebuilt["toy"].is_file()


def test_bad_requests_name_the_choices(tmp_path):
    with registered():
        with pytest.raises(ValueError, match="has presets \\['micro', 'quick', 'full'\\]"):
            run_experiment(Toy.name, preset="huge", out_dir=tmp_path, progress=False)
        with pytest.raises(ValueError, match="seeds"):
            run_experiment(Toy.name, preset="micro", seeds=0, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown experiment 'nope'; valid experiment names"):
        run_experiment("nope", out_dir=tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        rebuild_report(tmp_path / "missing")


def test_cli_set_overrides_the_preset_config(tmp_path, capsys):
    """``formerlab lab run NAME --set KEY=VALUE`` runs the preset with that field replaced."""
    from formerlab import cli
    from formerlab.lab import experiment_config

    cfg = experiment_config("position-probe", "micro", {"steps": 5})
    assert cfg.steps == 5
    assert experiment_config("position-probe", "micro").steps != 5
    out = tmp_path / "run"
    assert cli.main(["lab", "run", "position-probe", "--preset", "micro", "--out", str(out),
                     "--no-progress", "--set", "steps=5", "--cache-dir", str(tmp_path)]) == 0
    stored = json.loads((out / "results.json").read_text())["meta"]["config"]
    assert stored["steps"] == 5
    assert cli.main(["lab", "run", "position-probe", "--preset", "micro", "--out", str(out),
                     "--set", "lrr=1"]) == 2
    assert "has no key 'lrr'" in capsys.readouterr().err


def test_train_set_items_need_a_model_or_train_scope():
    """``formerlab train --set`` shares the KEY=VALUE parser of ``lab run --set``."""
    from formerlab import cli

    model, train = {}, {}
    cli._apply_sets(model, train, ["model.hidden_size=64", "train.lr=0.01"])
    assert model == {"hidden_size": 64} and train == {"lr": 0.01}
    with pytest.raises(ValueError, match="model.KEY=VALUE or train.KEY=VALUE, got 'x.y'"):
        cli._apply_sets({}, {}, ["x.y=1"])
    with pytest.raises(ValueError, match="expects KEY=VALUE"):
        cli._apply_sets({}, {}, ["model.hidden_size"])
