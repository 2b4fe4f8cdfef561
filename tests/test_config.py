import dataclasses

import pytest

from formerlab import ModelConfig, Registry, TrainConfig
from formerlab.config import Config, config_hash


@dataclasses.dataclass
class StudyConfig(Config):
    """A nested config as the lab's experiments declare them."""

    train_len: int = 128
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)


def test_round_trip_model_and_train(tmp_path):
    mc = ModelConfig(hidden_size=64, num_heads=2, rope_scaling={"rope_type": "linear", "factor": 2})
    assert ModelConfig.from_dict(mc.to_dict()) == mc
    tc = TrainConfig(steps=7, betas=(0.8, 0.9))
    assert TrainConfig.from_dict(tc.to_dict()) == tc
    mc.save(tmp_path / "m.json")
    assert ModelConfig.load(tmp_path / "m.json") == mc


def test_nested_round_trip():
    cfg = StudyConfig(train_len=32, model=ModelConfig(hidden_size=48, num_heads=3, window=8))
    back = StudyConfig.from_dict(cfg.to_dict())
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
        ({"norm": "batchnorm"}, "unknown norm 'batchnorm'"),
        ({"position": "xpos"}, "unknown position kind 'xpos'"),
        ({"normalization": "bogus"}, "unknown attention normalization 'bogus'"),
        ({"mixer": "rnn"}, "unknown token mixer 'rnn'; valid token mixer names: mha"),
        ({"normalization": "softmax_plus", "normalization_options": {"base_length": 64}},
         r"unknown option\(s\) \['base_length'\].*allowed: \['base_len', 'min_len'\]"),
        ({"rope_scaling": {"rope_type": "default", "factor": 4.0}}, "ignores an extension factor"),
        ({"logn": "dagger"}, "logn_train_len"),
        ({"logn": "pretrain", "normalization": "softmax_plus"}, "same log-n factor twice"),
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
    reg.remove("uno")  # by alias: the entry and its aliases go
    assert "one" not in reg and "uno" not in reg and len(reg) == 0
    reg.add("uno", 3)  # the names are free again


def test_coerce():
    mc = ModelConfig(hidden_size=64, num_heads=2)
    assert ModelConfig.coerce(mc) is mc
    assert ModelConfig.coerce({"hidden_size": 64, "num_heads": 2}) == mc
    with pytest.raises(TypeError, match="config must be a ModelConfig or dict, got str"):
        ModelConfig.coerce("64")


def test_normaliser_options_reach_the_layers():
    from formerlab.models import CausalLM

    cfg = ModelConfig(hidden_size=32, num_heads=4, num_layers=1, normalization="softmax_plus",
                      normalization_options={"base_len": 64, "min_len": 8})
    attn = CausalLM(cfg).layers[0].mixer
    assert attn.normalization == "softmax_plus"
    assert attn.normalization_options == {"base_len": 64, "min_len": 8}


def test_flat_hugging_face_and_first_release_keys_reach_the_sub_configs():
    hf = ModelConfig.from_dict({
        "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 64,
        "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 5e5,
                            "original_max_position_embeddings": 512},
        "attention_bias": True, "attention_dropout": 0.1, "sliding_window": 32,
    })
    assert (hf.num_heads, hf.num_kv_heads) == (8, 2)
    assert hf.position.rope_theta == 5e5 and hf.position.window == 32
    assert hf.position.rope_scaling == {"rope_type": "yarn", "factor": 4.0,
                                        "original_max_position_embeddings": 512}
    assert hf.attention.bias and hf.attention.dropout == 0.1
    # the first release's flat dict: logn_base_length meant the training length for log n†
    old = ModelConfig.from_dict({"position": "rope", "rope_theta": 500.0, "logn": "dagger",
                                 "logn_base_length": 128, "window": 16, "qk_bias": True})
    assert old.position.logn_train_len == 128 and old.position.logn_base_len == 512
    assert old.position.window == 16 and old.attention.qk_bias
    pre = ModelConfig.from_dict({"logn": "pretrain", "logn_base_length": 128})
    assert pre.position.logn_base_len == 128 and pre.position.logn_train_len is None
    # constructor and replace take the flat keys too; sub-config dicts update only their keys
    assert ModelConfig(window=8).position.window == 8
    c = ModelConfig().replace(rope_theta=100.0).replace(position={"window": 4})
    assert (c.position.rope_theta, c.position.window) == (100.0, 4)
    assert ModelConfig.from_dict(c.to_dict()) == c


def test_with_overrides_by_dotted_path():
    cfg = StudyConfig()
    new = cfg.with_overrides({"train.precision": "bf16", "model.hidden_size": 96, "train_len": 64})
    assert (new.train.precision, new.model.hidden_size, new.train_len) == ("bf16", 96, 64)
    assert isinstance(new.model, ModelConfig)
    assert cfg.train.precision == "fp32"  # a copy: the original is unchanged
    with pytest.raises(ValueError, match=r"StudyConfig.train has no key 'precison'.*precision"):
        cfg.with_overrides({"train.precison": "bf16"})
    with pytest.raises(ValueError, match=r"StudyConfig has no nested config 'train_len'"):
        cfg.with_overrides({"train_len.x": 1})
    with pytest.raises(ValueError, match="precision"):  # validated like from_dict
        cfg.with_overrides({"train.precision": "fp8"})
