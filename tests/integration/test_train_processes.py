"""Real processes: a run killed with SIGKILL resumes bit-for-bit; torchrun DDP (gloo, 2
processes) gives the weights of one process with the same global batch."""

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

pytestmark = pytest.mark.integration

TRAIN = [sys.executable, "-m", "formerlab", "train", "--preset", "micro", "--device", "cpu",
         "--no-progress"]


def _env():
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _final(path):
    return load_file(str(path / "final" / "model.safetensors"))


def test_sigkill_then_resume_is_bit_exact(tmp_path):
    opts = ["--set", "train.steps=240", "--set", "train.checkpoint_every=10",
            "--set", "model.hidden_size=48"]
    subprocess.run([*TRAIN, "--out", str(tmp_path / "a"), *opts], check=True, env=_env(),
                   capture_output=True, timeout=300)
    b = tmp_path / "b"
    proc = subprocess.Popen([*TRAIN, "--out", str(b), *opts], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = b / "checkpoints" / "latest"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() >= "step-00000030":
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training finished before it could be killed; raise the steps"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (b / "final").exists()
    killed_at = latest.read_text().strip()
    res = subprocess.run([*TRAIN, "--out", str(b), *opts, "--resume"], check=True, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert f'"resumed_from": {int(killed_at.split("-")[1])}' in res.stdout
    wa, wb = _final(tmp_path / "a"), _final(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_torchrun_ddp_equals_single_process(tmp_path):
    opts = ["--set", "train.steps=6", "--set", "train.batch_size=8"]
    subprocess.run([*TRAIN, "--out", str(tmp_path / "single"), *opts], check=True, env=_env(),
                   capture_output=True, timeout=300)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "formerlab", *TRAIN[3:], "--out", str(tmp_path / "ddp"), *opts]
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    single, ddp = _final(tmp_path / "single"), _final(tmp_path / "ddp")
    init = _final_init(tmp_path)
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-6, msg=k)
        if k.endswith("q_proj.weight"):
            assert not torch.allclose(single[k], init[k]), "training must have changed weights"


def _final_init(tmp_path):
    subprocess.run([*TRAIN, "--out", str(tmp_path / "init"), "--set", "train.steps=1",
                    "--set", "train.lr=1e-12", "--set", "train.batch_size=8"], check=True,
                   env=_env(), capture_output=True, timeout=300)
    return _final(tmp_path / "init")


@pytest.mark.slow
def test_torchrun_fsdp_equals_single_process_and_resumes(tmp_path):
    """FSDP2 over two gloo processes trains the model of one process (and its checkpoints are
    the usual format: a sharded run resumes, a plain run's checkpoint loads into FSDP)."""
    opts = ["--set", "train.steps=6", "--set", "train.batch_size=8", "--set",
            "train.checkpoint_every=3"]
    subprocess.run([*TRAIN, "--out", str(tmp_path / "single"), *opts], check=True, env=_env(),
                   capture_output=True, timeout=300)
    run = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "formerlab", *TRAIN[3:], "--set", "train.parallel=fsdp"]
    res = subprocess.run([*run, "--out", str(tmp_path / "fsdp"), *opts], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    single, fsdp = _final(tmp_path / "single"), _final(tmp_path / "fsdp")
    assert single.keys() == fsdp.keys()
    for k in single:
        torch.testing.assert_close(fsdp[k], single[k], rtol=1e-5, atol=1e-6, msg=k)
    # continue the single-process run's step-3 checkpoint under FSDP: the same end point
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(tmp_path / "single", resumed)
    shutil.rmtree(resumed / "final")
    (resumed / "checkpoints" / "latest").write_text("step-00000003")
    res = subprocess.run([*run, "--out", str(resumed), *opts, "--resume"], env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for k, v in _final(resumed).items():
        torch.testing.assert_close(v, single[k], rtol=1e-5, atol=1e-6, msg=k)
