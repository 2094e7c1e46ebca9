"""Partial rollouts (``rollout.partial_rollouts: true``, with ``rollout.max_staleness: k >= 1``): a weight update does
not wait for the generation in flight.

The schedule is :mod:`rlkit.rollout.prefetch`'s -- the batch for step t is launched during step t-k, when the
engine holds version t-k -- but the background generation is no longer awaited before the weight sync. The sync
pauses the servers with vLLM's ``pause(mode="keep")``, updates the weights and resumes: a request that spans the
update keeps its tokens, and every token records the policy version that sampled it
(``Completion.token_versions``, from vLLM's weight-version spans). Every token of the batch trained at step t was
therefore sampled by a version in [t-k, t]: at most k stale (admission control; nothing is ever dropped, which
would bias toward short answers). The loss's mismatch correction (``ppo_clip``'s TIS/MIS) works per token from
the sampling log-probs each token was drawn with. Logged: ``rollout/staleness_mean``, ``rollout/staleness_max``
(per token, model tokens only) and ``rollout/partial_frac`` (completions sampled by more than one version).

Ordering: one worker thread runs, in order, the generations and the samplers' updates (``defer``), so a stateful
sampler is touched by that thread only; its update metrics are logged with the next step. A step waits only for
its own batch (``take``). Everything is drained before an evaluation, a checkpoint or a stop (``wait``).

Needs an engine that can update weights while it generates (``RolloutEngine.syncs_while_generating``:
``vllm_server``). Not reproducible run to run: where an update lands inside a request depends on timing, so a
resumed run is not bit-equal to an uninterrupted one (the default mode is).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Callable

from rlkit.rollout.prefetch import ReadyRollout, RolloutFn, RolloutPrefetcher, steps_to_launch


class PartialPrefetcher(RolloutPrefetcher):
    """The prefetcher of partial rollouts: a persistent worker thread, a queue of generations and sampler updates."""

    def __init__(self, max_staleness: int, total_steps: int) -> None:
        super().__init__(max_staleness, total_steps)
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._done = threading.Condition()
        self._queued: set[int] = set()
        self.deferred_metrics: dict[str, float] = {}
        self._worker = threading.Thread(target=self._serve, name="rlkit-partial-rollouts", daemon=True)
        self._worker.start()

    def _serve(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                if self._error is None:
                    job()
            except BaseException as exc:   # re-raised in the training thread by take()/wait()
                self._error = exc
            finally:
                with self._done:
                    self._done.notify_all()
                self._jobs.task_done()

    def launch(self, step: int, fn: RolloutFn) -> list[int]:
        steps = [t for t in steps_to_launch(step, self.k, self.total, self._ready) if t not in self._queued]
        for t in steps:
            self._queued.add(t)
            self._jobs.put(lambda t=t: self._generate(t, step, fn))
        return steps

    def _generate(self, t: int, version: int, fn: RolloutFn) -> None:
        batch, metrics = fn(t)
        metrics |= self.deferred_metrics
        self.deferred_metrics = {}
        with self._done:
            self._ready[t] = ReadyRollout(t, version, batch, metrics)
            self._queued.discard(t)

    def defer(self, fn: Callable[[], dict[str, float]]) -> None:
        """Run ``fn`` (a sampler update) on the worker thread after the generations queued so far."""
        self._jobs.put(lambda: self.deferred_metrics.update(fn()))

    def take(self, step: int) -> ReadyRollout | None:
        """Wait for this step's batch only (later ones keep generating); None = nothing queued for it (a start or
        a resume): everything else is drained first, so the caller generates it alone."""
        with self._done:
            self._done.wait_for(lambda: step in self._ready or step not in self._queued or self._error is not None)
            self._raise()
            self._ready = {t: r for t, r in self._ready.items() if t >= step}
            ready = self._ready.get(step)
        if ready is None:
            self.wait()
            return None
        return dataclasses.replace(ready, batch=dataclasses.replace(ready.batch), metrics=dict(ready.metrics))

    def sampler_update(self, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Deferred to the worker thread (its metrics are logged with a later step)."""
        self.defer(fn)
        return {}

    def wait(self) -> None:
        self._jobs.join()
        self._raise()

    def _raise(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def close(self) -> None:
        self._jobs.put(None)
