"""Typed, strictly validated configuration dataclasses.

Every config is a dataclass deriving from :class:`Config`: ``from_dict`` rejects unknown keys
(listing the allowed ones), nested configs round-trip through ``to_dict``/``from_dict``, and
``save``/``load`` write the JSON that sits beside every checkpoint. Validation raises
``ValueError`` with the expected and the given value (never ``assert``).

The model's config, :class:`formerlab.ModelConfig`, lives in :mod:`formerlab.models.config`
(with its ``position`` and ``attention`` sub-configs); this module holds the base class, the
training config and the config hash used by the lab's cache.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

__all__ = ["Config", "TrainConfig", "config_hash"]

C = TypeVar("C", bound="Config")


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


@dataclasses.dataclass
class Config:
    """Base class: strict ``from_dict``, round-tripping ``to_dict``, JSON ``save``/``load``."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden by subclasses
        """Raise ``ValueError`` if a field is out of range."""

    @classmethod
    def allowed_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        if not isinstance(data, dict):
            raise TypeError(f"{cls.__name__}.from_dict expects a dict, got {type(data).__name__}")
        allowed = cls.allowed_keys()
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise ValueError(
                f"unknown {cls.__name__} key(s) {unknown}; allowed keys: {', '.join(allowed)}"
            )
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        for key, value in cls._prepare(data).items():
            tp = _unwrap_optional(hints.get(key))
            if isinstance(tp, type) and issubclass(tp, Config) and isinstance(value, dict):
                value = tp.from_dict(value)
            kwargs[key] = value
        return cls(**kwargs)

    @classmethod
    def _prepare(cls, data: dict[str, Any]) -> dict[str, Any]:
        """Hook: rewrite accepted aliases of a dict into the dataclass's own fields."""
        return data

    @classmethod
    def coerce(cls: type[C], obj: C | dict[str, Any]) -> C:
        """``obj`` if it already is a ``cls``, ``cls.from_dict(obj)`` if it is a dict."""
        if isinstance(obj, dict):
            return cls.from_dict(obj)
        if not isinstance(obj, cls):
            raise TypeError(f"config must be a {cls.__name__} or dict, got {type(obj).__name__}")
        return obj

    def with_overrides(self: C, overrides: dict[str, Any]) -> C:
        """A copy with fields replaced by dotted path (``{"train.precision": "bf16"}``).

        Each path names a field of this config or, through a nested config, of a nested one;
        the result is validated like :meth:`from_dict`.
        """
        data = self.to_dict()
        for path, value in overrides.items():
            parts = path.split(".")
            node, where = data, type(self).__name__
            for part in parts[:-1]:
                if not isinstance(node.get(part), dict):
                    raise ValueError(f"cannot set {path!r}: {where} has no nested config {part!r}; "
                                     f"its keys: {', '.join(node)}")
                node, where = node[part], f"{where}.{part}"
            if parts[-1] not in node:
                raise ValueError(f"cannot set {path!r}: {where} has no key {parts[-1]!r}; "
                                 f"its keys: {', '.join(node)}")
            node[parts[-1]] = value
        return type(self).from_dict(data)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Config):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = json.loads(json.dumps(value))
            out[f.name] = value
        return out

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` applied (validated, unknown keys rejected)."""
        data = self.to_dict()
        unknown = sorted(set(changes) - set(data))
        if unknown:
            raise ValueError(
                f"unknown {type(self).__name__} key(s) {unknown}; allowed keys: {', '.join(data)}"
            )
        data.update(changes)
        return type(self).from_dict(data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls: type[C], path: str | Path) -> C:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"cannot read {cls.__name__} from {path}: {exc}") from exc
        return cls.from_dict(data)


def config_hash(*configs: Config | dict[str, Any], length: int = 12) -> str:
    """A stable short hash of one or more configs (used to cache trained checkpoints)."""
    payload = [c.to_dict() if isinstance(c, Config) else c for c in configs]
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def _check_choice(name: str, value: Any, choices: tuple[Any, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if value is None or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


@dataclasses.dataclass
class TrainConfig(Config):
    """Optimisation and bookkeeping of one training run.

    Args:
        steps: Number of optimiser steps.
        batch_size: Global batch (sequences per optimiser step, over all processes).
        grad_accum: Micro-batches per step (per process); ``batch_size`` must divide evenly.
        seq_len: Training length ``L_train`` in tokens.
        lr: Peak learning rate of AdamW.
        min_lr_ratio: Final learning rate as a fraction of ``lr``.
        warmup_steps: Linear warmup length.
        schedule: ``"cosine"``, ``"linear"`` or ``"constant"`` decay after warmup.
        weight_decay: AdamW decoupled weight decay (not applied to norms and biases).
        betas: AdamW betas.
        grad_clip: Max global gradient norm (``0`` disables clipping).
        seed: Seed of the initialisation and of the data stream.
        log_every: Steps between metric lines.
        checkpoint_every: Steps between checkpoints (``0``: only the final one).
        keep_checkpoints: Number of step checkpoints to keep on disk.
        parallel: ``"ddp"`` (every process holds the whole model; PyTorch DDP under
            ``torchrun``) or ``"fsdp"`` (parameters, gradients and optimizer state sharded over
            the processes with FSDP2, ``torch.distributed.fsdp.fully_shard``). One process: both
            train the same model.
        precision: ``"fp32"`` or ``"bf16"`` (the forward under ``torch.autocast`` in bfloat16;
            weights, optimizer state and RoPE frequencies stay float32). bf16 is for GPUs: on
            most CPUs its matmuls are far slower than float32.
        compile: Run the model through ``torch.compile`` (a one-off compilation, then faster
            steps on CUDA; on CPU the gain is small).
    """

    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    seq_len: int = 128
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: str = "cosine"
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    parallel: str = "ddp"
    precision: str = "fp32"
    compile: bool = False

    def validate(self) -> None:
        for name in ("steps", "batch_size", "grad_accum", "seq_len", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.batch_size % self.grad_accum:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be divisible by grad_accum "
                f"({self.grad_accum})"
            )
        _check_positive("lr", self.lr)
        _check_positive("weight_decay", self.weight_decay, allow_zero=True)
        _check_positive("grad_clip", self.grad_clip, allow_zero=True)
        _check_positive("warmup_steps", self.warmup_steps, allow_zero=True)
        _check_positive("checkpoint_every", self.checkpoint_every, allow_zero=True)
        _check_choice("schedule", self.schedule, ("cosine", "linear", "constant"))
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if len(tuple(self.betas)) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints must be >= 1, got {self.keep_checkpoints}")
        _check_choice("parallel", self.parallel, ("ddp", "fsdp"))
        _check_choice("precision", self.precision, ("fp32", "bf16"))
