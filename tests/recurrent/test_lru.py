"""LRU / SLRU: ring initialisation, γ normalisation, scans, step decoding, states, errors."""

from __future__ import annotations

import math

import pytest
import torch

from formerlab.recurrent import LRU, SCANS, SLRU, LayerState, LRUState, linear_scan, ring_init

F64 = torch.float64


def make(cls=LRU, h=6, n=10, seed=0, **kw):
    return cls(h, n, generator=torch.Generator().manual_seed(seed), **kw).double()


def sequence(b=3, n=41, h=6, seed=1):
    return torch.randn(b, n, h, generator=torch.Generator().manual_seed(seed), dtype=F64)


# --- initialisation ------------------------------------------------------------------------------
def ks_uniform(x: torch.Tensor) -> float:
    """Kolmogorov–Smirnov distance of samples in [0, 1] to U[0, 1]."""
    x, n = x.sort().values, x.numel()
    i = torch.arange(1, n + 1, dtype=x.dtype)
    return float(torch.maximum(i / n - x, x - (i - 1) / n).max())


KS_CRIT = 1.95  # √n·D above this has p < 1e-3 (asymptotic Kolmogorov distribution)


def test_ring_init_ranges_and_uniform_squared_modulus():
    r_min, r_max, phase = 0.4, 0.95, 2.0
    nu_log, theta_log, gamma_log = ring_init(4000, r_min, r_max, phase,
                                             generator=torch.Generator().manual_seed(0))
    lam = torch.exp(torch.complex(-nu_log.exp(), theta_log.exp()))
    r = lam.abs()
    assert r_min <= float(r.min()) and float(r.max()) <= r_max
    assert 0 <= float(lam.angle().remainder(2 * math.pi).min())
    assert float(theta_log.exp().max()) <= phase
    # |λ|² ~ U[r_min², r_max²]
    u = (r**2 - r_min**2) / (r_max**2 - r_min**2)
    assert math.sqrt(4000) * ks_uniform(u) < KS_CRIT
    assert math.sqrt(4000) * ks_uniform(theta_log.exp() / phase) < KS_CRIT
    # the test can fail: |λ| itself (not squared) is not uniform on the ring
    assert math.sqrt(4000) * ks_uniform((r - r_min) / (r_max - r_min)) > KS_CRIT
    torch.testing.assert_close(gamma_log.exp(), torch.sqrt(1 - r**2), rtol=1e-12, atol=0)


def test_module_init_matches_ring_and_is_seeded():
    m = make(n=64, r_min=0.9, r_max=0.999)
    r = m.eigenvalues(F64).detach().abs()
    assert 0.9 <= float(r.min()) and float(r.max()) <= 0.999
    torch.testing.assert_close(m.gamma(F64).detach(), torch.sqrt(1 - r**2))
    again = make(n=64, r_min=0.9, r_max=0.999)
    for p, q in zip(m.parameters(), again.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    # B, C scales of the reference code: Var(Re B) = 1/(2H), Var(Re C) = 1/N
    big = make(h=200, n=300)
    assert abs(float(big.B_re.detach().var()) * 400 - 1) < 0.05
    assert abs(float(big.C_im.detach().var()) * 300 - 1) < 0.05


@pytest.mark.parametrize("normalize, expected", [(True, "one"), (False, "1/(1-r^2)")])
def test_monte_carlo_state_energy(normalize, expected):
    # i.i.d. zero-mean inputs: E|x_t|² / E|B u|² → 1/(1 − r²) without γ and → 1 with γ
    m = make(h=4, n=8, seed=3, r_min=0.5, r_max=0.9, normalize=normalize)
    u = torch.randn(4000, 120, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    with torch.no_grad():
        x = m.hidden_states(u)[:, -1]
        bu_energy = (m.B_re**2 + m.B_im**2).sum(-1)  # E|B u|² for u ~ N(0, I)
        ratio = (x.abs() ** 2).mean(0) / bu_energy
        r2 = m.eigenvalues(F64).abs() ** 2
    target = torch.ones_like(r2) if expected == "one" else 1 / (1 - r2)
    torch.testing.assert_close(ratio, target, rtol=0.1, atol=0)


# --- forward, scans, variants --------------------------------------------------------------------
@pytest.mark.parametrize("cls", [LRU, SLRU])
def test_output_is_real_and_equals_direct_recurrence(cls):
    m, u = make(cls), sequence()
    y, state = m(u)
    assert state is None and y.dtype == F64 and y.shape == u.shape
    # oracle: the recurrence written with explicit complex matrices
    with torch.no_grad():
        lam = m.eigenvalues(F64)
        if cls is LRU:
            bmat = torch.complex(m.B_re, m.B_im) * m.gamma(F64)[:, None]
            cmat = torch.complex(m.C_re, m.C_im)
        else:
            bmat, cmat = m.B * m.gamma(F64)[:, None], m.C
        x = torch.zeros(u.shape[0], m.d_state, dtype=bmat.dtype)
        ref = []
        for t in range(u.shape[1]):
            x = lam * x + u[:, t].to(bmat.dtype) @ bmat.T
            ref.append((x @ cmat.T).real + m.D * u[:, t])
        torch.testing.assert_close(y, torch.stack(ref, 1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [LRU, SLRU])
@pytest.mark.parametrize("scan", sorted(SCANS))
def test_every_scan_gives_the_same_outputs_and_gradients(cls, scan):
    u = sequence(n=70)
    ref, got = make(cls, scan="sequential"), make(cls, scan=scan)
    w = torch.randn(3, 70, 6, generator=torch.Generator().manual_seed(9), dtype=F64)
    (ref(u)[0] * w).sum().backward()
    y, _ = got(u)
    (y * w).sum().backward()
    torch.testing.assert_close(y, ref(u)[0], rtol=0, atol=1e-12)
    for (name, p), q in zip(got.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=1e-10, msg=name)


def test_slru_is_lru_with_zero_phase_and_real_projections():
    lru, slru, u = make(LRU, max_phase=0.0), make(SLRU), sequence()
    with torch.no_grad():
        lru.nu_log.copy_(slru.nu_log)
        lru.gamma_log.copy_(slru.gamma_log)
        lru.B_re.copy_(slru.B)
        lru.B_im.zero_()
        lru.C_re.copy_(slru.C)
        lru.C_im.normal_()  # multiplies Im x = 0: irrelevant
        lru.D.copy_(slru.D)
    assert float(lru.eigenvalues(F64).detach().imag.abs().max()) == 0.0
    torch.testing.assert_close(lru(u)[0], slru(u)[0], rtol=0, atol=1e-12)


def test_half_precision_inputs_scan_in_float32():
    m = LRU(6, 10, generator=torch.Generator().manual_seed(0))
    u = sequence().float()
    with torch.no_grad():
        y32, _ = m(u)
        y16, state = m(u.bfloat16(), use_cache=True)
    assert y16.dtype == torch.bfloat16 and state.hidden.dtype == torch.complex64
    assert float((y16.float() - y32).abs().max()) < 0.1


# --- decoding ------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [LRU, SLRU])
def test_step_decoding_equals_parallel_forward(cls):
    m, u = make(cls), sequence()
    full, _ = m(u)
    state, outs = None, []
    for t in range(u.shape[1]):
        y, state = m.step(u[:, t], state)
        outs.append(y)
    torch.testing.assert_close(torch.stack(outs, 1), full, rtol=0, atol=1e-12)
    assert state.length == u.shape[1] and isinstance(state, LayerState)


@pytest.mark.parametrize("cls", [LRU, SLRU])
def test_pieces_with_state_equal_whole(cls):
    m, u = make(cls, scan="associative"), sequence(n=40)
    full, whole_state = m(u, use_cache=True)
    pieces, state = [], None
    for lo, hi in [(0, 1), (1, 8), (8, 8), (8, 29), (29, 40)]:
        y, state = m(u[:, lo:hi], state=state, use_cache=True)
        pieces.append(y)
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=0, atol=1e-12)
    torch.testing.assert_close(state.hidden, whole_state.hidden, rtol=0, atol=1e-12)
    assert state.length == 40


def test_layer_calls_do_not_modify_the_given_state():
    m, u = make(), sequence()
    _, s = m(u[:, :5], use_cache=True)
    before = s.hidden.clone()
    m(u[:, 5:], state=s)
    m.step(u[:, 5], s)
    assert s.length == 5 and torch.equal(s.hidden, before)


def test_reorder_and_batch_select_follow_the_batch():
    m, u = make(), sequence(b=4)
    _, s = m(u[:, :10], use_cache=True)
    idx = torch.tensor([2, 2, 0])
    y_sel, _ = m(u[idx, 10:], state=s.clone().reorder(idx))
    ref, _ = m(u[idx])
    torch.testing.assert_close(y_sel, ref[:, 10:], rtol=0, atol=1e-12)
    keep = torch.tensor([True, False, False, True])
    s2 = s.clone().batch_select(keep)
    assert s2.batch_size == 2 and s.batch_size == 4
    torch.testing.assert_close(m(u[keep, 10:], state=s2)[0], m(u[keep])[0][:, 10:])


def test_crop_is_not_supported_for_recurrent_state():
    m, u = make(), sequence()
    _, s = m(u[:, :7], use_cache=True)
    assert s.crop(7) is s and s.crop(0 - 0 + 7).length == 7
    with pytest.raises(NotImplementedError, match="crop is not supported for recurrent state"):
        s.crop(3)
    with pytest.raises(NotImplementedError):
        s.crop(-1)
    with pytest.raises(ValueError, match="cannot crop"):
        s.crop(9)


def test_detach_and_init_state():
    m, u = make(), sequence()
    s = m.init_state(3, dtype=F64)
    y0, s1 = m(u, state=s)
    torch.testing.assert_close(y0, m(u)[0])
    assert s1.hidden.requires_grad and not s1.detach().hidden.requires_grad


# --- errors --------------------------------------------------------------------------------------
def test_errors_name_the_argument():
    with pytest.raises(ValueError, match="r_min must be smaller than r_max"):
        LRU(4, 4, r_min=0.9, r_max=0.9)
    with pytest.raises(ValueError, match="r_max must lie in"):
        SLRU(4, 4, r_max=1.5)
    with pytest.raises(ValueError, match="max_phase"):
        LRU(4, 4, max_phase=-1.0)
    with pytest.raises(ValueError, match="valid scan names: sequential, associative"):
        LRU(4, 4, scan="fft")
    with pytest.raises(ValueError, match="d_state must be a positive integer"):
        LRU(4, 0)
    m = make()
    with pytest.raises(ValueError, match=r"u must be \(batch, seq, d_model\) with d_model=6"):
        m(torch.zeros(2, 5, 7, dtype=F64))
    with pytest.raises(ValueError, match=r"u_t must be \(batch, d_model\)"):
        m.step(torch.zeros(2, 5, 6, dtype=F64))
    with pytest.raises(ValueError, match=r"state.hidden must have shape \(2, 10\)"):
        m(torch.zeros(2, 5, 6, dtype=F64), state=LRUState(torch.zeros(3, 10, dtype=torch.cfloat)))
    with pytest.raises(ValueError, match="must be complex"):
        m.step(torch.zeros(2, 6, dtype=F64), LRUState(torch.zeros(2, 10, dtype=F64)))
    with pytest.raises(TypeError, match="state must be an LRUState"):
        m(torch.zeros(2, 5, 6, dtype=F64), state={"hidden": None})
    with pytest.raises(ValueError, match="reorder index must lie in"):
        m.init_state(2).reorder(torch.tensor([0, 2]))


def test_linear_scan_is_what_the_layer_runs():
    m, u = make(), sequence()
    with torch.no_grad():
        bu = torch.complex(u @ m.B_re.T, u @ m.B_im.T) * m.gamma(F64)
        x = linear_scan(m.eigenvalues(F64), bu, dim=1)
    torch.testing.assert_close(m.hidden_states(u), x, rtol=0, atol=1e-12)


def test_circular_law_motivates_the_ring():
    # a 512×512 matrix with entries N(0, 1/n) (Glorot scale for a square matrix) has eigenvalues
    # ≈ uniform in the unit disk, i.e. |λ|² ≈ U[0, 1]
    g = torch.Generator().manual_seed(0)
    n = 512
    w = torch.randn(n, n, generator=g, dtype=F64) / math.sqrt(n)
    r2 = torch.linalg.eigvals(w).abs() ** 2
    hist = torch.histc(r2.clamp(max=1.0), bins=4, min=0, max=1) / n
    assert float(r2.max()) < 1.1
    torch.testing.assert_close(hist, torch.full((4,), 0.25, dtype=F64), rtol=0, atol=0.05)


@pytest.mark.parametrize("cls", [LRU, SLRU])
def test_padding_leaves_the_state_unchanged(cls):
    """Masked positions anywhere (left, middle, right) are skipped: the real tokens' outputs equal
    the recurrence run over the real tokens only (state carried over the gaps)."""
    m = make(cls, scan="chunked")
    u = sequence(b=2, n=17)
    mask = torch.ones(2, 17, dtype=torch.bool)
    mask[0, :4] = False
    mask[0, 9:12] = False
    mask[1, 13:] = False
    y, st = m(u, mask=mask, use_cache=True)
    for i in range(2):
        alone, st_i = m(u[i:i + 1, mask[i]], use_cache=True)
        torch.testing.assert_close(y[i, mask[i]], alone[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(st.hidden[i], st_i.hidden[0], rtol=1e-12, atol=1e-12)
    assert st.length == 17  # padding counts towards the length (positions stay aligned)
    # one step with a padded row keeps that row's state
    y1, st1 = m.step(u[:, 0], st, mask=torch.tensor([True, False]))
    torch.testing.assert_close(st1.hidden[1], st.hidden[1], rtol=0, atol=0)
    ref, _ = m.step(u[:1, 0], st.clone().batch_select(torch.tensor([0])))
    torch.testing.assert_close(y1[:1], ref, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape \\(2, 17\\)"):
        m(u, mask=mask[:, 1:])


def test_reset_parameters_redraws_the_ring_from_the_generator():
    m = make(LRU, n=16, seed=5)
    m.reset_parameters(torch.Generator().manual_seed(0))
    again = make(LRU, n=16)  # built from seed 0 (in float32, then cast)
    for p, q in zip(m.parameters(), again.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
    m.reset_parameters(torch.Generator().manual_seed(1))
    assert not torch.equal(m.nu_log, again.nu_log)
