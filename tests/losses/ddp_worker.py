"""Worker for tests/losses/test_distributed.py, launched by torchrun with 2 gloo processes.

Each rank holds half of a global batch: the contrastive accumulator on a DDP encoder and the
vector quantiser's synchronised EMA must give what one process gives with the whole batch.
Rank 0 writes the gradients, the loss and the codebook to ``argv[1]``.
"""

import sys

import torch
from torch import nn

from formerlab.losses import ContrastiveAccumulator, info_nce
from formerlab.quantize import VectorQuantizer
from formerlab.train.distributed import distributed_session


def build():
    """The shared setup: a float64 encoder, a global batch of 10, a quantiser, its data."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.randn(10, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    vq = VectorQuantizer(6, 3, ema_decay=0.5)
    z = torch.randn(40, 3, generator=torch.Generator().manual_seed(2))
    return model, x, vq, z


def loss_fn(h):
    return info_nce(h, temperature=0.1)


def main() -> None:
    torch.set_num_threads(1)
    with distributed_session(torch.device("cpu")) as info:
        rank, world = info.rank, info.world_size
        model, x, vq, z = build()
        ddp = nn.parallel.DistributedDataParallel(model)
        local = x.chunk(world)[rank]  # 5 rows each: chunks of 3 and 2
        loss = ContrastiveAccumulator(ddp, loss_fn, 3).step(local)
        vq(z.chunk(world)[rank])
        if rank == 0:
            torch.save({"grads": [p.grad for p in model.parameters()], "loss": loss,
                        "codebook": vq.codebook.clone()}, sys.argv[1])
        del ddp


if __name__ == "__main__":
    main()
