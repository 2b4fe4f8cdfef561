"""Transformer-VQ's decoding state: the stable log-count cache plus the local window.

Lingle, arXiv 2309.16354; kexue.fm/archives/9844. Per code the cache keeps the count ``L_s`` of
the keys assigned to it and the running mean ``Ū_s = U_s / L_s`` of their values (the official
implementation's form: no growing sums, logits ``q·c_s + log L_s``); the keys, codes and values
of the previous and the current block stay raw, since they get the window bias. Padded tokens
(``valid = False``) are kept in the window for alignment but never counted or attended to.
:mod:`formerlab.attention.vq` holds the attention forms that read and write this state.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..nn.state import RecurrentState

__all__ = ["DEFAULT_BLOCK_LEN", "VQAttentionState"]

DEFAULT_BLOCK_LEN = 512  # the paper's block length


def _compute_dtype(*ts: Tensor) -> torch.dtype:
    dt = torch.float32
    for t in ts:
        dt = torch.promote_types(dt, t.dtype)
    return torch.float64 if dt == torch.float64 else torch.float32


def _code_stats(codes: Tensor, v: Tensor, size: int, valid: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
    """Per-code counts ``(…, S)`` and value sums ``(…, S, d_v)`` of tokens ``(…, m)`` /
    ``(…, m, d_v)`` (``valid`` masks tokens out), by scatter-add: ``O(m·d_v)``, no one-hot."""
    idx = codes.long()
    ones = torch.ones(idx.shape, dtype=v.dtype, device=v.device)
    if valid is not None:
        ones = ones * valid.to(v.dtype)
        v = v.masked_fill(~valid[..., None], 0.0)
    counts = torch.zeros(*idx.shape[:-1], size, dtype=v.dtype, device=v.device)
    counts = counts.scatter_add(-1, idx, ones)
    lead = torch.broadcast_shapes(v.shape[:-2], idx.shape[:-1])
    v = v.expand(*lead, *v.shape[-2:])
    sums = torch.zeros(*lead, size, v.shape[-1], dtype=v.dtype, device=v.device)
    sums = sums.scatter_add(-2, idx[..., None].expand(*lead, idx.shape[-1], v.shape[-1]), v)
    return counts, sums


def _log_counts(counts: Tensor) -> Tensor:
    return torch.where(counts > 0, torch.log(counts.clamp_min(1)), float("-inf"))


def _fold(counts: Tensor, means: Tensor, codes: Tensor, v: Tensor, valid: Tensor | None,
          grad_through_cache: bool) -> tuple[Tensor, Tensor]:
    """Fold tokens into the cache: ``Ū ← (Ū·L + Σ v)/(L + n)``, ``L ← L + n`` per code."""
    add, sums = _code_stats(codes, v.to(means.dtype), counts.shape[-1], valid)
    new_counts = counts + add
    new_means = (means * counts[..., None] + sums) / new_counts.clamp_min(1)[..., None]
    if not grad_through_cache:
        new_means = new_means.detach()
    return new_counts, new_means


@dataclasses.dataclass
class VQAttentionState(RecurrentState):
    """Transformer-VQ decoding state (the stable log-count cache plus the local window).

    ``counts`` ``(…, S)`` and ``means`` ``(…, S, d_v)`` summarise every token before the
    previous block; ``keys`` ``(…, w, d)``, ``codes`` ``(…, w)``, ``values`` ``(…, w, d_v)`` hold
    the ``w < 2ℓ`` most recent tokens (the previous block and the current partial one), and
    ``valid`` ``(…, w)`` marks which of them are real tokens (``None``: all are). ``length``
    counts all tokens, padding included (blocks are aligned on it).

    ``crop(n)`` is exact and cheap back to :attr:`min_crop_length` = ``ℓ·⌊length/ℓ⌋``, the start
    of the block the next token falls in (any ``n`` while ``length < 2ℓ``): the window still holds
    every token the shorter state keeps raw. Further back, tokens the shorter state needs raw (they
    get the window bias) are already folded into the statistics, and it raises
    ``NotImplementedError``.
    """

    block_len: int = DEFAULT_BLOCK_LEN
    counts: Tensor | None = None
    means: Tensor | None = None
    keys: Tensor | None = None
    codes: Tensor | None = None
    values: Tensor | None = None
    valid: Tensor | None = None
    length: int = 0
    owner: str = "vq"
    _batch_fields = ("counts", "means", "keys", "codes", "values", "valid")

    @property
    def window(self) -> int:
        """Tokens held raw (``length`` minus the folded ones)."""
        return 0 if self.keys is None else self.keys.shape[-2]

    def _empty(self, k_hat: Tensor, v: Tensor, num_codes: int, dtype: torch.dtype) -> None:
        lead = k_hat.shape[:-2]
        kw = {"dtype": dtype, "device": k_hat.device}
        self.counts = torch.zeros(*lead, num_codes, **kw)
        self.means = torch.zeros(*lead, num_codes, v.shape[-1], **kw)
        self.keys = k_hat.new_zeros(*lead, 0, k_hat.shape[-1]).to(dtype)
        self.codes = torch.zeros(*lead, 0, dtype=torch.long, device=k_hat.device)
        self.values = v.new_zeros(*lead, 0, v.shape[-1]).to(dtype)
        self.valid = None

    def update(self, k_hat: Tensor, codes: Tensor, v: Tensor, *, num_codes: int | None = None,
               grad_through_cache: bool = False, valid: Tensor | None = None
               ) -> VQAttentionState:
        """Append tokens ``(…, m, d)`` / ``(…, m)`` / ``(…, m, d_v)`` in place; blocks that leave
        the window are folded into the counts and means.

        Args:
            num_codes: ``S`` (needed for the first update of an empty state).
            grad_through_cache: Keep the autograd history of the folded value statistics.
            valid: Bool ``(…, m)`` (broadcastable), ``False`` = padding (never counted).
        """
        if self.counts is None:
            if num_codes is None:
                raise ValueError("the first update of an empty VQAttentionState needs num_codes")
            self._empty(k_hat, v, num_codes, _compute_dtype(k_hat, v))
        self._check_tokens(k_hat, codes, v)
        keys = torch.cat([self.keys, k_hat.to(self.keys.dtype)], dim=-2)
        vals = torch.cat([self.values, v.to(self.values.dtype)], dim=-2)
        cds = torch.cat([self.codes, codes.long()], dim=-1)
        ok = self._joined_valid(valid, codes)
        total = self.length + k_hat.shape[-2]
        start = self.length - self.window  # first token of the window
        keep_from = max(0, (total // self.block_len - 1) * self.block_len)
        fold = keep_from - start
        if fold > 0:
            self.counts, self.means = _fold(self.counts, self.means, cds[..., :fold],
                                            vals[..., :fold, :],
                                            None if ok is None else ok[..., :fold],
                                            grad_through_cache)
            keys, vals, cds = keys[..., fold:, :], vals[..., fold:, :], cds[..., fold:]
            ok = None if ok is None else ok[..., fold:]
        self.keys, self.values, self.codes, self.length = keys, vals, cds, total
        self.valid = ok
        return self

    def _joined_valid(self, valid: Tensor | None, codes: Tensor) -> Tensor | None:
        """Validity of the window followed by ``codes``' tokens (``None`` if all are real)."""
        if valid is None and self.valid is None:
            return None
        old = (self.valid if self.valid is not None
               else torch.ones(self.codes.shape, dtype=torch.bool, device=self.codes.device))
        new = (torch.ones(codes.shape, dtype=torch.bool, device=codes.device) if valid is None
               else valid.expand(codes.shape))
        return torch.cat([old.expand(*codes.shape[:-1], old.shape[-1]), new], dim=-1)

    def _check_tokens(self, k_hat: Tensor, codes: Tensor, v: Tensor) -> None:
        lead = tuple(self.keys.shape[:-2])
        ok = (tuple(k_hat.shape[:-2]) == lead and k_hat.shape[-1] == self.keys.shape[-1]
              and tuple(v.shape[:-1]) == tuple(k_hat.shape[:-1])
              and v.shape[-1] == self.values.shape[-1] and codes.shape == k_hat.shape[:-1])
        if not ok:
            raise ValueError(
                f"state holds keys (…={lead}, d={self.keys.shape[-1]}) and values "
                f"(d_v={self.values.shape[-1]}); got k_hat {tuple(k_hat.shape)}, codes "
                f"{tuple(codes.shape)}, v {tuple(v.shape)}")

    @property
    def min_crop_length(self) -> int:
        """The shortest length :meth:`crop` can return to exactly (see the class doc)."""
        if self.length < 2 * self.block_len:
            return 0
        return (self.length // self.block_len) * self.block_len

    def crop(self, n: int) -> VQAttentionState:
        """Drop back to the first ``n`` tokens while that stays exact (see the class doc)."""
        target = self._check_crop(n)
        folded = self.length - self.window
        needed = max(0, (target // self.block_len - 1) * self.block_len)  # raw from here on
        if needed != folded:
            raise NotImplementedError(
                f"crop to {target} tokens is not supported: the first {folded} tokens are folded "
                f"into the code cache, but {target} tokens need tokens {needed}… raw in the "
                f"window (crop works back to {self.min_crop_length} only); keep "
                "state.clone() from that point or re-run the prefix")
        keep = target - folded
        if self.keys is not None:
            self.keys, self.values = self.keys[..., :keep, :], self.values[..., :keep, :]
            self.codes = self.codes[..., :keep]
            if self.valid is not None:
                self.valid = self.valid[..., :keep]
        self.length = target
        return self
