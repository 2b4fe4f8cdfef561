"""The ``formerlab`` command end to end (micro sizes, well under a minute)."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

CLI = [sys.executable, "-m", "formerlab"]


def sh(*args, check=True):
    res = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=240)
    if check:
        assert res.returncode == 0, res.stderr[-2000:]
    return res


def test_help_everywhere():
    for args in ([], ["train"], ["eval"], ["lab"], ["lab", "run"], ["lab", "list"], ["report"]):
        assert "usage: formerlab" in sh(*args, "--help").stdout


def test_lab_list_and_micro_run(tmp_path):
    assert "extrapolation" in sh("lab", "list").stdout
    out = tmp_path / "run"
    res = sh("lab", "run", "extrapolation", "--preset", "micro", "--out", str(out),
             "--device", "cpu", "--no-progress", "--cache-dir", str(tmp_path / "cache"))
    assert "| method |" in res.stdout and (out / "report.html").is_file()
    (out / "table.md").unlink()
    sh("report", str(out))
    assert (out / "table.md").is_file()


def test_train_then_eval(tmp_path, text_folder):
    run = tmp_path / "t"
    res = sh("train", "--preset", "micro", "--out", str(run), "--corpus", str(text_folder),
             "--set", "train.steps=5", "--no-progress", "--device", "cpu")
    assert json.loads(res.stdout.strip().splitlines()[-1])["steps"] == 5
    res = sh("eval", str(run / "final"), "--lengths", "32,64", "--num-samples", "2",
             "--corpus", str(text_folder), "--rope-type", "ntk_old", "--rope-params",
             '{"factor": 2}', "--json", "--device", "cpu")
    rows = json.loads(res.stdout)
    assert {r["length"] for r in rows} == {32, 64}


@pytest.mark.parametrize(
    "args, message",
    [
        (["lab", "run", "nope-such"], "valid experiment names"),
        (["train", "--out", "x", "--set", "model.hiden=3"], "allowed keys"),
        (["train", "--out", "x", "--corpus", "/no/such/path"], "/no/such/path does not exist"),
        (["report", "/no/such/dir"], "results.json does not exist"),
    ],
)
def test_errors_are_clear(args, message, tmp_path):
    res = sh(*args, check=False)
    assert res.returncode == 2 and message in res.stderr
