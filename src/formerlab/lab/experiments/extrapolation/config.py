"""Settings of the length-extrapolation study and its presets.

Presets (one seed each; the lab repeats them over ``--seeds``):

- ``micro`` — a smoke test in seconds: ``L = 32`` tested at ``4L``, a 2-layer model trained for
  30 steps (at a learning rate high enough that it leaves the unigram solution, so the rows
  differ where the methods differ), the methods the tests' identities need;
- ``quick`` — ``make demo``, within 10 minutes on a 2-core CPU: ``L = 128`` tested at ``4L`` and
  ``8L``, one 0.8M-parameter RoPE model trained for 800 steps, every inference-time method;
- ``medium`` — every trained variant on CPU (``L = 64`` tested at ``4L`` and ``8L``, a 4-layer
  model trained for 1500 steps per variant, every method): the study of the trained variants
  (log-n pre-training, HWFA, HWFA2, InvLeaky, RoPE + q/k bias, NoPE, sinusoidal) beside the
  baseline. Measured on 2 CPU cores: about 40 minutes per seed (eight trainings of 4–5 minutes
  each at two threads, then about 3 minutes of evaluation), so 3 seeds take about two hours;
- ``full`` — the complete study: a 6-layer model, ``16L``, 64 sequences per cell, every method
  including the trained variants (log-n pre-training, HWFA, HWFA2, InvLeaky, q/k bias, NoPE,
  sinusoidal) and ReRoPE with ``w = L``.

A preset is a zero-argument factory in :data:`PRESETS`. The ``full`` preset is the blog's kind of
study for a GPU: on one recent GPU (bf16, ``--device cuda``) expect well under an hour per seed;
on 2 CPU cores, many hours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from ....config import Config, TrainConfig
from ....models.config import ModelConfig
from .methods import METHODS, QUICK_METHODS

__all__ = ["MICRO_METHODS", "PRESETS", "ExtrapolationConfig", "preset_config"]


@dataclasses.dataclass
class ExtrapolationConfig(Config):
    """Settings of one extrapolation study.

    Args:
        train_len: Training length ``L``.
        test_multipliers: Test lengths as multiples of ``L`` (``L`` itself is always tested).
        num_samples: Sequences per (length, set).
        eval_batch_size: Sequences per forward pass at evaluation.
        methods: Method names (see :data:`~.methods.METHODS`).
        last_n_multipliers: Context multipliers of the last-``L``-tokens protocol.
        curve_points: Bins of the stored per-position loss curve (at the longest length).
        entropy_samples: The first sequences of each (length, set) cell whose attention entropy
            is measured (the evaluation itself runs the fused kernel, without weights).
        entropy_rows: The last query rows of each sequence the entropy averages (``<= L``).
        model: Base model (variants change the position scheme).
        train: Training settings (``seq_len`` is forced to ``train_len``; ``seed`` is the run's).
    """

    train_len: int = 128
    test_multipliers: list[int] = dataclasses.field(default_factory=lambda: [4, 8])
    num_samples: int = 24
    eval_batch_size: int = 8
    methods: list[str] = dataclasses.field(default_factory=lambda: list(QUICK_METHODS))
    last_n_multipliers: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 4, 8])
    curve_points: int = 128
    entropy_samples: int = 1
    entropy_rows: int = 16
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)

    def validate(self) -> None:
        if self.train_len < 8:
            raise ValueError(f"train_len must be >= 8, got {self.train_len}")
        if not self.test_multipliers or min(self.test_multipliers) < 1:
            raise ValueError(f"test_multipliers must be >= 1, got {self.test_multipliers}")
        if not self.last_n_multipliers or min(self.last_n_multipliers) < 1:
            raise ValueError(f"last_n_multipliers must be >= 1, got {self.last_n_multipliers}")
        if self.num_samples < 1 or self.eval_batch_size < 1 or self.curve_points < 2:
            raise ValueError("num_samples and eval_batch_size must be >= 1 and curve_points >= 2, "
                             f"got {self.num_samples}, {self.eval_batch_size}, "
                             f"{self.curve_points}")
        if self.entropy_samples < 1 or not 1 <= self.entropy_rows <= self.train_len:
            raise ValueError(f"need entropy_samples >= 1 and 1 <= entropy_rows <= train_len "
                             f"({self.train_len}), got {self.entropy_samples} and "
                             f"{self.entropy_rows}")
        if not self.methods:
            raise ValueError("methods must name at least one method")
        for name in self.methods:
            METHODS.canonical(name)  # raises ValueError listing the valid methods
        if self.train.seq_len != self.train_len:
            self.train = self.train.replace(seq_len=self.train_len)

    @property
    def lengths(self) -> list[int]:
        """Every evaluated length, the training length first."""
        return sorted({self.train_len, *(self.train_len * m for m in self.test_multipliers)})


#: the micro preset's methods: the identities (schedules ± log n†, dynamic = NTK-aware, ReRoPE
#: with w = L) and one of each claim's sides
MICRO_METHODS = [
    "baseline", "baseline-logn_dagger", "pi", "ntk_old", "ntk_old-logn_dagger", "ntk_aware",
    "ntk_mixed-logn_dagger", "yarn", "dynamic", "rerope", "rerope-logn_dagger",
    "rerope-w_quarter", "rerope-w_full", "leaky-logn_dagger",
]


def _micro() -> ExtrapolationConfig:
    return ExtrapolationConfig(
        train_len=32, test_multipliers=[4], num_samples=4, eval_batch_size=4,
        methods=list(MICRO_METHODS), last_n_multipliers=[1, 2], curve_points=32,
        entropy_samples=2, entropy_rows=8,
        model=ModelConfig(hidden_size=32, num_layers=2, num_heads=2),
        train=TrainConfig(steps=30, batch_size=8, seq_len=32, lr=1e-2, warmup_steps=5,
                          log_every=10),
    )


def _quick() -> ExtrapolationConfig:
    return ExtrapolationConfig(
        train_len=128, test_multipliers=[4, 8], num_samples=16,
        model=ModelConfig(hidden_size=128, num_layers=4, num_heads=4),
        train=TrainConfig(steps=800, batch_size=32, seq_len=128, lr=3e-3, warmup_steps=50,
                          log_every=20, checkpoint_every=100),
    )


def _medium() -> ExtrapolationConfig:
    return ExtrapolationConfig(
        train_len=64, test_multipliers=[4, 8], num_samples=16, methods=list(METHODS),
        last_n_multipliers=[1, 2, 4, 8],
        model=ModelConfig(hidden_size=128, num_layers=4, num_heads=4),
        train=TrainConfig(steps=1500, batch_size=32, seq_len=64, lr=3e-3, warmup_steps=50,
                          log_every=50, checkpoint_every=250),
    )


def _full() -> ExtrapolationConfig:
    return ExtrapolationConfig(
        train_len=128, test_multipliers=[4, 8, 16], num_samples=64,
        methods=list(METHODS), last_n_multipliers=[1, 2, 4, 8, 16], entropy_samples=4,
        model=ModelConfig(hidden_size=192, num_layers=6, num_heads=6),
        train=TrainConfig(steps=3000, batch_size=32, seq_len=128, lr=2e-3, warmup_steps=100,
                          log_every=50, checkpoint_every=250),
    )


#: preset name -> factory (the experiment's ``presets``)
PRESETS: dict[str, Callable[[], ExtrapolationConfig]] = {
    "micro": _micro,
    "quick": _quick,
    "medium": _medium,
    "full": _full,
}


def preset_config(preset: str) -> ExtrapolationConfig:
    """The config of ``preset`` (also the base settings of ``formerlab train --preset``)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return PRESETS[preset]()
