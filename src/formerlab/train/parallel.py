"""How the trainer spreads a model over processes: DDP or FSDP2, and full state for checkpoints.

- ``ddp``: PyTorch's ``DistributedDataParallel`` — every process holds the model, gradients are
  all-reduced.
- ``fsdp``: FSDP2 (``torch.distributed.fsdp.fully_shard``) — every block, then the root, is
  sharded: each process holds ``1/world`` of the parameters, gradients and optimizer state, and
  the full parameters of one block exist only while it runs.

Checkpoints stay in one format whatever the parallelism: the model's full state dict and the
optimizer state keyed by parameter index (as ``torch.optim``'s own ``state_dict``). Under FSDP
every process takes part in gathering (``torch.distributed.checkpoint.state_dict``) and rank 0
writes; loading scatters the full state back into the shards. So a run checkpointed with DDP or
on one process resumes under FSDP, and the other way round.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["PARALLEL_MODES", "full_state", "load_full_state", "wrap"]

PARALLEL_MODES = ("ddp", "fsdp")


def wrap(model: nn.Module, mode: str, device: torch.device, enabled: bool) -> nn.Module:
    """The module the trainer calls: ``model`` itself (one process), DDP, or the sharded model."""
    if mode not in PARALLEL_MODES:
        raise ValueError(f"parallel must be one of {list(PARALLEL_MODES)}, got {mode!r}")
    if not enabled:
        return model
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)
    from torch.distributed.fsdp import fully_shard

    for layer in getattr(model, "layers", []):  # one all-gather per block
        fully_shard(layer)
    fully_shard(model)
    return model


def _fsdp(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Fully qualified names of the optimizer's parameters, in its index order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer
               ) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """``(model state dict, optimizer state dict keyed by index)``, gathered on CPU.

    A collective under FSDP (every process must call it; only rank 0 receives the state, the
    others get empty dicts); a plain read otherwise.
    """
    if not _fsdp(model):
        return ({k: v.detach() for k, v in model.state_dict().items()}, optimizer.state_dict())
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(model, options=opts)
    osd = get_optimizer_state_dict(model, optimizer, options=opts)
    if not osd:  # with cpu_offload only rank 0 receives the full state
        return weights, {}
    index = {n: i for i, n in enumerate(_param_names(model, optimizer))}
    groups, state = [], {}
    for g in osd["param_groups"]:
        groups.append({**g, "params": [index[n] for n in g["params"]]})
    for name, s in osd["state"].items():
        state[index[name]] = s
    return weights, {"state": state, "param_groups": groups}


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer,
                    weights: dict[str, Tensor], optimizer_state: dict[str, Any]) -> None:
    """Put a full state (as :func:`full_state` returns) into the model and optimizer."""
    if not _fsdp(model):
        raise ValueError("load_full_state is for sharded models; load plain models directly")
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    own = model.state_dict()
    weights = {k: v for k, v in weights.items() if k in own}
    if "lm_head.weight" in own and "lm_head.weight" not in weights:  # tied head
        weights["lm_head.weight"] = weights["embed_tokens.weight"]
    set_model_state_dict(model, weights, options=opts)
    names = _param_names(model, optimizer)
    osd = {"state": {names[int(i)]: s for i, s in optimizer_state["state"].items()},
           "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]}
                            for g in optimizer_state["param_groups"]]}
    set_optimizer_state_dict(model, optimizer, optim_state_dict=osd, options=opts)
