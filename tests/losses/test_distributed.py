"""torchrun, 2 gloo processes: the contrastive accumulator on a DDP encoder (global-batch loss
over gathered representations) and the quantiser's all-reduced EMA equal one process with the
whole batch."""

from pathlib import Path

import pytest
import torch

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_processes_equal_one(torchrun_worker):
    got, ddp_worker = torchrun_worker(WORKER)
    model, x, vq, z = ddp_worker.build()
    loss = ddp_worker.loss_fn(model(x))
    loss.backward()
    for g, p in zip(got["grads"], model.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=1e-10)
    torch.testing.assert_close(got["loss"], loss.detach(), rtol=0, atol=1e-12)
    vq(z)
    torch.testing.assert_close(got["codebook"], vq.codebook, rtol=1e-6, atol=1e-6)
