"""Initialisation, parameterisation and residuals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from formerlab.nn.init import (
    SIGMOID_SECOND_MOMENT,
    TRUNC_NORMAL_STD_CORRECTION,
    TRUNC_NORMAL_VARIANCE,
    NTKLinear,
    Residual,
    ScaledActivation,
    activation_second_moment,
    he_,
    lecun_,
    scale_residual_,
    t5_attention_init_,
    tf_truncated_normal_,
    xavier_,
)
from formerlab.nn.norms import RMSNorm


def G(seed=0):
    return torch.Generator().manual_seed(seed)


def test_truncated_normal_constants_by_quadrature_and_sampling():
    from scipy.integrate import quad

    num = quad(lambda x: x * x * math.exp(-x * x / 2), -2, 2)[0]
    den = quad(lambda x: math.exp(-x * x / 2), -2, 2)[0]
    assert abs(num / den - 0.7737413) < 1e-7
    assert abs(TRUNC_NORMAL_VARIANCE - num / den) < 1e-12
    assert abs(TRUNC_NORMAL_STD_CORRECTION - 1.1368472) < 1e-7
    t = torch.empty(400_000, dtype=torch.float64)
    tf_truncated_normal_(t, 1.0, variance_corrected=False, generator=G())
    assert abs(float(t.var()) - 0.7737413) < 0.005
    assert float(t.abs().max()) <= 2.0
    tf_truncated_normal_(t, 0.3, generator=G(1))
    assert abs(float(t.std()) / 0.3 - 1) < 0.005
    assert float(t.abs().max()) <= 2 * 0.3 * TRUNC_NORMAL_STD_CORRECTION + 1e-12


def test_trunc_normal_agrees_with_scipy():
    from scipy.stats import truncnorm

    t = torch.empty(1_000_000, dtype=torch.float64)
    tf_truncated_normal_(t, 1.0, variance_corrected=False, generator=G(2))
    assert abs(float(t.var()) - truncnorm(-2, 2).var()) < 0.004
    assert abs(float((t.abs() < 1).double().mean()) - (truncnorm(-2, 2).cdf(1) - truncnorm(-2, 2).cdf(-1))) < 0.003


def test_sigmoid_second_moment_and_scaled_activation():
    assert abs(activation_second_moment(torch.sigmoid) - SIGMOID_SECOND_MOMENT) < 1e-7
    act = ScaledActivation(torch.sigmoid)
    x = torch.randn(400_000, generator=G(3), dtype=torch.float64)
    assert abs(float(act(x).pow(2).mean()) - 1) < 0.01


def test_selu_constants_by_fsolve():
    import numpy as np
    from scipy.integrate import quad
    from scipy.optimize import fsolve

    pdf = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    pos1 = quad(lambda t: t * pdf(t), 0, np.inf)[0]
    pos2 = quad(lambda t: t * t * pdf(t), 0, np.inf)[0]
    neg1 = quad(lambda t: (math.exp(t) - 1) * pdf(t), -np.inf, 0)[0]
    neg2 = quad(lambda t: (math.exp(t) - 1) ** 2 * pdf(t), -np.inf, 0)[0]

    def equations(p):  # mean 0 and variance 1 of selu(x), x ~ N(0, 1)
        lam, alpha = p
        return [lam * (pos1 + alpha * neg1), lam ** 2 * (pos2 + alpha ** 2 * neg2) - 1]

    lam, alpha = fsolve(equations, [1.0, 1.5], xtol=1e-13)
    assert abs(lam - 1.05070099) < 1e-7 and abs(alpha - 1.67326324) < 1e-7
    x = torch.linspace(-3, 3, 61, dtype=torch.float64)
    torch.testing.assert_close(nn.SELU()(x), torch.where(x > 0, lam * x, lam * alpha * torch.expm1(x)),
                               rtol=1e-8, atol=1e-8)


def test_qk_second_moment_is_d():
    d = 64
    q, k = (torch.randn(100_000, d, generator=G(i), dtype=torch.float64) for i in (4, 5))
    assert abs(float((q * k).sum(-1).pow(2).mean()) / d - 1) < 0.02


@pytest.mark.parametrize("init,relu_input,nonneg", [(lecun_, False, True), (lecun_, False, False),
                                                    (he_, True, False)])
def test_second_moment_preserved(init, relu_input, nonneg):
    """``y = Σ_i x_i w_i`` with fresh weights per sample: ``E[y²] = m E[x²] Var(w)``."""
    m, n = 64, 200_000
    x = torch.randn(n, m, generator=G(6), dtype=torch.float64)
    if nonneg:
        x = x.abs()  # LeCun needs no zero mean of x
    if relu_input:
        x = torch.relu(x)  # He: ReLU halves the second moment, Var(w) = 2/m restores it
    w = torch.empty(n, m, dtype=torch.float64)
    init(w.view(n, m), generator=G(7))  # fan_in = m
    y = (x * w).sum(-1)
    target = 1.0 if relu_input else float(x.pow(2).mean())
    assert abs(float(y.pow(2).mean()) / target - 1) < 0.02


def test_xavier_matches_torch_variance():
    a, b = torch.empty(300, 700, dtype=torch.float64), torch.empty(300, 700, dtype=torch.float64)
    xavier_(a, generator=G(9))
    nn.init.xavier_uniform_(b, generator=G(9))
    assert abs(float(a.var()) / float(b.var()) - 1) < 0.02
    assert abs(float(a.var()) - 2 / 1000) < 0.02 * 2 / 1000


def test_t5_init_gives_unit_logits_without_scale():
    d_model, heads, d_kv = 128, 4, 32
    q, k, v, o = (nn.Linear(d_model, heads * d_kv, bias=False).double() for _ in range(4))
    t5_attention_init_(q, k, v, o, num_heads=heads, generator=G(10))
    x = torch.randn(2000, d_model, generator=G(11), dtype=torch.float64)
    qs = q(x).view(-1, heads, d_kv)
    ks = k(x[torch.randperm(2000, generator=G(12))]).view(-1, heads, d_kv)
    logits = (qs * ks).sum(-1).detach()
    assert abs(float(logits.var()) - 1) < 0.1


def test_no_scale_attention_is_near_one_hot():
    d, n = 256, 64
    q, k = (torch.randn(n, d, generator=G(13 + i), dtype=torch.float64) for i in range(2))
    raw = torch.softmax(q @ k.T, -1).max(-1).values.mean()
    scaled = torch.softmax(q @ k.T / math.sqrt(d), -1).max(-1).values.mean()
    assert float(raw) > 0.8 and float(scaled) < 0.3


def test_rezero_identity_and_alpha_gradient():
    f = nn.Linear(8, 8).double()
    r = Residual(f, "rezero")
    x = torch.randn(3, 8, dtype=torch.float64)
    assert torch.equal(r(x), x)
    r(x).pow(2).sum().backward()
    assert float(r.alpha.grad.abs()) > 0
    with pytest.raises(ValueError, match="alpha_step"):
        Residual(f, "alpha_ramp")


def test_alpha_ramp_advances_per_optimizer_step_not_per_forward():
    """Under recompute and gradient accumulation a forward runs several times per step."""
    from torch.utils.checkpoint import checkpoint

    from formerlab.nn import attach_alpha_ramp

    torch.manual_seed(0)
    ramp = Residual(nn.Linear(8, 8).double(), "alpha_ramp", alpha_step=0.25).train()
    opt = torch.optim.SGD(ramp.parameters(), lr=0.1)
    handle = attach_alpha_ramp(ramp, opt)
    x = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    for step in range(1, 7):
        for _ in range(4):  # 4 micro-batches, each recomputed in backward
            checkpoint(ramp, x, use_reentrant=False).sum().backward()
        assert float(ramp.alpha) == min(1.0, 0.25 * (step - 1))  # the forwards changed nothing
        opt.step()
        opt.zero_grad()
        assert float(ramp.alpha) == min(1.0, 0.25 * step)
    handle.remove()
    opt.step()
    assert float(ramp.alpha) == 1.0


def test_post_norm_unrolled_closed_form():
    L = 6
    fs = [nn.Linear(8, 8).double() for _ in range(L)]
    x0 = torch.randn(4, 8, dtype=torch.float64)
    xs = [x0]
    for f in fs:  # Norm replaced by /√2
        xs.append((xs[-1] + f(xs[-1])) / math.sqrt(2))
    closed = x0 / 2 ** (L / 2) + sum(fs[k](xs[k]) / 2 ** ((L - k) / 2) for k in range(L))
    torch.testing.assert_close(xs[-1], closed)


def test_pre_norm_variance_grows_post_norm_stays():
    d, L = 128, 16
    g = G(14)
    x_pre = x_post = torch.randn(256, d, generator=g, dtype=torch.float64)
    norm = RMSNorm(d, affine=False).double()
    pre_var = []
    for _ in range(L):
        w = torch.empty(d, d, dtype=torch.float64)
        lecun_(w, generator=g)
        x_pre = x_pre + norm(x_pre) @ w.T
        x_post = norm(x_post + x_post @ w.T)
        pre_var.append(float(x_pre.pow(2).mean()))
    assert abs(pre_var[-1] / (L + 1) - 1) < 0.3  # ~ linear in depth
    assert abs(float(x_post.pow(2).mean()) - 1) < 0.01


def test_ntk_linear_and_scale_residual():
    lin = NTKLinear(400, 300, generator=G(15))
    assert abs(float(lin.weight.detach().std()) - 1) < 0.02
    x = torch.randn(1000, 400, generator=G(16))
    assert abs(float(lin(x).detach().pow(2).mean()) - 1) < 0.05
    block = nn.ModuleDict({"o_proj": nn.Linear(4, 4), "q_proj": nn.Linear(4, 4)})
    before = block["o_proj"].weight.detach().clone()
    assert scale_residual_(block, num_layers=8) == 1
    torch.testing.assert_close(block["o_proj"].weight.detach(), before / 4)
