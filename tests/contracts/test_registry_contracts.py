"""Contract tests over every registry entry: builds with defaults, documented, right shapes, zero where masked."""

import inspect
import sys

import pytest
import torch

from rlkit.batch import RolloutBatch
from rlkit.data import PromptItem
from rlkit.plugin_api import MicroBatch, Plugin
from rlkit.plugins import load_builtins
from rlkit.registry import REGISTRIES
from rlkit.rewards import check_signature

load_builtins()
CONTEXT = {"max_len": 5, "total_steps": 10, "group_size": 4}
REQUIRED = {("objective", "max_at_k"): {"k": 2}}     # options without a default
ENTRIES = [(kind, name) for kind, reg in REGISTRIES.items() for name in reg.names()]


def make_batch(N: int = 8, T: int = 5) -> RolloutBatch:
    gen = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 3, 0, 2, 4, 5, 1, 3])[:N]                                  # [N]
    mask = torch.arange(T)[None, :] < lengths[:, None]                                    # [N, T]
    logp = -torch.rand(N, T, generator=gen) * mask                                        # [N, T]
    batch = RolloutBatch(
        prompt_ids=[[1, 2]] * N, response_ids=torch.randint(5, 50, (N, T), generator=gen) * mask,
        response_mask=mask, rollout_logprobs=logp, truncated=lengths == T,
        group_ids=torch.arange(N) // 4, rewards=torch.tensor([1., 0., 1., 0., 0., 0., 1., 1.])[:N],
        success=torch.tensor([1., 0., 1., 0., 0., 0., 1., 1.])[:N], reward_components=torch.zeros(N, 1))
    batch.raw_rewards = batch.rewards.clone()
    batch.old_logprobs, batch.ref_logprobs = logp.clone(), (logp - 0.1) * mask
    batch.entropy = torch.rand(N, T, generator=gen) * mask
    batch.values = torch.rand(N, T, generator=gen) * mask
    batch.returns = torch.rand(N, T, generator=gen) * mask
    return batch


def build(kind, name):
    reg = REGISTRIES[kind]
    return reg.build(name, REQUIRED.get((kind, name), {}), **CONTEXT) if kind != "rollout" else None


@pytest.mark.parametrize("kind,name", ENTRIES)
def test_documented(kind, name):
    obj = REGISTRIES[kind].get(name)
    assert (obj.__doc__ or "").strip(), f"{kind} '{name}' has no docstring"
    module_doc = sys.modules[obj.__module__].__doc__ or ""
    assert len(module_doc.strip()) > 40, f"{kind} '{name}': module {obj.__module__} needs a docstring"


@pytest.mark.parametrize("kind,name", [e for e in ENTRIES if e[0] not in ("reward", "rollout", "environment",
                                                                           "tool_parser")])
def test_builds_with_defaults_and_masks(kind, name):
    plugin = build(kind, name)
    assert isinstance(plugin, Plugin)
    batch = make_batch()
    mask = batch.response_mask
    if kind == "advantage":
        adv, metrics = plugin(batch)
        assert adv.shape == mask.shape and torch.all(adv[~mask] == 0) and torch.isfinite(adv).all()
    elif kind == "selection":
        batch.advantages = batch.rewards[:, None] * mask
        w, _ = plugin(batch, progress=0.0)
        assert w.shape == mask.shape and torch.all(w[~mask] == 0) and w.min() >= 0 and w.max() <= 1
    elif kind == "loss":
        batch.advantages = (batch.rewards[:, None] - 0.5) * mask
        entropy = batch.entropy.clone().requires_grad_() if plugin.needs_entropy_grad else batch.entropy  # as the trainer
        micro = MicroBatch(batch=batch, logprobs=batch.old_logprobs.clone().requires_grad_(), entropy=entropy,
                           values=(batch.values + 0.1).requires_grad_())
        loss, metrics = plugin(micro)
        assert loss.shape == mask.shape and torch.all(loss[~mask] == 0)
    elif kind == "aggregation":
        plan = plugin.plan(mask.sum(-1), batch.group_ids, 5)
        assert plan.coef.shape == (len(batch),) and plan.normalizer > 0
    elif kind == "objective":
        assert plugin(batch.rewards, batch.group_ids).shape == batch.rewards.shape
    elif kind == "sampler":
        prompts = [PromptItem(index=i, prompt=f"{i}+1=", prompt_ids=[1, i + 2]) for i in range(3)]
        plugin.begin(0)
        counts = plugin.allocate(prompts, 4)
        assert len(counts) == 3 and all(c >= 0 for c in counts) and any(c > 0 for c in counts)
    state = plugin.state_dict()
    plugin.load_state_dict(state)


@pytest.mark.parametrize("name", REGISTRIES["reward"].names())
def test_reward_signatures(name):
    assert check_signature(REGISTRIES["reward"].get(name)) in ("batch", "per_sample")


@pytest.mark.parametrize("name", REGISTRIES["rollout"].names())
def test_engines_implement_interface(name):
    from rlkit.rollout import RolloutEngine
    obj = REGISTRIES["rollout"].get(name)
    assert issubclass(obj, RolloutEngine) if inspect.isclass(obj) else callable(obj)   # a class or a factory
    assert {"model", "tokenizer"} <= set(inspect.signature(obj).parameters)


ENV_REQUIRED = {"tools": {"tools": ["tests.env_fixtures:multiply"], "executor": "thread"}}


@pytest.mark.parametrize("name", REGISTRIES["environment"].names())
def test_environments_build_with_defaults(name):
    from rlkit.environments import Environment
    from rlkit.environments.build import build_environment
    env = build_environment(name, ENV_REQUIRED.get(name, {}))
    try:
        assert isinstance(env, Environment) and isinstance(env.multi_turn, bool)
        assert env.max_model_tokens(5) >= 5 if env.multi_turn else True
        schemas = env.tool_schemas()
        assert schemas is None or all(s["type"] == "function" and s["function"]["name"] for s in schemas)
        assert env.state_dict() == {}
    finally:
        env.close()


@pytest.mark.parametrize("name", REGISTRIES["tool_parser"].names())
def test_tool_parsers_answer_plain_text_with_no_calls(name):
    from rlkit.environments import ParseResult
    parse = REGISTRIES["tool_parser"].get(name)
    for text in ("", "12", "the answer is 7"):
        result = parse(text)
        assert isinstance(result, ParseResult) and not result.has_calls
