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
=================  ==========================================================================

A new mixer is one module and one :func:`register_mixer` entry; its builder maps a
:class:`~formerlab.models.ModelConfig` (and the layer's :class:`~formerlab.position.LayerSpec`)
to the module. ``ModelConfig(mixer=...)`` and per-layer ``LayerSpec(mixer=...)`` pick them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from torch import nn

from ..attention.gau import GAU_ACTIVATIONS, GatedAttentionUnit
from ..attention.multihead import MultiHeadAttention
from ..attention.synthesizer import SYNTHESIZER_KINDS, SynthesizerAttention
from ..config import Config
from ..position.layers import LayerSpec
from ..registry import Registry

__all__ = ["MIXERS", "GAUOptions", "MixerEntry", "SynthesizerOptions", "build_mixer",
           "mixer_options", "register_mixer"]


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
