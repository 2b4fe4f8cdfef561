"""torchrun, 2 gloo processes, masked labels: the ranks hold unequal numbers of labelled tokens,
and the update still equals one process with the whole batch (every token weighs the same)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).with_name("ddp_trainer_worker.py")


def test_masked_loss_under_ddp_equals_one_process(tmp_path):
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
        import ddp_trainer_worker
    finally:
        sys.path.pop(0)
    single = ddp_trainer_worker.train()[0].state_dict()
    for k, v in single.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-5, msg=k)
