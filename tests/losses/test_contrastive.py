"""Exact contrastive accumulation: chunked gradients equal one backward through the whole batch
(float64, 1e-10) for any chunk size, with dropout (RNG replay), two towers, dict batches on a
real formerlab Encoder, a learnable temperature; the post's closed form; InfoNCE by brute force;
bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from formerlab.losses import (
    ContrastiveAccumulator,
    cached_backward,
    capture_rng_state,
    info_nce,
    replay_rng,
    split_batch,
)

F64 = torch.float64
TAU = 0.1


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def linear_encoder(seed=0, d_in=6, d=4, dropout=0.0):
    torch.manual_seed(seed)
    layers = [nn.Linear(d_in, 8), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(8, d))
    return nn.Sequential(*layers).double()


def simcse(h):
    return info_nce(h, temperature=TAU, normalize=False, reduction="sum")


def grads(model):
    return [p.grad.clone() for p in model.parameters()]


def reference_grads(model, x, loss_fn, chunk_size, seed):
    """One backward through the whole batch, encoded chunk by chunk with gradient (so dropout
    draws its masks in the accumulator's order)."""
    model.zero_grad()
    torch.manual_seed(seed)
    h = torch.cat([model(c) for c in split_batch(x, chunk_size)])
    loss = loss_fn(h)
    loss.backward()
    return loss.detach(), grads(model)


def accumulated_grads(model, x, loss_fn, chunk_size, seed, **kw):
    model.zero_grad()
    torch.manual_seed(seed)
    acc = ContrastiveAccumulator(model, loss_fn, chunk_size, **kw)
    loss = acc.step(x)
    return loss, grads(model), acc


def assert_all_close(a, b, atol=1e-10):
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=0, atol=atol)


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 8])
def test_chunked_equals_full_batch(chunk_size):
    model = linear_encoder()
    x = torch.randn(8, 6, dtype=F64, generator=gen(1))
    model.zero_grad()
    full = simcse(model(x))
    full.backward()
    ref = grads(model)
    loss, got, acc = accumulated_grads(model, x, simcse, chunk_size, seed=0)
    assert_all_close(got, ref)
    torch.testing.assert_close(loss, full.detach(), rtol=0, atol=1e-12)
    assert sum(acc.last_chunks[0]) == 8 and max(acc.last_chunks[0]) == chunk_size
    if chunk_size == 3:
        assert acc.last_chunks == [[3, 3, 2]]


def test_closed_form_representation_gradient():
    h = torch.randn(8, 4, dtype=F64, generator=gen(2))
    loss, (g,) = cached_backward(h, simcse)
    s = h @ h.T / TAU
    s.fill_diagonal_(float("-inf"))
    p = torch.softmax(s, -1)
    t = torch.zeros(8, 8, dtype=F64)
    t[torch.arange(8), torch.arange(8) ^ 1] = 1
    closed = (2 / TAU) * ((p + p.T) / 2 - t) @ h  # h̃_i = (2/τ) Σ_j (p̄_ij − t_ij) h_j
    torch.testing.assert_close(g, closed, rtol=0, atol=1e-12)
    torch.testing.assert_close(loss, -(t * p.clamp_min(1e-300).log()).sum())


def test_naive_accumulation_is_not_exact_but_ours_matches_finite_differences():
    model = linear_encoder(seed=3)
    x = torch.randn(8, 6, dtype=F64, generator=gen(4))
    _, exact, _ = accumulated_grads(model, x, simcse, 2, seed=0)
    model.zero_grad()
    for chunk in split_batch(x, 2):  # plain gradient accumulation of per-chunk losses
        simcse(model(chunk)).backward()
    naive = grads(model)
    scale = max(float(g.abs().max()) for g in exact)
    err = max(float((a - b).abs().max()) for a, b in zip(naive, exact))
    assert err > 0.1 * scale
    w = next(model.parameters())
    for idx in [(0, 0), (3, 2), (7, 5)]:
        with torch.no_grad():
            base = w[idx].item()
            w[idx] = base + 1e-6
            up = simcse(model(x)).item()
            w[idx] = base - 1e-6
            down = simcse(model(x)).item()
            w[idx] = base
        assert exact[0][idx].item() == pytest.approx((up - down) / 2e-6, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("chunk_size", [1, 3, 8])
def test_dropout_is_exact_only_with_rng_replay(chunk_size):
    model = linear_encoder(seed=5, dropout=0.3).train()
    x = torch.randn(8, 6, dtype=F64, generator=gen(6))
    ref_loss, ref = reference_grads(model, x, simcse, chunk_size, seed=11)
    after_ref = torch.get_rng_state()
    loss, got, _ = accumulated_grads(model, x, simcse, chunk_size, seed=11)
    assert_all_close(got, ref)
    torch.testing.assert_close(loss, ref_loss, rtol=0, atol=1e-12)
    # the step drew the masks once: the global RNG ends where one chunked forward leaves it
    assert torch.equal(torch.get_rng_state(), after_ref)
    _, off, _ = accumulated_grads(model, x, simcse, chunk_size, seed=11, preserve_rng=False)
    assert max(float((a - b).abs().max()) for a, b in zip(off, ref)) > 1e-3


def test_single_chunk_with_dropout_equals_a_plain_full_batch_step():
    model = linear_encoder(seed=7, dropout=0.5).train()
    x = torch.randn(8, 6, dtype=F64, generator=gen(8))
    model.zero_grad()
    torch.manual_seed(3)
    simcse(model(x)).backward()
    ref = grads(model)
    _, got, _ = accumulated_grads(model, x, simcse, 8, seed=3)
    assert_all_close(got, ref)


def test_two_towers_with_hard_negatives():
    q_enc, d_enc = linear_encoder(seed=9), linear_encoder(seed=10, dropout=0.2).train()
    q = torch.randn(6, 6, dtype=F64, generator=gen(11))
    docs = torch.randn(12, 6, dtype=F64, generator=gen(12))  # positives 0..5, 6 hard negatives

    def loss_fn(hq, hd):
        return info_nce(hq, hd, temperature=TAU, symmetric=True)

    for m in (q_enc, d_enc):
        m.zero_grad()
    torch.manual_seed(4)
    hq = torch.cat([q_enc(c) for c in split_batch(q, 4)])
    hd = torch.cat([d_enc(c) for c in split_batch(docs, 4)])
    ref_loss = loss_fn(hq, hd)
    ref_loss.backward()
    ref = grads(q_enc) + grads(d_enc)
    for m in (q_enc, d_enc):
        m.zero_grad()
    torch.manual_seed(4)
    acc = ContrastiveAccumulator(q_enc, loss_fn, 4, doc_encoder=d_enc)
    loss = acc.step(q, docs)
    assert_all_close(grads(q_enc) + grads(d_enc), ref)
    torch.testing.assert_close(loss, ref_loss.detach())
    assert acc.last_chunks == [[4, 2], [4, 4, 4]]


def test_dict_batches_on_a_real_encoder_with_dropout():
    from formerlab import ModelConfig
    from formerlab.models import Encoder

    cfg = ModelConfig(vocab_size=40, hidden_size=16, num_layers=1, num_heads=2, position="learned",
                      norm="layernorm", norm_position="post", ffn="gelu", max_position_embeddings=8,
                      dropout=0.1, attention_dropout=0.1)
    torch.manual_seed(0)
    model = Encoder(cfg).double().train()

    def encode(input_ids, attention_mask):
        h = model(input_ids, attention_mask=attention_mask).last_hidden_state
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        return (h * m).sum(1) / m.sum(1)

    ids = torch.randint(1, 40, (8, 6), generator=gen(13))
    mask = torch.ones(8, 6, dtype=torch.long)
    mask[::3, 4:] = 0
    batch = {"input_ids": ids, "attention_mask": mask}

    def loss_fn(h):
        return info_nce(h, temperature=0.05)

    model.zero_grad()
    torch.manual_seed(21)
    h = torch.cat([encode(**c) for c in split_batch(batch, 3)])
    ref_loss = loss_fn(h)
    ref_loss.backward()
    ref = grads(model)
    model.zero_grad()
    torch.manual_seed(21)
    loss = ContrastiveAccumulator(encode, loss_fn, 3).step(batch)
    assert_all_close(grads(model), ref)
    torch.testing.assert_close(loss, ref_loss.detach())


def test_learnable_temperature_gets_its_exact_gradient():
    model = linear_encoder(seed=12)
    log_tau = nn.Parameter(torch.tensor(math.log(0.2), dtype=F64))
    x = torch.randn(8, 6, dtype=F64, generator=gen(14))

    def loss_fn(h):
        return info_nce(h, temperature=log_tau.exp())

    loss_fn(model(x)).backward()
    ref = log_tau.grad.clone()
    log_tau.grad = None
    ContrastiveAccumulator(model, loss_fn, 3).step(x)
    torch.testing.assert_close(log_tau.grad, ref, rtol=0, atol=1e-12)


def test_info_nce_against_brute_force():
    h = torch.randn(6, 3, dtype=F64, generator=gen(15))
    hb = torch.randn(9, 3, dtype=F64, generator=gen(16))
    cos = torch.nn.functional.cosine_similarity

    def row_loss(q, keys, pos, skip=None):
        logits = [cos(q, k, dim=0) / 0.05 for j, k in enumerate(keys) if j != skip]
        pos_logit = cos(q, keys[pos], dim=0) / 0.05
        return -(pos_logit - torch.logsumexp(torch.stack(logits), 0))

    simcse_ref = torch.stack([row_loss(h[i], h, i ^ 1, skip=i) for i in range(6)]).mean()
    torch.testing.assert_close(info_nce(h), simcse_ref)
    fwd = torch.stack([row_loss(h[i], hb, i) for i in range(6)])
    back = torch.stack([row_loss(hb[i], h, i) for i in range(6)])
    torch.testing.assert_close(info_nce(h, hb, symmetric=False), fwd.mean())
    torch.testing.assert_close(info_nce(h, hb), 0.5 * (fwd.mean() + back.mean()))


def test_rng_helpers_leave_the_global_state_alone():
    state = capture_rng_state()
    a = torch.rand(3)
    before = torch.get_rng_state()
    with replay_rng(state):
        b = torch.rand(3)
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), before)


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, None])
def test_bad_chunk_size(bad):
    with pytest.raises(ValueError, match=f"chunk_size must be a positive int, got {bad!r}"):
        ContrastiveAccumulator(linear_encoder(), simcse, bad)


def test_bad_encoders_and_batches():
    x = torch.randn(4, 6, dtype=F64)
    model = linear_encoder()

    def pair_encoder(x):
        return model(x), model(x)

    with pytest.raises(TypeError, match="encoder pair_encoder returned tuple"):
        ContrastiveAccumulator(pair_encoder, simcse, 2).step(x)
    with pytest.raises(ValueError, match="first axis must be the batch"):
        ContrastiveAccumulator(lambda c: model(c).T, simcse, 2).step(x)
    with pytest.raises(ValueError, match="step\\(queries, docs\\)"):
        ContrastiveAccumulator(model, simcse, 2, doc_encoder=model).step(x)
    with pytest.raises(ValueError, match="one batch size"):
        split_batch({"a": torch.zeros(4), "b": torch.zeros(3)}, 2)
    with pytest.raises(TypeError, match="encoder must be callable"):
        ContrastiveAccumulator("model", simcse, 2)
    with pytest.raises(TypeError, match="scalar"):
        cached_backward(x, lambda h: h.sum(-1))
    with pytest.raises(ValueError, match="pairs"):
        info_nce(torch.randn(5, 3))
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.randn(4, 3), temperature=0)


def test_peak_activations_are_those_of_one_chunk():
    from formerlab.nn.recompute import peak_saved_activation_bytes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 256), nn.GELU(), nn.Dropout(0.1), nn.Linear(256, 32))
    x = torch.randn(64, 32, generator=gen(17))

    def loss_fn(h):
        return info_nce(h, temperature=0.05)

    def full():
        loss_fn(model(x)).backward()

    def loss_only():  # the loss on (64, 32) representations: the same in both runs
        loss_fn(torch.randn(64, 32, requires_grad=True)).backward()

    acc = ContrastiveAccumulator(model, loss_fn, 8)
    peak_full = peak_saved_activation_bytes(full, model.parameters())
    peak_acc = peak_saved_activation_bytes(lambda: acc.step(x), model.parameters())
    peak_loss = peak_saved_activation_bytes(loss_only)
    assert peak_acc <= (peak_full - peak_loss) / 8 + peak_loss
    assert peak_acc < peak_full / 4
