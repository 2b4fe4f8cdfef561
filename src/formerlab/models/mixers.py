"""The token-mixer registry: what each layer of a formerlab model uses to mix positions.

A mixer is an ``nn.Module`` with ``owner`` (its registry name) and::

    forward(x, positions, *, key_padding=None, mask=None, state=None, use_cache=False,
            return_weights=False) -> (y, state, weights)

where ``state`` is a :class:`~formerlab.nn.LayerState` (a KV cache, a recurrent state ...), so
decoding and beam search treat every mixer alike. Positional mixers (``positional=True``) also
take the model's position hooks through ``set_position(LayerPosition)`` and expose ``head_dim``
(what the model's rotary embedding rotates).

=================  ==========================================================================
``mha``            multi-head / grouped-query attention with every position hook
``gau``            Gated Attention Unit: FLASH / GAU-α (kexue.fm/archives/8934, 9052)
``synthesizer``    synthesised attention weights (kexue.fm/archives/7430)
``lru``            Linear Recurrent Unit, complex diagonal recurrence (kexue.fm/archives/9554)
``slru``           Su's real LRU, ``θ = 0`` (kexue.fm/archives/9554)
``linear``         linear attention ``φ(q)ᵀΣφ(k)vᵀ / φ(q)ᵀΣφ(k)`` (arXiv 2006.16236)
``vq``             Transformer-VQ: attention over vector-quantised keys (kexue.fm/archives/9844)
=================  ==========================================================================

A new mixer is one module and one :func:`register_mixer` entry; its builder maps a
:class:`~formerlab.models.ModelConfig` (and the layer's :class:`~formerlab.position.LayerSpec`)
to the module. ``ModelConfig(mixer=...)`` and per-layer ``LayerSpec(mixer=...)`` pick them.
The last four run in time linear in the sequence and decode with a fixed-size state (LRU,
linear attention) or a fixed-size cache plus a window (Transformer-VQ); as encoders
(``causal=False``) the LRUs run in both directions.

Two optional hooks of a mixer module: ``init_mixer_(generator)`` initialises what the model's
init scheme (``Linear``/``Embedding`` weights) does not know — LRU eigenvalues, VQ codebooks —
and ``aux_loss`` (a scalar tensor or ``None``) is an extra training loss of the latest forward,
e.g. Transformer-VQ's commitment loss; :func:`auxiliary_loss` sums them over a model.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from ..attention.gau import GAU_ACTIVATIONS, GatedAttentionUnit
from ..attention.linear import FEATURE_MAPS
from ..attention.multihead import MultiHeadAttention
from ..attention.synthesizer import SYNTHESIZER_KINDS, SynthesizerAttention
from ..attention.vq_layer import TransformerVQLayer
from ..config import Config
from ..position.layers import LayerSpec
from ..recurrent.lru import LRU, SLRU
from ..recurrent.scan import SCANS
from ..registry import Registry
from .mixers_recurrent import LinearAttentionMixer, RecurrentMixer

__all__ = ["MIXERS", "GAUOptions", "LRUOptions", "LinearOptions", "MixerEntry", "SLRUOptions",
           "SynthesizerOptions", "VQOptions", "auxiliary_loss", "build_mixer", "mixer_options",
           "register_mixer"]


@dataclasses.dataclass(frozen=True)
class MixerEntry:
    """A registered mixer: its builder, its options dataclass and what it supports."""

    build: Callable[..., nn.Module]
    options: type[Config] | None = None
    positional: bool = False
    description: str = ""


MIXERS: Registry[MixerEntry] = Registry("token mixer")


def register_mixer(name: str, *, options: type[Config] | None = None, positional: bool = False,
                   description: str = "") -> Callable[[Callable[..., nn.Module]],
                                                      Callable[..., nn.Module]]:
    """Register ``build(config, spec, options, causal) -> module`` under ``name``.

    Args:
        options: A :class:`~formerlab.config.Config` dataclass of the mixer's settings
            (``ModelConfig.mixer_options`` is validated against it).
        positional: The mixer takes the position hooks (RoPE, relative maps, log-n, biases).
    """

    def deco(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        MIXERS.add(name, MixerEntry(fn, options, positional, description))
        return fn

    return deco


def mixer_options(name: str, options: dict[str, Any] | None) -> Config | None:
    """Validated options object of mixer ``name`` (``ValueError`` names the allowed keys)."""
    entry = MIXERS.get(name)
    if entry.options is None:
        if options:
            raise ValueError(f"mixer {name!r} takes no options, got {sorted(options)}")
        return None
    return entry.options.from_dict(dict(options or {}))


def build_mixer(name: str, config: Any, spec: LayerSpec, options: dict[str, Any] | None,
                causal: bool) -> nn.Module:
    """The mixer ``name`` of one layer."""
    entry = MIXERS.get(name)
    module = entry.build(config, spec, mixer_options(name, options), causal)
    module.owner = MIXERS.canonical(name)
    return module


# -- the built-in mixers ------------------------------------------------------------------------
@register_mixer("mha", positional=True, description="multi-head / grouped-query attention")
def _mha(c: Any, spec: LayerSpec, _opts: None, causal: bool) -> nn.Module:
    a = c.attention
    return MultiHeadAttention(
        c.hidden_size, c.num_heads, c.kv_heads, c.dim_per_head, qk_bias=a.qk_bias, bias=a.bias,
        qkv_bias=a.qkv_bias, normalization=a.normalization,
        normalization_options=a.normalization_options, attention_dropout=a.dropout,
        window=spec.window, causal=causal,
    )


@dataclasses.dataclass
class GAUOptions(Config):
    """Settings of a ``gau`` mixer.

    Args:
        expansion: ``e``, width of the gated value path (default ``2·hidden_size``).
        key_size: ``s``, width of the shared q/k (128 in GAU-α).
        activation: ``silu`` (swish), ``relu``, ``gelu`` or ``identity``.
        use_bias: Dense biases and q/k offsets (FLASH); GAU-α has none.
        split_values: Fused softmax attention with the values cut into key-width heads.
    """

    expansion: int | None = None
    key_size: int = 128
    activation: str = "silu"
    use_bias: bool = False
    split_values: bool = False

    def validate(self) -> None:
        if self.activation not in GAU_ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {sorted(GAU_ACTIVATIONS)}, got {self.activation!r}"
            )
        for name in ("expansion", "key_size"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
                raise ValueError(f"gau {name} must be a positive int, got {v!r}")


@register_mixer("gau", options=GAUOptions, positional=True,
                description="Gated Attention Unit (FLASH, GAU-α)")
def _gau(c: Any, spec: LayerSpec, o: GAUOptions, causal: bool) -> nn.Module:
    a = c.attention
    return GatedAttentionUnit(
        c.hidden_size, o.expansion or 2 * c.hidden_size, o.key_size, activation=o.activation,
        use_bias=o.use_bias, normalization=a.normalization, rope=False,
        attention_dropout=a.dropout, causal=causal, window=spec.window,
        normalization_options=a.normalization_options, split_values=o.split_values,
    )


@dataclasses.dataclass
class SynthesizerOptions(Config):
    """Settings of a ``synthesizer`` mixer (matrices cover ``max_position_embeddings``).

    Args:
        kind: A synthesizer kind or a list of kinds (a learned mixture).
        fixed: Freeze the ``random`` matrix.
        k: Rank of ``factorized_random``.
        a: ``a`` of ``factorized_dense``.
    """

    kind: str | list[str] = "dense"
    fixed: bool = False
    k: int = 8
    a: int | None = None

    def validate(self) -> None:
        for kd in [self.kind] if isinstance(self.kind, str) else self.kind:
            if kd not in SYNTHESIZER_KINDS:
                raise ValueError(f"unknown synthesizer kind {kd!r}; valid kinds: "
                                 f"{', '.join(SYNTHESIZER_KINDS)}")


@register_mixer("synthesizer", options=SynthesizerOptions,
                description="synthesised attention weights (dense, random, factorised)")
def _synthesizer(c: Any, _spec: LayerSpec, o: SynthesizerOptions, causal: bool) -> nn.Module:
    return SynthesizerAttention(c.hidden_size, c.num_heads, c.max_position_embeddings,
                                kind=o.kind, fixed=o.fixed, k=o.k, a=o.a, causal=causal)


# -- linear-time mixers -------------------------------------------------------------------------
def _positive_int(owner: str, name: str, value: object, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner} {name} must be a positive int, got {value!r}")


@dataclasses.dataclass
class SLRUOptions(Config):
    """Settings of an ``slru`` mixer (and the shared ones of ``lru``).

    Args:
        d_state: State channels ``N`` (default ``hidden_size``).
        r_min, r_max: Ring of the initial ``|λ|`` (``0 ≤ r_min < r_max ≤ 1``; Su: 0.9, 0.999).
        scan: A :data:`formerlab.recurrent.SCANS` name for the parallel forward.
        normalize: The trainable ``γ = √(1 − |λ|²)`` input normalisation.
        chunk_size: Chunk of the ``chunked`` scan (default ``⌈√L⌉``).
    """

    d_state: int | None = None
    r_min: float = 0.9
    r_max: float = 0.999
    scan: str = "chunked"
    normalize: bool = True
    chunk_size: int | None = None

    def validate(self) -> None:
        _positive_int("lru", "d_state", self.d_state, optional=True)
        _positive_int("lru", "chunk_size", self.chunk_size, optional=True)
        if not 0.0 <= self.r_min < 1.0:
            raise ValueError(f"r_min must lie in [0, 1), got {self.r_min!r}")
        if not 0.0 < self.r_max <= 1.0:
            raise ValueError(f"r_max must lie in (0, 1], got {self.r_max!r}")
        if self.r_min >= self.r_max:
            raise ValueError(f"r_min must be smaller than r_max, got r_min={self.r_min} >= "
                             f"r_max={self.r_max}")
        if self.scan not in SCANS:
            raise ValueError(f"unknown scan {self.scan!r} (option 'scan'); valid scan names: "
                             f"{', '.join(SCANS.names(include_aliases=True))}")


@dataclasses.dataclass
class LRUOptions(SLRUOptions):
    """Settings of an ``lru`` mixer: those of :class:`SLRUOptions` plus ``max_phase``
    (initial phases ``θ ~ U[0, max_phase]``, default ``2π``)."""

    max_phase: float = 2 * math.pi

    def validate(self) -> None:
        super().validate()
        if not (math.isfinite(self.max_phase) and self.max_phase >= 0):
            raise ValueError(f"max_phase must be a finite number >= 0, got {self.max_phase!r}")


def _ring_kwargs(o: SLRUOptions, c: Any) -> dict[str, Any]:
    return dict(d_model=c.hidden_size, d_state=o.d_state or c.hidden_size, r_min=o.r_min,
                r_max=o.r_max, scan=o.scan, normalize=o.normalize, chunk_size=o.chunk_size)


@register_mixer("lru", options=LRUOptions,
                description="Linear Recurrent Unit (complex diagonal recurrence)")
def _lru(c: Any, _spec: LayerSpec, o: LRUOptions, causal: bool) -> nn.Module:
    return RecurrentMixer(lambda: LRU(**_ring_kwargs(o, c), max_phase=o.max_phase), causal)


@register_mixer("slru", options=SLRUOptions, description="real LRU (θ = 0)")
def _slru(c: Any, _spec: LayerSpec, o: SLRUOptions, causal: bool) -> nn.Module:
    return RecurrentMixer(lambda: SLRU(**_ring_kwargs(o, c)), causal)


@dataclasses.dataclass
class LinearOptions(Config):
    """Settings of a ``linear`` mixer (heads and head size come from the model config).

    Args:
        feature_map: A :data:`formerlab.attention.FEATURE_MAPS` name (``elu1`` = ``elu + 1``).
        eps: Added to the denominators.
        chunk_size: Chunk of the causal form (quadratic inside, recurrent across).
    """

    feature_map: str = "elu1"
    eps: float = 0.0
    chunk_size: int = 64

    def validate(self) -> None:
        if self.feature_map not in FEATURE_MAPS:
            raise ValueError(f"unknown feature map {self.feature_map!r} (option 'feature_map'); "
                             f"valid names: {', '.join(FEATURE_MAPS)}")
        _positive_int("linear", "chunk_size", self.chunk_size)
        if not self.eps >= 0:
            raise ValueError(f"linear eps must be >= 0, got {self.eps!r}")


@register_mixer("linear", options=LinearOptions, description="linear attention (elu + 1)")
def _linear(c: Any, _spec: LayerSpec, o: LinearOptions, causal: bool) -> nn.Module:
    return LinearAttentionMixer(c.hidden_size, c.num_heads, c.dim_per_head,
                                feature_map=o.feature_map, causal=causal, eps=o.eps,
                                bias=c.attention.bias, chunk_size=o.chunk_size)


@dataclasses.dataclass
class VQOptions(Config):
    """Settings of a ``vq`` (Transformer-VQ) mixer; see
    :class:`~formerlab.attention.vq_layer.TransformerVQLayer`.

    Args:
        key_size: ``d_k`` per head (paper 128).
        expansion: Value / gate width (default ``2·hidden_size``).
        num_heads: Heads, one codebook each (paper 1).
        num_codes: Codebook size ``S`` (paper 512).
        block_len: ``ℓ`` (paper 512); sequences of any length are padded inside.
        commitment_weight: ``c_beta`` (official 1e-4).
        ema_decay: Codebook EMA rate (0.99).
        window_bias: Learned relative bias over the last ``ℓ`` tokens.
        grad_through_cache: Gradients through the cached value means.
        kmeans_init: k-means initialisation of the codebooks on the first training batch.
        threshold_dead: Revive codes whose EMA count falls below it (0 = never).
    """

    key_size: int = 128
    expansion: int | None = None
    num_heads: int = 1
    num_codes: int = 512
    block_len: int = 512
    commitment_weight: float = 1e-4
    ema_decay: float = 0.99
    window_bias: bool = True
    grad_through_cache: bool = False
    kmeans_init: bool = False
    threshold_dead: float = 0.0

    def validate(self) -> None:
        for name in ("key_size", "num_heads", "num_codes", "block_len"):
            _positive_int("vq", name, getattr(self, name))
        _positive_int("vq", "expansion", self.expansion, optional=True)
        if self.expansion is not None and self.expansion % self.num_heads:
            raise ValueError(f"vq expansion ({self.expansion}) must be divisible by num_heads "
                             f"({self.num_heads})")
        if not self.commitment_weight >= 0:
            raise ValueError(f"vq commitment_weight must be >= 0, got {self.commitment_weight!r}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"vq ema_decay must lie in [0, 1), got {self.ema_decay!r}")


@register_mixer("vq", options=VQOptions,
                description="Transformer-VQ (vector-quantised keys, linear time)")
def _vq(c: Any, _spec: LayerSpec, o: VQOptions, causal: bool) -> nn.Module:
    expansion = o.expansion or 2 * c.hidden_size
    if expansion % o.num_heads:
        raise ValueError(f"vq expansion ({expansion}) must be divisible by num_heads "
                         f"({o.num_heads})")
    return TransformerVQLayer(
        c.hidden_size, o.key_size, expansion, o.num_heads, o.num_codes, o.block_len,
        causal=causal, commitment_weight=o.commitment_weight, ema_decay=o.ema_decay,
        window_bias=o.window_bias, grad_through_cache=o.grad_through_cache,
        kmeans_init=o.kmeans_init, threshold_dead=o.threshold_dead, bias=c.attention.bias)


def auxiliary_loss(model: nn.Module) -> Tensor | None:
    """The sum of the ``aux_loss`` of every module of ``model`` that has one (``None`` if none
    has): e.g. Transformer-VQ's commitment loss of the latest forward in training mode."""
    total = None
    for m in model.modules():
        loss = getattr(m, "aux_loss", None)
        if isinstance(loss, Tensor):
            total = loss if total is None else total + loss
    return total
