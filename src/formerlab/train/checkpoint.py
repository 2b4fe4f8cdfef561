"""Atomic training checkpoints: safetensors tensors + JSON state, one folder per step.

Layout of ``<run>/checkpoints/step-00000100/``: ``model.safetensors``, ``optimizer.safetensors``
(every optimizer state tensor plus the RNG states), ``state.json`` (step, optimizer
hyper-parameters, metadata) and ``model_config.json`` / ``train_config.json``. A checkpoint is
written into a temporary folder, flushed, then renamed into place, and the ``latest`` pointer is
replaced the same way, so a crash, a ``SIGKILL`` or a full disk mid-write leaves the previous
checkpoint valid. Loading never re-initialises silently: a missing, corrupted or mismatched file
raises :class:`~formerlab.models.CheckpointError` naming the file and the reason.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..config import Config, TrainConfig
from ..models.config import ModelConfig
from ..models.lm import CheckpointError

__all__ = ["latest_checkpoint", "load_checkpoint", "save_checkpoint", "write_atomic"]

FORMAT_VERSION = 1


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _optimizer_tensors(sd: dict[str, Any]) -> tuple[dict[str, Tensor], dict]:
    """An optimizer state dict (keyed by parameter index) as tensors + JSON."""
    tensors: dict[str, Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in sd["state"].items():
        for name, value in state.items():
            if isinstance(value, Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _rng_tensors() -> dict[str, Tensor]:
    out = {"rng.cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"rng.cuda.{i}"] = s
    return out


def save_checkpoint(
    root: Path,
    step: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_config: ModelConfig,
    train_config: TrainConfig,
    extra: dict[str, Any] | None = None,
    keep: int = 2,
    *,
    weights: dict[str, Tensor] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write the checkpoint of completed step ``step`` atomically; keep the newest ``keep``.

    ``weights``/``optimizer_state`` give an already gathered full state (sharded training);
    by default they are read from ``model`` and ``optimizer``.
    """
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    try:
        tmp.mkdir()
        if weights is None:
            weights = model.weights_state_dict() if hasattr(model, "weights_state_dict") else {
                k: v.detach() for k, v in model.state_dict().items()}
        elif getattr(model_config, "tie_word_embeddings", False):
            weights = {k: v for k, v in weights.items() if k != "lm_head.weight"}
        save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()},
                  str(tmp / "model.safetensors"))
        opt_tensors, opt_json = _optimizer_tensors(
            optimizer.state_dict() if optimizer_state is None else optimizer_state)
        opt_tensors.update(_rng_tensors())
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        state = {"format_version": FORMAT_VERSION, "step": step, "optimizer": opt_json,
                 "extra": extra or {}}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        model_config.save(tmp / "model_config.json")
        train_config.save(tmp / "train_config.json")
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        write_atomic(root / "latest", final.name.encode())
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(exc, OSError):
            prev = latest_checkpoint(root)
            raise CheckpointError(
                f"could not write checkpoint {final}: {exc}; the previous checkpoint "
                f"({prev if prev else 'none'}) is intact"
            ) from exc
        raise
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(root: Path) -> Path | None:
    """The folder named by ``root/latest``, or the newest complete ``step-*`` folder."""
    root = Path(root)
    pointer = root / "latest"
    if pointer.is_file():
        cand = root / pointer.read_text().strip()
        if (cand / "state.json").is_file():
            return cand
    steps = sorted(p for p in root.glob("step-*") if (p / "state.json").is_file())
    return steps[-1] if steps else None


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} is missing") from exc
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupted: {exc}") from exc


def _load_tensors(path: Path) -> dict[str, Tensor]:
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{path} is missing")
    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path} is corrupted or not a safetensors file: {exc}") from exc


def _check_same(saved: Config, current: Config, path: Path, ignore: tuple[str, ...] = ()) -> None:
    a, b = saved.to_dict(), current.to_dict()
    diff = {k: (a[k], b.get(k)) for k in a if k not in ignore and a[k] != b.get(k)}
    if diff:
        raise CheckpointError(
            f"{path} was written for a different configuration; differing keys "
            f"(checkpoint, current): {diff}"
        )


def read_checkpoint(
    path: Path, model_config: ModelConfig, train_config: TrainConfig
) -> tuple[dict[str, Any], dict[str, Tensor], dict[str, Any], dict[str, Tensor]]:
    """``(state.json, weights, optimizer state dict, RNG tensors)`` of a checkpoint, checked
    against the configs (see :func:`load_checkpoint`)."""
    path = Path(path)
    state = _load_json(path / "state.json")
    if state.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(
            f"{path / 'state.json'} has format version {state.get('format_version')}, newer than "
            f"this formerlab supports ({FORMAT_VERSION})"
        )
    _check_same(ModelConfig.from_dict(_load_json(path / "model_config.json")), model_config,
                path / "model_config.json")
    _check_same(TrainConfig.from_dict(_load_json(path / "train_config.json")), train_config,
                path / "train_config.json",
                ignore=("steps", "log_every", "checkpoint_every", "keep_checkpoints", "parallel",
                        "compile"))
    weights = _load_tensors(path / "model.safetensors")
    tensors = _load_tensors(path / "optimizer.safetensors")
    opt = state["optimizer"]
    opt_state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("state."):
            _, idx, name = key.split(".", 2)
            opt_state.setdefault(int(idx), {})[name] = value
    for idx, scalars in opt.get("scalars", {}).items():
        opt_state.setdefault(int(idx), {}).update(scalars)
    rng = {k: v for k, v in tensors.items() if k.startswith("rng.")}
    return state, weights, {"state": opt_state, "param_groups": opt["param_groups"]}, rng


def restore_rng(tensors: dict[str, Tensor]) -> None:
    """Set the CPU (and CUDA) RNG states saved in a checkpoint."""
    if "rng.cpu" in tensors:
        torch.set_rng_state(tensors["rng.cpu"])
    if torch.cuda.is_available():
        cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def load_checkpoint(
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    model_config: ModelConfig,
    train_config: TrainConfig,
) -> dict[str, Any]:
    """Restore model, optimizer and RNG state from ``path``; return the ``state.json`` dict.

    Raises:
        CheckpointError: a file is missing/corrupted, or the configs do not match (changing only
            ``steps``, ``log_every``, ``checkpoint_every``, ``keep_checkpoints``, ``parallel`` or
            ``compile`` is allowed).
    """
    path = Path(path)
    state, weights, opt_state, rng = read_checkpoint(path, model_config, train_config)
    if hasattr(model, "load_weights"):
        model.load_weights(weights, source=str(path / "model.safetensors"))
    else:
        model.load_state_dict(weights)
    try:
        optimizer.load_state_dict(opt_state)
    except (ValueError, KeyError) as exc:
        raise CheckpointError(f"{path / 'optimizer.safetensors'} does not fit: {exc}") from exc
    restore_rng(rng)
    return state
