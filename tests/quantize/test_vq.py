"""VectorQuantizer: brute-force assignment, STE, loss, EMA (peer and fixed point), Su's EMA,
dead codes, k-means, usage statistics, several codebooks, autocast, the Transformer-VQ API."""

from __future__ import annotations

import pytest
import torch

from formerlab.quantize import EMA_UPDATES, VectorQuantizer, kmeans, usage_statistics

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def brute_force(z: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Nearest code of every row by explicit loops in float64 (first index on ties)."""
    out = []
    for row in z.reshape(-1, z.shape[-1]).double():
        best, arg = float("inf"), -1
        for k, e in enumerate(codebook.double()):
            d = float(((row - e) ** 2).sum())
            if d < best:
                best, arg = d, k
        out.append(arg)
    return torch.tensor(out).reshape(z.shape[:-1])


def test_every_registered_ema_update_is_covered():
    assert set(EMA_UPDATES) == {"cluster", "simple"}


def test_assignment_equals_brute_force_with_ties():
    vq = VectorQuantizer(12, 5).eval()
    cb = torch.randn(12, 5, generator=gen(0))
    cb[7] = cb[3]  # duplicate code: ties go to the lowest index
    vq.codebook = cb
    z = torch.randn(3, 20, 5, generator=gen(1))
    z[0, 0] = cb[3]
    out = vq(z)
    ref = brute_force(z, cb)
    assert torch.equal(out.indices, ref)
    assert int(out.indices[0, 0]) == 3
    idx, codes = vq.nearest(z)
    assert torch.equal(idx, ref)
    torch.testing.assert_close(codes, cb[ref])
    torch.testing.assert_close(out.quantized, cb[ref])
    torch.testing.assert_close(vq.get_codes_from_indices(idx), cb[ref])


def test_distances_are_float32_squared_distances():
    vq = VectorQuantizer(6, 3)
    z = torch.randn(4, 3, generator=gen(2))
    d = vq.distances(z)
    assert d.dtype == torch.float32 and d.shape == (4, 6)
    torch.testing.assert_close(d, torch.cdist(z, vq.codebook) ** 2, rtol=1e-5, atol=1e-5)


def test_straight_through_gradient_is_identity():
    vq = VectorQuantizer(16, 4)
    z = torch.randn(10, 4, generator=gen(3), requires_grad=True)
    w = torch.randn(10, 4, generator=gen(4))
    (vq(z).quantized * w).sum().backward()
    torch.testing.assert_close(z.grad, w, rtol=0, atol=0)


def test_loss_values_and_codebook_gradient_without_ema():
    vq = VectorQuantizer(8, 3, use_ema=False, commitment_weight=0.25, codebook_weight=1.0).double()
    z = torch.randn(30, 3, dtype=F64, generator=gen(5), requires_grad=True)
    out = vq(z)
    e = vq.codebook.detach()[out.indices]
    sq = ((z.detach() - e) ** 2).mean()
    torch.testing.assert_close(out.loss, 1.25 * sq)
    out.loss.backward()
    # d/de_k of mean‖e − sg z‖² = 2 Σ_{z→k}(e_k − z) / (N d); of the commitment term: 0
    expect = torch.zeros(8, 3, dtype=F64)
    expect.index_add_(0, out.indices, 2 * (e - z.detach()) / z.numel())
    torch.testing.assert_close(vq.embed.grad[0], expect)
    # d/dz of 0.25·mean‖z − sg e‖²
    torch.testing.assert_close(z.grad, 0.25 * 2 * (z.detach() - e) / z.numel())


def test_one_ema_step_matches_vector_quantize_pytorch():
    vqp = pytest.importorskip("vector_quantize_pytorch")
    torch.manual_seed(0)
    peer = vqp.VectorQuantize(dim=4, codebook_size=10, decay=0.9, commitment_weight=0.25,
                              threshold_ema_dead_code=0, rotation_trick=False)
    ours = VectorQuantizer(10, 4, ema_decay=0.9, commitment_weight=0.25)
    ours.codebook = peer.codebook.detach().clone()
    for step in range(3):
        z = torch.randn(2, 50, 4, generator=gen(10 + step))
        pq, pidx, ploss = peer(z)
        out = ours(z)
        assert torch.equal(out.indices, pidx)
        torch.testing.assert_close(out.quantized, pq)
        torch.testing.assert_close(out.loss, ploss.reshape(()))
        torch.testing.assert_close(ours.codebook, peer.codebook, rtol=1e-5, atol=1e-6)


def test_ema_reaches_the_kmeans_fixed_point():
    centers = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [2.0, -2.0], [-2.0, -2.0]])
    x = torch.cat([c + 0.1 * torch.randn(64, 2, generator=gen(20 + i))
                   for i, c in enumerate(centers)])
    vq = VectorQuantizer(4, 2, ema_decay=0.8)
    vq.codebook = centers + 0.5 * torch.randn(4, 2, generator=gen(7))
    for _ in range(120):
        vq(x)
    idx, _ = vq.nearest(x)
    means = torch.stack([x[idx == k].mean(0) for k in range(4)])
    torch.testing.assert_close(vq.codebook, means, rtol=0, atol=1e-4)


def test_su_simple_ema_is_one_sgd_step():
    decay = 0.7
    vq = VectorQuantizer(5, 3, ema_decay=decay, ema_update="simple").double()
    cb = torch.randn(5, 3, dtype=F64, generator=gen(8))
    vq.codebook = cb
    z = torch.randn(1, 3, dtype=F64, generator=gen(9))
    k = int(brute_force(z, cb))
    vq(z)
    e = torch.nn.Parameter(cb.clone())
    opt = torch.optim.SGD([e], lr=1 - decay)
    (0.5 * ((e[k] - z[0]) ** 2).sum()).backward()
    opt.step()
    torch.testing.assert_close(vq.codebook, e.detach())


def test_dead_codes_replaced_exactly_below_threshold():
    thr, decay = 1.0, 0.5
    vq = VectorQuantizer(8, 2, ema_decay=decay, threshold_dead=thr)
    twin = VectorQuantizer(8, 2, ema_decay=decay)
    cb = torch.randn(8, 2, generator=gen(11))
    sizes = torch.tensor([5.0, 0.1, 3.0, 0.5, 2.5, 1.9, 0.2, 4.0])
    for m in (vq, twin):
        m.codebook = cb
        m.cluster_size.copy_(sizes[None])
        m.embed_avg.copy_(cb[None] * sizes[None, :, None])
    z = torch.randn(40, 2, generator=gen(12))
    counts = torch.bincount(brute_force(z, cb), minlength=8).float()
    expect_dead = decay * sizes + (1 - decay) * counts < thr
    assert 0 < int(expect_dead.sum()) < 8
    vq(z, generator=gen(13))
    twin(z)
    changed = (vq.codebook != twin.codebook).any(-1)
    assert torch.equal(changed, expect_dead)
    for row in vq.codebook[expect_dead]:
        assert bool((z == row).all(-1).any()), "a revived code must be a batch vector"
    assert torch.equal(vq.cluster_size[0][expect_dead], torch.full((int(expect_dead.sum()),), thr))
    assert vq.usage_stats()["revived"] == int(expect_dead.sum())


def test_kmeans_init_matches_sklearn_inertia():
    cluster = pytest.importorskip("sklearn.cluster")
    centers = torch.randn(6, 3, generator=gen(14)) * 4
    x = torch.cat([c + 0.3 * torch.randn(50, 3, generator=gen(30 + i))
                   for i, c in enumerate(centers)])
    vq = VectorQuantizer(6, 3, kmeans_init=True, kmeans_iters=20)
    vq(x, generator=gen(15))
    assert bool(vq.initted)
    _, codes = vq.nearest(x)
    ours = float(((x - codes) ** 2).sum())
    ref = cluster.KMeans(6, n_init=10, random_state=0).fit(x.numpy()).inertia_
    assert ours <= 1.05 * ref
    cent, counts = kmeans(x, 6, iters=20, generator=gen(15))
    assert cent.shape == (6, 3) and int(counts.sum()) == 300


def test_usage_statistics_uniform_and_collapse():
    uniform = usage_statistics(torch.full((16,), 5.0))
    assert uniform["perplexity"] == pytest.approx(16) and uniform["usage"] == pytest.approx(1)
    collapsed = usage_statistics(torch.tensor([0.0, 9.0, 0.0, 0.0]))
    assert collapsed["perplexity"] == pytest.approx(1)
    assert collapsed["dead_fraction"] == 0.75 and collapsed["num_dead"] == 3
    empty = usage_statistics(torch.zeros(4))
    assert empty["perplexity"] == 0 and empty["total"] == 0
    with pytest.raises(ValueError, match="counts"):
        usage_statistics(torch.zeros(2, 2, 2))


def test_usage_with_masks_and_several_codebooks():
    vq = VectorQuantizer(4, 2, num_codebooks=3).eval()
    cbs = torch.randn(3, 4, 2, generator=gen(16))
    vq.codebook = cbs
    z = torch.randn(5, 7, 3, 2, generator=gen(17))
    mask = torch.rand(5, 7, generator=gen(18)) > 0.4
    out = vq(z, mask=mask)
    assert out.indices.shape == (5, 7, 3) and out.quantized.shape == z.shape
    counts = torch.zeros(3, 4, dtype=F64)
    for c in range(3):
        ref = brute_force(z[:, :, c], cbs[c])
        assert torch.equal(out.indices[..., c], ref)
        counts[c] = torch.bincount(ref[mask], minlength=4).double()
    assert torch.equal(vq.usage_counts, counts)
    stats = vq.usage_stats()
    assert stats["total"] == 3 * int(mask.sum())
    assert stats["perplexity"] == pytest.approx(usage_statistics(counts)["perplexity"])
    # padding passes through unquantised; loss only over real vectors
    torch.testing.assert_close(out.quantized[~mask], z[~mask])
    e = vq.get_codes_from_indices(out.indices)
    torch.testing.assert_close(out.loss, 0.25 * ((z - e) ** 2)[mask].mean())


def test_codes_identical_under_bf16_autocast():
    vq = VectorQuantizer(512, 64).eval()
    cb = torch.randn(512, 64, generator=gen(19))
    vq.codebook = cb
    z = torch.randn(256, 64, generator=gen(119))
    ref = vq(z).indices
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert (z @ cb.T).dtype == torch.bfloat16  # autocast is active
        auto = vq(z)
    assert torch.equal(auto.indices, ref)
    # the test can fail: distances in bf16 change some assignments
    d16 = (z.bfloat16() @ cb.bfloat16().T).float() * -2 + (cb ** 2).sum(-1)
    assert not torch.equal(d16.argmin(-1), ref)
    half = vq(z.bfloat16())
    assert half.quantized.dtype == torch.bfloat16
    assert torch.equal(half.indices, vq(z.bfloat16().float()).indices)


def test_transformer_vq_api_on_head_shaped_keys():
    # keys (B, H, n, d) with one codebook per head: pass (B, n, H, d)
    b, h, n, d, s = 2, 3, 5, 4, 8
    vq = VectorQuantizer(s, d, num_codebooks=h)
    k = torch.randn(b, h, n, d, generator=gen(21))
    idx, k_hat = vq.nearest(k.transpose(1, 2))
    assert idx.shape == (b, n, h) and k_hat.shape == (b, n, h, d)
    assert vq.codebook.shape == (h, s, d)
    for head in range(h):
        assert torch.equal(idx[:, :, head], brute_force(k[:, head], vq.codebook[head]))
    out = vq(k.transpose(1, 2))
    torch.testing.assert_close(out.quantized, k_hat)


def test_bad_input():
    with pytest.raises(ValueError, match="num_codes"):
        VectorQuantizer(0, 4)
    vq = VectorQuantizer(8, 4)
    with pytest.raises(ValueError, match=r"codebook must have shape \(8, 4\)"):
        vq.codebook = torch.randn(8, 5)
    with pytest.raises(ValueError, match=r"\(\.\.\., 4\)"):
        vq(torch.randn(3, 5))
    with pytest.raises(ValueError, match="mask"):
        vq(torch.randn(3, 4), mask=torch.ones(4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        vq.get_codes_from_indices(torch.tensor([8]))
    with pytest.raises(ValueError, match="cluster, simple"):
        VectorQuantizer(8, 4, ema_update="sgd")
    with pytest.raises(ValueError, match="ema_decay"):
        VectorQuantizer(8, 4, ema_decay=1.0)
