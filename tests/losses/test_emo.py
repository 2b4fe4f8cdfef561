"""EMO against exact optimal transport (POT, scipy), its closed forms and gradient, the official
composition, ignore_index/reduction like F.cross_entropy, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from formerlab.losses import cosine_cost_matrix, emd_exact, emo_ce_loss, emo_loss

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def setup(n=6, V=7, d=5, seed=0, dtype=F64):
    g = gen(seed)
    logits = torch.randn(n, V, generator=g, dtype=dtype) * 2
    target = torch.randint(0, V, (n,), generator=g)
    E = torch.randn(V, d, generator=g, dtype=dtype)
    return logits, target, E


def cos_cost_np(E: torch.Tensor) -> np.ndarray:
    e = E.numpy().astype(np.float64)
    e = e / np.linalg.norm(e, axis=1, keepdims=True)
    return 1.0 - e @ e.T


def test_one_hot_target_equals_exact_emd():
    logits, target, E = setup()
    C = cos_cost_np(E)
    p = torch.softmax(logits, -1).numpy()
    ours = emo_loss(logits, target, E, reduction="none")
    for i in range(len(target)):
        onehot = np.eye(len(C))[int(target[i])]
        assert float(ours[i]) == pytest.approx(emd_exact(p[i], onehot, C), abs=1e-9)


def test_soft_target_bounded_by_product_plan():
    logits, _, E = setup(seed=1)
    tau = torch.softmax(torch.randn(logits.shape, generator=gen(2), dtype=F64), -1)
    C = cos_cost_np(E)
    p = torch.softmax(logits, -1).numpy()
    ours = emo_loss(logits, tau, E, reduction="none")
    for i in range(len(p)):
        product = float(p[i] @ C @ tau[i].numpy())
        assert float(ours[i]) == pytest.approx(product, abs=1e-12)
        assert emd_exact(p[i], tau[i].numpy(), C) <= product + 1e-9
    # a general cost matrix takes the same path
    torch.testing.assert_close(emo_loss(logits, tau, cost_matrix=torch.tensor(C),
                                        reduction="none"), ours)


@pytest.mark.slow
def test_emd_exact_and_emo_equal_pot():
    ot = pytest.importorskip("ot")  # importing POT alone takes seconds
    logits, target, E = setup(seed=13)
    C = cos_cost_np(E)
    p = torch.softmax(logits, -1).numpy()
    tau = torch.softmax(torch.randn(logits.shape, generator=gen(14), dtype=F64), -1).numpy()
    ours = emo_loss(logits, target, E, reduction="none")
    for i in range(len(p)):
        onehot = np.eye(len(C))[int(target[i])]
        assert float(ours[i]) == pytest.approx(ot.emd2(p[i], onehot, C), abs=1e-10)
        assert emd_exact(p[i], tau[i], C) == pytest.approx(ot.emd2(p[i], tau[i], C), abs=1e-9)


def test_zero_one_cost_is_one_minus_p_target():
    logits, target, _ = setup(seed=3)
    V = logits.shape[-1]
    cost = 1 - torch.eye(V, dtype=F64)
    got = emo_loss(logits, target, cost_matrix=cost, reduction="none")
    p_t = torch.softmax(logits, -1).gather(-1, target[:, None]).squeeze(-1)
    torch.testing.assert_close(got, 1 - p_t)
    p = torch.softmax(logits, -1).numpy()
    assert emd_exact(p[0], np.eye(V)[int(target[0])], cost.numpy()) == pytest.approx(
        float(1 - p_t[0]), abs=1e-9)


def test_cosine_cost_matrix():
    _, _, E = setup(seed=4)
    np.testing.assert_allclose(cosine_cost_matrix(E).numpy(), cos_cost_np(E), atol=1e-12)
    with pytest.raises(ValueError, match="E must be"):
        cosine_cost_matrix(torch.randn(3))


def test_gradient_is_p_times_cost_minus_loss():
    logits, target, E = setup(seed=5)
    z = logits.clone().requires_grad_()
    loss = emo_loss(z, target, E, reduction="none")
    loss.sum().backward()
    C = torch.tensor(cos_cost_np(E))
    p = torch.softmax(logits, -1)
    expect = p * (C[:, target].T - loss.detach()[:, None])
    torch.testing.assert_close(z.grad, expect, rtol=1e-10, atol=1e-12)


def grads_of(fn, logits):
    z = logits.clone().requires_grad_()
    fn(z).backward()
    return z.grad


def test_mode_1_value_is_cross_entropy_and_gradient_mixes():
    logits, target, E = setup(n=9, seed=6)
    target[2] = -100
    for red in ("mean", "sum", "none"):
        torch.testing.assert_close(emo_ce_loss(logits, target, E, reduction=red),
                                   F.cross_entropy(logits, target, reduction=red))
    ce = F.cross_entropy(logits, target, reduction="none")
    emo = emo_loss(logits, target, E, reduction="none")
    ratio = torch.where(target != -100, ce / (emo + 1e-10), torch.zeros_like(ce))
    n = int((target != -100).sum())
    g = grads_of(lambda z: emo_ce_loss(z, target, E), logits)
    g_ce = grads_of(lambda z: F.cross_entropy(z, target, reduction="sum"), logits)
    g_emo = grads_of(lambda z: (ratio * emo_loss(z, target, E, reduction="none")).sum(), logits)
    torch.testing.assert_close(g, 0.5 * (g_ce + g_emo) / n, rtol=1e-10, atol=1e-12)


def test_mode_2_value_is_twice_emo_and_max_ratio_clip():
    logits, target, E = setup(seed=7)
    emo = emo_loss(logits, target, E)
    torch.testing.assert_close(emo_ce_loss(logits, target, E, mode=2), 2 * emo)
    ce = F.cross_entropy(logits, target, reduction="none")
    g = grads_of(lambda z: emo_ce_loss(z, target, E, mode=2, reduction="sum"), logits)
    r = ce / emo_loss(logits, target, E, reduction="none")
    g_ce = grads_of(lambda z: (r.reciprocal() * F.cross_entropy(z, target, reduction="none")
                               ).sum(), logits)
    g_emo = grads_of(lambda z: emo_loss(z, target, E, reduction="sum"), logits)
    torch.testing.assert_close(g, g_ce + g_emo, rtol=1e-8, atol=1e-10)
    # the pip package clips the mode-1 ratio at 3: the value is then below CE
    clipped = emo_ce_loss(logits, target, E, max_ratio=3.0, reduction="none")
    assert bool((clipped <= ce + 1e-12).all()) and bool((clipped < ce - 1e-6).any())


def test_adaptive_value_and_gradient():
    logits, target, E = setup(seed=8)
    p_t = torch.softmax(logits, -1).gather(-1, target[:, None]).squeeze(-1)
    plain = emo_loss(logits, target, E, reduction="none")
    torch.testing.assert_close(emo_loss(logits, target, E, reduction="none", adaptive=True),
                               plain + p_t)
    torch.testing.assert_close(
        grads_of(lambda z: emo_loss(z, target, E, adaptive=True), logits),
        grads_of(lambda z: emo_loss(z, target, E), logits))


def official_emo_ce(logits, labels, cost_embedding, ignore_index=-100):
    """The DRSY/EMO ``emo_patch.py`` composition, written out step by step (no shifting)."""
    mask = (labels != ignore_index).to(logits.dtype)
    mle = torch.nn.CrossEntropyLoss(reduction="none")(logits, labels)
    lab = labels.clone()
    lab[lab == ignore_index] = 0
    one_hot = F.one_hot(lab, logits.shape[-1]).to(logits.dtype)
    stable = (one_hot + 1e-15) / (one_hot + 1e-15).sum(-1, keepdim=True)
    emb = cost_embedding / cost_embedding.norm(dim=1, keepdim=True)
    emo = 1 - ((stable @ emb) * (torch.log_softmax(logits, -1).exp() @ emb)).sum(-1)
    loss = ((mle / (emo + 1e-10)).detach() * emo + mle) * 0.5
    return (loss * mask).sum() / (1e-15 + mask.sum())


def test_agrees_with_the_official_formula_on_lm_shapes():
    g = gen(9)
    logits = torch.randn(2, 5, 11, generator=g, dtype=F64)
    labels = torch.randint(0, 11, (2, 5), generator=g)
    labels[0, :2] = -100
    E = torch.randn(11, 6, generator=g, dtype=F64)
    ref_g = grads_of(lambda z: official_emo_ce(z.reshape(-1, 11), labels.reshape(-1), E), logits)
    ours_g = grads_of(lambda z: emo_ce_loss(z, labels, E), logits)
    torch.testing.assert_close(emo_ce_loss(logits, labels, E),
                               official_emo_ce(logits.reshape(-1, 11), labels.reshape(-1), E))
    torch.testing.assert_close(ours_g, ref_g, rtol=1e-9, atol=1e-12)
    assert bool((ours_g[0, :2] == 0).all())


def test_ignore_index_and_reduction_like_cross_entropy():
    logits, target, E = setup(n=8, seed=10)
    target[[1, 4]] = 3
    target[[0, 5]] = -1
    none = emo_loss(logits, target, E, ignore_index=-1, reduction="none")
    assert none.shape == target.shape and bool((none[[0, 5]] == 0).all())
    valid = target != -1
    torch.testing.assert_close(emo_loss(logits, target, E, ignore_index=-1), none[valid].mean())
    torch.testing.assert_close(emo_loss(logits, target, E, ignore_index=-1, reduction="sum"),
                               none.sum())
    all_ignored = torch.full_like(target, -100)
    assert torch.isnan(emo_loss(logits, all_ignored, E))
    assert torch.isnan(F.cross_entropy(logits, all_ignored))
    assert float(emo_loss(logits, all_ignored, E, reduction="sum")) == 0.0


def test_dtypes():
    logits, target, E = setup(seed=11, dtype=torch.float32)
    assert emo_loss(logits.double(), target, E).dtype == F64
    assert emo_loss(logits.bfloat16(), target, E).dtype == torch.float32
    torch.testing.assert_close(emo_loss(logits, target, E), emo_loss(logits.double(), target,
                                                                      E.double()).float())


def test_emo_credits_near_synonyms_more_than_cross_entropy():
    """Classes in embedding clusters: EMO leaves the non-target mass on the target's cluster-mates
    (CE spreads it uniformly); the CE-valued combination keeps a smaller share of the effect."""
    g = gen(12)
    centers = torch.linalg.qr(torch.randn(8, 4, generator=g))[0].T  # 4 orthogonal clusters
    E = centers.repeat_interleave(3, 0) + 0.05 * torch.randn(12, 8, generator=g)  # 3 synonyms each
    target = torch.arange(0, 12, 3).repeat(8)
    mates = torch.zeros(len(target), 12, dtype=torch.bool)
    for i, t in enumerate(target.tolist()):
        mates[i, t + 1:t + 3] = True

    def share(loss_fn, lr):
        z = torch.zeros(len(target), 12, requires_grad=True)
        opt = torch.optim.SGD([z], lr=lr)
        for _ in range(30):
            opt.zero_grad()
            loss_fn(z).backward()
            opt.step()
        p = torch.softmax(z.detach(), -1)
        p_t = p.gather(-1, target[:, None]).squeeze(-1)
        return float(((p * mates).sum(-1) / (1 - p_t)).mean())  # share of the non-target mass

    ce = share(lambda z: F.cross_entropy(z, target), lr=2.0)
    assert ce == pytest.approx(2 / 11, rel=1e-4)
    assert share(lambda z: emo_loss(z, target, E), lr=20.0) > 2.5 * ce
    assert share(lambda z: emo_ce_loss(z, target, E), lr=2.0) > 1.1 * ce


def test_bad_input():
    logits, target, E = setup()
    with pytest.raises(ValueError, match=r"cost_embedding must be \(7, dim\).*\(6, 5\)"):
        emo_loss(logits, target, E[:6])
    with pytest.raises(ValueError, match=r"cost_matrix must be \(7, 7\).*\(7, 6\)"):
        emo_loss(logits, target, cost_matrix=torch.zeros(7, 6))
    with pytest.raises(ValueError, match="exactly one"):
        emo_loss(logits, target)
    with pytest.raises(ValueError, match="class 7"):
        emo_loss(logits, torch.full_like(target, 7), E)
    with pytest.raises(ValueError, match="reduction"):
        emo_loss(logits, target, E, reduction="avg")
    with pytest.raises(ValueError, match="class targets must have shape"):
        emo_loss(logits, target[:3], E)
    with pytest.raises(ValueError, match="mode"):
        emo_ce_loss(logits, target, E, mode=3)
    with pytest.raises(ValueError, match="adaptive"):
        emo_loss(logits, torch.softmax(logits, -1), E, adaptive=True)
    with pytest.raises(TypeError, match="logits"):
        emo_loss(target, target, E)
    with pytest.raises(ValueError, match="cost must be"):
        emd_exact([0.5, 0.5], [1.0], np.zeros((2, 2)))
