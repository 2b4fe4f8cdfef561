"""Parallel scans of x_t = a_t x_{t-1} + b_t against the sequential recurrence (float64, complex128)."""

from __future__ import annotations

import pytest
import torch

from formerlab.recurrent import SCANS, linear_scan

F64, C128 = torch.float64, torch.complex128
FAST = ["associative", "doubling", "upper_lower", "chunked"]
OPTIONS = {"chunked": [{}, {"chunk_size": 1}, {"chunk_size": 5}, {"chunk_size": 64}]}


def test_every_registered_scan_is_covered():
    assert set(SCANS) == {"sequential", *FAST}


def loop(a, b, initial=None):
    """An independent oracle: the recurrence written out with Python indexing along dim 1."""
    x = torch.zeros_like(b[:, 0]) if initial is None else initial
    out = []
    for t in range(b.shape[1]):
        at = a[:, t] if a.shape[1] > 1 else a[:, 0]
        x = at * x + b[:, t]
        out.append(x)
    return torch.stack(out, dim=1)


def coefficients(n, varying, dtype, g, feat=3):
    steps = n if varying else 1
    r = 0.2 + 0.79 * torch.rand(2, steps, feat, generator=g, dtype=F64)
    if dtype == F64:
        return r * torch.where(torch.rand(2, steps, feat, generator=g) < 0.3, -1.0, 1.0).to(F64)
    return torch.polar(r, 6.3 * torch.rand(2, steps, feat, generator=g, dtype=F64))


def inputs(n, dtype, g, feat=3):
    b = torch.randn(2, n, feat, generator=g, dtype=F64)
    if dtype == C128:
        b = torch.complex(b, torch.randn(2, n, feat, generator=g, dtype=F64))
    return b


@pytest.mark.parametrize("method", ["sequential", *FAST])
@pytest.mark.parametrize("dtype", [F64, C128])
@pytest.mark.parametrize("varying", [False, True])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 16, 33, 100])
def test_equals_sequential_recurrence(method, dtype, varying, n):
    g = torch.Generator().manual_seed(n)
    a, b = coefficients(n, varying, dtype, g), inputs(n, dtype, g)
    ref = loop(a, b)
    for opts in OPTIONS.get(method, [{}]):
        torch.testing.assert_close(linear_scan(a, b, dim=1, method=method, **opts), ref,
                                   rtol=0, atol=1e-12)


@pytest.mark.parametrize("varying", [False, True])
def test_long_sequences_equal_sequential_in_float64(varying):
    g = torch.Generator().manual_seed(11)
    n = 3000
    steps = n if varying else 1
    a = torch.polar(0.9 + 0.0999 * torch.rand(2, steps, 4, generator=g, dtype=F64),
                    6.3 * torch.rand(2, steps, 4, generator=g, dtype=F64))
    b = inputs(n, C128, g, feat=4)
    ref = linear_scan(a, b, dim=1)
    for m in FAST:
        torch.testing.assert_close(linear_scan(a, b, dim=1, method=m), ref, rtol=0, atol=1e-10)


@pytest.mark.parametrize("method", ["sequential", *FAST])
def test_initial_state(method):
    g = torch.Generator().manual_seed(1)
    a, b = coefficients(19, True, C128, g), inputs(19, C128, g)
    h = torch.randn(2, 3, generator=g, dtype=C128)
    torch.testing.assert_close(linear_scan(a, b, dim=1, method=method, initial=h), loop(a, b, h),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", FAST)
@pytest.mark.parametrize("varying", [False, True])
def test_gradients_equal_sequential(method, varying):
    g = torch.Generator().manual_seed(2)
    a0, b0 = coefficients(37, varying, C128, g), inputs(37, C128, g)
    h0 = torch.randn(2, 3, generator=g, dtype=C128)
    w = torch.randn(2, 37, 3, generator=g, dtype=C128)

    def grads(m):
        a, b, h = (t.clone().requires_grad_() for t in (a0, b0, h0))
        x = linear_scan(a, b, dim=1, method=m, initial=h)
        (x * w).real.sum().backward()
        return x.detach(), a.grad, b.grad, h.grad

    for got, ref in zip(grads(method), grads("sequential")):  # autograd paths: outputs too
        torch.testing.assert_close(got, ref, rtol=0, atol=1e-11)


def test_sequential_gradcheck():
    g = torch.Generator().manual_seed(3)
    a = coefficients(6, True, F64, g).requires_grad_()
    b = inputs(6, F64, g).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: linear_scan(a, b, dim=1), (a, b))


@pytest.mark.parametrize("method", FAST)
def test_no_overflow_at_100k_steps(method):
    # constant input: x_t = (1 − λ^{t+1}) / (1 − λ) in closed form; |λ| = 0.999 never overflows
    n = 100_000
    lam = torch.polar(torch.tensor([0.999, 0.999], dtype=F64), torch.tensor([0.0, 0.3], dtype=F64))
    b = torch.ones(n, 2, dtype=C128)
    x = linear_scan(lam, b, dim=0, method=method)
    t = torch.arange(1, n + 1, dtype=F64)[:, None]
    closed = (1 - lam ** t) / (1 - lam)
    assert torch.isfinite(torch.view_as_real(x)).all()
    torch.testing.assert_close(x, closed, rtol=1e-9, atol=1e-9)


def test_float32_follows_float64():
    g = torch.Generator().manual_seed(4)
    a, b = coefficients(4096, False, C128, g, feat=8), inputs(4096, C128, g, feat=8)
    ref = linear_scan(a, b, dim=1)
    scale = ref.abs().max()
    for m in FAST:
        got = linear_scan(a.to(torch.complex64), b.to(torch.complex64), dim=1, method=m)
        assert float((got.to(C128) - ref).abs().max() / scale) < 1e-4


@pytest.mark.parametrize("method", FAST)
def test_other_dims_and_broadcasting(method):
    g = torch.Generator().manual_seed(5)
    b = torch.randn(4, 3, 11, generator=g, dtype=F64)  # time last
    a = torch.rand(3, 1, generator=g, dtype=F64)  # per channel, time-invariant, broadcast over batch
    ref = loop(a.T[None].expand(4, 1, 3), b.transpose(1, 2)).transpose(1, 2)
    torch.testing.assert_close(linear_scan(a, b, dim=-1, method=method), ref, rtol=0, atol=1e-12)


def test_empty_and_single_step():
    a = torch.tensor([0.5], dtype=F64)
    assert linear_scan(a, torch.zeros(2, 0, 1, dtype=F64), method="chunked").shape == (2, 0, 1)
    h = torch.ones(2, 1, dtype=F64)
    x = linear_scan(a, torch.ones(2, 1, 1, dtype=F64), method="associative", initial=h)
    torch.testing.assert_close(x, torch.full((2, 1, 1), 1.5, dtype=F64))


def test_errors_name_the_argument():
    b = torch.zeros(2, 5, 3)
    with pytest.raises(ValueError, match="valid scan names: sequential"):
        linear_scan(torch.ones(3), b, method="blelloch_fast")
    with pytest.raises(ValueError, match="a must have size 1 or 5"):
        linear_scan(torch.ones(2, 4, 3), b)
    with pytest.raises(ValueError, match="does not broadcast"):
        linear_scan(torch.ones(2), b)
    with pytest.raises(ValueError, match=r"initial must have shape \(2, 3\)"):
        linear_scan(torch.ones(3), b, initial=torch.zeros(3))
    with pytest.raises(ValueError, match="dim 3 is out of range"):
        linear_scan(torch.ones(3), b, dim=3)
    with pytest.raises(ValueError, match="chunk_size"):
        linear_scan(torch.ones(3), b, method="chunked", chunk_size=0)
