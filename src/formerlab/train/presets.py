"""Training presets of the ``formerlab train`` command: a byte-level causal LM on the default
corpus at three sizes (the sizes of the length-extrapolation study).

- ``micro``: a smoke test (seconds);
- ``quick``: a 0.8M-parameter RoPE model trained at 128 tokens for 800 steps (minutes on a CPU);
- ``full``: a wider, deeper model trained for 3000 steps.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import TrainConfig
from ..models.config import ModelConfig
from ..registry import Registry

__all__ = ["TRAIN_PRESETS", "train_preset"]

#: name -> ``() -> (ModelConfig, TrainConfig)``
TRAIN_PRESETS: Registry[Callable[[], tuple[ModelConfig, TrainConfig]]] = Registry("train preset")
TRAIN_PRESETS.add("micro", lambda: (
    ModelConfig(hidden_size=32, num_layers=2, num_heads=2),
    TrainConfig(steps=30, batch_size=8, seq_len=32, lr=3e-3, warmup_steps=5, log_every=10)))
TRAIN_PRESETS.add("quick", lambda: (
    ModelConfig(hidden_size=128, num_layers=4, num_heads=4),
    TrainConfig(steps=800, batch_size=32, seq_len=128, lr=3e-3, warmup_steps=50, log_every=20,
                checkpoint_every=100)))
TRAIN_PRESETS.add("full", lambda: (
    ModelConfig(hidden_size=192, num_layers=6, num_heads=6),
    TrainConfig(steps=3000, batch_size=32, seq_len=128, lr=2e-3, warmup_steps=100, log_every=50,
                checkpoint_every=250)))


def train_preset(name: str) -> tuple[ModelConfig, TrainConfig]:
    """``(model config, train config)`` of preset ``name`` (``ValueError`` lists the presets)."""
    return TRAIN_PRESETS.get(name)()
