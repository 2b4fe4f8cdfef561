"""Integrated gradients against captum, the golden examples of the post, completeness."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from formerlab.analysis import (
    IG_MODES,
    QUADRATURES,
    TOKEN_REDUCTIONS,
    IntegratedGradients,
    embedding_ig,
    token_scores,
)

F64 = torch.float64
CAPTUM_METHODS = ["riemann_left", "riemann_right", "riemann_middle", "gausslegendre"]


def test_every_registered_entry_is_covered():
    assert set(QUADRATURES) == {*CAPTUM_METHODS, "riemann_trapezoid", "uniform_endpoints"}
    assert set(IG_MODES) == {"textbook", "bert4keras_demo"}
    assert set(TOKEN_REDUCTIONS) == {"l2", "maxabs", "sum"}


def _product(x):
    return x[:, 0] * x[:, 1]


def test_golden_product_example():
    """F = x₁x₂ at (1, 2), baseline 0: IG = (1, 1); right Riemann gives IG₁ = (n+1)/n; the demo's
    α-weighting on α = i/19 gives 2·mean(α²) = 0.68421… where the plain mean gives 1."""
    x = torch.tensor([[1.0, 2.0]], dtype=F64)
    ig = IntegratedGradients(_product)
    torch.testing.assert_close(ig.attribute(x, n_steps=4), torch.tensor([[1.0, 1.0]], dtype=F64))
    for n in (5, 10, 50):
        right = ig.attribute(x, n_steps=n, method="riemann_right")
        assert math.isclose(float(right[0, 0]), (n + 1) / n, rel_tol=1e-12)
    demo = ig.attribute(x, n_steps=20, mode="bert4keras_demo")
    expected = 2 * sum(i * i for i in range(20)) / (19**2 * 20)
    assert math.isclose(float(demo[0, 0]), expected, rel_tol=1e-12)
    assert math.isclose(expected, 0.6842105263, rel_tol=1e-9)
    plain = ig.attribute(x, n_steps=20, method="uniform_endpoints")
    assert math.isclose(float(plain[0, 0]), 1.0, rel_tol=1e-12)


def test_su_discretisation_is_riemann_left():
    """Su writes the path from x to x̄ and sums (1/n) Σ_{k=1}^{n} ∇F((1 − k/n) x + (k/n) x̄):
    seen from the baseline these are α = 0, 1/n, …, (n−1)/n, and the importance (x̄ − x)·mean ∇F
    is −IG on the left Riemann grid."""
    model = _MLP()
    g = torch.Generator().manual_seed(5)
    x, z = torch.randn(2, 6, generator=g, dtype=F64), torch.randn(2, 4, generator=g, dtype=F64)
    xb = torch.randn(2, 6, generator=g, dtype=F64)
    n = 9
    grads = torch.zeros_like(x)
    for k in range(1, n + 1):
        point = ((1 - k / n) * x + (k / n) * xb).requires_grad_()
        (gk,) = torch.autograd.grad(model(point, z)[:, 2].sum(), point)
        grads += gk / n
    su = grads * (xb - x)
    ig = IntegratedGradients(model).attribute(x, xb, target=2, additional_forward_args=(z,),
                                              n_steps=n, method="riemann_left")
    torch.testing.assert_close(su, -ig, rtol=1e-12, atol=1e-12)


def test_linear_model_is_exact_for_every_method():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, generator=g, dtype=F64)
    x = torch.randn(3, 5, generator=g, dtype=F64)
    base = torch.randn(5, generator=g, dtype=F64)
    ig = IntegratedGradients(lambda z: z @ w)
    for method in QUADRATURES:
        for n in (2, 7):
            attr = ig.attribute(x, base, n_steps=n, method=method)
            torch.testing.assert_close(attr, w * (x - base), rtol=1e-12, atol=1e-12)


def test_saturation_gradient_zero_ig_one():
    x = torch.tensor([[2.0]], dtype=F64, requires_grad=True)
    f = lambda z: 1 - torch.relu(1 - z[:, 0])  # noqa: E731
    f(x).sum().backward()
    assert float(x.grad) == 0.0
    attr = IntegratedGradients(f).attribute(x.detach(), n_steps=10, method="riemann_middle")
    assert float(attr) == pytest.approx(1.0, abs=1e-12)


class _MLP(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(6, 16).double()
        self.b = nn.Linear(4, 16).double()
        self.out = nn.Linear(16, 3).double()

    def forward(self, x, z, scale=1.0, shift=None):
        h = torch.tanh(self.a(x) + self.b(z)) * scale
        if shift is not None:
            h = h + shift
        return self.out(h)


@pytest.mark.parametrize("method", [*CAPTUM_METHODS, "riemann_trapezoid"])
def test_equals_captum(method):
    captum = pytest.importorskip("captum.attr")
    model = _MLP()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 6, generator=g, dtype=F64)
    z = torch.randn(4, 4, generator=g, dtype=F64)
    bx = torch.randn(1, 6, generator=g, dtype=F64)
    shift = torch.randn(4, 16, generator=g, dtype=F64)
    targets = [2, torch.tensor([0, 1, 2, 1]), [1, 0, 0, 2]]
    n = 12
    for target in targets:
        kw = dict(baselines=(bx, 0.5), target=target, additional_forward_args=(0.7, shift),
                  n_steps=n, method=method)
        ours, delta = IntegratedGradients(model).attribute((x, z), return_convergence_delta=True,
                                                           **kw)
        ref, ref_delta = captum.IntegratedGradients(model).attribute(
            (x, z), return_convergence_delta=True, **kw)
        # captum's trapezoid weights sum to (n−1)/n instead of 1
        factor = (n - 1) / n if method == "riemann_trapezoid" else 1.0
        for a, b in zip(ours, ref):
            torch.testing.assert_close(a * factor, b, rtol=1e-6, atol=1e-9)
        if method != "riemann_trapezoid":
            torch.testing.assert_close(delta, ref_delta, rtol=1e-5, atol=1e-8)


def test_chunked_equals_unchunked_and_local_mode():
    model = _MLP()
    g = torch.Generator().manual_seed(2)
    x, z = torch.randn(3, 6, generator=g, dtype=F64), torch.randn(3, 4, generator=g, dtype=F64)
    ig = IntegratedGradients(model)
    full = ig.attribute((x, z), target=1, n_steps=10)
    for size in (3, 7, 30):
        part = ig.attribute((x, z), target=1, n_steps=10, internal_batch_size=size)
        for a, b in zip(full, part):
            torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-13)
    local = IntegratedGradients(model, multiply_by_inputs=False).attribute((x, z), target=1,
                                                                           n_steps=10)
    torch.testing.assert_close(local[0] * x, full[0])


def test_completeness_error_shrinks_fastest_for_gauss_legendre():
    model = _MLP()
    g = torch.Generator().manual_seed(3)
    x, z = 2 * torch.randn(2, 6, generator=g, dtype=F64), torch.randn(2, 4, generator=g, dtype=F64)
    ig = IntegratedGradients(model)

    def err(method, n):
        _, d = ig.attribute((x, z), target=0, n_steps=n, method=method,
                            return_convergence_delta=True)
        return float(d.abs().max())

    for method in ("riemann_left", "riemann_right"):
        assert err(method, 40) < err(method, 10) / 2.5  # ~1/n
    assert err("riemann_trapezoid", 40) < err("riemann_trapezoid", 10) / 8  # ~1/n²
    assert err("gausslegendre", 20) < 1e-10
    assert err("gausslegendre", 20) < err("riemann_middle", 20) / 100


# ---------------------------------------------------------------------------- model level
def _tiny_hf_classifier():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=32, num_labels=3,
                                  max_position_embeddings=32, pad_token_id=0,
                                  attn_implementation="eager")
    return transformers.BertForSequenceClassification(cfg).double().eval()


@pytest.mark.parametrize("only_tokens", [True, False])
def test_embedding_ig_equals_captum_layer_ig(only_tokens):
    captum = pytest.importorskip("captum.attr")
    model = _tiny_hf_classifier()
    ids = torch.tensor([[2, 11, 7, 33, 9, 3], [2, 5, 17, 3, 0, 0]])
    mask = (ids != 0).long()
    layer = model.bert.embeddings.word_embeddings if only_tokens else model.bert.embeddings
    ours = embedding_ig(model, ids, target=[1, 2], embedding_module=layer, baseline="pad",
                        scale_only_token_embeddings=only_tokens, n_steps=16,
                        attention_mask=mask)
    lig = captum.LayerIntegratedGradients(
        lambda i, m: model(i, attention_mask=m).logits, layer)
    ref = lig.attribute(ids, baselines=torch.zeros_like(ids), target=[1, 2],
                        additional_forward_args=(mask,), n_steps=16)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-8)


def test_embedding_ig_completeness_on_formerlab_models(tiny_config):
    from formerlab.models import CausalLM, Encoder

    ids = torch.tensor([[1, 5, 9, 3, 7], [4, 4, 2, 8, 6]])
    for model in (CausalLM(tiny_config), Encoder(tiny_config.__class__(
            **{**tiny_config.to_dict(), "position": "learned", "max_position_embeddings": 16}))):
        model = model.double().eval()
        if isinstance(model, CausalLM):
            out_fn = None  # next-token logits at the last position
        else:
            w = torch.randn(tiny_config.hidden_size, 4, dtype=F64)
            out_fn = lambda o: o.last_hidden_state.mean(1) @ w  # noqa: B023, E731
        # (a zero baseline puts a normalisation layer's singularity on the path: see the docs)
        attr, delta = embedding_ig(model, ids, output_fn=out_fn, n_steps=24, baseline="pad",
                                   pad_token_id=0, return_convergence_delta=True)
        assert attr.shape == (2, 5, tiny_config.hidden_size)
        assert float(delta.abs().max()) < 1e-8
        demo = embedding_ig(model, ids, output_fn=out_fn, mode="bert4keras_demo", softmax=True)
        assert demo.shape == attr.shape and bool(torch.isfinite(demo).all())


@pytest.mark.slow
def test_real_minilm_same_attributions_through_formerlab_and_transformers(minilm_dir,
                                                                           minilm_tokenizer):
    transformers = pytest.importorskip("transformers")
    from formerlab.models.encoder import Encoder

    ours = Encoder.from_pretrained(minilm_dir).double()
    hf = transformers.BertModel.from_pretrained(minilm_dir).double().eval()
    enc = minilm_tokenizer.encode("The movie was not good, the acting was terrible.")
    ids = torch.tensor([enc.ids])
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(384, 2, generator=g, dtype=F64)
    out_fn = lambda o: o.last_hidden_state[:, 0] @ direction  # noqa: E731
    kw = dict(target=0, output_fn=out_fn, n_steps=16, baseline="pad",
              return_convergence_delta=True)
    a, d = embedding_ig(ours, ids, **kw)
    b, _ = embedding_ig(hf, ids, **kw)
    torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)
    assert abs(float(d)) < 0.05 * abs(float(a.sum()))
    scores = token_scores(a)
    assert scores.shape == ids.shape and float(scores.max()) == 1.0


def test_token_scores_on_known_arrays():
    attr = torch.zeros(2, 5, 2)
    attr[0, :, 0] = torch.tensor([9.0, 3.0, -4.0, 1.0, 9.0])
    attr[0, :, 1] = torch.tensor([0.0, 4.0, 3.0, 0.0, 0.0])
    attr[1, :3, 0] = torch.tensor([7.0, 2.0, 7.0])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    l2 = token_scores(attr, normalize=None, attention_mask=mask)
    torch.testing.assert_close(l2[0], torch.tensor([0.0, 5.0, 5.0, 1.0, 0.0]))
    torch.testing.assert_close(l2[1], torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0]))
    mm = token_scores(attr, attention_mask=mask)
    torch.testing.assert_close(mm[0], torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0]))
    mx = token_scores(attr, reduce="maxabs", drop_special=False)
    torch.testing.assert_close(mx[0], torch.tensor([1.0, 0.375, 0.375, 0.0, 1.0]))
    sm = token_scores(attr, reduce="sum", normalize=None, drop_special=True,
                      special_tokens_mask=torch.tensor([[0, 0, 0, 0, 1], [1, 0, 0, 1, 1]]))
    torch.testing.assert_close(sm[0], torch.tensor([9.0, 7.0, -1.0, 1.0, 0.0]))


# ---------------------------------------------------------------------------------- bad input
class _SumOfEmbeddings(nn.Module):
    """``inputs_embeds -> (batch, hidden)``: the smallest model embedding_ig accepts."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(3, 2)

    def get_input_embeddings(self) -> nn.Module:
        return self.embed

    def forward(self, input_ids=None, inputs_embeds=None):
        return (self.embed(input_ids) if inputs_embeds is None else inputs_embeds).sum(1)


def test_bad_input_names_the_argument():
    x = torch.ones(2, 3)
    with pytest.raises(ValueError, match="forward_func must return a tensor .*got float"):
        IntegratedGradients(lambda z: z.sum().item()).attribute(x)
    with pytest.raises(ValueError, match="forward_func must return a tensor .*got tuple"):
        IntegratedGradients(lambda z: (z.sum(-1),)).attribute(x)
    with pytest.raises(ValueError, match="output_fn must return a tensor, got dict"):
        embedding_ig(_SumOfEmbeddings(), torch.zeros(1, 2, dtype=torch.long),
                     output_fn=lambda out: {"logits": out})
    with pytest.raises(TypeError, match="forward_func must be callable"):
        IntegratedGradients(3)
    ig = IntegratedGradients(lambda z: z.sum(-1))
    with pytest.raises(ValueError, match="baselines"):
        ig.attribute(x, torch.zeros(4))
    with pytest.raises(ValueError, match="n_steps"):
        ig.attribute(x, n_steps=0)
    with pytest.raises(ValueError, match="n_steps"):
        ig.attribute(x, n_steps=1, method="riemann_trapezoid")
    with pytest.raises(ValueError, match="gausslegendre"):
        ig.attribute(x, method="simpson")
    with pytest.raises(ValueError, match="empty"):
        ig.attribute(x[:0])
    with pytest.raises(TypeError, match="inputs"):
        ig.attribute(torch.ones(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="target"):
        IntegratedGradients(lambda z: z).attribute(x)
    with pytest.raises(ValueError, match="empty"):
        embedding_ig(nn.Embedding(3, 2), torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="l2, maxabs, sum"):
        token_scores(torch.ones(1, 3, 2), reduce="mean")
