"""Micro presets of the attention experiments: each runs, writes a table, a PNG and notes."""

from __future__ import annotations

import pytest
import torch

from formerlab.lab.base import EXPERIMENTS, RunContext
from formerlab.lab.experiments import decoder_only, entropy_invariance, gau_vs_mha  # noqa: F401
from formerlab.lab.experiments.decoder_only import seq2seq_batch
from formerlab.lab.experiments.gau_vs_mha import build_models, equal_param_expansion
from formerlab.lab.experiments.gau_vs_mha import preset_config as gau_preset
from formerlab.lab.report import write_report


@pytest.mark.parametrize("name", ["gau-vs-mha", "decoder-only", "entropy-invariance"])
def test_micro_preset_writes_report(name, tmp_path):
    ctx = RunContext(preset="micro", out_dir=tmp_path / name, device=torch.device("cpu"),
                     progress=False, cache_dir=tmp_path / "cache")
    report = EXPERIMENTS.get(name)(ctx)
    paths = write_report(name, report, ctx.out_dir)
    assert report.rows and "|---" in report.table_md and "## Findings" in report.notes
    assert report.figures and all(f.path.is_file() and f.path.suffix == ".png"
                                  for f in report.figures)
    assert paths["html"].is_file()
    meta = EXPERIMENTS.meta(name)
    assert "kexue.fm/archives" in meta["post"] and set(meta["presets"]) == {"micro", "quick", "full"}


def test_gau_vs_mha_models_have_equal_parameters():
    for preset in ("micro", "quick", "full"):
        models = build_models(gau_preset(preset))
        counts = [sum(p.numel() for p in m.parameters()) - m.embed_tokens.weight.numel()
                  for m in models.values()]
        assert abs(counts[0] - counts[1]) / counts[0] < 0.06, (preset, counts)
    assert equal_param_expansion(128, 48, 12 * 128 ** 2) == 240


def test_seq2seq_batch_labels_and_segments():
    ids, labels, seg = seq2seq_batch("reverse", 3, 4, 10, seed=0, step=0)
    assert ids.shape == (3, 9) and seg[:, :5].sum() == 0 and bool(seg[:, 5:].all())
    assert torch.equal(ids[:, 5:], ids[:, :4].flip(-1))
    assert bool((labels[:, :5] == -100).all()) and torch.equal(labels[:, 5:], ids[:, 5:])
    s_ids, _, _ = seq2seq_batch("sort", 3, 4, 10, seed=0, step=0)
    assert torch.equal(s_ids[:, 5:], s_ids[:, :4].sort(-1).values)
    with pytest.raises(ValueError, match="reverse"):
        seq2seq_batch("copy", 1, 2, 5, seed=0, step=0)
