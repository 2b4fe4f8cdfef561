"""Recompute (activation checkpointing): store a segment's inputs, not its internals, and re-run
it during backward (kexue.fm/archives/7367; Chen et al., arXiv 1604.06174).

Su's Keras ``recompute_grad`` decorator (bert4keras, switched on by ``RECOMPUTE=1``) re-runs each
layer under a fresh tape in the backward pass: ≈ 3× larger batches for BERT-base at ≈ 25 % more
time per sample. Decorate each layer, not the whole model (that saves nothing).

Built on ``torch.utils.checkpoint.checkpoint(use_reentrant=False, preserve_rng_state=True)``, so
dropout masks are replayed exactly (unlike the Keras original):

- :func:`recompute` makes a module recompute itself **in place** (its ``state_dict`` names do
  not change) or decorates a function (``@recompute`` / ``@recompute(checkpoint=None)``);
- every recomputed module carries a per-module flag ``module.recompute_checkpoint``:
  ``True``/``False``, or ``None`` = follow the global switch;
- the global switch is the context manager :func:`recompute_mode` (overrides every flag while
  active) and the environment variable ``FORMERLAB_RECOMPUTE=1`` (or bert4keras' ``RECOMPUTE=1``)
  for flags left at ``None``;
- :func:`enable_recompute` applies it to the layers of every ``nn.ModuleList`` of a model
  (``checkpoint_every=n``: layers ``0, n, 2n, …`` only — the memory/time knob).

Checkpointing only happens while gradients are recorded; under ``no_grad`` the module runs once.
"""

from __future__ import annotations

import contextlib
import functools
import os
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as _checkpoint

__all__ = [
    "disable_recompute",
    "enable_recompute",
    "recompute",
    "recompute_active",
    "peak_saved_activation_bytes",
    "recompute_mode",
    "saved_activation_bytes",
]

_OVERRIDE: list[bool] = []
_ENV_VARS = ("FORMERLAB_RECOMPUTE", "RECOMPUTE")
_ORIG = "_recompute_original_forward"


def _env_enabled() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in _ENV_VARS)


def recompute_active(flag: bool | None = None) -> bool:
    """Whether a segment with per-module ``flag`` checkpoints now (switch > flag > env var)."""
    if _OVERRIDE:
        return _OVERRIDE[-1]
    if flag is not None:
        return bool(flag)
    return _env_enabled()


@contextlib.contextmanager
def recompute_mode(enabled: bool = True) -> Iterator[None]:
    """Globally force recompute on (or off) for every recomputed module inside the block."""
    _OVERRIDE.append(bool(enabled))
    try:
        yield
    finally:
        _OVERRIDE.pop()


def _grad_needed(module: nn.Module | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    if not torch.is_grad_enabled():
        return False
    if module is not None and any(p.requires_grad for p in module.parameters()):
        return True
    return any(isinstance(v, torch.Tensor) and v.requires_grad
               for v in (*args, *kwargs.values()))


def _looks_like_whole_model(module: nn.Module) -> bool:
    return any(isinstance(c, nn.ModuleList) and len(c) > 1 for c in module.modules())


def _install(module: nn.Module, checkpoint: bool | None, preserve_rng_state: bool) -> nn.Module:
    module.recompute_checkpoint = checkpoint  # type: ignore[assignment]
    if _ORIG in module.__dict__:
        return module
    if _looks_like_whole_model(module):
        warnings.warn(
            f"recompute on a {type(module).__name__} that holds a stack of layers as one segment "
            "saves (almost) no memory; recompute each layer instead (enable_recompute(model))",
            stacklevel=3,
        )
    original = module.forward
    module.__dict__[_ORIG] = original

    def forward(*args: Any, **kwargs: Any) -> Any:
        flag = module.__dict__.get("recompute_checkpoint")
        if recompute_active(flag) and _grad_needed(module, args, kwargs):
            return _checkpoint(original, *args, use_reentrant=False,
                               preserve_rng_state=preserve_rng_state, **kwargs)
        return original(*args, **kwargs)

    module.forward = forward  # instance attribute: nn.Module.__call__ picks it up
    return module


def recompute(obj: Any = None, *, checkpoint: bool | None = True,
              preserve_rng_state: bool = True) -> Any:
    """Make a module (in place) or a function recompute its activations in backward.

    Args:
        obj: An ``nn.Module`` (returned, patched in place) or a function (returned wrapped).
        checkpoint: Per-module flag: ``True``/``False``, or ``None`` = the global switch.
        preserve_rng_state: Replay the RNG during recomputation (exact dropout).
    """
    if obj is None:
        return functools.partial(recompute, checkpoint=checkpoint,
                                 preserve_rng_state=preserve_rng_state)
    if isinstance(obj, nn.Module):
        return _install(obj, checkpoint, preserve_rng_state)
    if not callable(obj):
        raise TypeError(f"recompute expects an nn.Module or a function, got {type(obj).__name__}")
    fn: Callable[..., Any] = obj

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        module = args[0] if args and isinstance(args[0], nn.Module) else None  # methods
        if recompute_active(checkpoint) and _grad_needed(module, args, kwargs):
            return _checkpoint(fn, *args, use_reentrant=False,
                               preserve_rng_state=preserve_rng_state, **kwargs)
        return fn(*args, **kwargs)

    wrapper.recompute_checkpoint = checkpoint  # type: ignore[attr-defined]
    return wrapper


def enable_recompute(model: nn.Module, *, checkpoint_every: int = 1,
                     checkpoint: bool | None = True) -> nn.Module:
    """Recompute the layers of every ``nn.ModuleList`` in ``model``; returns ``model``.

    ``checkpoint_every=n`` recomputes layers ``0, n, 2n, …`` of each list (``1`` = all).
    """
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1, got {checkpoint_every}")
    lists = [m for m in model.modules() if isinstance(m, nn.ModuleList)]
    if not lists:
        raise ValueError(f"{type(model).__name__} has no nn.ModuleList of layers to recompute")
    for ml in lists:
        for i, layer in enumerate(ml):
            if i % checkpoint_every == 0:
                _install(layer, checkpoint, True)
            elif _ORIG in layer.__dict__:
                layer.recompute_checkpoint = False
    return model


def disable_recompute(model: nn.Module) -> nn.Module:
    """Set the flag of every recomputed module in ``model`` to ``False``."""
    for m in model.modules():
        if _ORIG in m.__dict__:
            m.recompute_checkpoint = False
    return model


def saved_activation_bytes(fn: Callable[[], Tensor]) -> int:
    """Bytes of the tensors autograd saves for backward while running ``fn()`` (a scalar loss),
    counted with ``torch.autograd.graph.saved_tensors_hooks``; then runs the backward pass.

    The deterministic memory proxy of recompute (kexue.fm/archives/7367): checkpointed segments
    save only their inputs.
    """
    total = 0

    def pack(t: Tensor) -> Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = fn()
    loss.backward()
    return total


class _Saved:
    """A saved tensor wrapped so its release (when autograd frees the graph) can be observed."""

    __slots__ = ("__weakref__", "tensor")

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


def peak_saved_activation_bytes(fn: Callable[[], object], exclude: Iterable[Tensor] = ()) -> int:
    """Peak bytes of tensors held for backward *at the same time* while ``fn()`` runs its own
    forward and backward passes (e.g. one full-batch step, or a chunked step that frees each
    chunk's graph before the next).

    A tensor saved several times is counted once (its own bytes, also for views); tensors on the
    storage of ``exclude`` (pass the model's parameters to count activations only) are skipped.
    """
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    live: dict[tuple[Any, ...], list[int]] = {}  # tensor view -> [saved references, bytes]
    current = peak = 0

    def release(key: tuple[Any, ...]) -> None:
        nonlocal current
        entry = live[key]
        entry[0] -= 1
        if entry[0] == 0:
            current -= entry[1]
            del live[key]

    def pack(t: Tensor) -> Any:
        nonlocal current, peak
        ptr = t.untyped_storage().data_ptr()
        if ptr in skip or t.device.type == "meta":
            return t
        key = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()))
        if key in live:
            live[key][0] += 1
        else:
            size = t.numel() * t.element_size()
            live[key] = [1, size]
            current += size
            peak = max(peak, current)
        holder = _Saved(t)
        weakref.finalize(holder, release, key)
        return holder

    def unpack(h: Any) -> Tensor:
        return h.tensor if isinstance(h, _Saved) else h

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        fn()
    return peak
