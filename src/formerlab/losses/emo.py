"""EMO: the Earth Mover's distance between the model's next-token distribution and the target,
with a cosine transport cost on frozen token embeddings (kexue.fm/archives/9797; Ren, Wu & Zhu,
arXiv 2310.04691).

=============================  ================================================================
optimal transport cost         ``C[p, τ] = inf_{γ∈Π(p,τ)} Σ_ij γ_ij c_ij``
one-hot target ``t``            the only plan moves all mass to ``t``: ``C = Σ_i p_i c_{i,t}``
soft target ``τ``               product plan bound ``C ≤ Σ_ij p_i τ_j c_ij``
``c = 1 − δ``                   ``C = 1 − p_t`` (a smoothed accuracy)
EMO cost                       ``c_ij = 1 − cos(e_i, e_j)``, ``e`` = frozen LM-head rows, so
                               ``L = 1 − ⟨Σ_i p_i ê_i, ê_t⟩`` in ``O(V·d)`` (no ``V×V`` matrix)
gradient                       ``∂L/∂z_j = p_j (c_{j,t} − L)``
adaptive (``adaptive=True``)   ``q_used = p − sg(p ⊙ onehot(t))``: value ``L + p_t``, gradient
                               ``∇L``; pass the *live* LM-head weight (it is detached here)
=============================  ================================================================

:func:`emo_ce_loss` is the official composition (DRSY/EMO ``emo_patch.py``), whose value is the
cross-entropy and whose gradient mixes in EMO: ``0.5·(CE + sg(CE/EMO)·EMO)``. Su's remarks: the
gain likely comes from credit to near-synonyms and should grow with the vocabulary; EMO needs
trained embeddings and does not blow up in the wrong direction, so it is not for training from
scratch — combine it with MLE there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_cost_matrix", "emd_exact", "emo_ce_loss", "emo_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def cosine_cost_matrix(E: Tensor, eps: float = 1e-12) -> Tensor:
    """``c_ij = 1 − cos(e_i, e_j)`` for embedding rows ``E`` ``(V, d)`` → ``(V, V)``."""
    if not isinstance(E, Tensor) or E.dim() != 2:
        shape = tuple(E.shape) if isinstance(E, Tensor) else type(E).__name__
        raise ValueError(f"E must be a (vocab, dim) embedding matrix, got {shape}")
    e = F.normalize(E.detach().to(_work_dtype(E.dtype)), dim=-1, eps=eps)
    return 1 - e @ e.T


def emd_exact(p, tau, cost) -> float:
    """Exact optimal-transport cost ``min_γ Σ γ_ij c_ij`` with marginals ``p``, ``tau`` by linear
    programming (scipy's HiGHS; imported lazily). For small problems: tests and diagnostics.

    Args:
        p: Source distribution ``(n,)``.
        tau: Target distribution ``(m,)`` (same total mass).
        cost: Cost matrix ``(n, m)``.
    """
    import numpy as np
    from scipy.optimize import linprog

    a = np.asarray(torch.as_tensor(p).detach().cpu(), dtype=np.float64).ravel()
    b = np.asarray(torch.as_tensor(tau).detach().cpu(), dtype=np.float64).ravel()
    c = np.asarray(torch.as_tensor(cost).detach().cpu(), dtype=np.float64)
    if c.shape != (a.size, b.size):
        raise ValueError(f"cost must be ({a.size}, {b.size}) for p of {a.size} and tau of "
                         f"{b.size} entries, got {c.shape}")
    if not np.isclose(a.sum(), b.sum(), rtol=1e-9, atol=1e-12):
        raise ValueError(f"p and tau must have the same mass, got {a.sum()} and {b.sum()}")
    n, m = c.shape
    rows = np.kron(np.eye(n), np.ones((1, m)))
    cols = np.kron(np.ones((1, n)), np.eye(m))
    res = linprog(c.ravel(), A_eq=np.vstack([rows, cols]), b_eq=np.concatenate([a, b]),
                  bounds=(0, None), method="highs")
    if res.status != 0:
        raise RuntimeError(f"linear program failed: {res.message}")
    return float(res.fun)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(logits: Tensor, target: Tensor, reduction: str) -> tuple[int, bool]:
    """Validate; returns ``(vocab, soft)``."""
    if not isinstance(logits, Tensor) or logits.dim() < 1 or not logits.dtype.is_floating_point:
        raise TypeError(f"logits must be a floating tensor (..., vocab), got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a tensor, got {type(target).__name__}")
    soft = target.dtype.is_floating_point
    if soft and target.shape != logits.shape:
        raise ValueError(f"probability targets must have the logits' shape {tuple(logits.shape)}, "
                         f"got {tuple(target.shape)}")
    if not soft and target.shape != logits.shape[:-1]:
        raise ValueError(f"class targets must have shape {tuple(logits.shape[:-1])} (logits "
                         f"{tuple(logits.shape)} without the vocabulary axis), got "
                         f"{tuple(target.shape)}")
    return logits.shape[-1], soft


def _similarity_rows(p: Tensor, t: Tensor | None, tau: Tensor | None, emb: Tensor | None,
                     cost: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``Σ_i p_i S_{i,t}`` (or ``Σ_ij p_i τ_j S_ij``) with ``S = 1 − c``, and ``S_tt``."""
    if emb is not None:
        pe = p @ emb
        if tau is not None:
            return (pe * (tau @ emb)).sum(-1), None
        et = emb[t]
        return (pe * et).sum(-1), (et * et).sum(-1)
    sim = 1 - cost
    if tau is not None:
        return ((p @ sim) * tau).sum(-1), None
    return (p * sim.T[t]).sum(-1), sim[t, t]


def _reduce(tok: Tensor, valid: Tensor, reduction: str, shape: torch.Size) -> Tensor:
    tok = torch.where(valid, tok, torch.zeros_like(tok))
    if reduction == "none":
        return tok.reshape(shape)
    if reduction == "sum":
        return tok.sum()
    return tok.sum() / valid.sum()  # nan when nothing is valid, as in F.cross_entropy


def _emo_tokens(logits: Tensor, target: Tensor, cost_embedding: Tensor | None,
                cost_matrix: Tensor | None, ignore_index: int, adaptive: bool
                ) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token EMO ``(N,)``, the valid mask ``(N,)`` and the flat logits ``(N, V)``."""
    vocab = logits.shape[-1]
    dtype = _work_dtype(logits.dtype)
    z = logits.reshape(-1, vocab).to(dtype)
    p = torch.softmax(z, dim=-1)
    emb = cost = None
    if (cost_embedding is None) == (cost_matrix is None):
        raise ValueError("give exactly one of cost_embedding (vocab, dim) and cost_matrix "
                         "(vocab, vocab)")
    if cost_embedding is not None:
        if cost_embedding.dim() != 2 or cost_embedding.shape[0] != vocab:
            raise ValueError(f"cost_embedding must be ({vocab}, dim) for logits over {vocab} "
                             f"tokens, got {tuple(cost_embedding.shape)}")
        emb = F.normalize(cost_embedding.detach().to(device=z.device, dtype=dtype), dim=-1)
    else:
        if cost_matrix.shape != (vocab, vocab):
            raise ValueError(f"cost_matrix must be ({vocab}, {vocab}) for logits over {vocab} "
                             f"tokens, got {tuple(cost_matrix.shape)}")
        cost = cost_matrix.detach().to(device=z.device, dtype=dtype)
    if target.dtype.is_floating_point:
        if adaptive:
            raise ValueError("adaptive=True needs class targets (it removes the target's own "
                             "mass), got probability targets")
        tau = target.reshape(-1, vocab).to(dtype)
        sim, _ = _similarity_rows(p, None, tau, emb, cost)
        return 1 - sim, torch.ones_like(sim, dtype=torch.bool), z
    t = target.reshape(-1)
    valid = t != ignore_index
    if bool(((t < 0) | (t >= vocab))[valid].any()):
        bad = t[valid & ((t < 0) | (t >= vocab))][0].item()
        raise ValueError(f"target holds class {bad}, outside [0, {vocab}) and not "
                         f"ignore_index={ignore_index}")
    t = torch.where(valid, t, torch.zeros_like(t))
    sim, self_sim = _similarity_rows(p, t, None, emb, cost)
    if adaptive:
        pt = p.gather(-1, t.unsqueeze(-1)).squeeze(-1)
        sim = sim - pt.detach() * self_sim
    return 1 - sim, valid, z


def emo_loss(logits: Tensor, target: Tensor, cost_embedding: Tensor | None = None,
             ignore_index: int = -100, reduction: str = "mean", adaptive: bool = False,
             *, cost_matrix: Tensor | None = None) -> Tensor:
    """EMO loss ``Σ_i p_i c_{i,t}`` with the cosine cost of ``cost_embedding`` (arXiv 2310.04691).

    Args:
        logits: ``(..., vocab)`` unnormalised scores (vocabulary last; already shifted for
            next-token prediction). Computed in float32 (float64 stays float64).
        target: Class indices ``(...)`` (``ignore_index`` = skip), or probabilities
            ``(..., vocab)`` (then the product-plan upper bound ``Σ_ij p_i τ_j c_ij``).
        cost_embedding: ``(vocab, dim)`` rows defining ``c_ij = 1 − cos(e_i, e_j)``; detached
            (EMO: the LM-head weight cloned at initialisation; adaptive: the live weight).
        ignore_index: Target value whose positions contribute nothing (as in cross-entropy).
        reduction: ``"mean"`` over non-ignored positions (nan when there are none, as in
            ``F.cross_entropy``), ``"sum"``, or ``"none"`` (zeros at ignored positions).
        adaptive: Subtract the target's own stop-gradient mass from ``p`` (value ``L + p_t``,
            gradient ``∇L``), as the official ``adaptive_emo``.
        cost_matrix: Instead of ``cost_embedding``, any ``(vocab, vocab)`` cost ``c_ij``.

    Returns:
        The reduced loss (float32, or float64 for float64 logits).
    """
    _check(logits, target, reduction)
    tok, valid, _ = _emo_tokens(logits, target, cost_embedding, cost_matrix, ignore_index,
                                adaptive)
    return _reduce(tok, valid, reduction, target.shape if not target.dtype.is_floating_point
                   else target.shape[:-1])


def emo_ce_loss(logits: Tensor, target: Tensor, cost_embedding: Tensor, mode: int = 1,
                ignore_index: int = -100, reduction: str = "mean", adaptive: bool = False,
                max_ratio: float | None = None) -> Tensor:
    """The official EMO + MLE composition per token, then reduced like cross-entropy.

    ``mode=1`` (DRSY/EMO ``emo_patch.py``; "MLE-emphasised"): ``0.5·(CE + sg(CE/(EMO+1e-10))·EMO)``
    — its **value equals the cross-entropy**; its gradient is ``0.5(∇CE + (CE/EMO)∇EMO)``.
    ``mode=2`` (``EMOLlama2ForCausalLM`` in DRSY/EMO ``continual_finetuning/emo_llama.py``; the
    pip package's ``mode=2``, "EMO-emphasised"): ``sg(EMO/(CE+1e-10))·CE + EMO`` — value ``2·EMO``,
    gradient ``∇EMO + (EMO/CE)∇CE``.

    Args:
        logits, target, cost_embedding, ignore_index, reduction, adaptive: As :func:`emo_loss`.
        mode: 1 or 2.
        max_ratio: Clip the stop-gradient ratio of mode 1 (the ``EMOLoss`` pip package uses 3.0);
            ``None`` = no clip, as the official patch.
    """
    if mode not in (1, 2):
        raise ValueError(f"mode must be 1 (value = CE) or 2 (value = 2·EMO), got {mode!r}")
    _check(logits, target, reduction)
    emo, valid, z = _emo_tokens(logits, target, cost_embedding, None, ignore_index, adaptive)
    if target.dtype.is_floating_point:
        ce = F.cross_entropy(z, target.reshape(z.shape).to(z.dtype), reduction="none")
    else:
        ce = F.cross_entropy(z, target.reshape(-1), ignore_index=ignore_index, reduction="none")
    if mode == 1:
        ratio = (ce / (emo + 1e-10)).detach()
        if max_ratio is not None:
            ratio = ratio.clamp_max(max_ratio)
        tok = 0.5 * (ce + ratio * emo)
    else:
        tok = (emo / (ce + 1e-10)).detach() * ce + emo
    shape = target.shape if not target.dtype.is_floating_point else target.shape[:-1]
    return _reduce(tok, valid, reduction, shape)
