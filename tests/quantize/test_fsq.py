"""FSQ: grid, bijection, STE, the vector-quantize-pytorch peer, recommended levels, bad input."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from formerlab.quantize import FSQ, FSQ_VARIANTS, recommended_levels

F64 = torch.float64
VARIANTS = ("tanh", "sigmoid")
SMALL_LEVELS = [[2], [3], [4], [2, 3], [4, 3, 2], [5, 5], [8, 5, 5, 5]]


def test_every_registered_variant_is_covered():
    assert set(FSQ_VARIANTS) == set(VARIANTS)


def expected_grid(L: int, variant: str) -> list[float]:
    if variant == "sigmoid":
        return [r / (L - 1) for r in range(L)]
    h = L // 2
    lo = -h if L % 2 == 0 else -(L - 1) // 2
    return [r / h for r in range(lo, lo + L)]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("levels", SMALL_LEVELS, ids=str)
def test_bijection_on_the_whole_grid(levels, variant):
    fsq = FSQ(levels, variant=variant)
    K = math.prod(levels)
    codes = fsq.implicit_codebook
    assert codes.shape == (K, len(levels)) and fsq.codebook_size == K
    # every code is a distinct point of the product grid, and the grid is covered
    grid = {tuple(c) for c in itertools.product(*(expected_grid(L, variant) for L in levels))}
    got = {tuple(round(v, 6) for v in row) for row in codes.tolist()}
    assert got == {tuple(round(v, 6) for v in g) for g in grid}
    idx = torch.arange(K)
    assert torch.equal(fsq.codes_to_indices(codes), idx)
    assert torch.equal(fsq.codes_to_indices(fsq.indices_to_codes(idx)), idx)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("L", [2, 3, 4, 5, 8])
def test_forward_hits_exactly_the_L_levels(L, variant):
    fsq = FSQ([L], variant=variant)
    z = torch.linspace(-12, 12, 20001).unsqueeze(-1)
    zq, idx = fsq(z)
    levels = sorted(set(zq.squeeze(-1).tolist()))
    assert levels == pytest.approx(expected_grid(L, variant))
    assert torch.equal(idx, fsq.codes_to_indices(zq))
    assert sorted(set(idx.tolist())) == list(range(L))
    # monotone: larger z never gives a lower level
    assert bool((zq[1:] >= zq[:-1]).all())


def test_indices_and_codes_round_trip_through_forward():
    fsq = FSQ([8, 5, 5, 5])
    z = torch.randn(6, 50, 4, generator=torch.Generator().manual_seed(0)) * 2
    zq, idx = fsq(z)
    assert idx.shape == (6, 50) and idx.dtype == torch.int64
    torch.testing.assert_close(fsq.indices_to_codes(idx), zq, rtol=0, atol=0)
    assert torch.equal(fsq.codes_to_indices(zq), idx)
    assert bool(((zq >= -1) & (zq <= 1)).all())


@pytest.mark.parametrize("variant", VARIANTS)
def test_ste_gradient_is_the_gradient_of_the_bound(variant):
    levels = [8, 5, 3]
    fsq = FSQ(levels, variant=variant).double()
    z = torch.randn(40, 3, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    w = torch.randn(40, 3, dtype=F64, generator=torch.Generator().manual_seed(2))
    (fsq(z).quantized * w).sum().backward()
    L = torch.tensor(levels, dtype=F64)
    if variant == "tanh":  # d/dz [tanh(z + s)·h − o] / (L div 2)
        h = (L - 1) * (1 + 1e-3) / 2
        s = torch.atanh(torch.where(L % 2 == 0, 0.5, 0.0) / h)
        dbound = h * (1 - torch.tanh(z.detach() + s) ** 2) / (L // 2)
    else:  # d/dz (L−1)σ(z) / (L−1)
        sig = torch.sigmoid(z.detach())
        dbound = sig * (1 - sig)
    torch.testing.assert_close(z.grad, w * dbound, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("levels", [[8, 5, 5, 5], [7, 5, 5, 5, 5], [8, 6, 5], [3, 3], [4, 4, 4]],
                         ids=str)
def test_same_codes_and_indices_as_vector_quantize_pytorch(levels):
    vqp = pytest.importorskip("vector_quantize_pytorch")
    ours, peer = FSQ(levels), vqp.FSQ(levels)
    z = torch.randn(4, 300, len(levels), generator=torch.Generator().manual_seed(3)) * 3
    zq, idx = ours(z)
    pq, pidx = peer(z)
    assert torch.equal(zq, pq)
    assert torch.equal(idx, pidx.long())
    assert torch.equal(ours.implicit_codebook, peer.implicit_codebook)


def test_projections_and_leading_shapes():
    fsq = FSQ([5, 5, 5], dim=16)
    z = torch.randn(2, 3, 7, 16)
    zq, idx = fsq(z)
    assert zq.shape == (2, 3, 7, 16) and idx.shape == (2, 3, 7)
    torch.testing.assert_close(fsq.indices_to_codes(idx), zq)
    assert fsq.indices_to_codes(idx, project=False).shape == (2, 3, 7, 3)


def test_quantisation_runs_in_float32_under_bf16():
    fsq = FSQ([8, 5, 5, 5])
    z = (torch.randn(500, 4, generator=torch.Generator().manual_seed(4)) * 2).bfloat16()
    zq, idx = fsq(z)
    assert zq.dtype == torch.bfloat16
    _, ref = fsq(z.float())
    assert torch.equal(idx, ref)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, auto = fsq(z.float())
    assert torch.equal(auto, ref)


def test_random_inputs_use_the_whole_codebook():
    fsq = FSQ(recommended_levels(1024))
    fsq(torch.randn(40000, 4, generator=torch.Generator().manual_seed(5)) * 1.5)
    stats = fsq.usage_stats()
    assert stats["num_codes"] == 1000 and stats["total"] == 40000
    assert stats["active_fraction"] == 1.0 and stats["dead_fraction"] == 0.0
    assert stats["perplexity"] > 300
    fsq.reset_usage()
    assert fsq.usage_stats()["total"] == 0


def test_recommended_levels_table():
    table = {2**8: [8, 6, 5], 2**10: [8, 5, 5, 5], 2**12: [7, 5, 5, 5, 5],
             2**14: [8, 8, 8, 6, 5], 2**16: [8, 8, 8, 5, 5, 5]}
    for k, levels in table.items():
        assert recommended_levels(k) == levels
        assert 0.9 * k <= math.prod(levels) <= 1.1 * k
    with pytest.raises(ValueError, match="codebook_size=1000"):
        recommended_levels(1000)


def test_autoencoder_on_digits_trains_without_auxiliary_loss():
    datasets = pytest.importorskip("sklearn.datasets")
    x = torch.tensor(datasets.load_digits().data, dtype=torch.float32) / 16.0
    torch.manual_seed(0)
    enc = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.GELU(), torch.nn.Linear(64, 4))
    dec = torch.nn.Sequential(torch.nn.Linear(4, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
    fsq = FSQ(recommended_levels(1024))
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(300):
        batch = x[torch.randint(0, len(x), (128,), generator=g)]
        loss = (dec(fsq(enc(batch)).quantized) - batch).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    fsq.reset_usage()
    with torch.no_grad():
        fsq(enc(x))
    assert fsq.usage_stats()["active_fraction"] > 0.1


@pytest.mark.parametrize("levels", [[1], [5, 1], [], [2.5], [True, 3], "55"])
def test_bad_levels(levels):
    with pytest.raises(ValueError, match="levels"):
        FSQ(levels)


def test_bad_input():
    with pytest.raises(ValueError, match="tanh, sigmoid"):
        FSQ([5, 5], variant="cosine")
    fsq = FSQ([5, 5])
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        fsq(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        fsq.indices_to_codes(torch.tensor([25]))
    with pytest.raises(TypeError, match="integer"):
        fsq.indices_to_codes(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="dim"):
        FSQ([5, 5], dim=0)
