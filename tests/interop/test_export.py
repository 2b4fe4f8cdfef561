"""formerlab CausalLM → transformers LlamaForCausalLM: equal logits, HF generate, clear refusals."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")

from formerlab import ModelConfig  # noqa: E402
from formerlab.interop.export import to_transformers  # noqa: E402
from formerlab.models import CausalLM, gau_alpha  # noqa: E402

BASE = dict(vocab_size=97, hidden_size=48, num_layers=2, num_heads=4, num_kv_heads=2,
            intermediate_size=96, norm_eps=1e-5, tie_word_embeddings=False)


@pytest.mark.parametrize("extra", [
    {},
    {"rope_layout": "interleaved", "tie_word_embeddings": True},
    {"attention_bias": True, "mlp_bias": True, "rope_theta": 5e5},
    {"rope_scaling": {"rope_type": "linear", "factor": 2.0}},
    {"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16}},
])
def test_exported_llama_gives_equal_logits(extra):
    torch.manual_seed(0)
    ours = CausalLM(ModelConfig(**{**BASE, **extra})).eval()
    with torch.no_grad():  # non-trivial norm gains and biases
        for name, p in ours.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    hf = to_transformers(ours).eval()
    assert isinstance(hf, transformers.LlamaForCausalLM)
    ids = torch.randint(0, 97, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids).logits, rtol=1e-4, atol=1e-4)


def test_hugging_face_generate_runs_on_the_export():
    torch.manual_seed(0)
    ours = CausalLM(ModelConfig(**BASE)).eval()
    hf = to_transformers(ours).eval()
    prompt = torch.randint(0, 97, (1, 6))
    out = hf.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)
    ids = prompt
    with torch.no_grad():  # greedy by hand on our model
        for _ in range(5):
            ids = torch.cat([ids, ours(ids).logits[:, -1:].argmax(-1)], 1)
    assert out.tolist() == ids.tolist()


@pytest.mark.parametrize("config, feature", [
    (gau_alpha(vocab_size=97, hidden_size=32, num_layers=2, expansion=64, key_size=16), "token mixers"),
    (ModelConfig(**BASE, relpos={"name": "rerope", "window": 8}), "relative-position map"),
    (ModelConfig(**BASE, logn="dagger", logn_train_len=16), "log-n"),
    (ModelConfig(**BASE, window=8), "sliding-window"),
    (ModelConfig(**BASE, qk_bias=True), "biases on q/k only"),
    (ModelConfig(**BASE, rope_scaling={"rope_type": "ntk_mixed", "factor": 4.0}), "rope_type 'ntk_mixed'"),
    (ModelConfig(**BASE, norm_position="post"), "Post-Norm"),
])
def test_features_llama_cannot_express_are_named(config, feature):
    with pytest.raises(ValueError, match=feature):
        to_transformers(CausalLM(config))


def test_a_position_method_set_at_inference_is_refused_too():
    model = CausalLM(ModelConfig(**BASE))
    model.set_position_method(relpos={"name": "rerope", "window": 8})
    with pytest.raises(ValueError, match="ReRoPE"):
        to_transformers(model)
    with pytest.raises(TypeError, match="CausalLM"):
        to_transformers(torch.nn.Linear(2, 2))
