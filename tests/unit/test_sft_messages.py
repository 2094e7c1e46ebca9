"""rlkit.sft on conversations: the loss mask covers exactly the assistant turns + their <|im_end|>."""

import json

import pytest
import torch

from rlkit.sft import SFTConfig, assistant_spans, encode_conversation, run_sft, tool_schemas
from rlkit.tasks.tool_multiply import teacher_messages
from rlkit.tiny_model import build_tiny_model, build_tokenizer

TOOLS = ["rlkit.tasks.tool_multiply:multiply"]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(chat_template=True)


def _runs(ids, mask):
    """Contiguous runs of trained positions as (start, end) pairs."""
    runs, start = [], None
    for i, m in enumerate(mask + [False]):
        if m and start is None:
            start = i
        if not m and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_mask_of_a_tool_conversation(tok):
    ids, mask = encode_conversation(tok, teacher_messages(37, 52, True), tool_schemas(TOOLS))
    # one token per byte/special token:
    #   <|im_start|> system\n(7) "Tools: multiply(a, b)"(21) <|im_end|> \n            = 31
    #   <|im_start|> user\n(5) 37*52=(6) <|im_end|> \n                                 = 14 -> 45
    #   <|im_start|> assistant\n(10)                                                    = 11 -> 56 context
    #   <tool_call>\n(12) {"name": "multiply", "arguments": {"a": 37, "b": 52}}(53) \n</tool_call>(13)
    #   <|im_end|>                                                                      = 79 -> 135 trained
    #   \n <|im_start|> user\n(5) <tool_response>\n(16) 1924\n(5) </tool_response>(16) <|im_end|> \n
    #   <|im_start|> assistant\n(10)                                                    = 57 -> 192 context
    #   1924 <|im_end|>                                                                 =  5 -> 197 trained
    #   \n                                                                              =  1 -> 198 context
    assert len(ids) == 198 and _runs(ids, mask) == [(56, 135), (192, 197)]
    call = '<tool_call>\n' + json.dumps({"name": "multiply", "arguments": {"a": 37, "b": 52}}) + '\n</tool_call>'
    assert tok.decode(ids[56:135]) == call + "<|im_end|>"
    assert tok.decode(ids[192:197]) == "1924<|im_end|>"
    assert tok.decode(ids[:56]).endswith("37*52=<|im_end|>\n<|im_start|>assistant\n")


def test_mask_of_a_direct_answer_and_errors(tok):
    ids, mask = encode_conversation(tok, teacher_messages(37, 52, False), None)   # no tools: no system block
    assert _runs(ids, mask) == [(25, 30)] and tok.decode(ids[25:30]) == "1900<|im_end|>"
    with pytest.raises(ValueError, match="starts with an assistant"):
        assistant_spans(tok, [{"role": "assistant", "content": "1"}], None)
    with pytest.raises(ValueError, match="no assistant message"):
        assistant_spans(tok, [{"role": "user", "content": "1"}], None)
    rewriting = build_tokenizer(chat_template=(                 # drops earlier assistant turns: not prefix-stable
        "{%- for m in messages %}{%- if m['role'] != 'assistant' or loop.last %}"
        "{{ m['role'] + ':' + m['content'] + '<|im_end|>' }}{%- endif %}{%- endfor %}"
        "{%- if add_generation_prompt %}{{ 'assistant:' }}{%- endif %}"))
    with pytest.raises(ValueError, match="not prefix-stable"):
        encode_conversation(rewriting, teacher_messages(37, 52, True), None)
    with pytest.raises(ValueError, match="not a function"):
        tool_schemas(["rlkit.tasks.tool_multiply:DATA_SOURCE"])


def _nll(model_dir, rows, tools):
    from transformers import AutoModelForCausalLM
    from rlkit.forward import token_logprobs
    from rlkit.ops import right_pad
    model, tok = AutoModelForCausalLM.from_pretrained(model_dir), build_tokenizer(chat_template=True)
    enc = [encode_conversation(tok, m, tools) for m in rows]
    firsts = [mask.index(True) for _, mask in enc]
    ids, _ = right_pad([i[f:] for (i, _), f in zip(enc, firsts)], 0)                       # [n, T]
    mask, _ = right_pad([m[f:] for (_, m), f in zip(enc, firsts)], False, dtype=torch.bool)  # [n, T]
    with torch.no_grad():
        logprobs, _ = token_logprobs(model, [i[:f] for (i, _), f in zip(enc, firsts)], ids, mask, pad_id=0)
    return float(-(logprobs.sum() / mask.sum()))


@pytest.mark.slow          # ~9 s warm, up to ~30 s on a busy 2-core machine
def test_short_sft_run_lowers_the_loss(tmp_path):
    from rlkit.tasks import write_task
    init = build_tiny_model(tmp_path / "init", tools=True)
    train = write_task("tool_multiply", tmp_path / "data", train=64, eval=0, seed=0)["train"]
    rows = [json.loads(line)["teacher_messages"] for line in train.read_text().splitlines()]
    rows = [[{k: v for k, v in m.items() if v is not None} for m in conv] for conv in rows]
    out = run_sft(SFTConfig(model=str(init), data=str(train), output=str(tmp_path / "sft"), steps=30,
                            batch_size=8, lr=3e-3, warmup_steps=5, messages_column="teacher_messages",
                            tools=TOOLS))
    tools = tool_schemas(TOOLS)
    before, after = _nll(init, rows, tools), _nll(out, rows, tools)
    assert after < 0.5 * before, (before, after)          # random init: ~ln(320) = 5.8 nats per token


def test_tools_need_messages(tmp_path):
    init = build_tiny_model(tmp_path / "init", tools=True)
    with pytest.raises(ValueError, match="add --messages-column"):
        run_sft(SFTConfig(model=str(init), data=str(tmp_path / "x.jsonl"), output=str(tmp_path / "o"),
                          tools=TOOLS))
