"""Data parallelism through ``torchrun`` and PyTorch DDP (gloo on CPU, NCCL on CUDA).

``torchrun --nproc_per_node=2 -m formerlab.cli train ...`` sets ``RANK``/``WORLD_SIZE``;
:func:`init_distributed` joins the process group and every rank trains on its slice of each
step's global batch (see :mod:`formerlab.data.batching`), so two processes compute the same
update as one process with the same global batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator

import torch
import torch.distributed as dist

__all__ = [
    "DistInfo", "distributed_session", "init_distributed", "resolve_device", "shutdown_distributed",
]


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``"auto"``/``None`` → CUDA when available, else CPU; other strings are parsed."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return dev


@dataclasses.dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE > 1``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    if device.type == "cuda":
        torch.cuda.set_device(info.local_rank)
    return info


def shutdown_distributed(wait: bool = True) -> None:
    """Leave the process group; with ``wait`` every rank meets at a barrier first.

    Without the barrier a rank that finishes early tears down its gloo connections while a peer
    is still writing results; the peer's transport thread then aborts the process
    ("terminate called without an active exception") and torchrun reports a failure. After an
    error pass ``wait=False``: the peers may never reach the barrier.
    """
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


@contextlib.contextmanager
def distributed_session(device: torch.device) -> Iterator[DistInfo]:
    """``with distributed_session(device) as info:`` — join (under ``torchrun``) and always leave.

    A clean exit waits for every rank before leaving; an exception leaves at once and re-raises.
    """
    info = init_distributed(device)
    try:
        yield info
    except BaseException:
        shutdown_distributed(wait=False)
        raise
    shutdown_distributed()
