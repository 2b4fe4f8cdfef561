"""``formerlab lab run`` under ``torchrun`` (gloo, 2 processes) measures what one process
measures: the same verdicts and rows, written once, by rank 0.

``emo-vs-ce`` micro is the cheapest experiment that trains through both lab paths: the
trained-model cache (the pre-trained LM) and ``ctx.train`` (the continual-training arms).
"""

import json
import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LAB = ["-m", "formerlab", "lab", "run", "emo-vs-ce", "--preset", "micro", "--device", "cpu",
       "--no-progress"]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TITLE = "# EMO vs cross-entropy"


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd, out, cache, *extra):
    res = subprocess.run([*cmd, *LAB, "--out", str(out), "--cache-dir", str(cache), *extra],
                         env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res, json.loads((out / "results.json").read_text())


def _same_rows(got, want, tol=1e-4):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for k, v in w.items():
            if isinstance(v, float):
                assert g[k] == pytest.approx(v, abs=tol), (w.get("arm"), k)
            else:
                assert g[k] == v, (w.get("arm"), k)


def _metrics_lines(cache):
    return [len(p.read_text().splitlines()) for p in cache.rglob("metrics.jsonl")]


def test_torchrun_lab_run_equals_single_process(tmp_path):
    _, single = _run([sys.executable], tmp_path / "single", tmp_path / "cache-single")
    statuses = [c["status"] for c in single["claims"]]

    # DDP: the cache trains the pre-trained LM over both processes, then the arms via ctx.train
    res, ddp = _run(TORCHRUN, tmp_path / "ddp", tmp_path / "cache")
    assert res.stdout.count(TITLE) == 1, "only rank 0 prints"
    assert [c["status"] for c in ddp["claims"]] == statuses
    _same_rows(ddp["rows"], single["rows"])
    assert ddp["meta"]["machine"]["processes"] == 2
    assert ddp["extras"]["0"]["pretrain"]["cached"] is False
    # rank 0 alone logs the cached training: 30 steps logged every 10, each record once
    assert _metrics_lines(tmp_path / "cache") == _metrics_lines(tmp_path / "cache-single") == [3]

    # FSDP2 for the arms; the pre-trained LM comes from the cache the DDP run wrote
    res, fsdp = _run(TORCHRUN, tmp_path / "fsdp", tmp_path / "cache", "--parallel", "fsdp")
    assert res.stdout.count(TITLE) == 1
    assert fsdp["extras"]["0"]["pretrain"]["cached"] is True
    assert fsdp["meta"]["parallel"] == "fsdp"
    assert [c["status"] for c in fsdp["claims"]] == statuses
    _same_rows(fsdp["rows"], single["rows"])
    # one results.json per run folder, no temporary file left by a second writer
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("results.json*")) == [
        "ddp/results.json", "fsdp/results.json", "single/results.json"]
