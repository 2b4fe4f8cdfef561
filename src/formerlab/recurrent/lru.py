"""Linear Recurrent Unit (LRU) and its real variant SLRU, with parallel scans and O(1) decoding.

Orvieto et al., "Resurrecting Recurrent Neural Networks for Long Sequences" (arXiv 2303.06349),
read by Su in kexue.fm/archives/9554. Dropping the RNN's nonlinearity and diagonalising the
state matrix over ℂ (the change of basis is absorbed into complex input / output projections)
leaves one complex first-order recurrence per state channel::

    λ   = exp(−exp(ν_log) + i·exp(θ_log))                     |λ| < 1 by construction
    x_t = λ ⊙ x_{t−1} + γ ⊙ (B u_t)                           B ∈ ℂ^{N×H}, x_t ∈ ℂ^N
    y_t = Re(C x_t) + D ⊙ u_t                                 C ∈ ℂ^{H×N}, D ∈ ℝ^H

Initialisation (ring): ``θ ~ U[0, max_phase]`` and ``|λ|² ~ U[r_min², r_max²]`` (Glorot matrices
have eigenvalues uniform in the unit disk: the circular law), i.e. ``ν = −½ log(a(r_max² − r_min²)
+ r_min²)`` with ``a ~ U(0, 1)``. **γ normalisation**: for i.i.d. zero-mean inputs
``E|x_t|² = E|Bu|²·(1 − r^{2(t+1)})/(1 − r²)``, which explodes as ``r → 1``; ``γ = √(1 − |λ|²)``
(``γ_log`` trainable, initialised there) keeps ``E|x_t|² ≤ E|Bu|²``. ``Re B, Im B ~ N(0, 1/(2H))``,
``Re C, Im C ~ N(0, 1/N)``, ``D ~ N(0, 1)`` as in the reference Flax code (minimal-LRU).
Defaults follow Su's experiments: ``r ∈ [0.9, 0.999]``, ``max_phase = 2π``.

**SLRU** (Su): the special case ``θ = 0`` with real projections, ``λ = exp(−exp(ν_log)) ∈ (0, 1)``.
Su found LRU > SLRU in language modelling, so the complex phase helps.

Complex arithmetic: parameters are real tensors (optimisers, ``model.to(dtype)``, state dicts,
safetensors and DDP behave as usual); the recurrence itself runs in torch's complex dtype —
``complex64`` for float32 / bfloat16 / float16 inputs, ``complex128`` for float64. Complex
multiply-add is the same IEEE arithmetic as the real-pair formulas, autograd handles it, CPU and
CUDA have kernels for every op used (mul, add, cat, stack, strided copies). Half-precision
inputs are scanned in float32 precision, which a recurrence with ``|λ| → 1`` needs anyway.
Backends without complex kernels (older MPS builds) are not supported.

The scan is chosen by name from :data:`~formerlab.recurrent.scan.SCANS`; decoding uses
:meth:`LRU.step` (one token, ``O(N·H)``, independent of the position) or ``forward`` with a
:class:`LRUState`.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.state import RecurrentState
from .scan import SCANS, linear_scan

__all__ = ["LRU", "SLRU", "LRUState", "ring_init"]

TWO_PI = 2 * math.pi


def _check_ring(r_min: float, r_max: float, max_phase: float) -> None:
    if not 0.0 <= r_min < 1.0:
        raise ValueError(f"r_min must lie in [0, 1), got {r_min}")
    if not 0.0 < r_max <= 1.0:
        raise ValueError(f"r_max must lie in (0, 1], got {r_max}")
    if r_min >= r_max:
        raise ValueError(f"r_min must be smaller than r_max, got r_min={r_min} >= r_max={r_max}")
    if not (math.isfinite(max_phase) and max_phase >= 0):
        raise ValueError(f"max_phase must be a finite number >= 0, got {max_phase}")


def ring_init(d_state: int, r_min: float = 0.9, r_max: float = 0.999, max_phase: float = TWO_PI,
              *, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Ring initialisation of the eigenvalues, in float64.

    Args:
        d_state: Number of state channels ``N``.
        r_min, r_max: Radii of the ring ``r_min ≤ |λ| ≤ r_max`` (``|λ|²`` uniform in between).
        max_phase: Phases ``θ ~ U[0, max_phase]``.
        generator: Random source (``None``: torch's default generator).

    Returns:
        ``(nu_log, theta_log, gamma_log)`` of shape ``(d_state,)`` with
        ``λ = exp(−exp(nu_log) + i·exp(theta_log))`` and ``exp(gamma_log) = √(1 − |λ|²)``.
        ``max_phase = 0`` gives ``theta_log = −inf`` (``θ = 0``).
    """
    _check_ring(r_min, r_max, max_phase)
    eps = 1e-12  # keeps |λ| strictly inside (r_min, r_max): finite logs at r_min = 0, r_max = 1
    a = torch.rand(d_state, generator=generator, dtype=torch.float64).clamp(eps, 1 - eps)
    c = torch.rand(d_state, generator=generator, dtype=torch.float64).clamp_min(eps)
    nu = -0.5 * torch.log(a * (r_max**2 - r_min**2) + r_min**2)
    theta = c * max_phase
    gamma = torch.sqrt(-torch.expm1(-2 * nu))  # √(1 − |λ|²), accurate for |λ| → 1
    return torch.log(nu), torch.log(theta), torch.log(gamma)


@dataclasses.dataclass
class LRUState(RecurrentState):
    """Decoding state of an LRU / SLRU: the last hidden vector ``(batch, d_state)``.

    ``hidden`` is complex for :class:`LRU`, real for :class:`SLRU`; ``length`` counts the tokens
    folded into it. ``crop`` below the current length raises ``NotImplementedError``.
    """

    hidden: Tensor | None = None
    length: int = 0
    owner: str = "lru"
    _batch_fields = ("hidden",)

    @property
    def min_crop_length(self) -> int:
        """The shortest length :meth:`crop` can return to: the current one (no history)."""
        return self.length

    def update(self, hidden: Tensor, num_tokens: int = 1) -> LRUState:
        """Replace the hidden vector by ``hidden`` after ``num_tokens`` more tokens, in place."""
        if self.hidden is not None and hidden.shape != self.hidden.shape:
            raise ValueError(f"hidden must keep the shape {tuple(self.hidden.shape)} of the "
                             f"state, got {tuple(hidden.shape)}")
        if num_tokens < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        self.hidden = hidden
        self.length += int(num_tokens)
        return self


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    real = dtypes[0]
    for d in dtypes[1:]:
        real = torch.promote_types(real, d)
    return torch.float64 if real == torch.float64 else torch.float32


class _DiagonalRecurrence(nn.Module):
    """Shared machinery: validation, scan dispatch, state handling, decoding step."""

    complex_state: bool = True
    state_owner: str = "lru"  # the ``owner`` of the states this layer creates

    def __init__(self, d_model: int, d_state: int, r_min: float, r_max: float, max_phase: float,
                 scan: str, normalize: bool, chunk_size: int | None) -> None:
        super().__init__()
        for name, value in (("d_model", d_model), ("d_state", d_state)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        _check_ring(r_min, r_max, max_phase)
        self.scan = SCANS.canonical(scan)
        if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        self.d_model, self.d_state = d_model, d_state
        self.r_min, self.r_max, self.max_phase = r_min, r_max, max_phase
        self.normalize, self.chunk_size = normalize, chunk_size

    # subclasses: eigenvalues(real_dtype), _inputs(u), _readout(x, u)
    def gamma(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The per-channel input normaliser ``γ`` (ones when ``normalize=False``)."""
        if self.gamma_log is None:
            return torch.ones(self.d_state, dtype=dtype, device=self.D.device)
        return torch.exp(self.gamma_log.to(dtype))

    def _real_dtype(self, u: Tensor) -> torch.dtype:
        return _compute_dtype(u.dtype, self.D.dtype)

    def _state_dtype(self, real: torch.dtype) -> torch.dtype:
        if not self.complex_state:
            return real
        return torch.complex128 if real == torch.float64 else torch.complex64

    def _check_input(self, u: Tensor, name: str, ndim: int) -> None:
        if not isinstance(u, Tensor) or not u.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got "
                            f"{getattr(u, 'dtype', type(u).__name__)}")
        shape = "(batch, seq, d_model)" if ndim == 3 else "(batch, d_model)"
        if u.dim() != ndim or u.shape[-1] != self.d_model:
            raise ValueError(f"{name} must be {shape} with d_model={self.d_model}, got "
                             f"{tuple(u.shape)}")

    def _initial(self, state: LRUState | None, batch: int, real: torch.dtype,
                 device: torch.device) -> Tensor | None:
        if state is None:
            return None
        if not isinstance(state, LRUState):
            raise TypeError(f"state must be an LRUState, got {type(state).__name__}")
        if state.hidden is None:
            return None
        want = (batch, self.d_state)
        if tuple(state.hidden.shape) != want:
            raise ValueError(f"state.hidden must have shape {want} (batch, d_state), got "
                             f"{tuple(state.hidden.shape)}")
        if state.hidden.is_complex() != self.complex_state:
            kind = "complex" if self.complex_state else "real"
            raise ValueError(f"state.hidden of {type(self).__name__} must be {kind}, got "
                             f"{state.hidden.dtype}")
        return state.hidden.to(device=device, dtype=self._state_dtype(real))

    def _check_mask(self, mask: Tensor | None, shape: tuple[int, ...]) -> Tensor | None:
        if mask is None:
            return None
        if not isinstance(mask, Tensor) or mask.dtype != torch.bool or tuple(mask.shape) != shape:
            got = (f"{mask.dtype} {tuple(mask.shape)}" if isinstance(mask, Tensor)
                   else type(mask).__name__)
            raise ValueError(f"mask must be a bool tensor of shape {shape} (True = real token), "
                             f"got {got}")
        return mask

    def init_state(self, batch_size: int, *, dtype: torch.dtype | None = None) -> LRUState:
        """A zero state for ``batch_size`` sequences (``dtype`` of the inputs to come)."""
        real = _compute_dtype(dtype or self.D.dtype, self.D.dtype)
        hidden = torch.zeros(batch_size, self.d_state, dtype=self._state_dtype(real),
                             device=self.D.device)
        return LRUState(hidden=hidden, length=0, owner=self.state_owner)

    def hidden_states(self, u: Tensor, initial: Tensor | None = None,
                      mask: Tensor | None = None) -> Tensor:
        """All hidden states ``x_t`` ``(batch, seq, d_state)`` (complex for LRU).

        Args:
            u: ``(batch, seq, d_model)``.
            initial: ``x_{−1}`` ``(batch, d_state)`` (default zeros).
            mask: ``(batch, seq)`` bool, ``False`` at padding: there the state is carried over
                unchanged (``a_t = 1``, ``b_t = 0``), so padding anywhere leaves every real
                token's state as if the padding were absent.
        """
        self._check_input(u, "u", 3)
        mask = self._check_mask(mask, tuple(u.shape[:2]))
        real = self._real_dtype(u)
        lam = self.eigenvalues(real)
        bu = self._inputs(u.to(real), real)
        if mask is not None:
            keep = mask[..., None]
            bu = bu.masked_fill(~keep, 0.0)
            lam = torch.where(keep, lam, torch.ones((), dtype=lam.dtype, device=lam.device))
        options = {"chunk_size": self.chunk_size} if self.scan == "chunked" else {}
        return linear_scan(lam, bu, dim=1, method=self.scan, initial=initial, **options)

    def forward(self, u: Tensor, state: LRUState | None = None, use_cache: bool = False,
                mask: Tensor | None = None) -> tuple[Tensor, LRUState | None]:
        """Run over a whole sequence (or the next piece of one).

        Args:
            u: ``(batch, seq, d_model)``.
            state: Continue from this state (not modified); ``None`` starts from zeros.
            use_cache: Return the state after the last token (also returned when ``state`` is
                given).
            mask: ``(batch, seq)`` bool, ``False`` = padding: the state passes padded positions
                unchanged and their inputs count as zero (see :meth:`hidden_states`).

        Returns:
            ``(y, new_state)``: ``y`` ``(batch, seq, d_model)`` in ``u``'s dtype; ``new_state``
            an :class:`LRUState` or ``None``.
        """
        self._check_input(u, "u", 3)
        real = self._real_dtype(u)
        h0 = self._initial(state, u.shape[0], real, u.device)
        x = self.hidden_states(u, h0, mask)
        if mask is not None:
            u = u.masked_fill(~mask[..., None], 0.0)
        y = self._readout(x, u.to(real), real).to(u.dtype)
        if not (use_cache or state is not None):
            return y, None
        if u.shape[1]:
            last = x[:, -1]
        elif h0 is not None:
            last = h0
        else:
            last = torch.zeros(u.shape[0], self.d_state, dtype=self._state_dtype(real),
                               device=u.device)
        new = state.clone() if state is not None else LRUState(owner=self.state_owner)
        return y, new.update(last, u.shape[1])

    def step(self, u_t: Tensor, state: LRUState | None = None, mask: Tensor | None = None
             ) -> tuple[Tensor, LRUState]:
        """Decode one token: ``x_t = λ x_{t−1} + γ B u_t``, ``y_t = Re(C x_t) + D u_t``.

        Args:
            u_t: ``(batch, d_model)``.
            state: The state after the previous tokens (not modified); ``None`` = zeros.
            mask: ``(batch,)`` bool; rows with ``False`` (padding) keep their state.

        Returns:
            ``(y_t, new_state)`` with ``y_t`` ``(batch, d_model)``.
        """
        self._check_input(u_t, "u_t", 2)
        real = self._real_dtype(u_t)
        mask = self._check_mask(mask, tuple(u_t.shape[:1]))
        h0 = self._initial(state, u_t.shape[0], real, u_t.device)
        u = u_t.to(real)
        if mask is not None:
            u = u.masked_fill(~mask[:, None], 0.0)
        bu = self._inputs(u, real)
        x = bu if h0 is None else self.eigenvalues(real) * h0 + bu
        if mask is not None:
            x = torch.where(mask[:, None], x, torch.zeros_like(x) if h0 is None else h0)
        y = self._readout(x, u, real).to(u_t.dtype)
        new = state.clone() if state is not None else LRUState(owner=self.state_owner)
        return y, new.update(x, 1)

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, r_min={self.r_min}, "
                f"r_max={self.r_max}, max_phase={self.max_phase:.4g}, scan={self.scan!r}, "
                f"normalize={self.normalize}")


def _normal(shape: tuple[int, ...], std: float, generator: torch.Generator | None) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64) * std


class LRU(_DiagonalRecurrence):
    """Linear Recurrent Unit over ``(batch, seq, d_model)`` inputs (kexue.fm/archives/9554).

    Args:
        d_model: Input / output width ``H``.
        d_state: Complex state channels ``N``.
        r_min, r_max: Ring of the initial eigenvalue moduli (``0 ≤ r_min < r_max ≤ 1``).
        max_phase: Initial phases ``θ ~ U[0, max_phase]``.
        scan: A name of :data:`~formerlab.recurrent.scan.SCANS` for the parallel forward.
        normalize: Multiply the inputs by the trainable ``γ`` (initialised ``√(1 − |λ|²)``).
        chunk_size: Chunk length of the ``chunked`` scan (default ``⌈√L⌉``).
        generator: Random source of the initialisation.
        device, dtype: Of the parameters.
    """

    complex_state = True

    def __init__(self, d_model: int, d_state: int, r_min: float = 0.9, r_max: float = 0.999,
                 max_phase: float = TWO_PI, scan: str = "chunked", *, normalize: bool = True,
                 chunk_size: int | None = None, generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__(d_model, d_state, r_min, r_max, max_phase, scan, normalize, chunk_size)
        kw = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        h, n = d_model, d_state
        self.nu_log = nn.Parameter(torch.empty(n, **kw))
        self.theta_log = nn.Parameter(torch.empty(n, **kw))
        self.register_parameter("gamma_log", nn.Parameter(torch.empty(n, **kw)) if normalize else None)
        for name, shape in (("B_re", (n, h)), ("B_im", (n, h)), ("C_re", (h, n)), ("C_im", (h, n))):
            setattr(self, name, nn.Parameter(torch.empty(shape, **kw)))
        self.D = nn.Parameter(torch.empty(h, **kw))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Ring initialisation of ``λ`` and ``γ``; ``B``, ``C``, ``D`` as in minimal-LRU."""
        h, n = self.d_model, self.d_state
        nu_log, theta_log, gamma_log = ring_init(n, self.r_min, self.r_max, self.max_phase,
                                                 generator=generator)
        self.nu_log.copy_(nu_log)
        self.theta_log.copy_(theta_log)
        if self.gamma_log is not None:
            self.gamma_log.copy_(gamma_log)
        for name, shape, std in (("B_re", (n, h), (2 * h) ** -0.5), ("B_im", (n, h), (2 * h) ** -0.5),
                                 ("C_re", (h, n), n ** -0.5), ("C_im", (h, n), n ** -0.5),
                                 ("D", (h,), 1.0)):
            getattr(self, name).copy_(_normal(shape, std, generator))

    def eigenvalues(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``λ = exp(−exp(ν_log) + i·exp(θ_log))`` ``(d_state,)``, complex."""
        nu = torch.exp(self.nu_log.to(dtype))
        theta = torch.exp(self.theta_log.to(dtype))
        return torch.exp(torch.complex(-nu, theta))

    def _inputs(self, u: Tensor, real: torch.dtype) -> Tensor:
        g = self.gamma(real)
        return torch.complex(F.linear(u, self.B_re.to(real)) * g,
                             F.linear(u, self.B_im.to(real)) * g)

    def _readout(self, x: Tensor, u: Tensor, real: torch.dtype) -> Tensor:
        y = F.linear(x.real, self.C_re.to(real)) - F.linear(x.imag, self.C_im.to(real))
        return y + self.D.to(real) * u


class SLRU(_DiagonalRecurrence):
    """Su's real LRU: ``λ = exp(−exp(ν_log)) ∈ (0, 1)``, real ``B``, ``C`` (kexue.fm/archives/9554).

    ``B ~ N(0, 1/H)``, ``C ~ N(0, 1/N)``, ``D ~ N(0, 1)`` (the real counterparts of LRU's
    scales). Arguments as :class:`LRU` without ``max_phase``.
    """

    complex_state = False
    state_owner = "slru"

    def __init__(self, d_model: int, d_state: int, r_min: float = 0.9, r_max: float = 0.999,
                 scan: str = "chunked", *, normalize: bool = True, chunk_size: int | None = None,
                 generator: torch.Generator | None = None,
                 device: torch.device | str | None = None, dtype: torch.dtype | None = None
                 ) -> None:
        super().__init__(d_model, d_state, r_min, r_max, 0.0, scan, normalize, chunk_size)
        kw = {"device": device, "dtype": dtype or torch.get_default_dtype()}
        h, n = d_model, d_state
        self.nu_log = nn.Parameter(torch.empty(n, **kw))
        self.register_parameter("gamma_log", nn.Parameter(torch.empty(n, **kw)) if normalize else None)
        self.B = nn.Parameter(torch.empty(n, h, **kw))
        self.C = nn.Parameter(torch.empty(h, n, **kw))
        self.D = nn.Parameter(torch.empty(h, **kw))
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Ring initialisation of ``λ`` (real) and ``γ``; ``B``, ``C``, ``D`` Gaussian."""
        h, n = self.d_model, self.d_state
        nu_log, _, gamma_log = ring_init(n, self.r_min, self.r_max, 0.0, generator=generator)
        self.nu_log.copy_(nu_log)
        if self.gamma_log is not None:
            self.gamma_log.copy_(gamma_log)
        self.B.copy_(_normal((n, h), h ** -0.5, generator))
        self.C.copy_(_normal((h, n), n ** -0.5, generator))
        self.D.copy_(_normal((h,), 1.0, generator))

    def eigenvalues(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """``λ = exp(−exp(ν_log))`` ``(d_state,)``, real in ``(0, 1)``."""
        return torch.exp(-torch.exp(self.nu_log.to(dtype)))

    def _inputs(self, u: Tensor, real: torch.dtype) -> Tensor:
        return F.linear(u, self.B.to(real)) * self.gamma(real)

    def _readout(self, x: Tensor, u: Tensor, real: torch.dtype) -> Tensor:
        return F.linear(x, self.C.to(real)) + self.D.to(real) * u

    def extra_repr(self) -> str:
        return (f"d_model={self.d_model}, d_state={self.d_state}, r_min={self.r_min}, "
                f"r_max={self.r_max}, scan={self.scan!r}, normalize={self.normalize}")
