"""Attention entropy: how spread out each query's attention is, per layer and head.

Per query row (kexue.fm/archives/8823, 9034, 9588, 9593):

    H_i = −Σ_j p_ij log p_ij  (0·log 0 = 0)      over the visible keys j of row i,
    H_i = logsumexp_j z_ij − Σ_j p_ij z_ij       from the logits z (p = softmax z),

with ``0 ≤ H_i ≤ log n_i`` (``n_i`` visible keys): a uniform row has ``log n_i``, a one-hot row
0. ``normalized=True`` divides by ``log n_i`` (rows with one key give 0). Uses: log-n scaling
keeps the entropy flat as the length grows (8823); one-hot attention at initialisation carries
no gradient (9593); entropy versus length in every extrapolation experiment.

:class:`EntropyRecorder` collects these statistics from a model's **public** attention outputs
(``output_attentions=True``), so it works for formerlab's ``CausalLM`` / ``Encoder`` and for
Hugging Face models loaded with ``attn_implementation="eager"`` alike, without touching the
attention modules. Visible keys come from the ``attention_mask`` keyword (padding) and the causal
structure, which is detected from the weights (every weight above the diagonal exactly zero) or
given; padded query rows are left out of every average.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["EntropyRecorder", "EntropySummary", "attention_entropy"]


def attention_entropy(probs_or_logits: Tensor, mask: Tensor | None = None, *,
                      from_logits: bool = False, normalized: bool = False) -> Tensor:
    """Row entropies of attention ``(..., nq, nk)`` → ``(..., nq)`` (nats).

    Args:
        probs_or_logits: Attention weights (rows sum to 1 over visible keys) or, with
            ``from_logits=True``, the pre-softmax scores.
        mask: Boolean, broadcastable to the input; ``True`` = the key is visible (SDPA's
            convention). Masked keys take no part (their weights are ignored).
        from_logits: Compute ``logsumexp(z) − Σ p z`` from logits (exact, no ``log 0``).
        normalized: Divide by ``log n_i``, the entropy of a uniform row over the visible keys.

    Returns:
        ``(..., nq)`` entropies; rows without visible keys give 0.
    """
    x = probs_or_logits
    if not isinstance(x, Tensor) or x.dim() < 1:
        raise TypeError("probs_or_logits must be a tensor (..., nq, nk)")
    if not x.dtype.is_floating_point:
        raise TypeError(f"probs_or_logits must be floating point, got dtype {x.dtype}")
    if x.shape[-1] == 0:
        raise ValueError("probs_or_logits has no keys (last dimension is empty)")
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
            raise TypeError("mask must be a bool tensor (True = visible key)")
        try:
            mask = mask.expand(torch.broadcast_shapes(mask.shape, x.shape))
        except RuntimeError as exc:
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not broadcast to "
                             f"{tuple(x.shape)}") from exc
    if from_logits:
        z = x if mask is None else x.masked_fill(~mask, float("-inf"))
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        p = torch.exp(z - lse)
        p = torch.nan_to_num(p, nan=0.0)
        zf = torch.where(p > 0, z, torch.zeros_like(z))
        h = lse[..., 0] - (p * zf).sum(-1)
        h = torch.where(torch.isfinite(lse[..., 0]), h, torch.zeros_like(h))
    else:
        if bool((x.detach() < 0).any()):
            raise ValueError("probs_or_logits holds negative weights; pass from_logits=True "
                             "for scores")
        p = x if mask is None else x.masked_fill(~mask, 0.0)
        logp = torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))
        h = -(torch.where(p > 0, p * logp, torch.zeros_like(p))).sum(-1)
    h = h.clamp_min(0)
    if not normalized:
        return h
    n = (torch.full_like(h, x.shape[-1]) if mask is None else mask.sum(-1).to(h.dtype))
    log_n = torch.log(n.clamp_min(1))
    return torch.where(n > 1, h / log_n.clamp_min(torch.finfo(h.dtype).tiny), torch.zeros_like(h))


@dataclasses.dataclass
class EntropySummary:
    """Mean attention entropy per layer ``(L,)``, per layer and head ``(L, H)`` and per query
    position ``(L, n)`` (NaN where no query was seen), over ``queries`` counted query rows."""

    per_layer: Tensor
    per_head: Tensor
    by_position: Tensor
    queries: int
    normalized: bool

    def to_dict(self) -> dict[str, Any]:
        """Plain lists, for JSON reports."""
        return {"per_layer": self.per_layer.tolist(), "per_head": self.per_head.tolist(),
                "by_position": self.by_position.tolist(), "queries": self.queries,
                "normalized": self.normalized}


def _is_causal(weights: tuple[Tensor, ...]) -> bool:
    nq, nk = weights[0].shape[-2:]
    if nq < 2 and nk == nq:
        return False
    upper = torch.ones(nq, nk, dtype=torch.bool, device=weights[0].device).triu(nk - nq + 1)
    if not bool(upper.any()):
        return False
    return all(bool((w[..., upper] == 0).all()) for w in weights)


class EntropyRecorder:
    """Per-layer / per-head attention entropy of a model, from its ``output_attentions``.

    Use as a context manager around ordinary forward calls (``output_attentions=True`` is added
    to every call; pass ``attention_mask`` as a keyword), or feed attention weights yourself
    with :meth:`update`::

        with EntropyRecorder(model) as rec:
            model(input_ids, attention_mask=mask)
        rec.summary().per_layer

    Args:
        model: The model whose forward is observed (``None`` for :meth:`update` only).
        normalized: Record ``H / log n_i`` instead of ``H``.
        causal: ``True``/``False``, or ``None`` to detect it from the weights.
    """

    def __init__(self, model: nn.Module | None = None, *, normalized: bool = False,
                 causal: bool | None = None) -> None:
        self.model = model
        self.normalized = normalized
        self.causal = causal
        self._handles: list[Any] = []
        self._mask: Tensor | None = None
        self.reset()

    def reset(self) -> None:
        """Forget everything recorded so far."""
        self._head_sum: Tensor | None = None
        self._pos_sum: Tensor | None = None
        self._pos_count: Tensor | None = None
        self._queries = 0

    # -- hooks ---------------------------------------------------------------------------------
    def __enter__(self) -> EntropyRecorder:
        if self.model is None:
            raise ValueError("EntropyRecorder needs a model to be used as a context manager")
        self._handles = [
            self.model.register_forward_pre_hook(self._pre, with_kwargs=True),
            self.model.register_forward_hook(self._post),
        ]
        return self

    def __exit__(self, *exc: object) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def _pre(self, module, args, kwargs):
        self._mask = kwargs.get("attention_mask")
        return args, {**kwargs, "output_attentions": True}

    def _post(self, module, args, output):
        attn = getattr(output, "attentions", None)
        if attn is None and isinstance(output, dict):
            attn = output.get("attentions")
        if not attn or any(a is None for a in attn):
            raise RuntimeError(
                f"{type(module).__name__} returned no attention weights with "
                "output_attentions=True; load Hugging Face models with "
                "attn_implementation='eager'")
        self.update(attn, self._mask)
        self._mask = None

    # -- accumulation --------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, attentions: tuple[Tensor, ...] | list[Tensor],
               attention_mask: Tensor | None = None, causal: bool | None = None) -> None:
        """Add one forward pass: per-layer weights ``(B, H, nq, nk)``.

        Args:
            attentions: One tensor per layer.
            attention_mask: Hugging Face's ``(B, nk)`` 1 = keep / 0 = pad over the keys (the
                last ``nq`` entries are the queries), or a boolean ``(B|1, H|1, nq, nk)`` mask
                of visible keys.
            causal: Overrides the recorder's setting for this call.
        """
        weights = tuple(a.detach().float() for a in attentions)
        if not weights:
            raise ValueError("attentions is empty")
        b, h, nq, nk = weights[0].shape
        if any(w.shape != (b, h, nq, nk) for w in weights):
            raise ValueError("every layer's attention must have the same shape (B, H, nq, nk)")
        dev = weights[0].device
        visible = torch.ones(b, 1, nq, nk, dtype=torch.bool, device=dev)
        query_ok = torch.ones(b, nq, dtype=torch.bool, device=dev)
        if attention_mask is not None:
            m = attention_mask.to(dev)
            if m.dim() == 2:
                if m.shape != (b, nk):
                    raise ValueError(f"attention_mask must be (batch, keys) = {(b, nk)}, got "
                                     f"{tuple(m.shape)}")
                keep = m.bool()
                visible = visible & keep[:, None, None, :]
                query_ok = keep[:, nk - nq:]
            else:
                visible = visible & m.bool()
        causal = causal if causal is not None else self.causal
        if causal is None:
            causal = _is_causal(weights)
        if causal:
            tri = torch.ones(nq, nk, dtype=torch.bool, device=dev).tril(nk - nq)
            visible = visible & tri
        per = torch.stack([attention_entropy(w, visible, normalized=self.normalized)
                           for w in weights])  # (L, B, H, nq)
        q = query_ok[None, :, None, :].to(per.dtype)
        head_sum = (per * q).sum((1, 3))  # (L, H)
        pos_sum = (per * q).sum((1, 2)) / h  # (L, nq) head-averaged
        pos_count = query_ok.sum(0).to(per.dtype)  # (nq,)
        if self._head_sum is None:
            self._head_sum = head_sum
            self._pos_sum, self._pos_count = pos_sum, pos_count
        else:
            if self._head_sum.shape != head_sum.shape:
                raise ValueError("layer/head counts changed between calls; call reset()")
            n_old = self._pos_sum.shape[1]
            if nq > n_old:
                pad = nq - n_old
                self._pos_sum = torch.nn.functional.pad(self._pos_sum, (0, pad))
                self._pos_count = torch.nn.functional.pad(self._pos_count, (0, pad))
            self._head_sum = self._head_sum + head_sum
            self._pos_sum[:, :nq] += pos_sum
            self._pos_count[:nq] += pos_count
        self._queries += int(query_ok.sum())

    def summary(self) -> EntropySummary:
        """Averages over every recorded query row."""
        if self._head_sum is None or self._queries == 0:
            raise RuntimeError("nothing recorded yet")
        per_head = self._head_sum / self._queries
        by_pos = self._pos_sum / self._pos_count.clamp_min(1)
        by_pos = torch.where(self._pos_count > 0, by_pos, torch.full_like(by_pos, float("nan")))
        return EntropySummary(per_head.mean(-1), per_head, by_pos, self._queries, self.normalized)
