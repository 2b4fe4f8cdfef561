"""torchrun, 2 gloo processes, masked labels: the ranks hold unequal numbers of labelled tokens,
and the update still equals one process with the whole batch (every token weighs the same)."""

from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).with_name("ddp_trainer_worker.py")


def test_masked_loss_under_ddp_equals_one_process(torchrun_worker):
    got, worker = torchrun_worker(WORKER)
    single = worker.train()[0].state_dict()
    for k, v in single.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=1e-5, msg=k)
