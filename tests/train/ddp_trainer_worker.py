"""Worker for tests/train/test_trainer_ddp.py, launched by torchrun with 2 gloo processes.

Trains a tiny CausalLM on batches whose rows keep different numbers of labelled tokens (so the
two ranks hold unequal token counts); rank 0 writes the final weights to ``argv[1]``.
"""

import sys

import torch

from formerlab import ModelConfig, TrainConfig
from formerlab.data import window_batch
from formerlab.models import CausalLM
from formerlab.train import Trainer, distributed_session

TOKENS = (torch.arange(20_000) * 7 % 61).long()
MODEL = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2)


def masked_batch(tc: TrainConfig):
    """Rows of the global batch; row ``r`` keeps its labels from position ``5 r`` on."""

    def fn(step, rows):
        ids = window_batch(TOKENS, tc.batch_size, tc.seq_len, seed=tc.seed, step=step, rows=rows)
        labels = ids.clone()
        first = (5 * torch.arange(rows.start, rows.stop)[:, None]) % ids.shape[1]
        labels[torch.arange(ids.shape[1])[None] < first] = -100
        return {"input_ids": ids, "labels": labels}

    return fn


def train(dist_info=None, grad_accum: int = 1):
    """The trained model and the trainer's summary."""
    tc = TrainConfig(steps=3, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=1,
                     grad_accum=grad_accum)
    torch.manual_seed(0)
    model = CausalLM(MODEL)
    summary = Trainer(model, MODEL, tc, masked_batch(tc), device="cpu", progress=False,
                      dist_info=dist_info).train()
    return model, summary


def main() -> None:
    torch.set_num_threads(1)
    with distributed_session(torch.device("cpu")) as info:
        model, _ = train(info)
        if info.is_main:
            torch.save({k: v.clone() for k, v in model.state_dict().items()}, sys.argv[1])


if __name__ == "__main__":
    main()
