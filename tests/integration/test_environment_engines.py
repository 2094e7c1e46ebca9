"""Multi-turn episodes on the real engines (transformers generate and vLLM's CPU build), continued from token ids.

The first turn of every episode is a forced multiply call, the second is sampled by the engine *after* the
inserted tool result; the engine's sampling log-probs of that turn must equal the trainer's log-probs of the same
tokens computed over the whole episode (inserted tokens as context) -- which holds only if the engine really
continued from the exact token sequence the trainer trains on.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkit.data import PromptItem
from rlkit.environments.build import build_environment
from rlkit.environments.runner import EpisodeRunner
from rlkit.forward import token_logprobs
from rlkit.rollout import FINISH_STOP, Completion, SamplingParams
from tests.env_fixtures import FORCED_CALL, tool_tiny_model

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
needs_vllm = pytest.mark.skipif(importlib.util.find_spec("vllm") is None, reason="vllm not installed")


class Forced:
    """Wraps an engine: an episode's first turn is FORCED_CALL, later turns come from the wrapped engine."""

    def __init__(self, engine, tokenizer):
        self.engine, self.tok = engine, tokenizer
        self.call = tokenizer(FORCED_CALL, add_special_tokens=False).input_ids + [3]

    def generate(self, prompt_ids, seeds, params):
        later = [i for i, ids in enumerate(prompt_ids)
                 if "<tool_response>" in self.tok.decode(ids, skip_special_tokens=False)]
        out = [Completion(list(self.call), [-1.0] * len(self.call), FINISH_STOP) for _ in prompt_ids]
        for i, comp in zip(later, self.engine.generate([prompt_ids[i] for i in later], [seeds[i] for i in later],
                                                       params) if later else []):
            out[i] = comp
        return out


@pytest.fixture(scope="module")
def tool_model(tmp_path_factory):
    path = tool_tiny_model(tmp_path_factory.mktemp("toolmodel") / "model")
    return path, AutoModelForCausalLM.from_pretrained(path), AutoTokenizer.from_pretrained(path)


def run_and_compare(engine, model, tok) -> float:
    env = build_environment("tools", {"tools": ["tests.env_fixtures:multiply"], "max_turns": 2, "executor": "thread"})
    items = [PromptItem(index=i, prompt=p, prompt_ids=[], raw_prompt=p) for i, p in
             enumerate(["3*4=", "12*9=", "7*7=", "40*2="] * 2)]
    comps = EpisodeRunner(env, tok).run(Forced(engine, tok), items, list(range(8)), SamplingParams(12, 1.0))
    env.close()
    assert all(c.episode.turns == 2 and c.episode.stats.calls == 1 for c in comps)
    T = max(len(c.token_ids) for c in comps)
    ids, second, engine_lp = (torch.zeros(8, T, dtype=torch.long), torch.zeros(8, T, dtype=torch.bool),
                              torch.zeros(8, T))
    for i, c in enumerate(comps):
        start = c.episode.segments[0][1] + c.episode.segments[1][1]      # after the forced call and the tool result
        ids[i, :len(c.token_ids)] = torch.tensor(c.token_ids)
        second[i, start:len(c.token_ids)] = True
        engine_lp[i, :len(c.token_ids)] = torch.tensor(c.logprobs)
        assert all(c.model_mask[start:]) and not any(c.model_mask[c.episode.segments[0][1]:start])
    with torch.no_grad():
        lp, _ = token_logprobs(model, [c.prompt_ids for c in comps], ids, second, pad_id=tok.pad_token_id)
    return (lp - engine_lp).abs()[second].mean().item()


def test_hf_engine_continues_episodes(tool_model):
    from rlkit.rollout.hf import HFEngine
    _, model, tok = tool_model
    assert run_and_compare(HFEngine(model, tok), model, tok) < 1e-4


@needs_vllm
@pytest.mark.vllm
def test_vllm_engine_continues_episodes(tool_model):
    from rlkit.rollout.vllm_engine import VLLMEngine
    path, model, tok = tool_model
    engine = VLLMEngine(model, tok, model_path=str(path), max_model_len=512)
    try:
        diff = run_and_compare(engine, model, tok)
    finally:
        engine.close()
    assert diff < 1e-3, f"vLLM vs trainer mean |logprob diff| on second turns: {diff}"
