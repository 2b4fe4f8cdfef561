"""The process-group session: joins under torchrun's variables, always leaves, and re-raises."""

import pytest
import torch
import torch.distributed as dist

from formerlab.train import distributed_session


@pytest.fixture
def one_rank_env(monkeypatch, tmp_path):
    """torchrun's variables for a group of one (so gloo needs no peer)."""
    for key, value in {"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "0",
                       "MASTER_ADDR": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    # init_distributed reads WORLD_SIZE > 1 as "launched by torchrun"; the group itself is
    # created here with one member so the test needs no second process.
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    yield
    if dist.is_initialized():
        dist.destroy_process_group()


def test_session_without_torchrun_is_one_process(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed_session(torch.device("cpu")) as info:
        assert (info.rank, info.world_size, info.enabled) == (0, 1, False)
    assert not dist.is_initialized()


def test_session_leaves_the_group_on_success(one_rank_env):
    with distributed_session(torch.device("cpu")) as info:
        assert info.enabled and dist.is_initialized()
    assert not dist.is_initialized()


def test_session_leaves_without_waiting_and_reraises_on_error(one_rank_env, monkeypatch):
    def no_barrier(*args, **kwargs):  # a failing rank must not wait for peers that never come
        raise AssertionError("barrier called after an error")

    monkeypatch.setattr(dist, "barrier", no_barrier)
    with pytest.raises(RuntimeError, match="boom"):
        with distributed_session(torch.device("cpu")):
            raise RuntimeError("boom")
    assert not dist.is_initialized()
