"""long-context-scaling: the methods are the registered mixers at equal width, rows and ratios
are consistent, the memory probe measures a known allocation, the verdict rule. Times are
measured by the experiment, never asserted here."""

from __future__ import annotations

import pytest
import torch

from formerlab.attention.vq_layer import TransformerVQLayer
from formerlab.lab import run_experiment
from formerlab.lab.claims import NOT_REPRODUCED, NOT_TESTED, REPRODUCED, Results
from formerlab.lab.experiments.long_context_scaling import (
    DoublingRatio,
    LongContextConfig,
    build_method,
    peak_memory_mb,
)
from formerlab.models.mixers_recurrent import LinearAttentionMixer, RecurrentMixer


def test_methods_are_the_registered_mixers_at_equal_width():
    cfg = LongContextConfig(hidden=64, heads=4, num_codes=32, block_len=8)
    mods = {m: build_method(cfg, m) for m in cfg.methods}
    assert isinstance(mods["vq"], TransformerVQLayer) and mods["vq"].num_codes == 32
    assert isinstance(mods["lru"], RecurrentMixer) and isinstance(mods["linear"],
                                                                   LinearAttentionMixer)
    params = {m: sum(p.numel() for p in mod.parameters()) for m, mod in mods.items()}
    assert max(params.values()) <= 1.5 * min(params.values()), params
    x = torch.randn(2, 20, 64)
    with torch.no_grad():
        for mod in mods.values():
            assert mod(x, torch.arange(20))[0].shape == x.shape


def test_peak_memory_probe_sees_a_known_allocation():
    def fn():
        a = torch.ones(1 << 20)  # 4 MiB, kept while the next 8 MiB are allocated
        b = torch.ones(1 << 21)
        del b
        return a.sum()

    assert peak_memory_mb(fn, torch.device("cpu")) == pytest.approx(12.0, rel=0.01)


@pytest.mark.slow
def test_micro_run_rows_and_ratios(tmp_path):
    data, _ = run_experiment("long-context-scaling", preset="micro", device="cpu",
                             progress=False, out_dir=tmp_path)
    rows = data["rows"]
    key = {(r["method"], r["n"], r["mode"]): r for r in rows}
    assert len(key) == len(rows) == 4 * 3 * 2
    for (m, n, mode), r in key.items():
        assert r["time_ms"] > 0 and r["peak_mb"] >= 0
        if n > 64:
            assert r["ratio"] == pytest.approx(r["time_ms"] / key[m, n // 2, mode]["time_ms"])
        else:
            assert "ratio" not in r
    assert {c["status"] for c in data["claims"]} == {NOT_TESTED}  # micro lengths are too short
    assert [p["logy"] for p in data["plots"]] == [True, True]


def test_doubling_ratio_rule():
    def results(ratios):
        return Results([{"method": "vq", "mode": "forward", "n": 8192, "ratio": r, "seed": s}
                        for s, r in enumerate(ratios)])

    check = DoublingRatio("vq", at_most=2.2)
    assert check(results([1.9, 2.1])).status == REPRODUCED
    assert check(results([2.5, 3.1])).status == NOT_REPRODUCED
    assert DoublingRatio("vq", at_least=3.0)(results([3.5, 3.9])).status == REPRODUCED
    assert DoublingRatio("vq", min_n=16384, at_most=2.2)(results([1.0])).status == NOT_TESTED
