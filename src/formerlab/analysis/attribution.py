"""Integrated gradients: path attributions for any differentiable model (kexue.fm/archives/7533).

For a scalar output ``F`` and a baseline ``x̄`` (Sundararajan et al., arXiv 1703.01365)

    IG_i = (x_i − x̄_i) · ∫₀¹ ∂_i F(x̄ + α (x − x̄)) dα,        Σ_i IG_i = F(x) − F(x̄)

(completeness). Su writes the same integral along the path from ``x`` to ``x̄``; the two
orientations differ only in sign. Plain gradients are a first-order Taylor term and vanish where
the model saturates; the integral does not (``F(x) = 1 − relu(1 − x)`` at ``x = 2``: gradient 0,
IG 1).

The integral is a quadrature ``Σ_k w_k ∇F(x̄ + α_k (x − x̄))`` (:data:`QUADRATURES`, captum's
names; ``n`` = ``n_steps``):

=======================  ============================================  ===========================
``riemann_left``         ``α_k = k/n``, k = 0 … n−1                     ``w = 1/n``
``riemann_right``        ``α_k = k/n``, k = 1 … n                       ``w = 1/n``
``riemann_middle``       ``α_k = (k + ½)/n``                            ``w = 1/n``
``riemann_trapezoid``    ``α_k = k/(n−1)``, k = 0 … n−1                 ``1/(n−1)``, ends halved
``gausslegendre``        Gauss–Legendre nodes mapped to [0, 1]          their weights / 2
``uniform_endpoints``    ``α_k = k/(n−1)`` (both ends)                  ``w = 1/n`` (unweighted
                                                                        mean: the bert4keras demo)
=======================  ============================================  ===========================

Su's sum ``(1/n) Σ_{k=1}^{n} ∇F((1 − k/n) x + (k/n) x̄)`` visits, from the baseline, the points
``α = 0, 1/n, …, (n−1)/n``: it is ``riemann_left``. captum's ``riemann_trapezoid`` uses
``w = 1/n`` with halved ends (total ``(n−1)/n``), so its attributions are ``(n−1)/n`` times the
trapezoid rule's; formerlab uses the rule itself.

Weightings (:data:`IG_MODES`): ``textbook`` is the formula above; ``bert4keras_demo`` reproduces
the demo of Su's post, whose gradient layer returns ``∇F(ẽ) ⊙ ẽ`` at the *scaled* input
``ẽ = α e`` — an extra factor ``α_k`` in every term, so the demo averages ``α ∇F(α e)`` and
emphasises points near the input (it does not satisfy completeness).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..registry import Registry

__all__ = [
    "IG_MODES",
    "QUADRATURES",
    "TOKEN_REDUCTIONS",
    "IntegratedGradients",
    "embedding_ig",
    "token_scores",
]

#: name -> fn(n) -> (alphas, weights) as float64 numpy arrays
QUADRATURES: Registry[Callable[[int], tuple[np.ndarray, np.ndarray]]] = Registry("quadrature")
#: name -> fn(alphas) -> per-step extra factor
IG_MODES: Registry[Callable[[np.ndarray], np.ndarray]] = Registry("integrated-gradients mode")


@QUADRATURES.register("riemann_left")
def riemann_left(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(n) / n, np.full(n, 1 / n)


@QUADRATURES.register("riemann_right")
def riemann_right(n: int) -> tuple[np.ndarray, np.ndarray]:
    return np.arange(1, n + 1) / n, np.full(n, 1 / n)


@QUADRATURES.register("riemann_middle")
def riemann_middle(n: int) -> tuple[np.ndarray, np.ndarray]:
    return (np.arange(n) + 0.5) / n, np.full(n, 1 / n)


@QUADRATURES.register("riemann_trapezoid", min_steps=2)
def riemann_trapezoid(n: int) -> tuple[np.ndarray, np.ndarray]:
    w = np.full(n, 1 / (n - 1))
    w[[0, -1]] /= 2
    return np.arange(n) / (n - 1), w


@QUADRATURES.register("gausslegendre")
def gausslegendre(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = np.polynomial.legendre.leggauss(n)
    return (x + 1) / 2, w / 2


@QUADRATURES.register("uniform_endpoints", min_steps=2)
def uniform_endpoints(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The bert4keras demo's grid: ``α = linspace(0, 1, n)``, unweighted mean."""
    return np.arange(n) / (n - 1), np.full(n, 1 / n)


@IG_MODES.register("textbook")
def _textbook(alphas: np.ndarray) -> np.ndarray:
    return np.ones_like(alphas)


@IG_MODES.register("bert4keras_demo", default_method="uniform_endpoints")
def _demo(alphas: np.ndarray) -> np.ndarray:
    return alphas


# ---------------------------------------------------------------------------- input formatting
def _as_tuple(x: Any) -> tuple[Any, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _format_baselines(baselines: Any, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    if baselines is None:
        return tuple(torch.zeros_like(x) for x in inputs)
    bases = _as_tuple(baselines)
    if len(bases) != len(inputs):
        raise ValueError(f"baselines has {len(bases)} entries for {len(inputs)} inputs")
    out = []
    for k, (b, x) in enumerate(zip(bases, inputs)):
        b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
        try:
            out.append(torch.broadcast_to(b, x.shape))
        except RuntimeError as exc:
            raise ValueError(f"baselines[{k}] of shape {tuple(b.shape)} does not broadcast to "
                             f"the input of shape {tuple(x.shape)}") from exc
    return tuple(out)


def _repeat(arg: Any, steps: int) -> Any:
    """Repeat a per-example tensor argument ``steps`` times along dim 0 (step-major)."""
    if isinstance(arg, Tensor) and arg.dim() > 0:
        return arg.repeat(steps, *([1] * (arg.dim() - 1)))
    return arg


def _select(output: Any, target: Any, batch: int, name: str = "forward_func") -> Tensor:
    """One scalar per example from ``output`` (captum's target conventions)."""
    if not isinstance(output, Tensor):
        raise ValueError(f"{name} must return a tensor (one row per example), got "
                         f"{type(output).__name__}")
    if output.dim() == 0 or output.shape[0] != batch:
        raise ValueError(f"{name} must return one row per example ({batch}), got shape "
                         f"{tuple(output.shape)}")
    if target is None:
        out = output
    elif isinstance(target, int):
        out = output[:, target]
    elif isinstance(target, tuple):
        out = output[(slice(None), *target)]
    elif isinstance(target, Tensor) and target.numel() == 1:
        out = output[:, int(target)]
    elif isinstance(target, list) and target and isinstance(target[0], tuple):
        out = torch.stack([output[(i, *tt)] for i, tt in enumerate(target)])
    elif isinstance(target, (Tensor, list)):
        t = torch.as_tensor(target, device=output.device).reshape(-1)
        if t.numel() != batch or output.dim() != 2:
            raise ValueError(f"target with {t.numel()} entries needs a (batch, classes) output "
                             f"of batch {batch}; got {tuple(output.shape)}")
        out = output.gather(1, t[:, None].long())[:, 0]
    else:
        raise TypeError(f"target must be None, an int, a tuple, a list or a tensor, got "
                        f"{type(target).__name__}")
    if out.reshape(batch, -1).shape[1] != 1:
        raise ValueError(f"{name} gives {out.reshape(batch, -1).shape[1]} outputs per example "
                         "after target selection; pass target= to pick one")
    return out.reshape(batch)


def _expand_target(target: Any, steps: int) -> Any:
    if isinstance(target, list):
        return target * steps
    if isinstance(target, Tensor) and target.numel() > 1:
        return target.repeat(steps)
    return target


# ------------------------------------------------------------------------------------- core
class IntegratedGradients:
    """Integrated gradients with captum's interface (``captum.attr.IntegratedGradients``).

    Args:
        forward_func: ``f(*inputs, *additional_forward_args) -> (batch, ...)`` tensor.
        multiply_by_inputs: Multiply the integrated gradient by ``x − x̄`` (global attribution,
            the default) or return the integrated gradient alone (local).

    ``attribute`` equals captum's on the same grid; one batched forward and backward per chunk
    of ``internal_batch_size`` evaluations.
    """

    def __init__(self, forward_func: Callable[..., Tensor], multiply_by_inputs: bool = True):
        if not callable(forward_func):
            raise TypeError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self.forward_func = forward_func
        self.multiply_by_inputs = multiply_by_inputs

    def attribute(
        self,
        inputs: Tensor | Sequence[Tensor],
        baselines: Any = None,
        target: Any = None,
        additional_forward_args: Any = None,
        n_steps: int = 50,
        method: str | None = None,
        internal_batch_size: int | None = None,
        return_convergence_delta: bool = False,
        mode: str = "textbook",
    ) -> Any:
        """Attributions shaped like ``inputs`` (a tuple if ``inputs`` is one).

        Args:
            inputs: ``(batch, ...)`` tensor or tuple of tensors (same batch size).
            baselines: ``None`` (zeros), a number, or tensors broadcastable to the inputs.
            target: Output index per example: int, tuple, list or ``(batch,)`` tensor.
            additional_forward_args: Extra arguments of ``forward_func``; tensors are repeated
                per step along dim 0, other values passed as they are.
            n_steps: Number of quadrature points.
            method: A name of :data:`QUADRATURES` (default ``gausslegendre``, or the mode's grid).
            internal_batch_size: At most this many evaluations per forward pass.
            return_convergence_delta: Also return ``Σ IG − (F(x) − F(x̄))`` per example.
            mode: ``textbook`` or ``bert4keras_demo`` (:data:`IG_MODES`).

        Returns:
            The attributions (and the ``(batch,)`` convergence delta).
        """
        is_tuple = isinstance(inputs, (tuple, list))
        xs = _as_tuple(inputs)
        for k, x in enumerate(xs):
            if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
                raise TypeError(f"inputs[{k}] must be a floating-point tensor, got "
                                f"{getattr(x, 'dtype', type(x).__name__)}")
        batch = xs[0].shape[0]
        if any(x.shape[0] != batch for x in xs):
            raise ValueError(f"inputs must share the batch size, got {[x.shape[0] for x in xs]}")
        if batch == 0:
            raise ValueError("inputs is an empty batch")
        xs = tuple(x.detach() for x in xs)
        bases = _format_baselines(baselines, xs)
        factor_fn = IG_MODES.get(mode)
        name = method or IG_MODES.meta(mode).get("default_method", "gausslegendre")
        quad = QUADRATURES.get(name)
        min_steps = QUADRATURES.meta(name).get("min_steps", 1)
        if not isinstance(n_steps, int) or n_steps < min_steps:
            raise ValueError(f"n_steps must be an int >= {min_steps} for {name}, got {n_steps!r}")
        alphas, weights = quad(n_steps)
        weights = weights * factor_fn(alphas)
        args = _as_tuple(additional_forward_args) if additional_forward_args is not None else ()
        if internal_batch_size is not None and internal_batch_size < 1:
            raise ValueError(f"internal_batch_size must be positive, got {internal_batch_size}")
        per_chunk = n_steps if internal_batch_size is None else max(1, internal_batch_size // batch)
        totals = [torch.zeros_like(x) for x in xs]
        for start in range(0, n_steps, per_chunk):
            a = alphas[start:start + per_chunk]
            w = weights[start:start + per_chunk]
            grads = self._gradients(xs, bases, a, args, target, batch)
            for tot, gr in zip(totals, grads):
                wt = torch.as_tensor(w, dtype=gr.dtype, device=gr.device)
                gr = gr.reshape(len(a), batch, *gr.shape[1:])
                tot += torch.tensordot(wt, gr, dims=1)
        attrs = tuple(t * (x - b) if self.multiply_by_inputs else t
                      for t, x, b in zip(totals, xs, bases))
        out = attrs if is_tuple else attrs[0]
        if not return_convergence_delta:
            return out
        return out, self.compute_convergence_delta(attrs, bases, xs, target, args)

    def _gradients(self, xs, bases, alphas, args, target, batch):
        steps = len(alphas)
        scaled = tuple(
            torch.cat([b + float(a) * (x - b) for a in alphas]).requires_grad_()
            for x, b in zip(xs, bases)
        )
        with torch.enable_grad():
            out = self.forward_func(*scaled, *(_repeat(v, steps) for v in args))
            sel = _select(out, _expand_target(target, steps), batch * steps)
            return torch.autograd.grad(sel.sum(), scaled)

    def compute_convergence_delta(self, attributions, start_point, end_point, target=None,
                                  additional_forward_args=()) -> Tensor:
        """``Σ_i IG_i − (F(end) − F(start))`` per example (0 for an exact integral)."""
        ends, starts = _as_tuple(end_point), _as_tuple(start_point)
        batch = ends[0].shape[0]
        with torch.no_grad():
            both = tuple(torch.cat([e, s]) for e, s in zip(ends, starts))
            out = self.forward_func(*both, *(_repeat(v, 2) for v in _as_tuple(additional_forward_args)))
            sel = _select(out, _expand_target(target, 2), 2 * batch)
        total = sum(a.reshape(batch, -1).sum(-1) for a in _as_tuple(attributions))
        return total - (sel[:batch] - sel[batch:])


# --------------------------------------------------------------------- embedding-level IG
def _default_embedding(model: nn.Module) -> nn.Module:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else getattr(model, "embed_tokens", None)
    if not isinstance(emb, nn.Module):
        raise ValueError("could not find the token embedding of the model; pass embedding_module")
    return emb


def _default_output(out: Any) -> Tensor:
    """``logits`` (last position of a sequence output), else the first output."""
    t = getattr(out, "logits", None)
    if t is None:
        t = out[0] if isinstance(out, (tuple, list)) or hasattr(out, "to_tuple") else out
    if isinstance(t, Tensor) and t.dim() == 3:
        t = t[:, -1]
    return t


def _pad_id(model: nn.Module, pad_token_id: int | None) -> int:
    for pid in (pad_token_id, getattr(getattr(model, "config", None), "pad_token_id", None),
                getattr(model, "pad_token_id", None)):
        if pid is not None:
            return int(pid)
    raise ValueError("baseline='pad' needs pad_token_id (the model does not declare one)")


class _ReplaceOutput:
    """Forward hook replacing a module's output by a given tensor (or recording it)."""

    def __init__(self) -> None:
        self.value: Tensor | None = None
        self.seen: Tensor | None = None

    def __call__(self, module, args, output):
        self.seen = output
        return self.value if self.value is not None else output


def embedding_ig(
    model: nn.Module,
    input_ids: Tensor,
    target: Any = None,
    *,
    embedding_module: nn.Module | None = None,
    baseline: str | Tensor = "zeros",
    pad_token_id: int | None = None,
    mode: str = "textbook",
    scale_only_token_embeddings: bool = True,
    n_steps: int | None = None,
    method: str | None = None,
    internal_batch_size: int | None = None,
    output_fn: Callable[[Any], Tensor] | None = None,
    softmax: bool = False,
    return_convergence_delta: bool = False,
    **model_kwargs: Any,
) -> Any:
    """Integrated gradients of a language model's output with respect to its embeddings.

    Works for formerlab's ``CausalLM``/``Encoder`` and Hugging Face models. With
    ``scale_only_token_embeddings=True`` (the post's demo) the token embeddings are interpolated
    and fed through ``inputs_embeds=``, so position and segment embeddings stay as they are and
    the baseline is "no token". With ``False`` the output of ``embedding_module`` (e.g. a BERT
    ``embeddings`` block, or formerlab ``Encoder.embed_norm``) is interpolated through a forward
    hook, as ``captum.attr.LayerIntegratedGradients`` does.

    Args:
        model: The model; called as ``model(inputs_embeds=..., **model_kwargs)`` or
            ``model(input_ids, **model_kwargs)``.
        input_ids: ``(batch, seq)`` token ids.
        target: Output index per example; default the predicted class at the input.
        embedding_module: The embedding layer (default the model's token embedding).
        baseline: ``"zeros"``, ``"pad"`` (the embedding of ``pad_token_id``) or a tensor.
        pad_token_id: Padding id for ``baseline="pad"`` (default from the model).
        mode: ``textbook`` or ``bert4keras_demo`` (α-weighted average on ``linspace(0, 1, n)``).
        scale_only_token_embeddings: See above.
        n_steps: Quadrature points (default 50; 20 in the demo mode, as in the post).
        method: A name of :data:`QUADRATURES` (default per mode).
        internal_batch_size: Evaluations per forward pass.
        output_fn: ``model output -> (batch, classes)`` tensor (default: ``logits``, at the last
            position for sequence outputs).
        softmax: Attribute the softmax probability instead of the raw output (the demo's target).
        return_convergence_delta: Also return the completeness gap per example.
        **model_kwargs: Extra model arguments (``attention_mask``, ``token_type_ids``); tensors
            are repeated per step.

    Returns:
        ``(batch, seq, hidden)`` attributions (and the delta).
    """
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
        raise ValueError("input_ids must be a (batch, seq) tensor of token ids")
    if input_ids.shape[1] == 0:
        raise ValueError("input_ids is an empty sequence")
    emb = embedding_module if embedding_module is not None else _default_embedding(model)
    read = output_fn or _default_output
    names = list(model_kwargs)
    extra = tuple(model_kwargs[k] for k in names)

    def head(out: Any) -> Tensor:
        logits = read(out)
        if not isinstance(logits, Tensor):
            raise ValueError(f"output_fn must return a tensor, got {type(logits).__name__}")
        return torch.softmax(logits, -1) if softmax else logits

    hook = _ReplaceOutput()
    handle = None if scale_only_token_embeddings else emb.register_forward_hook(hook)
    try:
        if scale_only_token_embeddings:
            with torch.no_grad():
                x = emb(input_ids)

            def forward(e, *vals):
                return head(model(inputs_embeds=e, **dict(zip(names, vals))))
        else:
            with torch.no_grad():
                model(input_ids, **model_kwargs)
            x = hook.seen.detach()

            def forward(e, ids, *vals):
                hook.value = e
                try:
                    return head(model(ids, **dict(zip(names, vals))))
                finally:
                    hook.value = None

            extra = (input_ids, *extra)
        if isinstance(baseline, Tensor):
            base = baseline
        elif baseline == "zeros":
            base = torch.zeros_like(x)
        elif baseline == "pad":
            pad = torch.full_like(input_ids, _pad_id(model, pad_token_id))
            with torch.no_grad():
                if scale_only_token_embeddings:
                    base = emb(pad)
                else:
                    model(pad, **model_kwargs)
                    base = hook.seen.detach()
        else:
            raise ValueError(f"baseline must be 'zeros', 'pad' or a tensor, got {baseline!r}")
        if target is None:  # the predicted class (a single output needs no target)
            with torch.no_grad():
                probe = forward(x, *extra)
            if isinstance(probe, Tensor) and probe.dim() == 2 and probe.shape[1] > 1:
                target = probe.argmax(-1)
        ig = IntegratedGradients(forward)
        steps = n_steps if n_steps is not None else (20 if mode == "bert4keras_demo" else 50)
        return ig.attribute(x, base, target=target, additional_forward_args=extra or None,
                            n_steps=steps, method=method, internal_batch_size=internal_batch_size,
                            return_convergence_delta=return_convergence_delta, mode=mode)
    finally:
        if handle is not None:
            handle.remove()


# ----------------------------------------------------------------------------- token scores
#: name -> fn(attr (..., hidden)) -> (...) per-token score
TOKEN_REDUCTIONS: Registry[Callable[[Tensor], Tensor]] = Registry("token reduction")
TOKEN_REDUCTIONS.add("l2", lambda a: a.norm(dim=-1))
TOKEN_REDUCTIONS.add("maxabs", lambda a: a.abs().amax(-1))
TOKEN_REDUCTIONS.add("sum", lambda a: a.sum(-1))


def token_scores(attr: Tensor, reduce: str = "l2", normalize: str | None = "minmax",
                 drop_special: bool = True, attention_mask: Tensor | None = None,
                 special_tokens_mask: Tensor | None = None) -> Tensor:
    """Per-token importance from ``(batch, seq, hidden)`` attributions, as in the post's demo.

    Args:
        attr: Attributions ``(batch, seq, hidden)``.
        reduce: ``l2`` (norm over the hidden size), ``maxabs`` or ``sum`` (signed; the per-token
            share of ``F(x) − F(x̄)``).
        normalize: ``"minmax"`` (to [0, 1] over each sequence's kept tokens) or ``None``.
        drop_special: Exclude special tokens: those of ``special_tokens_mask`` if given, else the
            first and last real token ([CLS] / [SEP]).
        attention_mask: ``(batch, seq)`` 1 = real token (padding is excluded).
        special_tokens_mask: ``(batch, seq)`` 1 = special token (Hugging Face tokenizers'
            ``return_special_tokens_mask=True``).

    Returns:
        ``(batch, seq)`` scores; excluded positions are 0 (and take no part in the min–max).
    """
    if not isinstance(attr, Tensor) or attr.dim() != 3:
        raise ValueError("attr must be a (batch, seq, hidden) tensor")
    scores = TOKEN_REDUCTIONS.get(reduce)(attr)
    b, n = scores.shape
    keep = torch.ones(b, n, dtype=torch.bool, device=attr.device)
    if attention_mask is not None:
        if attention_mask.shape != (b, n):
            raise ValueError(f"attention_mask must be {(b, n)}, got {tuple(attention_mask.shape)}")
        keep &= attention_mask.bool()
    if drop_special:
        if special_tokens_mask is not None:
            if special_tokens_mask.shape != (b, n):
                raise ValueError(f"special_tokens_mask must be {(b, n)}, got "
                                 f"{tuple(special_tokens_mask.shape)}")
            keep &= ~special_tokens_mask.bool()
        else:
            lengths = keep.sum(-1)
            pos = torch.arange(n, device=attr.device)
            keep &= (pos[None] > 0) & (pos[None] < (lengths - 1)[:, None])
    scores = scores.masked_fill(~keep, 0.0)
    if normalize is None:
        return scores
    if normalize != "minmax":
        raise ValueError(f"normalize must be 'minmax' or None, got {normalize!r}")
    big = torch.finfo(scores.dtype).max
    lo = scores.masked_fill(~keep, big).amin(-1, keepdim=True)
    hi = scores.masked_fill(~keep, -big).amax(-1, keepdim=True)
    span = hi - lo
    out = torch.where(span > 0, (scores - lo) / span.clamp_min(torch.finfo(span.dtype).tiny),
                      torch.zeros_like(scores))
    return out.masked_fill(~keep, 0.0)
