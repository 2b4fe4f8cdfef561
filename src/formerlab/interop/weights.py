"""Read real pretrained weights into formerlab's models: Hugging Face folders and GGUF files.

- :func:`load_causal_lm_weights` — Llama-family decoders (``model_type`` ``llama``/``mistral``
  safetensors folders, single or sharded) and GGUF files of architecture ``llama``. GGUF tensors
  are read with the ``gguf`` package (memory-mapped) and dequantised **one tensor at a time** into
  float32, so the peak is about the float32 model. llama.cpp stores q/k projections permuted to
  the interleaved RoPE layout; they are converted back to the half layout (HF's) with
  :func:`formerlab.position.rope.convert_rope_layout`.
- :func:`load_encoder_weights` — BERT-family checkpoints for :class:`formerlab.models.Encoder`.
- :class:`GGUFTokenizer` — the byte-level BPE tokenizer stored in a GGUF file (vocabulary,
  merges, control tokens), giving the same ids as transformers' GGUF tokenizer.

Every mismatch raises ``ValueError`` naming what is missing, unexpected or unsupported. ``gguf``,
``safetensors`` and ``regex`` are imported lazily. Used by ``CausalLM.from_pretrained`` and
``Encoder.from_pretrained``.
"""

from __future__ import annotations

import itertools
import json
import re
import warnings
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..models.config import ModelConfig
from ..position.rope import convert_rope_layout

__all__ = [
    "SUPPORTED_ENCODER_TYPES",
    "SUPPORTED_GGUF_ARCHITECTURES",
    "SUPPORTED_HF_DECODER_TYPES",
    "GGUFTokenizer",
    "expected_causal_lm_names",
    "load_causal_lm_weights",
    "load_encoder_weights",
    "read_gguf_config",
]

SUPPORTED_GGUF_ARCHITECTURES = ("llama",)
SUPPORTED_HF_DECODER_TYPES = ("llama", "mistral")
SUPPORTED_ENCODER_TYPES = ("bert",)


def _check_names(expected: set[str], got: set[str], source: str) -> None:
    missing, unexpected = sorted(expected - got), sorted(got - expected)
    if missing or unexpected:
        raise ValueError(f"{source}: checkpoint does not match the model: missing tensors "
                         f"{missing}, unexpected tensors {unexpected}")


def expected_causal_lm_names(config: ModelConfig) -> set[str]:
    """The tensor names ``CausalLM(config).load_weights`` expects (built on the meta device)."""
    from ..models.lm import CausalLM

    with torch.device("meta"):
        model = CausalLM(config)
    return set(model.weights_state_dict())


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
    rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    theta = rope.pop("rope_theta", None) or cfg.get("rope_theta", 10000.0)
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    rope.pop("type", None)
    heads = cfg["num_attention_heads"]
    return ModelConfig.from_dict(dict(
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
        mlp_bias=bool(cfg.get("mlp_bias", False)),
        window=cfg.get("sliding_window") if mt == "mistral" else None,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    ))


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


def _load_hf_decoder(folder: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    cfg = json.loads((folder / "config.json").read_text())
    config = _hf_decoder_config(cfg)
    tensors: dict[str, Tensor] = {}
    for name, t in _iter_folder_tensors(folder):
        new = _rename(name, _HF_DECODER_MAP, _HF_IGNORED)
        if new is None:
            continue
        if new == "lm_head.weight" and config.tie_word_embeddings:
            continue
        tensors[new] = t.float() if t.is_floating_point() else t
    _check_names(expected_causal_lm_names(config), set(tensors), str(folder))
    return config, tensors


# --- GGUF ------------------------------------------------------------------------------------------
_GGUF_MAP = [
    (r"token_embd\.weight", "embed_tokens.weight"),
    (r"output_norm\.weight", "norm.weight"),
    (r"output\.weight", "lm_head.weight"),
    (r"blk\.(\d+)\.attn_norm\.weight", r"layers.\1.attn_norm.weight"),
    (r"blk\.(\d+)\.ffn_norm\.weight", r"layers.\1.mlp_norm.weight"),
    (r"blk\.(\d+)\.attn_([qkv])\.(weight|bias)", r"layers.\1.mixer.\2_proj.\3"),
    (r"blk\.(\d+)\.attn_output\.(weight|bias)", r"layers.\1.mixer.o_proj.\2"),
    (r"blk\.(\d+)\.ffn_(gate|up|down)\.(weight|bias)", r"layers.\1.mlp.\2_proj.\3"),
]


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def read_gguf_config(reader: Any) -> ModelConfig:
    """A :class:`ModelConfig` from the metadata of an open ``gguf.GGUFReader``."""
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_GGUF_ARCHITECTURES:
        raise ValueError(f"unsupported GGUF architecture {arch!r}; supported architectures: "
                         f"{', '.join(SUPPORTED_GGUF_ARCHITECTURES)}")

    def get(key: str, default: Any = None) -> Any:
        return _field(reader, f"{arch}.{key}", default)

    hidden, heads = int(get("embedding_length")), int(get("attention.head_count"))
    kv = int(get("attention.head_count_kv", heads))
    head_dim = int(get("attention.key_length", hidden // heads))
    rot = int(get("rope.dimension_count", head_dim))
    vocab = get("vocab_size") or len(reader.fields["tokenizer.ggml.tokens"].data)
    scaling = None
    stype = get("rope.scaling.type")
    if stype not in (None, "none"):
        if stype != "linear":
            raise ValueError(f"GGUF rope scaling {stype!r} is not supported (supported: linear)")
        scaling = {"rope_type": "linear", "factor": float(get("rope.scaling.factor"))}
    names = {t.name for t in reader.tensors}
    return ModelConfig.from_dict(dict(
        vocab_size=int(vocab), hidden_size=hidden, num_layers=int(get("block_count")),
        num_heads=heads, num_kv_heads=kv, head_dim=head_dim,
        intermediate_size=int(get("feed_forward_length")), ffn="swiglu", norm="rmsnorm",
        norm_position="pre", norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-5)),
        position="rope", rope_theta=float(get("rope.freq_base", 10000.0)), rope_layout="half",
        rope_scaling=scaling, partial_rotary_factor=rot / head_dim,
        max_position_embeddings=int(get("context_length", 2048)),
        attention_bias="blk.0.attn_q.bias" in names and "blk.0.attn_output.bias" in names,
        qk_bias="blk.0.attn_q.bias" in names and "blk.0.attn_output.bias" not in names,
        tie_word_embeddings="output.weight" not in names,
    ))


def _dequantize_rows(data: Any, qtype: Any, shape: tuple[int, ...], dequantize: Any,
                     chunk_elems: int = 1 << 22) -> Tensor:
    """Dequantise into a preallocated float32 tensor, a block of rows at a time, so the
    transient memory is one chunk (not numpy's 2–3 temporaries of the whole tensor)."""
    out = torch.empty(shape, dtype=torch.float32)
    if data.ndim >= 2 and len(shape) >= 2 and data.shape[0] == shape[0]:
        row = max(1, out[0].numel())
        step = max(1, chunk_elems // row)
        for i in range(0, shape[0], step):
            block = dequantize(data[i:i + step], qtype)
            out[i:i + step] = _readonly_view(block.reshape(-1, *shape[1:]))
    else:
        out.copy_(_readonly_view(dequantize(data, qtype).reshape(shape)))
    return out


def _readonly_view(arr: Any) -> Tensor:
    """``torch.from_numpy`` of a possibly read-only array (F32/F16 tensors are views of the
    read-only memory map); the caller only reads it (copies it into its own storage)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


def _load_gguf(path: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    import gguf
    from gguf.quants import dequantize

    reader = gguf.GGUFReader(str(path))
    config = read_gguf_config(reader)
    head_dim, rot = config.dim_per_head, config.rotary_dim
    tensors: dict[str, Tensor] = {}
    for t in reader.tensors:  # one tensor at a time: the quantised data stays memory-mapped
        new = _rename(t.name, _GGUF_MAP)
        shape = tuple(int(s) for s in reversed(t.shape.tolist()))  # ggml: ne0 = innermost
        w = _dequantize_rows(t.data, t.tensor_type, shape, dequantize)
        if new.endswith(("q_proj.weight", "k_proj.weight", "q_proj.bias", "k_proj.bias")):
            w = convert_rope_layout(w, head_dim, "interleaved", "half", rotary_dim=rot)
        tensors[new] = w.contiguous()
    _check_names(expected_causal_lm_names(config), set(tensors), str(path))
    return config, tensors


def load_causal_lm_weights(path: str | Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    """``(ModelConfig, float32 tensors named like CausalLM)`` from a HF folder or a GGUF file.

    Raises:
        ValueError: unsupported architecture/model type (naming the supported ones), missing or
            unexpected tensors (listing them), or a path that is neither.
    """
    path = Path(path)
    if path.is_file() and path.suffix == ".gguf":
        return _load_gguf(path)
    if path.is_dir() and (path / "config.json").is_file():
        return _load_hf_decoder(path)
    raise ValueError(f"{path} is neither a .gguf file nor a folder with config.json")


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
    config = ModelConfig.from_dict(dict(
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
    ))
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
    _check_names(expected, set(tensors), str(folder))
    return config, tensors, extra


# --- the GGUF tokenizer (byte-level BPE) ----------------------------------------------------------
_GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
#: ``tokenizer.ggml.pre`` values with a split pattern other than GPT-2's
_PRE_SPLITS = {name: _LLAMA3_SPLIT for name in
               ("llama3", "llama-v3", "llama-bpe", "falcon3", "smaug-bpe", "dbrx")}


@lru_cache(maxsize=1)
def byte_alphabet() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map: printable Latin-1 bytes map to
    themselves, the other 68 bytes to ``chr(256 + i)`` in byte order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


class GGUFTokenizer:
    """The byte-level BPE tokenizer described by a GGUF file (``tokenizer.ggml.model = gpt2``).

    ``encode(text)`` splits out control tokens (``<|im_start|>`` …), pre-tokenizes with the
    split pattern of ``tokenizer.ggml.pre`` (GPT-2's by default), maps bytes to GPT-2's printable
    alphabet and applies the merges by rank. ``decode(ids)`` inverts it.
    """

    def __init__(self, tokens: list[str], merges: list[str], token_types: list[int] | None = None,
                 *, pre: str | None = None, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, add_bos_token: bool = False) -> None:
        import regex

        self.tokens = list(tokens)
        self.vocab = {t: i for i, t in enumerate(self.tokens)}
        self.ranks = {tuple(m.split(" ")): r for r, m in enumerate(merges)}
        alphabet = set(byte_alphabet().values())
        types = token_types or [1] * len(tokens)
        self.special = [t for t, ty in zip(self.tokens, types)
                        if (ty == 3 and set(t) <= alphabet) or ty == 4]
        self.bos_token_id, self.eos_token_id = bos_token_id, eos_token_id
        self.add_bos_token = add_bos_token
        self._split = regex.compile(_PRE_SPLITS.get(pre or "", _GPT2_SPLIT))
        self._special_re = (regex.compile("|".join(regex.escape(s) for s in
                                                   sorted(self.special, key=len, reverse=True)))
                            if self.special else None)
        self._enc = byte_alphabet()
        self._dec = {c: b for b, c in self._enc.items()}
        self._cache: dict[str, list[int]] = {}

    @classmethod
    def from_gguf(cls, path: str | Path) -> GGUFTokenizer:
        import gguf

        reader = gguf.GGUFReader(str(path))
        model = _field(reader, "tokenizer.ggml.model")
        if model != "gpt2":
            raise ValueError(f"GGUF tokenizer {model!r} is not supported (supported: gpt2 = "
                             "byte-level BPE)")
        return cls(_field(reader, "tokenizer.ggml.tokens"), _field(reader, "tokenizer.ggml.merges"),
                   _field(reader, "tokenizer.ggml.token_type"),
                   pre=_field(reader, "tokenizer.ggml.pre"),
                   bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
                   eos_token_id=_field(reader, "tokenizer.ggml.eos_token_id"),
                   add_bos_token=bool(_field(reader, "tokenizer.ggml.add_bos_token", False)))

    def __len__(self) -> int:
        return len(self.tokens)

    def _bpe(self, word: str) -> list[int]:
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = [(self.ranks.get((a, b)), i) for i, (a, b) in enumerate(itertools.pairwise(parts))]
            best = min((p for p in pairs if p[0] is not None), default=None)
            if best is None:
                break
            a, b = parts[best[1]], parts[best[1] + 1]
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        try:
            ids = [self.vocab[p] for p in parts]
        except KeyError as exc:
            raise ValueError(f"BPE piece {exc.args[0]!r} is not in the vocabulary") from exc
        if len(self._cache) < 100_000:
            self._cache[word] = ids
        return ids

    def _encode_plain(self, text: str) -> list[int]:
        ids: list[int] = []
        for piece in self._split.findall(text):
            ids += self._bpe("".join(self._enc[b] for b in piece.encode("utf-8")))
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of ``text`` (BOS prepended if the file asks for it)."""
        ids = [self.bos_token_id] if add_special_tokens and self.add_bos_token \
            and self.bos_token_id is not None else []
        pos = 0
        if self._special_re is not None:
            for m in self._special_re.finditer(text):
                ids += self._encode_plain(text[pos:m.start()])
                ids.append(self.vocab[m.group()])
                pos = m.end()
        ids += self._encode_plain(text[pos:])
        return ids

    def decode(self, ids: list[int] | Tensor, skip_special_tokens: bool = False) -> str:
        """Text of ``ids`` (bytes that are not valid UTF-8 become U+FFFD)."""
        if isinstance(ids, Tensor):
            ids = ids.tolist()
        special = set(self.special)
        out = bytearray()
        for i in ids:
            tok = self.tokens[i]
            if tok in special:
                if not skip_special_tokens:
                    out += tok.encode("utf-8")
                continue
            out += bytes(self._dec[c] for c in tok)
        return out.decode("utf-8", errors="replace")

    def __call__(self, text: str | list[str], return_tensors: str | None = None
                 ) -> dict[str, Any]:
        texts = [text] if isinstance(text, str) else list(text)
        ids = [self.encode(t) for t in texts]
        if return_tensors == "pt":
            if len({len(x) for x in ids}) != 1:
                raise ValueError("return_tensors='pt' needs equal lengths (no padding here)")
            return {"input_ids": torch.tensor(ids)}
        return {"input_ids": ids[0] if isinstance(text, str) else ids}


# --- registration: formerlab.models' from_pretrained reads foreign checkpoints through these ----
def _encoder_loader(path: Path) -> tuple[ModelConfig, dict[str, Tensor]]:
    config, tensors, _ = load_encoder_weights(path)
    return config, tensors


from ..models.formats import FOREIGN_LOADERS  # noqa: E402

FOREIGN_LOADERS.setdefault("causal_lm", load_causal_lm_weights)
FOREIGN_LOADERS.setdefault("encoder", _encoder_loader)
