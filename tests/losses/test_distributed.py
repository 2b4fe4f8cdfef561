"""torchrun, 2 gloo processes: the contrastive accumulator on a DDP encoder (global-batch loss
over gathered representations) and the quantiser's all-reduced EMA equal one process with the
whole batch."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_processes_equal_one(tmp_path):
    out = tmp_path / "rank0.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[2] / "src")
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(WORKER), str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    got = torch.load(out, weights_only=True)

    sys.path.insert(0, str(WORKER.parent))
    try:
        import ddp_worker
    finally:
        sys.path.pop(0)
    model, x, vq, z = ddp_worker.build()
    loss = ddp_worker.loss_fn(model(x))
    loss.backward()
    for g, p in zip(got["grads"], model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=0, atol=1e-12)
    vq(z)
    torch.testing.assert_close(got["codebook"], vq.codebook, rtol=1e-6, atol=1e-6)
