"""Trainer: learning, accumulation, bit-exact resume, atomic checkpoints, clear errors."""

import errno
import json
import sys
from pathlib import Path

import pytest
import torch

from formerlab import ModelConfig, TrainConfig
from formerlab.data import window_batch
from formerlab.models import CausalLM, CheckpointError
from formerlab.train import Trainer, latest_checkpoint, lr_at
from formerlab.train import checkpoint as ckpt_mod

TOKENS = (torch.arange(20_000) * 7 % 61).long()  # a learnable periodic stream


def batch_fn(tc):
    def fn(step, rows):
        return window_batch(TOKENS, tc.batch_size, tc.seq_len, seed=tc.seed, step=step,
                            rows=rows), None

    return fn


def run(tmp, steps=8, resume=False, mc=None, tc=None, **kw):
    mc = mc or ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2)
    tc = tc or TrainConfig(steps=steps, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=2,
                           log_every=2, **kw)
    torch.manual_seed(0)
    model = CausalLM(mc)
    tr = Trainer(model, mc, tc, batch_fn(tc), out_dir=tmp, device="cpu", progress=False)
    return tr, tr.train(resume=resume)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_loss_decreases_and_metrics_written(tmp_path):
    _, summary = run(tmp_path, steps=30)
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 2 and lines[-1]["step"] == 30
    assert lines[-1]["loss"] < lines[0]["loss"] - 0.5
    assert (tmp_path / "final" / "model.safetensors").is_file()
    assert summary.tokens_per_second > 0


def test_grad_accumulation_matches_full_batch(tmp_path):
    a, _ = run(tmp_path / "a", steps=4)
    b, _ = run(tmp_path / "b", steps=4, grad_accum=2)
    for (k, va), vb in zip(weights(a.model).items(), weights(b.model).values()):
        torch.testing.assert_close(va, vb, rtol=1e-5, atol=1e-6, msg=k)


def test_resume_is_bit_exact(tmp_path):
    full, _ = run(tmp_path / "full", steps=10)
    run(tmp_path / "part", steps=10, checkpoint_every=4)
    # simulate a crash after step 8: keep only checkpoint 8 and resume from it
    ck = latest_checkpoint(tmp_path / "part" / "checkpoints")
    assert ck.name == "step-00000010"
    import shutil

    shutil.rmtree(ck)
    (tmp_path / "part" / "checkpoints" / "latest").write_text("step-00000008")
    resumed, summary = run(tmp_path / "part", steps=10, checkpoint_every=4, resume=True)
    assert summary.resumed_from == 8
    for k, v in weights(full.model).items():
        assert torch.equal(v, weights(resumed.model)[k]), k


def test_full_disk_keeps_previous_checkpoint(tmp_path, monkeypatch):
    run(tmp_path, steps=4, checkpoint_every=2)
    before = latest_checkpoint(tmp_path / "checkpoints")
    import safetensors.torch as st

    def boom(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(st, "save_file", boom)
    with pytest.raises(CheckpointError, match="previous checkpoint .* is intact"):
        run(tmp_path / "other", steps=2)
    monkeypatch.undo()
    assert latest_checkpoint(tmp_path / "checkpoints") == before
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_corrupted_checkpoint_is_an_error_not_a_reinit(tmp_path):
    run(tmp_path, steps=4, checkpoint_every=2)
    ck = latest_checkpoint(tmp_path / "checkpoints")
    (ck / "optimizer.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="optimizer.safetensors is corrupted"):
        run(tmp_path, steps=6, checkpoint_every=2, resume=True)


def test_mismatched_checkpoint_names_the_keys(tmp_path):
    run(tmp_path, steps=4, checkpoint_every=2)
    mc = ModelConfig(vocab_size=64, hidden_size=64, num_layers=1, num_heads=2)
    with pytest.raises(CheckpointError, match=r"model_config.json .*hidden_size"):
        run(tmp_path, steps=6, resume=True, mc=mc)


def test_lr_schedule():
    tc = TrainConfig(steps=100, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, tc) == pytest.approx(0.1) and lr_at(9, tc) == pytest.approx(1.0)
    assert lr_at(99, tc) == pytest.approx(0.1)
    lin = tc.replace(schedule="linear")
    assert lr_at(54, lin) == pytest.approx(0.1 + 0.9 * (1 - 44 / 89))


def test_checkpoint_write_is_atomic(tmp_path):
    ckpt_mod.write_atomic(tmp_path / "f", b"abc")
    assert (tmp_path / "f").read_bytes() == b"abc"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_summary_losses_and_dict_batches(tmp_path):
    """The summary holds every step's loss; a dict batch passes model keyword arguments."""
    mc = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2)
    tc = TrainConfig(steps=3, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=1)
    torch.manual_seed(0)
    tuple_run = Trainer(CausalLM(mc), mc, tc, batch_fn(tc), device="cpu", progress=False).train()
    assert len(tuple_run.losses) == 3 and tuple_run.final_loss == tuple_run.losses[-1]

    def dict_fn(step, rows):
        ids, _ = batch_fn(tc)(step, rows)
        return {"input_ids": ids, "labels": None, "attention_mask": torch.ones_like(ids)}

    torch.manual_seed(0)
    dict_run = Trainer(CausalLM(mc), mc, tc, dict_fn, device="cpu", progress=False).train()
    assert dict_run.losses == tuple_run.losses


def test_bf16_autocast_keeps_float32_weights_and_frequencies(tmp_path):
    _fp32, s32 = run(tmp_path / "a", steps=3)
    bf16, s16 = run(tmp_path / "b", steps=3, precision="bf16")
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    assert bf16.model.rotary.inv_freq.dtype == torch.float32
    for a, b in zip(s32.losses, s16.losses):
        assert b == pytest.approx(a, rel=5e-2) and a != b  # bf16 matmuls: close, not equal
    with pytest.raises(ValueError, match="precision must be one of"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="parallel must be one of"):
        TrainConfig(parallel="zero3")


@pytest.mark.slow
def test_compiled_training_steps_equal_eager(tmp_path):
    _, eager = run(tmp_path / "a", steps=2)
    _, compiled = run(tmp_path / "b", steps=2, compile=True)
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5, abs=1e-6)



def test_masked_labels_accumulate_per_token_like_the_full_batch():
    """Micro-batches with unequal numbers of labelled tokens: each token counts the same."""
    sys.path.insert(0, str(Path(__file__).parent))  # the batches of the two-process test
    try:
        from ddp_trainer_worker import train
    finally:
        sys.path.pop(0)
    out = {accum: train(grad_accum=accum) for accum in (1, 2, 4)}
    for accum in (2, 4):
        for k, v in weights(out[1][0]).items():
            torch.testing.assert_close(weights(out[accum][0])[k], v, rtol=0, atol=1e-5, msg=k)
        torch.testing.assert_close(out[accum][1].losses, out[1][1].losses, rtol=1e-5, atol=1e-6)


def test_unmasked_batches_weigh_micro_batches_as_one_over_accumulation(monkeypatch):
    """Equal token shares take the plain 1/grad_accum path (bit-identical to a mean of means)."""
    from formerlab.train import trainer as trainer_mod

    mc = ModelConfig(vocab_size=64, hidden_size=32, num_layers=1, num_heads=2)
    tc = TrainConfig(steps=1, batch_size=4, seq_len=16, grad_accum=2)
    tr = Trainer(CausalLM(mc), mc, tc, batch_fn(tc), device="cpu", progress=False)
    batches = [tr._micro_batch(0, m) for m in range(2)]
    assert tr._loss_scales(batches) == [(1, 2), (1, 2)]
    batches[0]["labels"][:, :5] = -100  # 2 rows × 4 fewer next-token targets: 22 and 30 of 52
    assert tr._loss_scales(batches) == [(22, 52), (30, 52)]
    assert trainer_mod._labelled_tokens({"labels": torch.zeros(3)}) is None
