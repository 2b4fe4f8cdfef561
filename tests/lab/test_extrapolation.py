"""The extrapolation experiment on the micro preset: files, exact identities, cache reuse."""

import json

import pytest

from formerlab.lab import list_experiments, rebuild_report, run_experiment
from formerlab.lab.experiments.extrapolation import (
    METHODS,
    ExtrapolationConfig,
    _schedule_names,
    preset_config,
)


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro")
    cache = tmp_path_factory.mktemp("cache")
    report, paths = run_experiment("extrapolation", preset="micro", out_dir=out, device="cpu",
                                   progress=False, cache_dir=cache)
    return report, paths, out, cache


def test_writes_every_output(micro_run):
    _, paths, out, _ = micro_run
    data = json.loads(paths["results"].read_text())
    assert data["experiment"] == "extrapolation"
    keys = {"method", "length", "set", "accuracy", "loss"}
    assert all(keys <= set(r) for r in data["rows"])
    assert {r["set"] for r in data["rows"]} == {"repeated", "non_repeated", "last_n"}
    assert {r["length"] for r in data["rows"] if r["set"] != "last_n"} == {32, 128}
    table = paths["table"].read_text()
    assert "| method | 32 (train) | 128 rep. | 128 non-rep." in table
    html = paths["html"].read_text()
    assert html.count("data:image/png;base64,") == 4 and "<table>" in html
    assert (out / "accuracy_repeated.png").stat().st_size > 1000


def test_inference_methods_equal_baseline_at_train_length(micro_run):
    """Hard identity: every schedule (k = 1) and log n† (n <= L) is
    the baseline itself at the training length, bit for bit."""
    report, *_ = micro_run
    at_train = {(r["method"], r["set"]): (r["accuracy"], r["loss"]) for r in report.rows
                if r["length"] == 32 and r["set"] != "last_n"}
    checked = [m for m, _ in at_train if m in _schedule_names()]
    assert len(set(checked)) >= 4
    for (method, set_name), value in at_train.items():
        if method in _schedule_names():
            assert value == at_train[("baseline", set_name)], method


def test_rerope_with_covering_window_is_the_baseline(tiny_config):
    """ReRoPE/Leaky with w >= n is plain RoPE: identical logits."""
    import torch

    from formerlab.models import CausalLM

    torch.manual_seed(0)
    m = CausalLM(tiny_config).eval()
    x = torch.randint(0, 64, (2, 16))
    base = m(x).logits
    # train_len 32 -> ReRoPE window L/2 = 16 covers the 16 tokens; log n† is 1 below L
    for name in ("rerope", "rerope-logn_dagger"):
        METHODS.get(name).configure(m, 32, 16)
        torch.testing.assert_close(m(x).logits, base, rtol=1e-5, atol=1e-5)
    METHODS.get("rerope-w_quarter").configure(m, 32, 16)  # w = 8 < 16: a different function
    assert not torch.allclose(m(x).logits, base, atol=1e-4)
    m.reset_position_method()


def test_cache_is_reused(micro_run, tmp_path):
    _, _, _, cache = micro_run
    report, _ = run_experiment("extrapolation", preset="micro", out_dir=tmp_path, device="cpu",
                               progress=False, cache_dir=cache)
    assert report.meta["training"]["rope"]["cached"] is True


def test_rebuild_report(micro_run):
    _, paths, out, _ = micro_run
    paths["html"].unlink()
    rebuilt = rebuild_report(out)
    assert rebuilt["html"].is_file()


def test_listing_and_errors(tmp_path):
    names = [e["name"] for e in list_experiments()]
    assert "extrapolation" in names
    with pytest.raises(ValueError, match="valid experiment names: .*extrapolation"):
        run_experiment("extrapolaton", out_dir=tmp_path)
    with pytest.raises(ValueError, match="valid extrapolation method names"):
        ExtrapolationConfig(methods=["baseline", "magic"])
    with pytest.raises(ValueError, match="unknown preset"):
        preset_config("huge")
    assert {"baseline", "pi", "ntk_old", "nope", "sinusoidal", "ntk_mixed-logn_dagger", "yarn",
            "dynamic", "rerope", "leaky", "hwfa", "hwfa2", "invleaky", "rope_bias",
            "baseline-logn_pretrain"} <= set(METHODS)


def test_every_trained_variant_builds_trains_and_evaluates(tmp_path):
    """The full preset's trained variants, at micro size: a wiring bug must not wait for a
    multi-hour run to surface."""
    from formerlab import ModelConfig, TrainConfig
    from formerlab.lab.base import RunContext
    from formerlab.lab.experiments.extrapolation import run as run_extrapolation

    trained = [n for n in METHODS if not METHODS.get(n).inference_only]
    assert {"hwfa", "hwfa2", "invleaky", "rope_bias", "nope", "sinusoidal",
            "rerope-logn_pretrain"} <= set(trained)
    cfg = ExtrapolationConfig(
        train_len=16, test_multipliers=[2], num_samples=2, eval_batch_size=2,
        last_n_multipliers=[1, 2], methods=trained,
        model=ModelConfig(hidden_size=16, num_layers=4, num_heads=2),
        train=TrainConfig(steps=2, batch_size=2, seq_len=16, warmup_steps=1),
    )
    ctx = RunContext(preset="micro", out_dir=tmp_path, device="cpu", progress=False,
                     cache_dir=tmp_path / "cache")
    report = run_extrapolation(ctx, cfg)
    assert set(report.meta["training"]) == {METHODS.get(n).variant for n in trained}
    assert {r["method"] for r in report.rows} == set(trained)
    assert all(0.0 <= r["accuracy"] <= 1.0 for r in report.rows if r["accuracy"] is not None)
