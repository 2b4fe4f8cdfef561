"""Generalisation regularisers on inputs and embeddings: input noise, the gradient penalty,
FGM/PGD adversarial perturbations and virtual adversarial training (kexue.fm/archives/7466;
FGM: Miyato et al., arXiv 1605.07725; VAT: arXiv 1704.03976).

======================  =========================================================================
input noise             ``E_ε[l(f(x+ε), y)] ≈ l + ½σ² Δ_x l`` (ε ~ N(0, σ²I); exact for quadratic l)
consistency bound       ``E_ε[l(f(x+ε), f(x))] ≈ ½σ² Σ_i λ_i ‖∇_x f_i‖²``, ``λ_i = ∂²l/∂F_i²`` at
                        ``F = f``: MSE ``λ = 2`` → ``σ² Σ_i ‖∇f_i‖²``; ``KL(f‖F)`` ``λ_i = 1/f_i`` →
                        ``½σ² Σ_i f_i ‖∇ log f_i‖² = 2σ² Σ_i ‖∇√f_i‖²``
random projections      ``Σ_i ‖∇f_i‖² = E_η ‖∇ Σ_i η_i f_i‖²``, η Rademacher
gradient penalty        ``½·ε·‖∂loss/∂E‖²`` (bert4keras: ε = 1, the whole token-embedding matrix)
FGM                     ``δ = ε·g/‖g‖``, ``g = ∇ loss``; train on the loss at ``x + δ``
PGD                     ``δ ← Π_{‖δ‖≤ε}(δ + α·g/‖g‖)`` for ``steps`` steps
VAT                     ``u ~ N(0, I)``; ``iters`` times ``u ← ∇_r D(sg f(x), f(x + r))|_{r=ξu/‖u‖}``
                        (power iteration on the Hessian, ``≈ ξHu``); loss ``D(sg f(x), f(x + εu/‖u‖))``
======================  =========================================================================

Every wrapper perturbs either a tensor — ``inputs_embeds`` of formerlab's ``CausalLM``/``Encoder``
or a Hugging Face model, then ``loss_fn(embeds)`` — or an ``nn.Embedding`` module through a
forward hook, then ``loss_fn()`` runs the whole model: ``perturb="inputs"`` perturbs the module's
output, ``perturb="embedding_matrix"`` its weight (bert4keras' choice; Frobenius norm). bert4keras
defaults for VAT: ε = 1, ξ = 10, one iteration, KL. Norms are global unless ``per_sample=True``
(one norm per example along the first axis).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..registry import Registry

__all__ = [
    "CONSISTENCY_DISTANCES",
    "double_backward_attention",
    "embedding_perturbation",
    "fgm_loss",
    "fgm_perturb",
    "gradient_penalty",
    "noise_consistency_regularizer",
    "noisy_loss",
    "pgd_loss",
    "vat_direction",
    "vat_loss",
]

#: name -> ``fn(target, output) -> scalar``: per-example distance summed over all non-batch
#: axes, averaged over the batch (``target`` is the unperturbed, detached output)
CONSISTENCY_DISTANCES: Registry[Callable[[Tensor, Tensor], Tensor]] = Registry(
    "consistency distance")


@CONSISTENCY_DISTANCES.register("mse")
def mse_distance(target: Tensor, output: Tensor) -> Tensor:
    """``‖F − f‖²`` per example (``λ_i = 2``)."""
    return (output - target).pow(2).reshape(output.shape[0], -1).sum(-1).mean()


@CONSISTENCY_DISTANCES.register("kl")
def kl_distance(target: Tensor, output: Tensor) -> Tensor:
    """``KL(softmax(f) ‖ softmax(F))`` over the last axis, logits in (``λ_i = 1/f_i``)."""
    logp = F.log_softmax(target, dim=-1)
    kl = (logp.exp() * (logp - F.log_softmax(output, dim=-1))).sum(-1)
    return kl.reshape(output.shape[0], -1).sum(-1).mean()


_PERTURB = ("inputs", "embedding_matrix")


def _unit(g: Tensor, per_sample: bool) -> Tensor:
    if per_sample and g.dim() > 1:
        n = g.reshape(g.shape[0], -1).norm(dim=1).view(-1, *([1] * (g.dim() - 1)))
    else:
        n = g.norm()
    return g / n.clamp_min(torch.finfo(g.dtype).tiny)


def _randn(like: Tensor, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else like.device
    z = torch.randn(like.shape, generator=generator, device=dev, dtype=like.dtype)
    return z.to(like.device)


@contextlib.contextmanager
def embedding_perturbation(module: nn.Embedding, delta: Tensor | Callable[[Tensor], Tensor],
                           perturb: str = "inputs", record: list[Tensor] | None = None
                           ) -> Iterator[None]:
    """Add ``delta`` to an ``nn.Embedding``'s output (``perturb="inputs"``) or weight
    (``"embedding_matrix"``, used where the module looks tokens up: an output head tied to the
    same weight is not perturbed) while the block runs; ``delta`` may be a callable of the
    output (weight). ``record`` collects the unperturbed outputs."""
    if not isinstance(module, nn.Embedding):
        raise TypeError(f"module must be an nn.Embedding, got {type(module).__name__}")
    if perturb not in _PERTURB:
        raise ValueError(f"perturb must be one of {_PERTURB}, got {perturb!r}")
    seen = record if record is not None else []

    def hook(m: nn.Embedding, args: tuple[Any, ...], out: Tensor) -> Tensor | None:
        seen.append(out)
        if delta is None:
            return None
        if perturb == "inputs":
            return out + (delta(out) if callable(delta) else delta)
        d = delta(m.weight) if callable(delta) else delta
        return F.embedding(args[0], m.weight + d, m.padding_idx, m.max_norm, m.norm_type,
                           m.scale_grad_by_freq, m.sparse)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def double_backward_attention() -> contextlib.AbstractContextManager[None]:
    """Restrict ``scaled_dot_product_attention`` to its math kernel, which supports the double
    backward of gradient penalties (the fused CPU/CUDA kernels raise on it)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class _Site:
    """Where a perturbation goes: a tensor, an embedding module's output or its weight."""

    def __init__(self, inputs: Tensor | nn.Embedding, perturb: str) -> None:
        if perturb not in _PERTURB:
            raise ValueError(f"perturb must be one of {_PERTURB}, got {perturb!r}")
        self.perturb = perturb
        self.module: nn.Embedding | None = None
        self.x: Tensor | None = None
        self.fresh_leaf = False
        if isinstance(inputs, nn.Embedding):
            self.module = inputs
        elif isinstance(inputs, Tensor):
            if perturb != "inputs":
                raise ValueError("perturb='embedding_matrix' needs the nn.Embedding module, "
                                 "got a tensor")
            if not inputs.dtype.is_floating_point:
                raise TypeError(f"inputs must be float embeddings (e.g. inputs_embeds), got "
                                f"{inputs.dtype}; pass the nn.Embedding module for token ids")
            self.fresh_leaf = not inputs.requires_grad
            self.x = inputs if inputs.requires_grad else inputs.detach().requires_grad_(True)
        else:
            raise TypeError(f"inputs must be a tensor (inputs_embeds) or an nn.Embedding, got "
                            f"{type(inputs).__name__}")

    def run(self, fn: Callable[..., Any], delta: Any = None) -> tuple[Any, Tensor]:
        """``(fn's result, unperturbed point)``: the tensor, the embedding output or weight."""
        if self.module is None:
            d = delta(self.x) if callable(delta) else delta
            return fn(self.x if d is None else self.x + d), self.x
        seen: list[Tensor] = []
        with embedding_perturbation(self.module, delta, self.perturb, seen):
            out = fn()
        if len(seen) != 1:
            raise ValueError(f"loss_fn() called the embedding module {len(seen)} times; "
                             "exactly one call per forward is supported")
        return out, (self.module.weight if self.perturb == "embedding_matrix" else seen[0])

    def point_for(self, loss: Tensor | None, fn: Callable[..., Any]) -> tuple[Tensor, Tensor]:
        """The clean loss (computed unless given) and the point to differentiate it at."""
        if loss is not None:
            if self.module is not None and self.perturb == "inputs":
                raise ValueError("with an nn.Embedding and perturb='inputs' let the function run "
                                 "the clean forward itself (loss=None), or use "
                                 "perturb='embedding_matrix'")
            if self.module is None and self.fresh_leaf:
                raise ValueError("loss was given but inputs does not require grad, so the loss "
                                 "cannot be differentiated at it; call inputs.requires_grad_() "
                                 "before the clean forward, or pass loss=None")
            return loss, (self.x if self.module is None else self.module.weight)
        return self.run(fn)


def _grad(loss: Tensor, point: Tensor, create_graph: bool = False) -> Tensor:
    (g,) = torch.autograd.grad(loss, point, retain_graph=True, create_graph=create_graph,
                               allow_unused=True)
    return torch.zeros_like(point) if g is None else g


# --- noise and gradient penalty ------------------------------------------------------------------
def noisy_loss(loss_fn: Callable[..., Tensor], inputs: Tensor | nn.Embedding, sigma: float,
               num_samples: int = 1, generator: torch.Generator | None = None,
               perturb: str = "inputs") -> Tensor:
    """Mean over ``num_samples`` draws of the loss at ``inputs + σε``, ε ~ N(0, I)."""
    if sigma < 0 or num_samples < 1:
        raise ValueError(f"need sigma >= 0 and num_samples >= 1, got {sigma!r}, {num_samples!r}")
    site = _Site(inputs, perturb)
    total = 0.0
    for _ in range(num_samples):
        out, _ = site.run(loss_fn, lambda t: sigma * _randn(t, generator))
        total = total + out
    return total / num_samples


def _tensors(inputs: Any) -> list[Tensor]:
    if isinstance(inputs, nn.Embedding):
        return [inputs.weight]
    if isinstance(inputs, Tensor):
        return [inputs]
    if isinstance(inputs, Sequence) and inputs:
        return [t for x in inputs for t in _tensors(x)]
    raise TypeError(f"inputs must be a tensor, an nn.Embedding or a sequence of them, got "
                    f"{type(inputs).__name__}")


def gradient_penalty(loss: Tensor, inputs_or_embedding_weight: Any, eps: float = 1.0) -> Tensor:
    """``½·eps·‖∂loss/∂x‖²`` with a graph for training (add it to ``loss``; bert4keras uses the
    token-embedding matrix and ``eps = 1``).

    Training on it needs a double backward: run the forward that built ``loss`` under
    :func:`double_backward_attention` when the model uses fused attention kernels.

    Args:
        loss: Scalar loss built from ``x``.
        inputs_or_embedding_weight: ``x``: a tensor (``inputs_embeds``, a weight), an
            ``nn.Embedding`` (its weight) or a sequence of them.
        eps: Penalty weight ε.
    """
    xs = _tensors(inputs_or_embedding_weight)
    grads = torch.autograd.grad(loss, xs, create_graph=True, allow_unused=True)
    sq = sum((g.pow(2).sum() for g in grads if g is not None), loss.new_zeros(()))
    return 0.5 * eps * sq


def noise_consistency_regularizer(f: Callable[[Tensor], Tensor], x: Tensor, sigma: float,
                                  loss: str = "mse", estimator: str = "exact",
                                  num_samples: int = 1, generator: torch.Generator | None = None,
                                  signs: Tensor | None = None) -> Tensor:
    """The first-order penalty equal (to second order in σ) to ``E_ε[l(f(x+ε), f(x))]``.

    ``mse``: ``σ² Σ_i ‖∇_x f_i‖²``; ``kl`` (``f`` returns logits, ``l = KL(f(x) ‖ F)``):
    ``2σ² Σ_i ‖∇_x √p_i‖²``. Per example (first axis, examples independent), averaged over the
    batch, with a graph (trainable).

    Args:
        f: ``f(x) -> (B, ...)`` outputs (logits for ``kl``, softmax over the last axis).
        x: ``(B, ...)`` inputs, e.g. ``inputs_embeds``.
        sigma: Noise scale σ.
        loss: ``"mse"`` or ``"kl"``.
        estimator: ``"exact"`` (one backward per output) or ``"rademacher"``
            (``E_η ‖∇ Σ_i η_i g_i‖²``, ``num_samples`` draws).
        generator: Drives the Rademacher signs.
        signs: Explicit signs ``(num_samples, B, m)`` (``m`` outputs per example).
    """
    if loss not in ("mse", "kl"):
        raise ValueError(f"loss must be 'mse' or 'kl', got {loss!r}")
    if estimator not in ("exact", "rademacher"):
        raise ValueError(f"estimator must be 'exact' or 'rademacher', got {estimator!r}")
    xg = x if x.requires_grad else x.detach().requires_grad_(True)
    with double_backward_attention():
        out = f(xg)
    g = out if loss == "mse" else torch.softmax(out, dim=-1).clamp_min(1e-30).sqrt()
    g = g.reshape(g.shape[0], -1)
    b, m = g.shape
    total = g.new_zeros(())
    if estimator == "exact":
        for i in range(m):
            (gi,) = torch.autograd.grad(g[:, i].sum(), xg, create_graph=True, retain_graph=True)
            total = total + gi.pow(2).sum()
    else:
        if signs is None:
            if num_samples < 1:
                raise ValueError(f"num_samples must be >= 1, got {num_samples!r}")
            dev = generator.device if generator is not None else g.device
            signs = torch.randint(0, 2, (num_samples, b, m), generator=generator, device=dev)
            signs = (2 * signs - 1).to(device=g.device, dtype=g.dtype)
        if signs.dim() != 3 or tuple(signs.shape[1:]) != (b, m):
            raise ValueError(f"signs must be (num_samples, {b}, {m}), got {tuple(signs.shape)}")
        for eta in signs.to(g.dtype):
            (gi,) = torch.autograd.grad((eta * g).sum(), xg, create_graph=True, retain_graph=True)
            total = total + gi.pow(2).sum()
        total = total / signs.shape[0]
    factor = 1.0 if loss == "mse" else 2.0
    return factor * sigma**2 * total / b


# --- adversarial ---------------------------------------------------------------------------------
def fgm_perturb(embedding: Tensor, grad: Tensor, eps: float, per_sample: bool = False) -> Tensor:
    """``embedding + eps·g/‖g‖`` (the fast gradient method; the step is detached; a zero
    gradient gives no step). ``per_sample``: one norm per example along the first axis."""
    if grad.shape != embedding.shape:
        raise ValueError(f"grad must have the embedding's shape {tuple(embedding.shape)}, got "
                         f"{tuple(grad.shape)}")
    return embedding + eps * _unit(grad.detach(), per_sample)


def fgm_loss(loss_fn: Callable[..., Tensor], inputs: Tensor | nn.Embedding, eps: float = 1.0,
             *, loss: Tensor | None = None, per_sample: bool = False,
             perturb: str = "inputs") -> Tensor:
    """The loss at the FGM point ``x + eps·g/‖g‖`` (arXiv 1605.07725); train on
    ``loss + fgm_loss(...)``.

    Args:
        loss_fn: ``loss_fn(embeds)`` for a tensor ``inputs``; ``loss_fn()`` for a module.
        inputs: ``inputs_embeds`` (a tensor) or the model's ``nn.Embedding``.
        eps: Perturbation norm ε.
        loss: The clean loss already computed from ``inputs`` (saves a forward pass).
        per_sample: One norm per example instead of one global norm.
        perturb: ``"inputs"`` or ``"embedding_matrix"`` (module only).
    """
    site = _Site(inputs, perturb)
    clean, point = site.point_for(loss, loss_fn)
    delta = eps * _unit(_grad(clean, point), per_sample)
    adv, _ = site.run(loss_fn, delta)
    return adv


def _project(delta: Tensor, eps: float, per_sample: bool) -> Tensor:
    if per_sample and delta.dim() > 1:
        n = delta.reshape(delta.shape[0], -1).norm(dim=1).view(-1, *([1] * (delta.dim() - 1)))
    else:
        n = delta.norm()
    return delta * (eps / n.clamp_min(eps)).clamp_max(1.0)


def pgd_loss(loss_fn: Callable[..., Tensor], inputs: Tensor | nn.Embedding, eps: float = 1.0,
             alpha: float | None = None, steps: int = 3, *, loss: Tensor | None = None,
             per_sample: bool = False, perturb: str = "inputs") -> Tensor:
    """The loss after ``steps`` projected normalised-gradient ascent steps inside the ε-ball
    (``alpha`` default ``2.5·eps/steps``; ``steps=1`` is :func:`fgm_loss`). Arguments as
    :func:`fgm_loss`."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps!r}")
    alpha = 2.5 * eps / steps if alpha is None else alpha
    site = _Site(inputs, perturb)
    clean, point = site.point_for(loss, loss_fn)
    g = _grad(clean, point)
    delta = torch.zeros_like(point)
    for k in range(steps):
        delta = _project(delta + alpha * _unit(g, per_sample), eps, per_sample).detach()
        if k < steps - 1:
            r = delta.clone().requires_grad_(True)
            out, _ = site.run(loss_fn, r)
            g = _grad(out, r)
    adv, _ = site.run(loss_fn, delta)
    return adv


def vat_direction(model_fn: Callable[..., Tensor], x_or_embeds: Tensor | nn.Embedding,
                  xi: float = 10.0, iters: int = 1, distance: str = "kl",
                  perturb: str = "inputs", generator: torch.Generator | None = None,
                  per_sample: bool = False, init: Tensor | None = None
                  ) -> tuple[Tensor, Tensor]:
    """VAT's power iteration: ``(u, target)`` with ``u`` the unit adversarial direction and
    ``target = sg(f(x))``. ``init`` replaces the Gaussian start ``u ~ N(0, I)``."""
    if iters < 0:
        raise ValueError(f"iters must be >= 0, got {iters!r}")
    dist_fn = CONSISTENCY_DISTANCES.get(distance)
    site = _Site(x_or_embeds, perturb)
    with torch.no_grad():
        target, point = site.run(model_fn)
    u = _randn(point, generator) if init is None else init.to(point)
    for _ in range(iters):
        r = (xi * _unit(u, per_sample)).detach().requires_grad_(True)
        out, _ = site.run(model_fn, r)
        u = _grad(dist_fn(target, out), r)
    return _unit(u, per_sample).detach(), target


def vat_loss(model_fn: Callable[..., Tensor], x_or_embeds: Tensor | nn.Embedding,
             xi: float = 10.0, eps: float = 1.0, iters: int = 1, distance: str = "kl",
             perturb: str = "inputs", generator: torch.Generator | None = None,
             per_sample: bool = False) -> Tensor:
    """Virtual adversarial loss ``D(sg f(x), f(x + eps·u))`` (arXiv 1704.03976): label-free.

    Args:
        model_fn: ``model_fn(embeds) -> outputs`` (logits for ``"kl"``); ``model_fn()`` for a
            module ``x_or_embeds``.
        x_or_embeds: Inputs/``inputs_embeds`` tensor or the model's ``nn.Embedding``.
        xi: Finite-difference radius ξ of the power iteration.
        eps: Norm ε of the final perturbation.
        iters: Power iterations (0 = Gaussian-noise consistency).
        distance: A name of :data:`CONSISTENCY_DISTANCES` (``"kl"``, ``"mse"``).
        perturb: ``"inputs"`` or ``"embedding_matrix"`` (module only).
        generator: Drives the Gaussian start.
        per_sample: Normalise per example instead of globally.
    """
    u, target = vat_direction(model_fn, x_or_embeds, xi, iters, distance, perturb, generator,
                              per_sample)
    out, _ = _Site(x_or_embeds, perturb).run(model_fn, eps * u)
    return CONSISTENCY_DISTANCES.get(distance)(target, out)
