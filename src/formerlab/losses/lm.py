"""The next-token language-model loss (Hugging Face's shift-inside convention)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = ["causal_lm_loss"]


def causal_lm_loss(logits: Tensor, labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Next-token cross-entropy: position ``t`` predicts ``labels[t+1]`` (mean over valid).

    Args:
        logits: ``(B, n, vocab)``.
        labels: ``(B, n)`` token ids; ``ignore_index`` entries do not count.

    Raises:
        ValueError: ``labels`` does not have the ``(B, n)`` shape of ``logits``.
    """
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have the (batch, seq) shape of the logits {tuple(logits.shape[:2])}, "
            f"got {tuple(labels.shape)}"
        )
    shift_logits = logits[:, :-1].reshape(-1, logits.shape[-1]).float()
    shift_labels = labels[:, 1:].reshape(-1)
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=ignore_index)
