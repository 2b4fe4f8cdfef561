"""Output objects that behave like Hugging Face's ``ModelOutput``: attributes, ``out["key"]``,
integer indexing over the fields that are set, and ``to_tuple()``."""

from __future__ import annotations

import dataclasses
from typing import Any

from torch import Tensor

__all__ = ["BaseModelOutput", "CausalLMOutput", "ModelOutput"]


@dataclasses.dataclass
class ModelOutput:
    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v for v in (getattr(self, f.name) for f in dataclasses.fields(self)) if v is not None)

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def __getitem__(self, key: str | int) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(key)
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()


@dataclasses.dataclass
class CausalLMOutput(ModelOutput):
    """``loss`` (if labels), ``logits`` ``(B, n, vocab)``, ``past_key_values``, ``hidden_states``
    (embeddings + every block, the last after the final norm) and ``attentions``."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    past_key_values: list[Any] | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None


@dataclasses.dataclass
class BaseModelOutput(ModelOutput):
    """Encoder output: ``last_hidden_state`` ``(B, n, hidden)``, ``hidden_states``, ``attentions``."""

    last_hidden_state: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    attentions: tuple[Tensor, ...] | None = None
