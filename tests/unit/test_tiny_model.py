"""rlkit.tiny_model: a locally built model + tokenizer that load through the Auto classes."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from rlkit.tiny_model import build_tiny_model, parameter_count

TEXT = "12+35=47\n  Hello, world! ~{}\t"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), chat_template=True)


def test_loads_and_forwards(tiny_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()
    assert model.dtype == torch.float32 and model.config.tie_word_embeddings
    assert model.config.vocab_size == len(tok) == 320   # 5 special + 256 bytes + 59 reserved = 5 * 64
    # 128*320 embedding + 4 layers * (q 128*128+128, k/v 2*(128*64+64), o 128*128, mlp 3*128*512, 2 norms 128)
    # + final norm 128 = 40960 + 4*246272 + 128
    assert parameter_count(model) == 40960 + 4 * 246272 + 128 == 1_026_176


def test_tokenizer_round_trip_and_special_tokens(tiny_dir):
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    for text in (TEXT, "caf\u00e9 \u4e2d", "  a  b  "):
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert len(tok.encode("12+35=", add_special_tokens=False)) == 6          # one token per character
    assert tok.encode("<|im_end|>1", add_special_tokens=False) == [3, 5 + ord("1")]
    assert (tok.pad_token, tok.eos_token, tok.pad_token_id, tok.eos_token_id) == ("<|pad|>", "<|endoftext|>", 0, 1)
    assert tok.decode([5 + ord("4"), 1, 300], skip_special_tokens=True) == "4"
    chat = tok.apply_chat_template([{"role": "user", "content": "1+2="}], add_generation_prompt=True,
                                   tokenize=False)
    assert chat == "<|im_start|>user\n1+2=<|im_end|>\n<|im_start|>assistant\n"


def test_generation_config_and_determinism(tiny_dir, tmp_path):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (1, 0)
    state = torch.random.get_rng_state()
    again = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "again", chat_template=True))
    assert torch.equal(state, torch.random.get_rng_state())   # caller's RNG untouched
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "other", seed=1))
    w = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(model.state_dict()[w], again.state_dict()[w])
    assert not torch.equal(model.state_dict()[w], other.state_dict()[w])


def test_llama_arch(tmp_path):
    path = build_tiny_model(tmp_path, arch="llama")
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "llama" and tok.chat_template is None
    assert tok.decode(tok.encode(TEXT, add_special_tokens=False)) == TEXT
    assert parameter_count(model) == 1_025_152                     # qwen2 minus the q/k/v biases 4*256
    assert model(torch.tensor([[5, 6, 7]])).logits.shape == (1, 3, 320)


def test_small_size(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path, size="small"))
    assert model.config.hidden_size // model.config.num_attention_heads == 64
    assert 10_000_000 <= parameter_count(model) <= 14_000_000
    assert parameter_count(model) == 11_969_024


@pytest.mark.parametrize("kw, bad", [({"size": "huge"}, "huge"), ({"arch": "gpt2"}, "gpt2")])
def test_bad_choice(tmp_path, kw, bad):
    with pytest.raises(ValueError, match=f"'{bad}'.*valid values"):
        build_tiny_model(tmp_path, **kw)


# --- chat template with tools ----------------------------------------------------------------------------------

CALL = '<tool_call>\n{"name": "multiply", "arguments": {"a": 37, "b": 52}}\n</tool_call>'
EPISODE = [{"role": "user", "content": "37*52="}, {"role": "assistant", "content": CALL},
           {"role": "tool", "name": "multiply", "content": "1924"}, {"role": "assistant", "content": "1924"}]


def multiply(a: int, b: int) -> int:
    """Multiply two integers.

    Args:
        a: The first factor.
        b: The second factor.
    """
    return a * b


@pytest.fixture(scope="module")
def chat_tok():
    from rlkit.tiny_model import build_tokenizer
    return build_tokenizer(chat_template=True)


def _render(tok, messages, **kw):
    return tok.apply_chat_template(messages, tokenize=False, **kw)


def test_plain_conversation_unchanged(chat_tok):
    # the pre-tools template: "<|im_start|>{role}\n{content}<|im_end|>\n" per message, then the generation prompt
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+2="},
                {"role": "assistant", "content": "3"}, {"role": "user", "content": "2+2="}]
    assert _render(chat_tok, messages, add_generation_prompt=True) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n1+2=<|im_end|>\n"
        "<|im_start|>assistant\n3<|im_end|>\n<|im_start|>user\n2+2=<|im_end|>\n<|im_start|>assistant\n")
    assert _render(chat_tok, messages[1:3]) == "<|im_start|>user\n1+2=<|im_end|>\n<|im_start|>assistant\n3<|im_end|>\n"


def test_tool_line_and_tool_message(chat_tok):
    from transformers.utils import get_json_schema
    text = _render(chat_tok, EPISODE, tools=[multiply])
    assert text == ("<|im_start|>system\nTools: multiply(a, b)<|im_end|>\n<|im_start|>user\n37*52=<|im_end|>\n"
                    f"<|im_start|>assistant\n{CALL}<|im_end|>\n"
                    "<|im_start|>user\n<tool_response>\n1924\n</tool_response><|im_end|>\n"
                    "<|im_start|>assistant\n1924<|im_end|>\n")
    assert _render(chat_tok, EPISODE, tools=[get_json_schema(multiply)]) == text       # schema dicts too
    add = {"type": "function", "function": {"name": "add", "parameters": {"properties": {"x": {}, "y": {}}}}}
    system = [{"role": "system", "content": "Be brief."}, EPISODE[0]]
    assert _render(chat_tok, system, tools=[multiply, add]).startswith(
        "<|im_start|>system\nBe brief.\nTools: multiply(a, b); add(x, y)<|im_end|>\n<|im_start|>user\n")


def test_consecutive_tool_messages_share_one_block(chat_tok):
    messages = EPISODE[:2] + [{"role": "tool", "content": "1924"}, {"role": "tool", "content": "7"},
                              {"role": "user", "content": "ok"}]
    assert _render(chat_tok, messages).endswith(
        f"{CALL}<|im_end|>\n<|im_start|>user\n<tool_response>\n1924\n</tool_response>\n"
        "<tool_response>\n7\n</tool_response><|im_end|>\n<|im_start|>user\nok<|im_end|>\n")


def test_structured_tool_calls(chat_tok):
    calls = [{"type": "function", "function": {"name": "multiply", "arguments": {"a": 37, "b": 52}}},
             {"type": "function", "function": {"name": "multiply", "arguments": '{"a": 1, "b": 2}'}}]
    one = [EPISODE[0], {"role": "assistant", "content": None, "tool_calls": calls[:1]}]
    assert _render(chat_tok, one, tools=[multiply]) == _render(chat_tok, EPISODE[:2], tools=[multiply])
    two = [EPISODE[0], {"role": "assistant", "content": "Let me call.", "tool_calls": calls}]
    assert _render(chat_tok, two).endswith(
        '<|im_start|>assistant\nLet me call.\n' + CALL + '\n<tool_call>\n{"name": "multiply", "arguments": '
        '{"a": 1, "b": 2}}\n</tool_call><|im_end|>\n')


def test_prefix_stable(chat_tok):
    for tools in (None, [multiply]):
        short = _render(chat_tok, EPISODE[:2], tools=tools)
        longer = _render(chat_tok, EPISODE[:3], tools=tools, add_generation_prompt=True)
        assert longer.startswith(short)
        assert longer[len(short):] == ("<|im_start|>user\n<tool_response>\n1924\n</tool_response><|im_end|>\n"
                                       "<|im_start|>assistant\n")
        assert _render(chat_tok, EPISODE, tools=tools).startswith(longer)


def test_tools_model_stops_at_im_end(tmp_path):
    from rlkit.cli import main
    assert main(["tiny-model", str(tmp_path / "t"), "--tools"]) == 0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "t")
    tok = AutoTokenizer.from_pretrained(tmp_path / "t")
    assert model.generation_config.eos_token_id == [1, 3] and tok.convert_ids_to_tokens(3) == "<|im_end|>"
    assert tok.eos_token_id == 1 and "Tools: multiply(a, b)" in _render(tok, EPISODE, tools=[multiply])
    plain = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "p", chat_template=True))
    assert plain.generation_config.eos_token_id == 1                    # unchanged without tools
