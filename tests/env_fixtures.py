"""Tools and environment classes for the environment tests (importable, so tool worker processes can load them)."""

from __future__ import annotations

import time

# A Qwen2.5-style ChatML template with tools (compact tool list) and grouped tool messages, for the byte tokenizer.
TOOL_TEMPLATE = (
    "{%- if tools %}{{ '<|im_start|>system\\nTools: ' }}{%- for t in tools %}{{ t['function']['name'] }}"
    "{%- if not loop.last %}{{ ', ' }}{%- endif %}{%- endfor %}{{ '<|im_end|>\\n' }}{%- endif %}"
    "{%- for m in messages %}"
    "{%- if m['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user' }}{%- endif %}"
    "{{ '\\n<tool_response>\\n' + m['content'] + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\\n' }}{%- endif %}"
    "{%- else %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: the first factor
        b: the second factor
    """
    return a * b


async def add(a: int, b: int) -> int:
    """Add two integers (an async tool).

    Args:
        a: the first term
        b: the second term
    """
    return a + b


def sleepy(seconds: float) -> str:
    """Sleep, then answer.

    Args:
        seconds: how long to sleep
    """
    time.sleep(seconds)
    return "awake"


def undocumented(a: int) -> int:
    return a


class Counter:
    """A TRL-style environment: ``reset`` names the target, two tools, ``get_reward`` = 1 when the target was hit."""

    instances = 0

    def __init__(self):
        Counter.instances += 1
        self.value, self.target = 0, None

    def reset(self, **row) -> str:
        self.target = int(row.get("target", 0))
        return f"Reach {self.target}."

    def increment(self, by: int) -> str:
        """Add to the counter.

        Args:
            by: amount to add
        """
        self.value += by
        return str(self.value)

    def read(self) -> str:
        """Read the counter."""
        return str(self.value)

    def get_reward(self) -> float:
        return 1.0 if self.value == self.target else 0.0


class NoReset:
    def move(self, to: str) -> str:
        """Move.

        Args:
            to: where
        """
        return to


FORCED_CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 3, "b": 4}}\n</tool_call>'


def _forced_engine_class():
    from rlkit.rollout import FINISH_STOP, Completion
    from rlkit.rollout.hf import HFEngine

    class ForcedFirstCall(HFEngine):
        """``rollout.engine: tests/env_fixtures.py:ForcedFirstCall`` -- the hf engine, except that the first turn
        of every episode is a fixed multiply call (log-prob -1 per token), so random tiny models run multi-turn
        episodes through the whole trainer."""

        def generate(self, prompt_ids, seeds, params):
            out = HFEngine.generate(self, prompt_ids, seeds, params)
            call = self.tokenizer(FORCED_CALL, add_special_tokens=False).input_ids + [3]   # + <|im_end|>
            for i, ids in enumerate(prompt_ids):
                if "<tool_response>" not in self.tokenizer.decode(ids, skip_special_tokens=False):
                    out[i] = Completion(token_ids=list(call), logprobs=[-1.0] * len(call), finish_reason=FINISH_STOP)
            return out
    return ForcedFirstCall


def __getattr__(name: str):   # built lazily: importing this module must not import torch (tool workers load it)
    if name == "ForcedFirstCall":
        return _forced_engine_class()
    raise AttributeError(name)


def tool_tiny_model(out_dir):
    """The tiny model with a tool-aware chat template whose turns end at <|im_end|> (eos ids [1, 3])."""
    from transformers import AutoTokenizer, GenerationConfig

    from rlkit.tiny_model import build_tiny_model
    path = build_tiny_model(out_dir, size="tiny", seed=0, chat_template=True)
    tok = AutoTokenizer.from_pretrained(path)
    tok.chat_template = TOOL_TEMPLATE
    tok.save_pretrained(path)
    GenerationConfig(pad_token_id=0, eos_token_id=[1, 3], bos_token_id=1).save_pretrained(path)
    return path
