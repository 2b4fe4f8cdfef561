import dataclasses

import pytest

from formerlab import ModelConfig, Registry, TrainConfig
from formerlab.config import config_hash
from formerlab.lab.experiments.extrapolation import ExtrapolationConfig


def test_round_trip_model_and_train(tmp_path):
    mc = ModelConfig(hidden_size=64, num_heads=2, rope_scaling={"rope_type": "linear", "factor": 2})
    assert ModelConfig.from_dict(mc.to_dict()) == mc
    tc = TrainConfig(steps=7, betas=(0.8, 0.9))
    assert TrainConfig.from_dict(tc.to_dict()) == tc
    mc.save(tmp_path / "m.json")
    assert ModelConfig.load(tmp_path / "m.json") == mc


def test_nested_round_trip():
    cfg = ExtrapolationConfig(train_len=32, model=ModelConfig(hidden_size=48, num_heads=3))
    back = ExtrapolationConfig.from_dict(cfg.to_dict())
    assert back == cfg
    assert isinstance(back.model, ModelConfig)


def test_unknown_key_lists_allowed():
    with pytest.raises(ValueError, match=r"unknown ModelConfig key\(s\) \['hiden_size'\].*hidden_size"):
        ModelConfig.from_dict({"hiden_size": 3})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"hidden_size": 30, "num_heads": 4}, "divisible by num_heads"),
        ({"num_kv_heads": 3}, "divisible by num_kv_heads"),
        ({"norm": "batchnorm"}, "norm must be one of"),
        ({"position": "xpos"}, "position must be one of"),
        ({"partial_rotary_factor": 0.0}, "partial_rotary_factor"),
        ({"dropout": 1.5}, "dropout"),
        ({"window": 0}, "window"),
    ],
)
def test_model_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(**kwargs)


def test_train_config_validation():
    with pytest.raises(ValueError, match="divisible by grad_accum"):
        TrainConfig(batch_size=6, grad_accum=4)
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="exp")


def test_replace_validates_and_rejects_unknown():
    tc = TrainConfig()
    assert tc.replace(steps=3).steps == 3
    with pytest.raises(ValueError, match="allowed keys"):
        tc.replace(stepz=3)


def test_config_hash_stable_and_sensitive():
    a, b = ModelConfig(), ModelConfig()
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash(dataclasses.replace(a, hidden_size=64))


def test_registry_errors_and_aliases():
    reg: Registry = Registry("thing")
    reg.add("one", 1, aliases=("uno",), note="x")
    assert reg.get("uno") == 1 and reg.meta("uno") == {"note": "x"}
    with pytest.raises(ValueError, match="unknown thing 'two'; valid thing names: one"):
        reg.get("two")
    with pytest.raises(ValueError, match="already registered"):
        reg.add("uno", 2)
    assert "one" in reg and list(reg) == ["one"]


def test_coerce():
    mc = ModelConfig(hidden_size=64, num_heads=2)
    assert ModelConfig.coerce(mc) is mc
    assert ModelConfig.coerce({"hidden_size": 64, "num_heads": 2}) == mc
    with pytest.raises(TypeError, match="config must be a ModelConfig or dict, got str"):
        ModelConfig.coerce("64")
