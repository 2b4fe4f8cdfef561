"""How a model knows where its tokens are: :class:`PositionConfig` and the position kinds.

``PositionConfig`` is the ``position`` sub-config of :class:`formerlab.ModelConfig`. Its rope keys
are Hugging Face's (``rope_theta``, ``rope_scaling`` with ``rope_type``/``factor``/...,
``partial_rotary_factor``), so an existing ``rope_parameters`` dict works as-is. Besides the kind of
position signal it holds what the extrapolation posts vary: log-n scaling (kexue.fm/archives/8823,
9706), a training-time relative-position map (InvLeaky ReRoPE, 9728), a sliding window and
per-layer specs (HWFA, HWFA2: 9603, 9731).

Position kinds (:data:`POSITION_KINDS`):

=============  ===========================================================================
``rope``       rotary position embedding on q/k (kexue.fm/archives/8265)
``sinusoidal`` absolute sinusoidal embeddings added to the input (8231)
``learned``    a trained table of absolute embeddings (BERT)
``nope``       no position signal (causal attention still orders tokens)
``alibi``      a linear bias ``-m_h·|i-j|`` on the scores (arXiv 2108.12409)
=============  ===========================================================================
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..config import Config
from ..registry import Registry
from .absolute import LearnedPositionEmbedding, SinusoidalPositionEmbedding
from .bias import alibi_bias, alibi_slopes
from .layers import LayerSpec
from .logn import LogNScale
from .relative import make_relpos
from .rope import LAYOUTS, RotaryEmbedding
from .schedules import parse_rope_parameters, rope_frequencies

__all__ = ["LOGN_MODES_REGISTRY", "POSITION_KINDS", "PositionConfig", "PositionKind"]


@dataclasses.dataclass(frozen=True)
class PositionKind:
    """What a position kind adds to a model.

    Attributes:
        rotary: Attention layers rotate q/k (the RoPE hooks apply).
        absolute: ``fn(hidden_size, max_positions) -> module`` of embeddings added to the input.
        bias: ``fn(num_heads) -> bias_fn(q_pos, k_pos)`` additive score bias.
        description: One line for docs and errors.
    """

    rotary: bool = False
    absolute: Callable[[int, int], nn.Module] | None = None
    bias: Callable[[int], Callable[[Tensor, Tensor], Tensor]] | None = None
    description: str = ""


POSITION_KINDS: Registry[PositionKind] = Registry("position kind")
POSITION_KINDS.add("rope", PositionKind(rotary=True, description="rotary q/k (8265)"))
POSITION_KINDS.add("sinusoidal", PositionKind(
    absolute=lambda hidden, _max: SinusoidalPositionEmbedding(hidden),
    description="absolute sinusoidal embeddings (8231)"))
POSITION_KINDS.add("learned", PositionKind(
    absolute=lambda hidden, max_len: LearnedPositionEmbedding(max_len, hidden),
    description="a learned table of absolute embeddings"))
POSITION_KINDS.add("nope", PositionKind(description="no position signal"))


def _alibi(num_heads: int) -> Callable[[Tensor, Tensor], Tensor]:
    slopes = alibi_slopes(num_heads)

    def bias(q_pos: Tensor, k_pos: Tensor) -> Tensor:
        return alibi_bias(q_pos, k_pos, slopes.to(q_pos.device))

    return bias


POSITION_KINDS.add("alibi", PositionKind(bias=_alibi, description="linear score bias (ALiBi)"))

#: log-n modes: name -> ``fn(config) -> LogNScale``
LOGN_MODES_REGISTRY: Registry[Callable[[PositionConfig], LogNScale]] = Registry("log-n mode")
LOGN_MODES_REGISTRY.add("pretrain", lambda c: LogNScale(
    mode="pretrain", base_len=c.logn_base_len, min_len=c.logn_min_len))


def _dagger(c: PositionConfig) -> LogNScale:
    if c.logn_train_len is None:
        raise ValueError("logn='dagger' needs logn_train_len (the length the model was trained at)")
    return LogNScale(mode="dagger", train_len=c.logn_train_len)


LOGN_MODES_REGISTRY.add("dagger", _dagger)


@dataclasses.dataclass
class PositionConfig(Config):
    """The position signal of a model and the length-extension settings it is built with.

    Args:
        kind: A :data:`POSITION_KINDS` name (``rope``, ``sinusoidal``, ``learned``, ``nope``,
            ``alibi``).
        rope_theta: RoPE base ``b``.
        rope_layout: ``"half"`` (Hugging Face / NeoX pairs ``(i, i + r/2)``) or ``"interleaved"``
            (RoFormer / GPT-J pairs ``(2i, 2i+1)``).
        rope_scaling: A Hugging Face ``rope_scaling``/``rope_parameters`` dict
            (``{"rope_type": "linear", "factor": 4}``) the model is built (and trained) with.
        partial_rotary_factor: Fraction of each head's channels that is rotated.
        rope_freq_repeat: Repeat every frequency of a narrower schedule this many times (what an
            exactly widened model needs; ``1`` otherwise).
        logn: ``None``, ``"pretrain"`` (per-row ``log(n_i)/log(logn_base_len)`` on the logits;
            the model is trained with it) or ``"dagger"`` (inference-time
            ``max(1, log(pos+1)/log(logn_train_len))`` on the queries).
        logn_base_len: Length at which the pretraining factor is 1 (512 in the posts).
        logn_min_len: Optional floor of the visible-key count of the pretraining factor.
        logn_train_len: The training length that log n† divides by (``logn="dagger"``).
        relpos: A relative-position map used in training and inference, e.g. InvLeaky ReRoPE
            ``{"name": "leaky", "window": 32, "factor": 0.0625}``.
        window: Sliding-window size of every attention layer (``None`` = full attention).
        layer_specs: One :class:`~formerlab.position.LayerSpec` dict per layer (window, position
            treatment, log-n, mixer); overrides ``window`` and ``logn`` per layer.
    """

    kind: str = "rope"
    rope_theta: float = 10000.0
    rope_layout: str = "half"
    rope_scaling: dict[str, Any] | None = None
    partial_rotary_factor: float = 1.0
    rope_freq_repeat: int = 1
    logn: str | None = None
    logn_base_len: int = 512
    logn_min_len: int | None = None
    logn_train_len: int | None = None
    relpos: dict[str, Any] | None = None
    window: int | None = None
    layer_specs: list[dict[str, Any]] | None = None

    def validate(self) -> None:
        spec = POSITION_KINDS.get(self.kind)  # ValueError listing the kinds
        if self.rope_layout not in LAYOUTS:
            raise ValueError(f"rope_layout must be one of {list(LAYOUTS)}, got {self.rope_layout!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be > 0, got {self.rope_theta!r}")
        if not 0.0 < self.partial_rotary_factor <= 1.0:
            raise ValueError(
                f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}"
            )
        if self.logn is not None:
            LOGN_MODES_REGISTRY.get(self.logn)(self)  # validates the lengths
        if self.window is not None and (isinstance(self.window, bool) or not isinstance(
                self.window, int) or self.window <= 0):
            raise ValueError(f"window must be a positive int or None, got {self.window!r}")
        if self.layer_specs is not None:
            for d in self.layer_specs:
                LayerSpec.from_dict(d)
        if not spec.rotary:
            used = [k for k in ("rope_scaling", "relpos") if getattr(self, k)]
            if used:
                raise ValueError(f"{', '.join(used)} need kind='rope', got kind={self.kind!r}")
        if self.relpos is not None:
            make_relpos(**self.relpos)
        if self.rope_scaling:
            _, _, common = parse_rope_parameters(self.rope_scaling)
            if common:
                raise ValueError(
                    f"give {sorted(common)} as PositionConfig fields, not inside rope_scaling"
                )

    def check_schedule(self, head_dim: int, max_position_embeddings: int | None) -> None:
        """Dry-run the built-in schedule (names, parameters, the factor of 'default' ...)."""
        if self.kind_spec.rotary:
            rope_type, params = self.schedule()
            if max_position_embeddings is not None:
                params.setdefault("max_position_embeddings", max_position_embeddings)
            rope_frequencies(head_dim, base=self.rope_theta, rope_type=rope_type,
                             partial_rotary_factor=self.partial_rotary_factor, **params)

    # -- builders used by the models ---------------------------------------------------------
    @property
    def kind_spec(self) -> PositionKind:
        return POSITION_KINDS.get(self.kind)

    def schedule(self) -> tuple[str, dict[str, Any]]:
        """``(rope_type, params)`` of the built-in schedule."""
        rope_type, params, _ = parse_rope_parameters(self.rope_scaling)
        return rope_type, params

    def build_rotary(self, head_dim: int, max_position_embeddings: int | None = None
                     ) -> RotaryEmbedding:
        rope_type, params = self.schedule()
        return RotaryEmbedding(
            head_dim, base=self.rope_theta, rope_type=rope_type,
            partial_rotary_factor=self.partial_rotary_factor, layout=self.rope_layout,
            max_position_embeddings=max_position_embeddings, freq_repeat=self.rope_freq_repeat,
            **params,
        )

    def build_logn(self, mode: str | None = None) -> LogNScale | None:
        """The :class:`LogNScale` of ``mode`` (default: this config's ``logn``)."""
        mode = self.logn if mode is None else mode
        return None if mode is None else LOGN_MODES_REGISTRY.get(mode)(self)

    def specs(self, num_layers: int) -> list[LayerSpec]:
        """One :class:`LayerSpec` per layer (from ``layer_specs``, else uniform)."""
        if self.layer_specs is None:
            return [LayerSpec(window=self.window)] * num_layers
        if len(self.layer_specs) != num_layers:
            raise ValueError(
                f"layer_specs has {len(self.layer_specs)} entries, num_layers is {num_layers}"
            )
        return [LayerSpec.from_dict(d) for d in self.layer_specs]
