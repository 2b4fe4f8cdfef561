"""The lab's multi-process plumbing, on one process: ``ctx.train`` is the trainer, the
parallelism override reaches it without changing the cache key, rank > 0 neither prints nor
creates folders. (Two real processes: ``tests/integration/test_lab_processes.py``.)"""

import copy
import json

import pytest
import torch

from formerlab import ModelConfig, TrainConfig
from formerlab.data import window_batch
from formerlab.lab import RunContext, run_experiment
from formerlab.lab.cache import trained_model
from formerlab.lab.distributed import _load_trained, barrier, from_main, process_device
from formerlab.models.lm import CausalLM
from formerlab.train import Trainer
from formerlab.train.distributed import DistInfo

MC = ModelConfig(vocab_size=32, hidden_size=16, num_layers=1, num_heads=2)
TC = TrainConfig(steps=3, batch_size=2, seq_len=8, warmup_steps=1)
TOKENS = torch.arange(500) % 32


def _batch(step, rows):
    return window_batch(TOKENS, TC.batch_size, TC.seq_len, seed=0, step=step, rows=rows), None


def _model():
    model = CausalLM(MC)
    model.reset_parameters(torch.Generator().manual_seed(0))
    return model


def test_ctx_train_is_the_trainer_on_the_callers_model(tmp_path):
    ref = _model()
    Trainer(ref, MC, TC, _batch, device="cpu", progress=False).train()
    ctx = RunContext(preset="micro", out_dir=tmp_path, device=torch.device("cpu"), progress=False)
    model = _model()
    before = copy.deepcopy(model.state_dict())
    summary = ctx.train(model, MC, TC, _batch)
    assert summary.steps == 3 and len(summary.losses) == 3
    got, want = model.state_dict(), ref.state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(got["embed_tokens.weight"], before["embed_tokens.weight"])


def test_parallel_override_reaches_the_trainer_not_the_cache_key(tmp_path):
    ctx = RunContext(preset="micro", out_dir=tmp_path / "out", device=torch.device("cpu"),
                     progress=False, cache_dir=tmp_path / "cache", parallel="fsdp")
    ctx.train(_model(), MC, TC, _batch, out_dir=tmp_path / "run")
    assert json.loads((tmp_path / "run" / "final" / "train_config.json").read_text())[
        "parallel"] == "fsdp"
    _, first = ctx.trained_model(MC, TC, _batch, corpus_id="toy")
    _, plain = trained_model(MC, TC, _batch, corpus_id="toy", cache_dir=tmp_path / "cache",
                             device=torch.device("cpu"), progress=False, log=lambda m: None)
    assert first["cached"] is False and plain["cached"] is True
    assert plain["cache_key"] == first["cache_key"]


def test_other_ranks_neither_print_nor_create_the_run_folder(tmp_path, capsys):
    out = tmp_path / "rank1"
    ctx = RunContext(preset="micro", out_dir=out, device=torch.device("cpu"),
                     dist=DistInfo(rank=1, world_size=2))
    ctx.log("hello")
    assert not ctx.is_main and not out.exists() and capsys.readouterr().out == ""
    RunContext(preset="micro", out_dir=out, device=torch.device("cpu")).log("hello")
    assert out.is_dir() and "hello" in capsys.readouterr().out


def test_one_process_helpers_are_identities():
    assert from_main({"a": 1}, DistInfo()) == {"a": 1} and from_main(3, None) == 3
    barrier(DistInfo())
    barrier(None)
    two = DistInfo(rank=1, world_size=2, local_rank=1)
    assert process_device(torch.device("cuda"), two) == torch.device("cuda", 1)
    assert process_device(torch.device("cuda", 0), two) == torch.device("cuda", 0)
    assert process_device(torch.device("cpu"), two) == torch.device("cpu")
    assert process_device(torch.device("cuda"), DistInfo()) == torch.device("cuda")


def test_trained_weights_must_match_the_model():
    model, other = _model(), CausalLM(MC.replace(num_layers=2))
    weights = {k: v for k, v in _model().state_dict().items() if k != "lm_head.weight"}
    _load_trained(model, weights)  # a tied head may be missing: it is the embedding
    with pytest.raises(RuntimeError, match="missing"):
        _load_trained(other, weights)


def test_run_experiment_rejects_an_unknown_parallel_mode(tmp_path):
    with pytest.raises(ValueError, match="parallel must be one of"):
        run_experiment("position-probe", preset="micro", out_dir=tmp_path, parallel="zero3")
