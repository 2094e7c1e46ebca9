"""The episode loop over any rollout engine: token-exact, concurrent, bounded.

Each episode is one append-only token sequence after its prompt:

    prompt_ids | model turn 1 | inserted 1 | model turn 2 | ... | model turn k
    model_mask:    True...        False...      True...            True...

Model tokens come from ``engine.generate`` (token ids in, token ids and sampling log-probs out -- ``hf``, ``vllm``
and ``vllm_server`` alike, so vLLM's prefix cache makes later turns cheap); inserted tokens come from
:class:`~rlkit.environments.render.ChatRenderer` and get log-prob 0 and ``model_mask`` False. Nothing is decoded
and re-tokenized: the decoded text of a turn only goes to the parser, the rewards and the logs.

Scheduling: all episodes that can generate go to the engine in one batched call; tool calls run in the
environment's executor meanwhile, so while one episode waits for a tool the others generate. An episode ends
when the model answers without a tool call ("stop"), when it asks for tools on its last allowed turn
("max_turns"), or when a turn hits ``rollout.max_new_tokens`` or the episode's ``max_total_tokens`` ("length").
"max_turns" and "length" count as truncated (``train.mask_truncated`` drops them).

Seeds: turn k of an episode samples with ``turn_seed(seed, k)``, a pure function of the completion's seed, so an
episode is reproducible whatever else runs beside it (and after a resume).
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, wait

from rlkit.environments.base import Environment, ToolStats
from rlkit.environments.episode import (LENGTH, STOP, EpisodeMetrics, EpisodeRecord, LiveEpisode, opening_messages,
                                        turn_seed)
from rlkit.environments.render import ChatRenderer
from rlkit.rollout import FINISH_LENGTH, FINISH_STOP, Completion, SamplingParams

STALL_S = 600.0     # a tool executor that resolves nothing for this long is a bug: stop instead of hanging


class EpisodeRunner:
    """Runs episodes of one environment on one engine (module docstring)."""

    def __init__(self, env: Environment, tokenizer, renderer: ChatRenderer | None = None):
        self.env, self.tokenizer = env, tokenizer
        self.renderer = renderer or ChatRenderer(tokenizer, env.tool_schemas())

    def _open(self, item, seed: int) -> LiveEpisode:
        episode = self.env.episode({**item.columns, "prompt": item.raw_prompt})
        messages = opening_messages(item.raw_prompt if item.raw_prompt is not None else item.prompt,
                                    episode.reset())
        text, ids = self.renderer.prompt(messages)
        record = EpisodeRecord(messages=messages, prompt_text=text, turns=0, stats=ToolStats(), finish=LENGTH,
                               segments=[])
        return LiveEpisode(episode, seed, ids, record)

    def _room(self, live: LiveEpisode) -> int | None:
        budget = self.env.max_total_tokens
        return None if budget is None else budget - len(live.prompt_ids) - len(live.tokens)

    def _take_turn(self, live: LiveEpisode, comp: Completion) -> Future | None:
        """Append one model turn; a Future[Reply] when the environment must answer, None when the episode ended."""
        ids, lps, finish = list(comp.token_ids), list(comp.logprobs), comp.finish_reason
        versions = list(comp.token_versions) if comp.token_versions is not None else None
        room = self._room(live)
        if room is not None and len(ids) > room:
            ids, lps, finish = ids[:room], lps[:room], FINISH_LENGTH
            versions = versions[:room] if versions is not None else None
        live.append(ids, lps, model=True, versions=versions)
        live.record.turns += 1
        stopped = finish == FINISH_STOP and bool(ids)
        content = self.tokenizer.decode(ids[:-1] if stopped else ids, skip_special_tokens=False)
        live.record.messages.append({"role": "assistant", "content": content})
        if not stopped:
            live.record.finish = LENGTH
            return None
        live.stop_text = self.tokenizer.decode(ids[-1:], skip_special_tokens=False)
        return live.episode.respond(content, self.env.max_turns - live.record.turns)

    def _take_reply(self, live: LiveEpisode, fut: Future) -> bool:
        """Apply the environment's reply; True when the episode continues with another model turn."""
        reply = fut.result()
        live.record.stats.add(reply.stats)
        if reply.done:
            live.record.finish = reply.finish
            return False
        ids = self.renderer.insertion_ids(reply.messages, live.stop_text)
        room = self._room(live)
        live.record.messages.extend(reply.messages)
        if room is not None and len(ids) >= room:   # no room left for the results plus one model token
            live.record.finish = LENGTH
            return False
        live.append(ids, None, model=False)
        return True

    def run(self, engine, items: list, seeds: list[int], params: SamplingParams,
            metrics: EpisodeMetrics | None = None) -> list[Completion]:
        """One episode per (item, seed); Completions in request order (``model_mask``, ``episode`` set)."""
        metrics = metrics if metrics is not None else EpisodeMetrics()
        t0, generate_before = time.perf_counter(), metrics.generate_s
        lives = [self._open(item, seed) for item, seed in zip(items, seeds)]
        ready, waiting = list(lives), {}
        while ready or waiting:
            if not ready:
                done, _ = wait(list(waiting), timeout=STALL_S, return_when=FIRST_COMPLETED)
                if not done:
                    raise RuntimeError(f"no tool call of {len(waiting)} waiting episodes finished within {STALL_S:.0f}"
                                       " s although every call has a timeout: the tool executor is stuck")
            for fut in [f for f in waiting if f.done()]:
                live = waiting.pop(fut)
                if self._take_reply(live, fut):
                    ready.append(live)
            if ready:
                g0 = time.perf_counter()
                comps = engine.generate([lv.prompt_ids + lv.tokens for lv in ready],
                                        [turn_seed(lv.seed, lv.record.turns) for lv in ready], params)
                metrics.generate_s += time.perf_counter() - g0
                for live, comp in zip(ready, comps):
                    fut = self._take_turn(live, comp)
                    if fut is not None:
                        waiting[fut] = live
                ready = []
        out = [self._finish(live, metrics) for live in lives]
        metrics.environment_s += time.perf_counter() - t0 - (metrics.generate_s - generate_before)
        return out

    def _finish(self, live: LiveEpisode, metrics: EpisodeMetrics) -> Completion:
        rec = live.record
        try:
            rec.env_reward = live.episode.reward()
        finally:
            live.episode.close()
        metrics.episodes += 1
        metrics.turns += rec.turns
        metrics.stats.add(rec.stats)
        metrics.model_tokens += sum(live.mask)
        metrics.env_tokens += len(live.mask) - sum(live.mask)
        return Completion(token_ids=live.tokens, logprobs=live.logprobs,
                          finish_reason=FINISH_STOP if rec.finish == STOP else FINISH_LENGTH,
                          model_mask=live.mask, prompt_ids=live.prompt_ids, episode=rec,
                          token_versions=live.versions if any(v >= 0 for v in live.versions) else None)
