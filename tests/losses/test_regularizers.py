"""Regularisers: the post's identities (noise ↔ Laplacian, noise consistency ↔ gradient penalty on
a real small model, random projections), gradient penalty against torch.func, FGM/PGD norms and
directions, VAT's power iteration against eigh and hvp, module hooks, bad input."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn
from torch.autograd.functional import hvp, jacobian
from torch.nn.attention import SDPBackend, sdpa_kernel

from formerlab import ModelConfig
from formerlab.losses import (
    CONSISTENCY_DISTANCES,
    embedding_perturbation,
    fgm_loss,
    fgm_perturb,
    gradient_penalty,
    noise_consistency_regularizer,
    noisy_loss,
    pgd_loss,
    vat_direction,
    vat_loss,
)
from formerlab.models import CausalLM, Encoder

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_registered_distance_is_covered():
    assert set(CONSISTENCY_DISTANCES) == {"mse", "kl"}
    t, o = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    assert float(CONSISTENCY_DISTANCES.get("mse")(t, o)) == pytest.approx(
        float(((t - o) ** 2).sum() / 3))
    p, q = torch.softmax(t, -1), torch.softmax(o, -1)
    assert float(CONSISTENCY_DISTANCES.get("kl")(t, o)) == pytest.approx(
        float((p * (p / q).log()).sum() / 3))


# --- a real small model --------------------------------------------------------------------------
def small_encoder_head(seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2, position="learned",
                      norm="layernorm", ffn="gelu", max_position_embeddings=8)
    enc = Encoder(cfg).double().eval()
    head = nn.Linear(16, 3).double()

    def f(embeds):
        return head(enc(inputs_embeds=embeds).last_hidden_state.mean(1))

    return enc, f


def jac_rows(f, x):
    """Per output ``i`` of example 0, the flattened gradient ``∇_x f_i`` (``(m, n)``)."""
    J = jacobian(lambda e: f(e)[0], x)
    return J.reshape(J.shape[0], -1)


@pytest.mark.parametrize("loss", ["mse", "kl"])
def test_noise_consistency_equals_the_gradient_penalty_on_a_real_model(loss):
    enc, f = small_encoder_head()
    x = enc.embed_tokens(torch.randint(1, 30, (1, 4), generator=gen(1))).detach()
    sigma = 1e-3  # small against the embeddings (std 0.02): higher orders vanish
    reg = noise_consistency_regularizer(f, x, sigma, loss=loss)
    # exact oracle: the Jacobian by torch.autograd.functional
    if loss == "mse":
        J = jac_rows(f, x)
        expect = sigma**2 * (J**2).sum()
    else:
        J = jac_rows(lambda e: torch.softmax(f(e), -1), x)
        p = torch.softmax(f(x), -1)[0]
        expect = 0.5 * sigma**2 * ((J**2).sum(-1) / p).sum()
    torch.testing.assert_close(reg, expect, rtol=1e-9, atol=0)
    reg.backward()  # trainable: a double backward through the attention (math kernel)
    assert enc.layers[0].parameters().__next__().grad.abs().sum() > 0
    # the post's expansion: Monte Carlo of E_ε[l(f(x+ε), f(x))] over 4000 noise draws
    n = 4000
    xs = x.expand(n, -1, -1)
    noise = sigma * torch.randn(xs.shape, generator=gen(2), dtype=F64)
    with torch.no_grad():
        mc = CONSISTENCY_DISTANCES.get(loss)(f(xs), f(xs + noise))
    assert float(mc) == pytest.approx(float(reg.detach()), rel=0.06)


def test_random_sign_estimator_is_exact_over_all_sign_patterns():
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(2, 4, dtype=F64, generator=gen(4))
    exact = noise_consistency_regularizer(net, x, 0.5)
    patterns = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=6)), dtype=F64)
    signs = patterns.reshape(64, 2, 3)
    torch.testing.assert_close(noise_consistency_regularizer(net, x, 0.5, estimator="rademacher",
                                                             signs=signs), exact)
    one = noise_consistency_regularizer(net, x, 0.5, estimator="rademacher", generator=gen(5))
    assert float(one.detach()) != pytest.approx(float(exact.detach()), rel=1e-6)


def test_linear_map_consistency_is_sigma2_frobenius():
    A = torch.randn(3, 5, dtype=F64, generator=gen(6))
    x = torch.randn(7, 5, dtype=F64, generator=gen(7))
    reg = noise_consistency_regularizer(lambda v: v @ A.T, x, 0.3)
    torch.testing.assert_close(reg, 0.09 * (A**2).sum())


def test_noisy_quadratic_loss_adds_half_sigma2_laplacian():
    g = gen(8)
    M = torch.randn(4, 4, dtype=F64, generator=g)
    A = M @ M.T + torch.eye(4, dtype=F64)
    b = torch.randn(4, dtype=F64, generator=g)
    x0 = 0.1 * torch.randn(4, dtype=F64, generator=g)
    n, sigma = 40000, 0.5

    def loss_fn(x):  # mean over identical rows = a Monte Carlo average over noise draws
        return (0.5 * ((x @ A) * x).sum(-1) + x @ b).mean()

    x = x0.expand(n, -1)
    got = noisy_loss(loss_fn, x, sigma, generator=gen(9)).detach()
    clean = loss_fn(x0[None])
    expect = clean + 0.5 * sigma**2 * torch.trace(A)  # Δ of ½xᵀAx + bᵀx is tr A
    se = sigma * float((A @ x0 + b).norm()) / n**0.5 + sigma**2 * float(A.norm()) / n**0.5
    assert abs(float(got - expect)) < 4 * se
    assert abs(float(got - clean)) > 10 * se


# --- gradient penalty ----------------------------------------------------------------------------
def test_gradient_penalty_value_and_gradient_match_torch_func():
    torch.manual_seed(10)
    net = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 1)).double()
    x = torch.randn(5, 3, dtype=F64, generator=gen(11), requires_grad=True)
    y = torch.randn(5, 1, dtype=F64, generator=gen(12))
    params = {k: v.detach() for k, v in net.named_parameters()}

    def loss_of(p, inp):
        return ((torch.func.functional_call(net, p, (inp,)) - y) ** 2).mean()

    def penalty_of(p):
        g = torch.func.grad(loss_of, argnums=1)(p, x.detach())
        return 0.5 * 0.7 * (g**2).sum()

    pen = gradient_penalty(loss_of(dict(net.named_parameters()), x), x, eps=0.7)
    torch.testing.assert_close(pen, penalty_of(params))
    pen.backward()
    expect = torch.func.grad(penalty_of)(params)
    for k, p in net.named_parameters():
        torch.testing.assert_close(p.grad, expect[k], rtol=1e-10, atol=1e-12)


def test_gradient_penalty_on_the_token_embedding_matrix():
    torch.manual_seed(13)
    model = CausalLM(ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2)).double()
    ids = torch.randint(0, 32, (2, 6), generator=gen(14))
    with sdpa_kernel(SDPBackend.MATH):  # SDPA's fused CPU kernels have no double backward
        loss = model(ids, labels=ids).loss
    (g,) = torch.autograd.grad(loss, model.embed_tokens.weight, retain_graph=True)
    pen = gradient_penalty(loss, model.embed_tokens, eps=1.0)
    torch.testing.assert_close(pen, 0.5 * (g**2).sum())
    (loss + pen).backward()
    assert model.embed_tokens.weight.grad is not None


# --- FGM / PGD -----------------------------------------------------------------------------------
def test_fgm_perturbation_norm_and_direction():
    e = torch.randn(3, 4, 5, dtype=F64, generator=gen(15))
    g = torch.randn(3, 4, 5, dtype=F64, generator=gen(16))
    delta = fgm_perturb(e, g, 0.3) - e
    assert float(delta.norm()) == pytest.approx(0.3)
    cos = torch.nn.functional.cosine_similarity(delta.flatten(), g.flatten(), dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-12)
    per = fgm_perturb(e, g, 0.3, per_sample=True) - e
    torch.testing.assert_close(per.flatten(1).norm(dim=1), torch.full((3,), 0.3, dtype=F64))
    assert torch.equal(fgm_perturb(e, torch.zeros_like(g), 1.0), e)


def lm_and_ids(seed=17, tie=True):
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2,
                      tie_word_embeddings=tie)
    model = CausalLM(cfg).double()
    ids = torch.randint(0, 32, (2, 6), generator=gen(seed))
    return model, ids


def test_fgm_on_inputs_embeds_is_first_order_ascent():
    model, ids = lm_and_ids()
    emb = model.embed_tokens(ids)

    def loss_fn(e):
        return model(inputs_embeds=e, labels=ids).loss

    loss = loss_fn(emb)
    (g,) = torch.autograd.grad(loss, emb, retain_graph=True)
    eps = 1e-3  # the loss is float32 (causal_lm_loss), so not much smaller
    adv = fgm_loss(loss_fn, emb, eps, loss=loss)
    assert (adv - loss).item() == pytest.approx(eps * float(g.norm()), rel=2e-3)
    (loss + adv).backward()
    assert model.embed_tokens.weight.grad is not None


def test_fgm_through_an_embedding_module_equals_inputs_embeds():
    model, ids = lm_and_ids(18, tie=False)  # the hook perturbs lookups, not a tied head

    def by_tensor(e):
        return model(inputs_embeds=e, labels=ids).loss

    def by_module():
        return model(ids, labels=ids).loss

    a = fgm_loss(by_tensor, model.embed_tokens(ids), 0.5)
    b = fgm_loss(by_module, model.embed_tokens, 0.5)
    torch.testing.assert_close(a, b)
    # embedding matrix: the loss at W + ε·g_W/‖g_W‖_F
    loss = by_module()
    (gw,) = torch.autograd.grad(loss, model.embed_tokens.weight, retain_graph=True)
    got = fgm_loss(by_module, model.embed_tokens, 0.5, loss=loss, perturb="embedding_matrix")
    with torch.no_grad():
        model.embed_tokens.weight += 0.5 * gw / gw.norm()
        expect = by_module()
        model.embed_tokens.weight -= 0.5 * gw / gw.norm()
    torch.testing.assert_close(got, expect)


def test_pgd_reaches_the_ball_maximum_of_a_linear_loss():
    w = torch.randn(3, 4, dtype=F64, generator=gen(19))
    x = torch.randn(3, 4, dtype=F64, generator=gen(20))

    def loss_fn(e):
        return (w * e).sum()

    clean = loss_fn(x)
    for steps in (1, 4):
        adv = pgd_loss(loss_fn, x, eps=0.5, steps=steps)
        torch.testing.assert_close(adv - clean, 0.5 * w.norm())  # max over ‖δ‖ ≤ ε
    per = pgd_loss(loss_fn, x, eps=0.5, steps=3, per_sample=True)
    torch.testing.assert_close(per - clean, 0.5 * w.norm(dim=1).sum())
    torch.testing.assert_close(pgd_loss(loss_fn, x, 0.5, alpha=0.5, steps=1),
                               fgm_loss(loss_fn, x, 0.5))


# --- VAT -----------------------------------------------------------------------------------------
def test_vat_power_iteration_finds_the_top_eigenvector():
    A = torch.randn(4, 6, dtype=F64, generator=gen(21))
    x = torch.randn(1, 6, dtype=F64, generator=gen(22))
    u, _ = vat_direction(lambda v: v @ A.T, x, xi=1e-3, iters=40, distance="mse",
                         generator=gen(23))
    _, vecs = torch.linalg.eigh(2 * A.T @ A)  # Hessian of ‖A r‖²
    cos = torch.nn.functional.cosine_similarity(u[0], vecs[:, -1], dim=0)
    assert abs(float(cos)) == pytest.approx(1.0, abs=1e-8)


def test_vat_finite_difference_is_a_hessian_vector_product():
    enc, f = small_encoder_head(seed=24)
    x = enc.embed_tokens(torch.randint(1, 30, (1, 4), generator=gen(25))).detach()
    u0 = torch.randn(x.shape, dtype=F64, generator=gen(26))
    u1, target = vat_direction(f, x, xi=1e-5, iters=1, init=u0)
    kl = CONSISTENCY_DISTANCES.get("kl")
    with sdpa_kernel(SDPBackend.MATH):
        _, hu = hvp(lambda r: kl(target, f(x + r)), torch.zeros_like(x), u0 / u0.norm())
    cos = torch.nn.functional.cosine_similarity(u1.flatten(), hu.flatten(), dim=0)
    assert float(cos) == pytest.approx(1.0, abs=1e-6)


def test_vat_without_iterations_is_gaussian_noise_consistency():
    _, f = small_encoder_head(seed=27)
    x = torch.randn(2, 4, 16, dtype=F64, generator=gen(28))
    got = vat_loss(f, x, eps=0.7, iters=0, generator=gen(29))
    u = torch.randn(x.shape, dtype=F64, generator=gen(29))
    kl = CONSISTENCY_DISTANCES.get("kl")
    with torch.no_grad():
        expect = kl(f(x), f(x + 0.7 * u / u.norm()))
    torch.testing.assert_close(got, expect)


def test_vat_through_the_embedding_module_trains():
    model, ids = lm_and_ids(30)

    def logits():
        return model(ids).logits

    a = vat_loss(logits, model.embed_tokens, generator=gen(31))
    b = vat_loss(lambda e: model(inputs_embeds=e).logits, model.embed_tokens(ids).detach(),
                 generator=gen(31))
    torch.testing.assert_close(a, b)
    m = vat_loss(logits, model.embed_tokens, perturb="embedding_matrix", generator=gen(32))
    assert m.item() > 0
    m.backward()
    assert model.layers[0].parameters().__next__().grad is not None


def test_noisy_loss_through_a_module_hook():
    model, ids = lm_and_ids(33)
    a = noisy_loss(lambda: model(ids, labels=ids).loss, model.embed_tokens, 0.1,
                   generator=gen(34))
    b = noisy_loss(lambda e: model(inputs_embeds=e, labels=ids).loss,
                   model.embed_tokens(ids), 0.1, generator=gen(34))
    torch.testing.assert_close(a, b)


def test_bad_input():
    model, ids = lm_and_ids()
    emb = model.embed_tokens(ids)
    with pytest.raises(ValueError, match="perturb must be one of"):
        fgm_loss(lambda e: e.sum(), emb, perturb="weights")
    with pytest.raises(ValueError, match="needs the nn.Embedding"):
        fgm_loss(lambda e: e.sum(), emb, perturb="embedding_matrix")
    with pytest.raises(ValueError, match="loss=None"):
        fgm_loss(lambda: model(ids).logits.sum(), model.embed_tokens, loss=emb.sum())
    with pytest.raises(TypeError, match="token ids"):
        fgm_loss(lambda e: e.sum(), ids)
    with pytest.raises(ValueError, match="grad must have"):
        fgm_perturb(emb, emb[0], 1.0)
    with pytest.raises(ValueError, match="mse, kl"):
        vat_loss(lambda e: e, emb, distance="js")
    with pytest.raises(ValueError, match="estimator"):
        noise_consistency_regularizer(lambda e: e, emb, 0.1, estimator="hutchinson")
    with pytest.raises(ValueError, match="signs must be"):
        noise_consistency_regularizer(lambda e: e.sum(-1), emb, 0.1, estimator="rademacher",
                                      signs=torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="called the embedding module 2 times"):
        fgm_loss(lambda: model(ids).logits.sum() + model(ids).logits.sum(), model.embed_tokens)
    with pytest.raises(TypeError, match="nn.Embedding"):
        with embedding_perturbation(nn.Linear(2, 2), 0.0):
            pass
    x = torch.randn(3, 4)
    with pytest.raises(ValueError, match="does not require grad"):
        fgm_loss(lambda e: e.sum(), x, loss=x.sum())
