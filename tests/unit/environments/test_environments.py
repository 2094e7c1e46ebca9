"""Environments: token-exact episodes, masks and loss weights, parser, canary, TRL adapter, bad input.

A scripted "engine" answers from the decoded context, so every token of an episode is known in advance and the
layout, the masks and the loss weights can be asserted exactly (byte tokenizer: one token per character).
"""

from __future__ import annotations

import math

import pytest
import torch

from rlkit.batch import RolloutBatch
from rlkit.data import PromptItem
from rlkit.environments.build import build_environment
from rlkit.environments.canary import TokenDriftError, check_drift, enforce
from rlkit.environments.parsers import hermes
from rlkit.environments.render import ChatRenderer, TemplateError
from rlkit.environments.episode import EpisodeMetrics, turn_seed
from rlkit.environments.runner import EpisodeRunner
from rlkit.functional import aggregation_plan
from rlkit.registry import PluginError
from rlkit.rollout import FINISH_LENGTH, FINISH_STOP, Completion, SamplingParams
from rlkit.rollout.collect import build_batch
from rlkit.samplers import RolloutPool
from rlkit.tiny_model import build_tokenizer
from tests.env_fixtures import TOOL_TEMPLATE, Counter

IM_END = 3
CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b": 4}}\n</tool_call>'
LP = -0.25


@pytest.fixture(scope="module")
def tok():
    t = build_tokenizer()
    t.chat_template = TOOL_TEMPLATE
    return t


class ScriptedEngine:
    """generate(): the reply is script(decoded context), then <|im_end|>; every token has log-prob LP."""

    def __init__(self, tokenizer, script, max_new: int | None = None):
        self.tokenizer, self.script, self.calls, self.max_new = tokenizer, script, [], max_new

    def generate(self, prompt_ids, seeds, params):
        self.calls.append((len(prompt_ids), list(seeds)))
        out = []
        for ids in prompt_ids:
            text = self.script(self.tokenizer.decode(ids, skip_special_tokens=False))
            toks = self.tokenizer(text, add_special_tokens=False).input_ids + [IM_END]
            cap = self.max_new or params.max_new_tokens
            finish = FINISH_STOP if len(toks) <= cap else FINISH_LENGTH
            toks = toks[:cap]
            out.append(Completion(token_ids=toks, logprobs=[LP] * len(toks), finish_reason=finish))
        return out


def call_then_answer(context: str) -> str:
    return "12" if "<tool_response>" in context else CALL


def item(prompt="3*4=", index=0, **columns):
    return PromptItem(index=index, prompt=prompt, prompt_ids=[], columns=columns, raw_prompt=prompt)


def tools_env(**kw):
    return build_environment("tools", {"tools": ["tests.env_fixtures:multiply"], "executor": "thread", **kw})


def enc(tok, text):
    return tok(text, add_special_tokens=False).input_ids


def test_episode_layout_masks_and_logprobs(tok):
    env = tools_env()
    runner = EpisodeRunner(env, tok)
    metrics = EpisodeMetrics()
    [comp] = runner.run(ScriptedEngine(tok, call_then_answer), [item()], [7], SamplingParams(200), metrics)
    prompt = "<|im_start|>system\nTools: multiply<|im_end|>\n<|im_start|>user\n3*4=<|im_end|>\n<|im_start|>assistant\n"
    inserted = "\n<|im_start|>user\n<tool_response>\n12\n</tool_response><|im_end|>\n<|im_start|>assistant\n"
    turn1, turn2 = enc(tok, CALL) + [IM_END], enc(tok, "12") + [IM_END]
    ins = enc(tok, inserted)
    assert comp.prompt_ids == enc(tok, prompt)
    assert comp.token_ids == turn1 + ins + turn2
    assert comp.model_mask == [True] * len(turn1) + [False] * len(ins) + [True] * len(turn2)
    assert comp.logprobs == [LP] * len(turn1) + [0.0] * len(ins) + [LP] * len(turn2)
    assert comp.finish_reason == FINISH_STOP
    rec = comp.episode
    assert (rec.turns, rec.stats.calls, rec.stats.errors, rec.finish, rec.answer) == (2, 1, 0, "stop", "12")
    assert rec.segments == [(True, len(turn1)), (False, len(ins)), (True, len(turn2))]
    assert [m["role"] for m in rec.messages] == ["user", "assistant", "tool", "assistant"]
    # model: 76-character call + <|im_end|> = 77, "12" + <|im_end|> = 3 -> 80; inserted: "\n" 1, <|im_start|> 1,
    # "user\n" 5, "<tool_response>\n" 16, "12\n" 3, "</tool_response>" 16, <|im_end|> 1, "\n" 1, <|im_start|> 1,
    # "assistant\n" 10 -> 55
    assert (metrics.model_tokens, metrics.env_tokens) == (len(turn1) + len(turn2), len(ins)) == (80, 55)
    env.close()


def test_batch_masks_and_loss_weights(tok):
    """Two episodes of one group: one calls the tool, one answers at once. Only model tokens carry loss weight."""
    env = tools_env()
    engine = ScriptedEngine(tok, lambda ctx: "7" if "5*5" in ctx else call_then_answer(ctx))
    comps = EpisodeRunner(env, tok).run(engine, [item(), item("5*5=", 1)], [1, 2], SamplingParams(200))
    pool = RolloutPool(prompts=[item(), item("5*5=", 1)], prompt_index=[0, 1], completions=comps,
                       round_index=[0, 0], rewards=[1.0, 0.0], success=[1.0, 0.0], components=[[1.0], [0.0]],
                       completion_texts=["12", "7"])
    batch = build_batch(pool, [0, 1], [0, 0], pad_id=0)
    assert batch.response_ids.shape == (2, 135)                    # 80 + 55 tokens; the second row is 2 long
    assert batch.response_mask.sum(-1).tolist() == [80, 2]        # model tokens only
    assert batch.token_mask.sum(-1).tolist() == [135, 2]          # every real token
    assert not (batch.response_mask & ~batch.token_mask).any()
    assert batch.prompt_ids[0] == comps[0].prompt_ids
    assert batch.lengths.tolist() == [80, 2]                      # ΔL and every aggregation count these
    coef, z = aggregation_plan(batch.lengths, "token_mean")
    assert z == 82.0                                              # token_mean: Z = 80 + 2 model tokens
    assert batch.rollout_logprobs[0][~batch.response_mask[0]].abs().sum() == 0
    env.close()


def test_masked_environment_tokens_stay_in_the_context(tok):
    """ops.build_inputs keeps tokens inside a response whose mask is False as context (position = prompt + t)."""
    from rlkit.ops import build_inputs
    ids = torch.tensor([[10, 11, 12, 13]])
    mask = torch.tensor([[True, False, False, True]])
    input_ids, attention, index = build_inputs([[5, 6]], ids, mask, pad_id=0)
    assert input_ids.tolist() == [[5, 6, 10, 11, 12, 13]]
    assert attention.tolist() == [[1] * 6]
    assert index.tolist() == [[1, 2, 3, 4]]                        # logit at prompt_len - 1 + t predicts token t


def test_turn_and_token_limits(tok):
    env = tools_env(max_turns=1)
    [comp] = EpisodeRunner(env, tok).run(ScriptedEngine(tok, call_then_answer), [item()], [0], SamplingParams(200))
    assert comp.episode.finish == "max_turns" and comp.finish_reason == FINISH_LENGTH
    assert comp.episode.stats.calls == 1 and all(comp.model_mask)  # the tool was not run, nothing inserted
    env.close()
    prompt_len = 48                       # 1 + "system\n" 7 + "Tools: multiply" 15 + 2 + 1 + "user\n" 5 + "3*4=" 4 + 2 + 1 + 10
    env = tools_env(max_total_tokens=prompt_len + 90)               # room for the 77-token call, not the 55 after
    [comp] = EpisodeRunner(env, tok).run(ScriptedEngine(tok, call_then_answer), [item()], [0], SamplingParams(200))
    assert len(comp.prompt_ids) == prompt_len
    assert comp.episode.finish == "length" and len(comp.token_ids) == 77 and all(comp.model_mask)
    env.close()


def test_turn_seeds_are_counter_based():
    assert turn_seed(123, 0) == 123
    assert len({turn_seed(123, k) for k in range(8)}) == 8
    assert turn_seed(123, 3) == turn_seed(123, 3)


def test_tool_errors_go_back_to_the_model(tok):
    env = build_environment("tools", {"tools": ["tests.env_fixtures:multiply", "tests.env_fixtures:add"],
                                      "executor": "thread", "max_tool_calls": 3})
    script = ('<tool_call>{"name": "nope", "arguments": {}}</tool_call><tool_call>{"name": "multiply", '
              '"arguments": {"a": 1}}</tool_call><tool_call>{oops</tool_call>'
              '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>')
    [comp] = EpisodeRunner(env, tok).run(ScriptedEngine(tok, lambda c: "done" if "tool_response" in c else script),
                                         [item()], [0], SamplingParams(400))
    tools = [m["content"] for m in comp.episode.messages if m["role"] == "tool"]
    assert tools[0].startswith("Error: unknown tool 'nope'; available tools: multiply, add")
    assert tools[1].startswith("Error: bad arguments for multiply: missing a required argument: 'b'")
    assert tools[2].startswith("Error: malformed tool call: invalid JSON")
    assert tools[3].startswith("Error: tool call limit")          # 4 calls, max_tool_calls = 3 ('add' is 4th)
    assert comp.episode.stats.calls == 4 and comp.episode.stats.errors == 4
    env.close()


def test_async_tool_runs(tok):
    env = build_environment("tools", {"tools": ["tests.env_fixtures:add"], "executor": "thread"})
    script = '<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
    [comp] = EpisodeRunner(env, tok).run(ScriptedEngine(tok, lambda c: "5" if "tool_response" in c else script),
                                         [item()], [0], SamplingParams(400))
    assert [m["content"] for m in comp.episode.messages if m["role"] == "tool"] == ["5"]
    env.close()


def test_hermes_parser():
    ok = hermes('x <tool_call>\n{"name": "f", "arguments": {"a": 1}}\n</tool_call> y')
    assert [(c.name, c.arguments) for c in ok.calls] == [("f", {"a": 1})] and not ok.errors
    unclosed = hermes('<tool_call>{"name": "f", "parameters": "{\\"a\\": 2}"}')
    assert [(c.name, c.arguments) for c in unclosed.calls] == [("f", {"a": 2})]
    assert hermes("just 12").has_calls is False
    bad = hermes('<tool_call>{"name": 3}</tool_call><tool_call>{"name": "f", "arguments": [1]}</tool_call>')
    assert len(bad.errors) == 2 and not bad.calls
    assert "string \"name\"" in bad.errors[0] and '"arguments" must be a JSON object' in bad.errors[1]


def test_canary_passes_token_exact_episodes_and_trips_on_retokenizing(tok):
    env = tools_env()
    runner = EpisodeRunner(env, tok)
    comps = runner.run(ScriptedEngine(tok, call_then_answer), [item(), item("6*7=", 1)], [0, 1], SamplingParams(200))
    report = check_drift(runner.renderer, comps, limit=4)
    assert (report.checked, report.drifted, report.share) == (2, 0, 0.0)

    class Retokenizing(ChatRenderer):   # the bug class: special tokens in inserted text tokenized as plain text
        def insertion_ids(self, messages, stop_text):
            return list(self.tokenizer(self.insertion(messages, stop_text), add_special_tokens=False,
                                       split_special_tokens=True).input_ids)

    bad = EpisodeRunner(env, tok, Retokenizing(tok, env.tool_schemas()))
    comps = bad.run(ScriptedEngine(tok, call_then_answer), [item()], [0], SamplingParams(200))
    report = check_drift(bad.renderer, comps, limit=4)
    assert (report.checked, report.drifted) == (1, 1)
    assert "at token 126" in report.example        # 48 prompt + 77 model tokens + the "\n", then "<|im_start|>" split
    with pytest.raises(TokenDriftError, match="1 of 1 checked episodes"):
        enforce(report, max_token_drift=0.5)
    enforce(report, max_token_drift=1.0)                              # 1.0 = never stop
    env.close()


def test_trl_class_adapter(tok, tmp_path):
    env = build_environment("tests.env_fixtures:Counter", {"max_turns": 3})
    assert env.reward_name == "Counter" and [s["function"]["name"] for s in env.tool_schemas()] == \
        ["increment", "read"]

    def script(ctx: str) -> str:
        if ctx.count("<tool_response>") == 0:
            return '<tool_call>{"name": "increment", "arguments": {"by": 2}}</tool_call>'
        if ctx.count("<tool_response>") == 1:
            return '<tool_call>{"name": "read", "arguments": {}}</tool_call>'
        return "done"
    before = Counter.instances
    items = [item("count", 0, target=2), item("count", 1, target=5)]
    comps = EpisodeRunner(env, tok).run(ScriptedEngine(tok, script), items, [0, 1], SamplingParams(200))
    assert Counter.instances - before == 2                          # one instance per episode
    assert [c.episode.env_reward for c in comps] == [1.0, 0.0]       # both reached 2; only the first wanted 2
    assert comps[0].episode.messages[0]["content"] == "count\n\nReach 2."   # reset text after the user message
    assert [m["content"] for m in comps[1].episode.messages if m["role"] == "tool"] == ["2", "2"]
    env.close()


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="tool 'undocumented' cannot be described.*docstring"):
        build_environment("tools", {"tools": ["tests.env_fixtures:undocumented"]})
    with pytest.raises(ValueError, match="NoReset has no reset method"):
        build_environment("tests.env_fixtures:NoReset", {})
    with pytest.raises(PluginError, match="unknown option 'max_turn'.*did you mean 'max_turns'"):
        build_environment("tools", {"tools": ["tests.env_fixtures:multiply"], "max_turn": 2})
    with pytest.raises(PluginError, match="unknown option 'max_turn'"):
        build_environment("tests.env_fixtures:Counter", {"max_turn": 2})
    with pytest.raises(ValueError, match="two tools are named 'multiply'"):
        build_environment("tools", {"tools": ["tests.env_fixtures:multiply", "tests.env_fixtures:multiply"]})
    with pytest.raises(ValueError, match="max_turns must be an integer >= 1"):
        build_environment("tools", {"tools": ["tests.env_fixtures:multiply"], "max_turns": 0})
    with pytest.raises(PluginError, match="unknown tool_parser 'hermez'.*did you mean 'hermes'"):
        build_environment("tools", {"tools": ["tests.env_fixtures:multiply"], "parser": "hermez"})
    with pytest.raises(PluginError, match="unknown environment 'tool'.*did you mean 'tools'"):
        build_environment("tool", {})


def test_template_without_tools_is_refused():
    plain = build_tokenizer(chat_template=True)
    plain.chat_template = ("{%- for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                           "'<|im_end|>\\n' }}{%- endfor %}{%- if add_generation_prompt %}"
                           "{{ '<|im_start|>assistant\\n' }}{%- endif %}")
    env = tools_env()
    with pytest.raises(TemplateError, match=r"ignores `tools`: tool\(s\) \['multiply'\]"):
        ChatRenderer(plain, env.tool_schemas()).check({"role": "tool", "name": "x", "content": "1"})
    with pytest.raises(TemplateError, match="need a tokenizer with a chat template"):
        ChatRenderer(build_tokenizer(), None)
    env.close()


def test_single_turn_is_not_multi_turn():
    env = build_environment("single_turn", {})
    assert env.multi_turn is False and env.reward_name is None
    assert not math.isnan(0.0) and isinstance(RolloutBatch, type)


def test_process_tools_time_out_and_the_episode_goes_on(tok):
    """A hung tool in the process executor is killed at tool_timeout_s; the model reads the error and answers."""
    env = build_environment("tools", {"tools": ["tests.env_fixtures:sleepy", "tests.env_fixtures:multiply"],
                                      "tool_timeout_s": 1.0, "workers": 2})
    hang = ('<tool_call>{"name": "sleepy", "arguments": {"seconds": 120}}</tool_call>'
            '<tool_call>{"name": "multiply", "arguments": {"a": 6, "b": 7}}</tool_call>')
    runner = EpisodeRunner(env, tok)
    metrics = EpisodeMetrics()
    [comp] = runner.run(ScriptedEngine(tok, lambda c: "42" if "tool_response" in c else hang), [item()], [0],
                        SamplingParams(400), metrics)
    tools = [m["content"] for m in comp.episode.messages if m["role"] == "tool"]
    assert tools[0].startswith("Error:") and "timeout" in tools[0].lower()
    assert tools[1] == "42"
    assert (metrics.stats.calls, metrics.stats.errors, metrics.stats.timeouts) == (2, 1, 1)
    assert comp.episode.answer == "42" and comp.episode.finish == "stop"
    env.close()


def test_builtin_python_tool_runs_in_a_worker(tok):
    env = build_environment("tools", {"tools": ["python"], "tool_timeout_s": 20.0})
    assert env.tool_schemas()[0]["function"]["parameters"]["properties"]["code"]["type"] == "string"
    code = '<tool_call>{"name": "python", "arguments": {"code": "print(6 * 7)"}}</tool_call>'
    [comp] = EpisodeRunner(env, tok).run(ScriptedEngine(tok, lambda c: "42" if "tool_response" in c else code),
                                         [item()], [0], SamplingParams(400))
    assert [m["content"].strip() for m in comp.episode.messages if m["role"] == "tool"] == ["42"]
    env.close()


def test_validate_checks_the_chat_template_without_a_model(tiny_model_dir, arith_data, tmp_path):
    """`rlkit validate` (check_recipe with files) renders the tools with the tokenizer: no template -> clear error."""
    from rlkit.config import load_config
    from rlkit.session import check_recipe
    from tests.conftest import recipe_dict
    c = recipe_dict(tiny_model_dir, arith_data, tmp_path / "run")
    c["environment"] = {"name": "tools", "tools": ["tests.env_fixtures:multiply"], "executor": "thread"}
    with pytest.raises(TemplateError, match="need a tokenizer with a chat template"):
        check_recipe(load_config(None, [], base=c))
    c["environment"] = {"name": "single_turn"}
    c["reward"] = {"functions": []}
    with pytest.raises(ValueError, match="reward.functions is empty and the environment 'single_turn' has no reward"):
        check_recipe(load_config(None, [], base=c))
