"""Initialisation, parameterisation and residuals."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from formerlab.attention import scaled_dot_product
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


def _gauss_quad(fn):
    """``E[fn(x)²]``, ``x ~ N(0, 1)``, by adaptive quadrature (scipy) of a float64 scalar function."""
    from scipy.integrate import quad

    pdf = lambda t: math.exp(-t * t / 2) / math.sqrt(2 * math.pi)  # noqa: E731
    return quad(lambda t: float(fn(torch.tensor(t, dtype=torch.float64))) ** 2 * pdf(t), -40, 40,
                points=[0.0], limit=200)[0]


def test_activation_second_moment_against_quadrature_and_closed_forms():
    for fn in (torch.sigmoid, torch.tanh, torch.nn.functional.gelu, torch.nn.functional.silu):
        assert abs(activation_second_moment(fn) - _gauss_quad(fn)) < 1e-7, fn
    assert abs(_gauss_quad(torch.sigmoid) - SIGMOID_SECOND_MOMENT) < 1e-7
    assert abs(activation_second_moment(lambda x: x) - 1) < 1e-12  # E[x²] = 1
    assert abs(activation_second_moment(lambda x: x * x) - 3) < 1e-12  # E[x⁴] = 3
    assert abs(activation_second_moment(torch.cos) - (1 + math.exp(-2)) / 2) < 1e-12  # E[cos²x]
    assert abs(activation_second_moment(torch.relu) - 0.5) < 1e-12  # symmetric nodes: exact
    # SELU's constants (Klambauer et al., arXiv 1706.02515) make its second moment exactly 1; its
    # kink at 0 limits 200-point Gauss–Hermite to ~2e-5
    assert abs(activation_second_moment(torch.selu) - 1) < 1e-4


def test_scaled_activation_has_unit_second_moment():
    act = ScaledActivation(torch.sigmoid)
    assert abs(act.gain - SIGMOID_SECOND_MOMENT ** -0.5) < 1e-6
    x = torch.randn(400_000, generator=G(3), dtype=torch.float64)
    assert abs(float(act(x).pow(2).mean()) - 1) < 0.01  # Monte Carlo: standard error 0.0011
    assert abs(ScaledActivation(torch.selu).gain - 1) < 1e-4  # already self-normalising
    torch.testing.assert_close(ScaledActivation(torch.tanh, gain=2.0)(x[:5]), 2 * torch.tanh(x[:5]))


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


def _projections(d_model, width, scheme, heads):
    q, k, v, o = (nn.Linear(d_model, width, bias=False).double() for _ in range(4))
    if scheme == "t5":
        t5_attention_init_(q, k, v, o, num_heads=heads, generator=G(10))
    else:  # LeCun on every projection: unit-variance q and k entries for unit-variance inputs
        for i, lin in enumerate((q, k, v, o)):
            lecun_(lin.weight, generator=G(20 + i))
    return q, k, v, o


def test_t5_init_gives_unit_logits_without_scale():
    """``E[(q·k)²] = d`` for unit-variance entries: LeCun projections give unscaled logits of
    second moment ``d_kv``; T5's init moves the ``1/√d_kv`` into q and gives 1."""
    d_model, heads, d_kv = 128, 4, 32
    x = torch.randn(2000, d_model, generator=G(11), dtype=torch.float64)
    y = x[torch.randperm(2000, generator=G(12))]
    for scheme, target in (("t5", 1.0), ("lecun", float(d_kv))):
        q, k, _, _ = _projections(d_model, heads * d_kv, scheme, heads)
        logits = (q(x).view(-1, heads, d_kv) * k(y).view(-1, heads, d_kv)).sum(-1).detach()
        assert abs(float(logits.pow(2).mean()) / target - 1) < 0.1, scheme
    q, k, v, o = _projections(d_model, heads * d_kv, "t5", heads)
    for lin, std in ((q, (d_model * d_kv) ** -0.5), (k, d_model ** -0.5), (v, d_model ** -0.5),
                     (o, (heads * d_kv) ** -0.5)):
        assert abs(float(lin.weight.detach().std()) / std - 1) < 0.03


def test_unscaled_attention_is_near_one_hot_unless_t5_init():
    d_model, heads, d_kv, n = 64, 2, 128, 64
    x = torch.randn(1, n, d_model, generator=G(13), dtype=torch.float64)

    def max_weight(scheme, scale):
        q, k, v, _ = _projections(d_model, heads * d_kv, scheme, heads)
        split = lambda t: t.view(1, n, heads, d_kv).transpose(1, 2)  # noqa: E731
        with torch.no_grad():
            _, w = scaled_dot_product(split(q(x)), split(k(x)), split(v(x)), scale=scale,
                                      return_weights=True)
        return float(w.max(-1).values.mean())

    assert max_weight("lecun", 1.0) > 0.8  # logits of std √d_kv ≈ 11: one key takes all
    assert max_weight("lecun", None) < 0.3  # the default 1/√d scale
    assert max_weight("t5", 1.0) < 0.3  # T5's init replaces the scale


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


class _DivSqrt2(nn.Module):
    def forward(self, x):
        return x / math.sqrt(2)


def test_post_norm_unrolled_closed_form():
    """Post-Norm with the norm replaced by ``/√2``: ``x_L = x_0/2^{L/2} + Σ_k F_k(x_k)/2^{(L-k)/2}``,
    so the input's share decays geometrically with depth."""
    L = 6
    fs = [nn.Linear(8, 8).double() for _ in range(L)]
    x0 = torch.randn(4, 8, dtype=torch.float64, generator=G(17))
    xs = [x0]
    for f in fs:
        xs.append(Residual(f, "post", norm=_DivSqrt2())(xs[-1]))
    closed = x0 / 2 ** (L / 2) + sum(fs[k](xs[k]) / 2 ** ((L - k) / 2) for k in range(L))
    torch.testing.assert_close(xs[-1], closed, rtol=1e-12, atol=1e-12)
    pre = Residual(fs[0], "pre", norm=_DivSqrt2())
    torch.testing.assert_close(pre(x0), x0 + fs[0](x0 / math.sqrt(2)), rtol=1e-12, atol=1e-12)


def test_pre_norm_variance_grows_post_norm_stays():
    d, L = 128, 16
    g = G(14)
    x_pre = x_post = torch.randn(256, d, generator=g, dtype=torch.float64)
    norm = RMSNorm(d, affine=False).double()
    pre_var = []
    for _ in range(L):
        lin = nn.Linear(d, d, bias=False).double()
        lecun_(lin.weight, generator=g)
        with torch.no_grad():
            x_pre = Residual(lin, "pre", norm=norm)(x_pre)
            x_post = Residual(lin, "post", norm=norm)(x_post)
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
