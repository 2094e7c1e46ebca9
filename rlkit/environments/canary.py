"""The tokenization canary: do the ids an episode was trained on match its conversation re-rendered from scratch?

After each rollout phase, up to ``drift_check_episodes`` (16) finished episodes are re-rendered from their messages
with the chat template (``apply_chat_template(messages, tools=...)``, then tokenized), and the ids the trainer
uses -- ``prompt_ids + token_ids`` -- must be a prefix of the re-rendered ids (the re-rendering may only add the
template's closing text after the last turn). An episode that differs has *drifted*:

    environment/token_drift = drifted episodes / checked episodes

Drift means that the same conversation, rendered the way a chat server or an evaluation harness renders it,
gives the model other tokens than the ones it was trained on -- the bug class behind TRL #5224 and verl #6921
(separators lost between turns, special tokens tokenized as text, templates that rewrite earlier turns,
non-canonical tokenizations of sampled text). rlkit's own loop trains on the sampled ids either way; the canary
says whether those ids are the ones a user of the trained model will feed it. Above ``max_token_drift`` the run
stops with :class:`TokenDriftError`, which shows the first differing position of the first drifted episode.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlkit.environments.render import ChatRenderer
from rlkit.rollout import Completion


class TokenDriftError(RuntimeError):
    """Too many episodes' token ids differ from their re-rendered conversation."""


@dataclass(frozen=True)
class DriftReport:
    checked: int
    drifted: int
    example: str | None     # where the first drifted episode differs (decoded around the position), else None

    @property
    def share(self) -> float:
        return self.drifted / self.checked if self.checked else 0.0


def first_difference(ours: list[int], theirs: list[int]) -> int | None:
    """First index where ``ours`` is not a prefix of ``theirs`` (None: it is a prefix)."""
    for i, (a, b) in enumerate(zip(ours, theirs)):
        if a != b:
            return i
    return None if len(ours) <= len(theirs) else len(theirs)


def _describe(tokenizer, ours: list[int], theirs: list[int], at: int) -> str:
    def show(ids: list[int]) -> str:
        return repr(tokenizer.decode(ids[max(0, at - 12):at + 12], skip_special_tokens=False))
    return (f"at token {at}: trained ids {ours[at:at + 6]} vs re-rendered {theirs[at:at + 6]}; trained text "
            f"{show(ours)}, re-rendered text {show(theirs)}")


def check_drift(renderer: ChatRenderer, completions: list[Completion], limit: int) -> DriftReport:
    """Re-render up to ``limit`` episodes (the first ones with an ``episode`` record) and compare their ids."""
    episodes = [c for c in completions if c.episode is not None][:limit]
    drifted, example = 0, None
    for comp in episodes:
        ours = list(comp.prompt_ids or []) + list(comp.token_ids)
        theirs = renderer.encode(renderer.render(comp.episode.messages, generation_prompt=False))
        at = first_difference(ours, theirs)
        if at is not None:
            drifted += 1
            example = example or _describe(renderer.tokenizer, ours, theirs, at)
    return DriftReport(checked=len(episodes), drifted=drifted, example=example)


def enforce(report: DriftReport, max_token_drift: float) -> None:
    if report.checked and report.share > max_token_drift:
        raise TokenDriftError(
            f"tokenization canary: {report.drifted} of {report.checked} checked episodes were trained on token ids "
            f"that differ from their conversation re-rendered with the chat template ({report.example}). The model "
            "would see other tokens when the conversation is rendered by a server or an evaluation. Fix the chat "
            "template (it must render earlier turns unchanged and end assistant turns with the model's stop token) "
            f"or raise environment.max_token_drift (now {max_token_drift}) if the drift is understood")
