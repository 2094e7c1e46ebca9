"""Chat-template rendering for episodes: the opening prompt once, then only *appended* tokens.

An episode's token sequence is never re-rendered. What the environment says after a model turn is turned into
tokens by a template diff on a fixed dummy conversation (the technique verl, prime-rl and TRL use for their
"bridge" tokens):

    base = render([user U, assistant A], tools)
    full = render([user U, assistant A] + new_messages, tools, add_generation_prompt=True)
    suffix = full[len(base):]                      (full must start with base: a prefix-stable template)
    after  = base[end of A:]                        (what the template puts after an assistant message,
                                                     e.g. "<|im_end|>\\n")

The model ended its turn with its stop token (e.g. ``<|im_end|>``); the inserted text is ``after`` without that
stop token's text (e.g. ``"\\n"``) followed by ``suffix`` (tool messages and the next assistant header), tokenized
on its own. Templates that are not prefix-stable (they rewrite earlier turns) are refused with a clear error;
the tokenization canary (:mod:`rlkit.environments.canary`) measures whatever drift remains.
"""

from __future__ import annotations

from typing import Any

_USER, _MARK = "rlkit-probe-user", "rlkit-probe-assistant"
_DUMMY = [{"role": "user", "content": _USER}, {"role": "assistant", "content": _MARK}]


class TemplateError(ValueError):
    """The tokenizer's chat template cannot render what an environment needs (tools, tool messages)."""


class ChatRenderer:
    """Renders an environment's prompts and insertions with one tokenizer and one tool list."""

    def __init__(self, tokenizer, tools: list[dict[str, Any]] | None):
        if not getattr(tokenizer, "chat_template", None):
            raise TemplateError("multi-turn environments need a tokenizer with a chat template (the prompt, the "
                                "tool schemas and tool results are rendered with it); this tokenizer has none. Use "
                                "an instruct/chat model, or `rlkit tiny-model DIR --tools` for a local test model")
        self.tokenizer, self.tools = tokenizer, tools or None
        self._base: str | None = None   # render(_DUMMY): the same for every insertion

    def render(self, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
        try:
            return self.tokenizer.apply_chat_template(messages, tools=self.tools, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception as exc:  # noqa: BLE001  (jinja errors of user templates: re-raised with context)
            roles = [m.get("role") for m in messages]
            raise TemplateError(f"the chat template could not render messages with roles {roles}"
                                f"{' and tools' if self.tools else ''}: {type(exc).__name__}: {exc}. Use a "
                                "template that supports tools and tool messages (e.g. Qwen2.5-Instruct's)") from exc

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False).input_ids)

    def prompt(self, messages: list[dict[str, Any]]) -> tuple[str, list[int]]:
        """The opening prompt (with tool schemas and the generation prompt): text and token ids."""
        text = self.render(messages, generation_prompt=True)
        return text, self.encode(text)

    def _dummy_base(self) -> str:
        if self._base is None:
            base = self.render(_DUMMY, generation_prompt=False)
            if base.rfind(_MARK) < 0:
                raise TemplateError("the chat template drops the content of assistant messages, so episodes "
                                    "cannot be continued from their token ids; use a template that renders it")
            self._base = base
        return self._base

    def insertion(self, messages: list[dict[str, Any]], stop_text: str) -> str:
        """Text to append after a model turn that ended with ``stop_text`` so that ``messages`` follow it and the
        next assistant turn begins (the template's generation prompt)."""
        base = self._dummy_base()
        full = self.render(_DUMMY + list(messages), generation_prompt=True)
        if not full.startswith(base):
            raise TemplateError("the chat template is not prefix-stable: adding messages "
                                f"{[m.get('role') for m in messages]} changes how earlier turns render, so an "
                                "episode cannot be extended token-exactly. Use a template that renders earlier "
                                "turns unchanged (e.g. without stripping reasoning from past assistant turns)")
        after = base[base.rfind(_MARK) + len(_MARK):]   # what the template puts after an assistant message
        if stop_text and after.startswith(stop_text):
            after = after[len(stop_text):]
        return after + full[len(base):]

    def insertion_ids(self, messages: list[dict[str, Any]], stop_text: str) -> list[int]:
        return self.encode(self.insertion(messages, stop_text))

    def check(self, tool_message: dict[str, Any]) -> None:
        """Render a prompt with the tools and one tool round trip (``rlkit validate`` and start-up)."""
        text, _ = self.prompt([{"role": "user", "content": _USER}])
        if self.tools and not all(t["function"]["name"] in text for t in self.tools):
            missing = [t["function"]["name"] for t in self.tools if t["function"]["name"] not in text]
            raise TemplateError(f"the chat template ignores `tools`: tool(s) {missing} do not appear in the "
                                "rendered prompt, so the model would never learn they exist. Use a template that "
                                "renders tools (e.g. Qwen2.5-Instruct's, or `rlkit tiny-model DIR --tools`)")
        self.insertion([tool_message], stop_text="")
