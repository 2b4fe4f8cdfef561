"""Saving and loading models: formerlab folders, older formerlab files, foreign checkpoints.

A formerlab folder is ``config.json`` (the :class:`~formerlab.models.ModelConfig`) plus
``model.safetensors``. Older files still load:

- configs of the first release (flat keys such as ``rope_theta``, ``window``, ``logn``) are read
  by ``ModelConfig.from_dict``;
- the first release's weight names (``layers.i.self_attn.*``, ``pos_embed.weight``) are renamed;
- configs and weights of the former GAU models (``GAUConfig``: ``expansion``, ``key_size`` ...)
  are converted to a ``ModelConfig(mixer="gau", ...)`` by :func:`convert_gau_config`.

Foreign formats (Hugging Face folders, GGUF files) are read by loaders that the
:mod:`formerlab.interop` package registers into :data:`FOREIGN_LOADERS` when it is imported; the
core never imports it, it only names it in :data:`FORMAT_PLUGINS`.
"""

from __future__ import annotations

import importlib
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from .config import ModelConfig

__all__ = [
    "CONFIG_NAME",
    "FOREIGN_LOADERS",
    "FORMAT_PLUGINS",
    "WEIGHTS_NAME",
    "CheckpointError",
    "convert_gau_config",
    "from_pretrained",
    "rename_legacy_weights",
    "save_pretrained",
]

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
#: modules that register foreign-format loaders when imported
FORMAT_PLUGINS = ("formerlab.interop.weights",)
#: model kind (``"causal_lm"``, ``"encoder"``) -> ``loader(path, cls, dtype) -> model``
FOREIGN_LOADERS: dict[str, Callable[[Path, type, torch.dtype | None], Any]] = {}


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupted or does not match the model."""


# -- older formerlab files --------------------------------------------------------------------
_GAU_KEYS = {"expansion", "key_size"}


def convert_gau_config(data: dict[str, Any]) -> dict[str, Any]:
    """A ``ModelConfig`` dict from the former ``GAUConfig`` dict (GAU-α stacks).

    Raises:
        CheckpointError: a setting the unified model does not have (``init_order`` other than 3).
    """
    d = dict(data)
    if d.pop("init_order", 3) != 3:
        raise CheckpointError(
            "this GAU checkpoint used init_order != 3, which the unified model does not keep; "
            "it only affects initialisation, so load the weights into "
            "CausalLM(formerlab.models.gau_alpha(...)) with load_weights() instead"
        )
    d.pop("checkpoint", None)  # recompute is a runtime switch: model.gradient_checkpointing_enable()
    normalization = d.pop("normalization", "softmax_plus")
    base_len, min_len = d.pop("base_len", 512), d.pop("min_len", None)
    out = {
        "vocab_size": d.pop("vocab_size", 12000), "hidden_size": d.pop("hidden_size", 768),
        "num_layers": d.pop("num_layers", 24), "num_heads": 1, "mixer": "gau",
        "mixer_options": {"expansion": d.pop("expansion", 1536), "key_size": d.pop("key_size", 128),
                          "activation": d.pop("activation", "silu"),
                          "use_bias": d.pop("use_bias", False)},
        "ffn": "none", "norm": "rmsnorm", "norm_position": d.pop("norm_position", "post"),
        "norm_eps": d.pop("norm_eps", 1e-12), "norm_affine": d.pop("norm_affine", False),
        "position": {"kind": "rope" if d.pop("rope", True) else "nope",
                     "rope_layout": d.pop("rope_layout", "interleaved"),
                     "rope_theta": d.pop("rope_theta", 10000.0)},
        "attention": {"normalization": normalization, "dropout": d.pop("attention_dropout", 0.1),
                      "normalization_options": ({"base_len": base_len, "min_len": min_len}
                                                if normalization == "softmax_plus" else None)},
        "max_position_embeddings": d.pop("max_position_embeddings", 512),
        "type_vocab_size": d.pop("type_vocab_size", 2), "dropout": d.pop("dropout", 0.1),
        "tie_word_embeddings": d.pop("tie_word_embeddings", True),
        "init": d.pop("init", "gau_alpha"), "initializer_range": d.pop("initializer_range", 0.02),
    }
    out["embed_norm"] = out["norm_position"] == "post"
    if d:
        raise CheckpointError(f"unknown GAU config key(s) {sorted(d)}")
    return out


def read_config(data: dict[str, Any]) -> ModelConfig:
    """A :class:`ModelConfig` from any formerlab config dict (current, first release, GAU)."""
    if _GAU_KEYS <= set(data) and "mixer" not in data:
        data = convert_gau_config(data)
    return ModelConfig.from_dict(data)


_LEGACY_NAMES = (
    (re.compile(r"^(layers\.\d+)\.self_attn\."), r"\1.mixer."),
    (re.compile(r"^(layers\.\d+)\.gau\."), r"\1.mixer."),
    (re.compile(r"^(layers\.\d+)\.norm\.weight$"), r"\1.attn_norm.weight"),
    (re.compile(r"^pos_embed\."), "embed_positions."),
)


def rename_legacy_weights(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """Weight names of the first release (and of the former GAU models) → current names."""
    out = {}
    for name, t in tensors.items():
        for pattern, repl in _LEGACY_NAMES:
            name = pattern.sub(repl, name)
        out[name] = t
    return out


# -- loading ------------------------------------------------------------------------------------
def load_weights_into(model: nn.Module, tensors: dict[str, Tensor], source: str, *,
                      assign: bool = False) -> None:
    """Strict load with messages naming the missing, unexpected and mis-shaped tensors."""
    tensors = rename_legacy_weights(tensors)
    expected = set(model.weights_state_dict())
    missing = sorted(expected - set(tensors))
    unexpected = sorted(set(tensors) - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{source} does not match the model: missing {missing[:10]}"
            f"{' ...' if len(missing) > 10 else ''}, unexpected {unexpected[:10]}"
            f"{' ...' if len(unexpected) > 10 else ''}"
        )
    own = model.state_dict()
    bad = [k for k, v in tensors.items() if own[k].shape != v.shape]
    if bad:
        shapes = {k: (tuple(tensors[k].shape), tuple(own[k].shape)) for k in bad[:5]}
        raise CheckpointError(f"{source}: shape mismatch (file, model): {shapes}")
    model.load_state_dict(tensors, strict=False, assign=assign)
    if model.config.tie_word_embeddings and hasattr(model, "lm_head"):
        model.lm_head.weight = model.embed_tokens.weight  # assign replaced the Parameter


def save_pretrained(model: nn.Module, path: str | Path) -> None:
    """Write ``config.json`` and ``model.safetensors`` into the folder ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file(model.weights_state_dict(), str(path / WEIGHTS_NAME))
    model.config.save(path / CONFIG_NAME)


def _is_foreign(path: Path) -> bool:
    cfg = path / CONFIG_NAME
    if path.suffix == ".gguf":
        return True
    if not cfg.is_file():
        return False
    try:
        return "model_type" in json.loads(cfg.read_text() or "{}")
    except json.JSONDecodeError:
        return False


def _foreign_loader(kind: str, path: Path) -> Callable[[Path, type, torch.dtype | None], Any]:
    for name in FORMAT_PLUGINS:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # the plugin's own optional dependency is missing
            raise CheckpointError(
                f"{path} is a foreign checkpoint; reading it needs the 'hf' extra "
                f"(pip install 'formerlab[hf]'): {exc}"
            ) from exc
    if kind not in FOREIGN_LOADERS:
        raise CheckpointError(f"no loader for {kind} checkpoints like {path}")
    return FOREIGN_LOADERS[kind]


def from_pretrained(cls: type, path: str | Path, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> Any:
    """Load ``cls`` (a model class) from a formerlab folder or a foreign checkpoint.

    ``dtype`` (e.g. ``torch.bfloat16``) is the parameters' dtype (default: the dtype the weights
    were saved in); RoPE frequencies stay float32.
    """
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    path = Path(path)
    if _is_foreign(path):  # built without initialisation, each tensor written into its parameter
        model = _foreign_loader(cls.model_kind, path)(path, cls, dtype)
        dtype = None
    else:
        cfg_file, w_file = path / CONFIG_NAME, path / WEIGHTS_NAME
        for f in (cfg_file, w_file):
            if not f.is_file():
                raise CheckpointError(f"{f} does not exist")
        try:
            config = read_config(json.loads(cfg_file.read_text()))
        except (json.JSONDecodeError, ValueError, TypeError) as exc:
            raise CheckpointError(f"{cfg_file} is not a valid model config: {exc}") from exc
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(w_file), device=str(device or "cpu"))
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{w_file} is corrupted or not safetensors: {exc}") from exc
        model = cls(config)
        # built in the dtype the weights will have, so nothing is rounded on the way in (float64
        # checkpoints stay float64); by default the checkpoint's own dtype, as transformers 5
        floats = [t.dtype for t in tensors.values() if t.is_floating_point()]
        target = dtype or (max(set(floats), key=floats.count) if floats else None)
        if target is not None and target != torch.float32:
            model = model.to(target)
        model.load_weights(tensors, source=str(w_file))
    model.eval()  # as Hugging Face's from_pretrained: ready for inference
    if dtype is not None:
        model = model.to(dtype)
    return model.to(device) if device is not None else model
