"""A sequence-classification head over any formerlab model (any token mixer).

:class:`SequenceClassifier` = a backbone (:class:`~formerlab.models.Encoder` — bidirectional —
or :class:`~formerlab.models.CausalLM`, with any mixer of :data:`~formerlab.models.MIXERS`) →
pooling over the real tokens → dropout → one ``Linear`` named ``head``. It is what the Long Range
Arena tasks train (ListOps: 10 classes) and what self-pretraining transfers a backbone into
(kexue.fm/archives/9787; Amos et al., arXiv 2310.02980): :func:`formerlab.train.
transfer_backbone` copies everything but ``head``.

Poolings (:data:`POOLINGS`):

=========  ====================================================================================
``mean``   mean of the final hidden states over the real tokens (``attention_mask == 1``)
``cls``    the first position (a ``[CLS]`` token; needs a bidirectional backbone to see the rest)
``last``   the last real token (the natural summary of a causal backbone)
=========  ====================================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry
from .config import ModelConfig
from .encoder import Encoder
from .lm import CausalLM
from .mixers import auxiliary_loss
from .outputs import ModelOutput
from .transformer import TransformerModel

__all__ = ["POOLINGS", "SequenceClassifier", "SequenceClassifierOutput"]

#: name -> ``fn(hidden (B, n, d), mask (B, n) bool) -> (B, d)``
POOLINGS: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry("pooling")


@POOLINGS.register("mean")
def _mean(x: Tensor, mask: Tensor) -> Tensor:
    w = mask.to(x.dtype)[..., None]
    return (x * w).sum(1) / w.sum(1).clamp_min(1)


@POOLINGS.register("cls")
def _cls(x: Tensor, mask: Tensor) -> Tensor:
    return x[:, 0]


@POOLINGS.register("last")
def _last(x: Tensor, mask: Tensor) -> Tensor:
    pos = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, pos, -1).amax(-1).clamp_min(0)  # left or right padding
    return x[torch.arange(x.shape[0], device=x.device), last]


@dataclasses.dataclass
class SequenceClassifierOutput(ModelOutput):
    """``loss`` (with labels; plus the mixers' auxiliary losses in training), ``logits``
    ``(B, num_labels)``, ``pooled`` ``(B, hidden)``."""

    loss: Tensor | None = None
    logits: Tensor | None = None
    pooled: Tensor | None = None


class SequenceClassifier(nn.Module):
    """Backbone + pooling + linear head (see the module docstring).

    Args:
        backbone: A :class:`~formerlab.models.TransformerModel` (``Encoder`` or ``CausalLM``), or
            a :class:`~formerlab.models.ModelConfig` / dict to build one.
        num_labels: Classes.
        pooling: A :data:`POOLINGS` name.
        dropout: Dropout before the head.
        causal: With a config: build a ``CausalLM`` backbone (default: a bidirectional
            ``Encoder``).
        generator: Random source of the head's initialisation.
    """

    def __init__(self, backbone: TransformerModel | ModelConfig | dict[str, Any], num_labels: int,
                 *, pooling: str = "mean", dropout: float = 0.0, causal: bool = False,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(backbone, TransformerModel):
            cfg = ModelConfig.coerce(backbone)
            backbone = CausalLM(cfg) if causal else Encoder(cfg)
        if isinstance(num_labels, bool) or not isinstance(num_labels, int) or num_labels < 2:
            raise ValueError(f"num_labels must be an int >= 2, got {num_labels!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        self.pooling = POOLINGS.canonical(pooling)
        self.num_labels = num_labels
        self.backbone = backbone
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.config.hidden_size, num_labels)
        self.reset_head(generator)

    @property
    def config(self) -> ModelConfig:
        return self.backbone.config

    @torch.no_grad()
    def reset_head(self, generator: torch.Generator | None = None) -> None:
        """A fresh head: ``N(0, initializer_range)`` weights, zero bias."""
        self.head.weight.normal_(0.0, self.config.initializer_range, generator=generator)
        self.head.bias.zero_()

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                labels: Tensor | None = None, token_type_ids: Tensor | None = None,
                position_ids: Tensor | None = None, inputs_embeds: Tensor | None = None
                ) -> SequenceClassifierOutput:
        """Classify ``(B, n)`` sequences; ``attention_mask`` is Hugging Face's 1/0 padding mask
        (either side), ``labels`` ``(B,)`` class ids."""
        x = self.backbone.run(input_ids, inputs_embeds, attention_mask, position_ids,
                              token_type_ids, None, False, False, False)[0]
        mask = (torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
                if attention_mask is None else attention_mask.bool())
        pooled = POOLINGS.get(self.pooling)(x, mask)
        logits = self.head(self.dropout(pooled))
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:1]:
                raise ValueError(f"labels must be (batch,) = {tuple(logits.shape[:1])}, got "
                                 f"{tuple(labels.shape)}")
            loss = F.cross_entropy(logits, labels)
            aux = auxiliary_loss(self.backbone) if self.training else None
            if aux is not None:
                loss = loss + aux
        return SequenceClassifierOutput(loss=loss, logits=logits, pooled=pooled)
