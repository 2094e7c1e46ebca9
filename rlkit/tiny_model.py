"""Build a tiny, randomly initialised causal LM and a byte-level tokenizer, entirely offline.

Tests, the quickstart and CI have no model hub, so ``build_tiny_model(out_dir)`` writes a Hugging Face
folder that ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` (and vLLM's CPU
backend) load like any downloaded checkpoint.

Tokenizer: one token per byte, so ``decode(encode(s)) == s`` for any text (ASCII is one character per
token). It is a byte-level BPE with *no merges* over the 256-character GPT-2 byte alphabet rather than a
WordLevel model over printable ASCII: transformers 5 forces ``Qwen2Tokenizer`` on ``model_type: qwen2``
checkpoints (``MODELS_WITH_INCORRECT_HUB_TOKENIZER_CLASS``), which rebuilds a byte-level BPE from the vocab
and merges and would drop a WordLevel pre-tokenizer/decoder (spaces vanished). A merge-free byte-level BPE
tokenizes identically whether it is loaded as ``Qwen2Tokenizer`` (qwen2, also in vLLM) or as the saved
``tokenizer.json`` (llama). Ids: special tokens first -- ``<|pad|>`` 0 (pad), ``<|endoftext|>`` 1 (eos;
also the config's bos, but no BOS is ever added), ``<|im_start|>`` 2, ``<|im_end|>`` 3, ``<|unk|>`` 4
(kept for tools that expect one; never produced, every byte has a token) -- then byte ``b`` at id
``5 + b`` (e.g. ``"0"`` = 53, ``"="`` = 66, ``"\\n"`` = 15), then special ``<|reserved_k|>`` tokens up to
a multiple of 64. So ``len(tokenizer) == config.vocab_size == 320``, and every id the model can sample
decodes (reserved ids are never produced by encoding and are dropped by ``skip_special_tokens=True``).
``chat_template=True`` adds a minimal ChatML template (``<|im_start|>user\\n...<|im_end|>\\n`` and, with
``add_generation_prompt``, ``<|im_start|>assistant\\n``), the same template that understands tools (below); the
tokenizer's eos stays the single id of ``<|endoftext|>``.

Tools (Hermes / Qwen2.5 tool-call format, compact for 512 positions): with ``apply_chat_template(...,
tools=[...])`` a first system block lists each tool as ``name(param, ...)`` from its JSON schema (inside the
conversation's own system message, after its content, when there is one)::

    <|im_start|>system\\nTools: multiply(a, b)<|im_end|>\\n

Consecutive ``tool`` messages share one user block (responses joined by ``\\n``)::

    <|im_start|>user\\n<tool_response>\\n1924\\n</tool_response><|im_end|>\\n

Assistant content renders verbatim (a model writes its ``<tool_call>\\n{"name": ..., "arguments": ...}\\n
</tool_call>`` itself); structured ``tool_calls`` (TRL/OpenAI style) render as such blocks, joined by ``\\n``,
after any content. The template is prefix-stable: appending messages never changes the text of earlier ones
(except that a tool message joins the block of the tool message before it). Without tools, tool messages and
``tool_calls`` the output is the plain ChatML one, byte for byte. ``build_tiny_model(..., tools=True)``
(``rlkit tiny-model DIR --tools``) adds the template and ends generation at ``<|im_end|>`` as well:
``generation_config.eos_token_id == [1, 3]``.

Models (float32 safetensors, deterministic for a seed; head_dim 32 or 64 so vLLM's CPU backend runs them):

======  ======  ======  =====  ========  ============  =======  ==========================
size    hidden  layers  heads  kv heads  intermediate  max pos  parameters (qwen2 / llama)
======  ======  ======  =====  ========  ============  =======  ==========================
tiny    128     4       4      2         512           512      1,026,176 / 1,025,152
small   512     4       8      4         1408          1024     11,969,024 / 11,964,928
======  ======  ======  =====  ========  ============  =======  ==========================
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedModel,
                          PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM)

PAD, EOS, IM_START, IM_END, UNK = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|unk|>"
SPECIAL_TOKENS = [PAD, EOS, IM_START, IM_END, UNK]
VOCAB_MULTIPLE = 64

# ChatML, extended for tools (module docstring). Without ``tools`` and without ``tool`` messages or assistant
# ``tool_calls`` it renders exactly ``<|im_start|>{role}\n{content}<|im_end|>\n`` per message.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(tools='') %}"
    "{%- for tool in tools or [] %}"
    "{%- set fn = tool['function'] if tool['function'] is defined else tool %}"
    "{%- set params = fn['parameters']['properties'].keys() | list "
    "if fn['parameters'] is defined and fn['parameters']['properties'] is defined else [] %}"
    "{%- set ns.tools = ns.tools + ('; ' if ns.tools else 'Tools: ') + fn['name'] + '(' "
    "+ params | join(', ') + ')' %}"
    "{%- endfor %}"
    "{%- if ns.tools %}"
    "{%- if messages and messages[0]['role'] == 'system' %}"
    "{{ '<|im_start|>system\\n' + messages[0]['content'] + '\\n' + ns.tools + '<|im_end|>\\n' }}"
    "{%- else %}{{ '<|im_start|>system\\n' + ns.tools + '<|im_end|>\\n' }}{%- endif %}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if loop.first and ns.tools and message['role'] == 'system' %}"
    "{%- elif message['role'] == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}{{ '<|im_start|>user\\n' }}"
    "{%- else %}{{ '\\n' }}{%- endif %}"
    "{{ '<tool_response>\\n' + message['content'] | string + '\\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}{{ '<|im_end|>\\n' }}{%- endif %}"
    "{%- elif message['role'] == 'assistant' and message['tool_calls'] is defined and message['tool_calls'] %}"
    "{{ '<|im_start|>assistant\\n' + (message['content'] or '') }}"
    "{%- for call in message['tool_calls'] %}"
    "{%- set call = call['function'] if call['function'] is defined else call %}"
    "{%- set args = call['arguments'] if call['arguments'] is string else call['arguments'] | tojson %}"
    "{{ ('\\n' if message['content'] or not loop.first else '') + '<tool_call>\\n{\"name\": ' "
    "+ call['name'] | tojson + ', \"arguments\": ' + args + '}\\n</tool_call>' }}"
    "{%- endfor %}"
    "{{ '<|im_end|>\\n' }}"
    "{%- else %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 intermediate_size=512, max_position_embeddings=512),
    "small": dict(hidden_size=512, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
                  intermediate_size=1408, max_position_embeddings=1024),
}
ARCHS = {"qwen2": (Qwen2Config, Qwen2ForCausalLM), "llama": (LlamaConfig, LlamaForCausalLM)}


def byte_alphabet() -> list[str]:
    """GPT-2 byte-level alphabet: the printable character standing for each byte 0..255, in byte order."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    shifted = iter(range(256, 512))
    return [chr(b) if b in keep else chr(next(shifted)) for b in range(256)]


def build_tokenizer(chat_template: bool | str = False) -> PreTrainedTokenizerFast:
    """The byte-level, one-token-per-byte tokenizer described in the module docstring.

    ``chat_template``: False = none, True = ``CHAT_TEMPLATE`` (ChatML with tool support), a string = that Jinja
    template.
    """
    n_reserved = -(len(SPECIAL_TOKENS) + 256) % VOCAB_MULTIPLE
    reserved = [f"<|reserved_{k}|>" for k in range(n_reserved)]
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + byte_alphabet() + reserved)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS + reserved)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                      bos_token=None, padding_side="right", clean_up_tokenization_spaces=False)
    if chat_template:
        wrapped.chat_template = chat_template if isinstance(chat_template, str) else CHAT_TEMPLATE
    return wrapped


def _check_choice(what: str, value: str, valid: dict) -> None:
    if value not in valid:
        raise ValueError(f"unknown tiny-model {what} '{value}'; valid values: {', '.join(valid)}")


def build_tiny_model(out_dir: str | Path, *, size: str = "tiny", arch: str = "qwen2", seed: int = 0,
                     chat_template: bool | str = False, tools: bool = False) -> Path:
    """Write a random ``size``/``arch`` causal LM plus tokenizer to ``out_dir``; return the folder.

    ``tools=True`` implies the chat template (unless ``chat_template`` is a string) and makes generation stop at
    ``<|im_end|>`` too: ``generation_config.eos_token_id = [<|endoftext|>, <|im_end|>]`` (ids 1 and 3).
    """
    _check_choice("size", size, SIZES)
    _check_choice("arch", arch, ARCHS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(chat_template or tools)
    tokenizer.model_max_length = SIZES[size]["max_position_embeddings"]
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.eos_token_id)
    config_cls, model_cls = ARCHS[arch]
    config = config_cls(vocab_size=len(tokenizer), tie_word_embeddings=True, **SIZES[size], **ids)
    config.dtype = torch.float32
    with torch.random.fork_rng(devices=[]):  # seed the init without touching the caller's RNG
        torch.manual_seed(seed)
        model = model_cls(config).to(torch.float32)
    stop = [ids["eos_token_id"], tokenizer.convert_tokens_to_ids(IM_END)] if tools else ids["eos_token_id"]
    model.generation_config = GenerationConfig(**{**ids, "eos_token_id": stop})
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def parameter_count(model: torch.nn.Module | PreTrainedModel) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
