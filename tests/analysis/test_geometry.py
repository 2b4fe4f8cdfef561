"""Orthogonal maps a → b: orthogonality, T a = b, determinants, the complement, edge cases,
scipy's align_vectors for the rotation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from formerlab.analysis import ORTHOGONAL_MAPS, apply_orthogonal_map, orthogonal_map

F64 = torch.float64
KINDS = ["symmetric", "householder", "rotation"]


def test_every_registered_kind_is_covered():
    assert set(ORTHOGONAL_MAPS) == set(KINDS)


def _pairs(d=6, batch=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(batch, d, generator=g, dtype=F64) * 3
    b = torch.randn(batch, d, generator=g, dtype=F64)
    return a, b


def _complement(a, b, seed=1):
    """A vector orthogonal to span(a, b), per batch row."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(a.shape, generator=g, dtype=F64)
    q, _ = torch.linalg.qr(torch.stack([a, b], -1))
    return x - (q @ (q.transpose(-1, -2) @ x[..., None]))[..., 0]


@pytest.mark.parametrize("kind", KINDS)
def test_orthogonal_and_maps_a_to_b(kind):
    a, b = _pairs()
    t = orthogonal_map(a, b, kind)
    eye = torch.eye(6, dtype=F64).expand_as(t)
    torch.testing.assert_close(t @ t.transpose(-1, -2), eye, rtol=0, atol=1e-12)
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    torch.testing.assert_close((t @ an[..., None])[..., 0], bn, rtol=0, atol=1e-12)
    x = torch.randn(8, 6, dtype=F64)
    torch.testing.assert_close(apply_orthogonal_map(x, a, b, kind), (t @ x[..., None])[..., 0],
                               rtol=0, atol=1e-12)


def test_kind_specific_properties():
    a, b = _pairs()
    an, bn = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    z = _complement(a, b)
    sym, ref, rot = (orthogonal_map(a, b, k) for k in KINDS)
    for t in (sym, ref):  # symmetric, involutory, b -> a
        torch.testing.assert_close(t, t.transpose(-1, -2))
        torch.testing.assert_close((t @ bn[..., None])[..., 0], an, rtol=0, atol=1e-12)
    assert float(((rot @ bn[..., None])[..., 0] - an).norm(dim=-1).min()) > 1e-3
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(8, dtype=F64))
    torch.testing.assert_close(torch.linalg.det(ref), -torch.ones(8, dtype=F64))
    torch.testing.assert_close(torch.linalg.det(sym), (-1.0) ** 5 * torch.ones(8, dtype=F64))
    torch.testing.assert_close((rot @ z[..., None])[..., 0], z)  # fixes the complement
    torch.testing.assert_close((sym @ z[..., None])[..., 0], -z)  # negates it
    torch.testing.assert_close((ref @ z[..., None])[..., 0], z)
    # Rodrigues: I + K + K²/(1 + c), K = b aᵀ − a bᵀ
    k = bn[..., :, None] * an[..., None, :] - an[..., :, None] * bn[..., None, :]
    c = (an * bn).sum(-1)[..., None, None]
    torch.testing.assert_close(rot, torch.eye(6, dtype=F64) + k + k @ k / (1 + c))


def test_rotation_equals_scipy_align_vectors_in_3d():
    rotation = pytest.importorskip("scipy.spatial.transform").Rotation
    a, b = _pairs(d=3, batch=5, seed=3)
    ours = orthogonal_map(a, b, "rotation")
    for i in range(5):
        r, _ = rotation.align_vectors(b[i : i + 1].numpy(), a[i : i + 1].numpy())
        np.testing.assert_allclose(ours[i].numpy(), r.as_matrix(), atol=1e-10)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_degenerate_pairs_keep_the_invariants(kind, sign):
    a = torch.tensor([[0.3, -1.2, 0.5, 2.0]], dtype=F64)
    b = sign * a * 2.5
    for dtype, tol in ((F64, 1e-12), (torch.float32, 1e-5)):
        t = orthogonal_map(a.to(dtype), b.to(dtype), kind)
        assert bool(torch.isfinite(t).all())
        eye = torch.eye(4, dtype=dtype)
        torch.testing.assert_close(t[0] @ t[0].T, eye, rtol=0, atol=tol)
        an = (a / a.norm()).to(dtype)
        torch.testing.assert_close(t[0] @ an[0], sign * an[0], rtol=0, atol=tol)
        det = float(torch.linalg.det(t[0].double()))
        expected = {"symmetric": -1.0, "householder": -1.0, "rotation": 1.0}[kind]
        assert abs(det - expected) < 1e-4
    one = orthogonal_map(torch.tensor([2.0]), torch.tensor([-3.0]), kind)
    assert one.tolist() == [[-1.0]]


def test_gradients_flow():
    a, b = _pairs(d=4, batch=2)
    a.requires_grad_()
    b.requires_grad_()
    for kind in KINDS:
        assert torch.autograd.gradcheck(lambda u, v, k=kind: orthogonal_map(u, v, k), (a, b))


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match="a contains a zero vector"):
        orthogonal_map(torch.zeros(3), torch.ones(3))
    with pytest.raises(ValueError, match="same dimension"):
        orthogonal_map(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="householder, rotation"):
        orthogonal_map(torch.ones(3), torch.ones(3), kind="givens")
    with pytest.raises(TypeError, match="b must be a floating-point"):
        orthogonal_map(torch.ones(3), torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="x must end"):
        apply_orthogonal_map(torch.ones(2), torch.ones(3), torch.ones(3))
