"""Registries: built-in names, module:attr, file paths, entry points, constructor kwargs checks."""

import importlib.metadata

import pytest

from rlkit.plugins import load_builtins

from rlkit.registry import ADVANTAGES, REWARDS, PluginError, Registry


def test_module_attr_and_file(tmp_path):
    load_builtins()
    assert ADVANTAGES.get("rlkit.advantages.grpo:GRPOAdvantage").plugin_name == "grpo"
    f = tmp_path / "my_reward.py"
    f.write_text("def score(completions, **kw):\n    return [1.0 for _ in completions]\n")
    assert REWARDS.get(f"{f}:score")(["a"]) == [1.0]
    with pytest.raises(PluginError, match="plug-in file not found: '.*missing.py'"):
        REWARDS.get(f"{tmp_path}/missing.py:score")
    with pytest.raises(PluginError, match="has no attribute 'scor'.*did you mean 'score'"):
        REWARDS.get(f"{f}:scor")


def test_kwargs_checked_against_signature():
    reg = Registry("demo")

    @reg.register("thing")
    class Thing:
        def __init__(self, alpha: float = 1.0, *, beta: int):
            self.alpha, self.beta = alpha, beta

    assert reg.build("thing", {"beta": 2}).beta == 2
    with pytest.raises(PluginError, match="unknown option 'alhpa'.*did you mean 'alpha'"):
        reg.build("thing", {"alhpa": 1, "beta": 2})
    with pytest.raises(PluginError, match="missing required option.*beta"):
        reg.build("thing", {})
    # trainer context is passed only when the constructor takes it, and cannot be set from a recipe
    assert reg.build("thing", {"beta": 1}, max_len=5).alpha == 1.0
    with pytest.raises(PluginError, match="set by the trainer"):
        reg.build("thing", {"beta": 1, "alpha": 2}, alpha=3)


def test_entry_point_plugins(monkeypatch):
    ep = importlib.metadata.EntryPoint(name="advantage.ep_grpo", value="rlkit.advantages.grpo:GRPOAdvantage",
                                       group="rlkit.plugins")
    real = importlib.metadata.entry_points

    def fake(**kw):
        return [ep] if kw.get("group") == "rlkit.plugins" else real(**kw)

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)
    assert "ep_grpo" in ADVANTAGES.names()
    assert ADVANTAGES.build("ep_grpo", {"scale": "none"}).scale == "none"


def test_double_registration_is_explained():
    reg = Registry("demo")
    reg.register("a")(type("A", (), {}))
    with pytest.raises(PluginError, match="registered twice.*new name"):
        reg.register("a")(type("B", (), {}))
