"""Run these tests single-threaded: the tensors are tiny, and on a shared 2-core machine intra-op
threads only oversubscribe the CPU (a tiny HF decode step went from 3 ms to 170 ms under load)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
