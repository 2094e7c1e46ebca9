"""Config schema: strict keys with suggestions, typed fields, dotted overrides, plug-in option checks."""

import pytest

from rlkit.config import ConfigError, load_config

BASE = {"model": {"name_or_path": "m"}, "data": {"train": "t.jsonl"},
        "reward": {"functions": [{"name": "exact_match"}]}}


def test_defaults_and_overrides():
    cfg = load_config(None, ["train.steps=20", "advantage.scale=none", "losses.0.eps_high=0.28",
                             "rollout.engine.batch_size=16"], base=BASE)
    assert cfg.train.steps == 20
    assert cfg.advantage.name == "grpo" and cfg.advantage.kwargs == {"scale": "none"}
    assert cfg.losses[0].name == "ppo_clip" and cfg.losses[0].kwargs == {"eps_high": 0.28}
    assert cfg.rollout.engine.name == "hf" and cfg.rollout.engine.kwargs == {"batch_size": 16}


def test_overrides_leave_the_base_dict_alone():
    base = {**BASE, "train": {"steps": 5}}
    assert load_config(None, ["train.steps=7", "model.dtype=bfloat16"], base=base).train.steps == 7
    assert base["train"] == {"steps": 5} and base["model"] == {"name_or_path": "m"}
    assert load_config(None, [], base=base).train.steps == 5


def test_unknown_key_names_key_and_closest():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.stesp=3"], base=BASE)
    assert "unknown key 'train.stesp'" in str(err.value) and "did you mean 'train.steps'" in str(err.value)
    with pytest.raises(ConfigError, match="unknown key 'trian'.*did you mean 'train'"):
        load_config(None, ["trian.steps=3"], base=BASE)


def test_wrong_type_names_field():
    with pytest.raises(ConfigError, match=r"train\.steps: .*integer.*'abc'"):
        load_config(None, ["train.steps=abc"], base=BASE)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match="recipe not found: '.*nope.yaml'"):
        load_config(tmp_path / "nope.yaml")


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="dotted.key=value"):
        load_config(None, ["train.steps"], base=BASE)
    with pytest.raises(ConfigError, match="not an index"):
        load_config(None, ["losses.5.beta=1"], base=BASE)


def test_plugin_options_checked_at_build():
    from rlkit.build import build_plugins
    from rlkit.registry import PluginError
    with pytest.raises(PluginError, match="unknown option 'scal'.*did you mean 'scale'"):
        build_plugins(load_config(None, ["advantage.scal=none"], base=BASE))
    with pytest.raises(PluginError, match="unknown advantage 'grop'.*did you mean 'grpo'"):
        build_plugins(load_config(None, ["advantage.name=grop"], base=BASE))


def test_eval_needs_eval_data():
    with pytest.raises(ConfigError, match="data.eval"):
        load_config(None, ["train.eval_at_start=true"], base=BASE)


def test_override_into_a_shorthand_plugin_section_opens_it():
    base = {**BASE, "aggregation": "token_mean", "losses": ["ppo_clip"]}
    cfg = load_config(None, ["aggregation.name=seq_mean_token_sum_norm", "losses.0.eps_high=0.28"], base=base)
    assert cfg.aggregation.name == "seq_mean_token_sum_norm" and cfg.losses[0].kwargs == {"eps_high": 0.28}
    assert load_config(None, ["aggregation.extra=1"], base=base).aggregation.kwargs == {"extra": 1}
    with pytest.raises(ConfigError, match="'model.name_or_path' is a value, not a section"):
        load_config(None, ["model.name_or_path.x=1"], base=base)   # not a plug-in section: still refused
