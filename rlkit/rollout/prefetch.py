"""Asynchronous rollouts (``rollout.max_staleness: k``): generate the batches of later steps while a step trains.

Exact schedule (deterministic: no result depends on timing). Policy version v = the weights after v optimizer
steps; the engine is synced to version s after step s-1 trains, so during step s it holds version s. The batch
trained at step s is generated entirely by the engine holding version

    v(s) = max(0, s - k)        logged per step as ``rollout/staleness`` = s - v(s) (versions between the two).

* k = 0 (default): step s generates its own batch, synchronously (no thread at all).
* k > 0: at step 0 the batch for step 0 is generated synchronously and those for steps 1..k are launched in the
  background (all at version 0); at step s >= 1 the batch for step s+k is launched (version s) if s+k < train.steps
  (:func:`steps_to_launch`). At most ONE background thread at a time; it generates its steps one after another.
* Every in-flight generation is awaited before the step's sampler update, weight sync, evaluation and checkpoint,
  so the engine never changes weights mid-generation and nothing generates while state is saved.
* The engine must own a copy of the weights and stay awake during training (vLLM without sleep mode): the ``hf``
  engine samples from the very module the optimizer updates, so rlkit refuses k > 0 with it.

Samplers: a stateful sampler (gvm, reinforce_ada, vade, dynamic) chooses step t's prompts when t's generation is
launched, so it has seen the sampler updates of steps up to t-k-1 at most (none for t <= k): k steps of
staleness mean the same for its cross-step state as for the policy. The data position of step t is
``position + (t - s) * prompts_drawn`` as seen from step s, the same prompts as a synchronous run draws.

Resume (exact for any k): after step s's sync the batches already generated for steps s..s+k-1 are complete;
:meth:`RolloutPrefetcher.saved` packs them (with the version each was generated from) for the checkpoint, where
every process writes its own share (``rollouts_rank{R}.pt``, rlkit/checkpoint.py), and :meth:`restore` hands them
back to the resumed run, which trains on them instead of regenerating: interrupted + resumed == uninterrupted. A
batch the checkpoint lacks (saved by a run with a smaller train.steps or max_staleness, or another number of
processes) is generated from the current version instead; the logged staleness is always the true one.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import Callable

from rlkit.batch import RolloutBatch


def generation_version(step: int, k: int) -> int:
    """v(s): the policy version whose engine generates the batch trained at ``step``."""
    return max(0, step - k)


def steps_to_launch(step: int, k: int, total: int, ready: Collection[int] = ()) -> list[int]:
    """Steps whose batches are generated in the background during ``step`` (engine at version ``step``).

    Every step in step+1..step+k below ``total`` that is not ``ready`` yet: 1..k at step 0, then only step+k."""
    return [t for t in range(step + 1, min(step + k, total - 1) + 1) if t not in ready]


@dataclass
class ReadyRollout:
    """A generated batch, waiting for the step it is for."""

    step: int                    # the step that trains on it
    version: int                 # policy version of the engine that generated it
    batch: RolloutBatch          # this process's share
    metrics: dict[str, float]    # the rollout phase's metrics (logged with the step that trains it)


@dataclass
class SavedRollouts:
    """One process's generated-but-untrained batches, as a checkpoint stores them."""

    world_size: int
    rollouts: list[ReadyRollout]


RolloutFn = Callable[[int], tuple[RolloutBatch, dict[str, float]]]   # step -> (batch, metrics)


class RolloutPrefetcher:
    """The generated batches of future steps, and at most one background thread generating more."""

    def __init__(self, max_staleness: int, total_steps: int) -> None:
        self.k, self.total = max_staleness, total_steps
        self._ready: dict[int, ReadyRollout] = {}
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def launch(self, step: int, fn: RolloutFn) -> list[int]:
        """During ``step`` (engine at version ``step``): generate :func:`steps_to_launch` in the background."""
        if self._thread is not None:
            raise RuntimeError("a rollout is already in flight; wait() for it first")
        steps = steps_to_launch(step, self.k, self.total, self._ready)
        if not steps:
            return steps

        def run() -> None:
            try:
                for t in steps:   # one after another: each finished batch is kept even if a later one fails
                    self._ready[t] = ReadyRollout(t, step, *fn(t))
            except BaseException as exc:  # re-raised in the training thread by wait()
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"rlkit-rollout-{steps[0]}-{steps[-1]}", daemon=True)
        self._thread.start()
        return steps

    def wait(self) -> None:
        """Block until the in-flight generation (if any) has finished; re-raise its error."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def sampler_update(self, fn: Callable[[], dict[str, float]]) -> dict[str, float]:
        """Run the step's sampler update (``fn``) once nothing generates any more; its metrics."""
        self.wait()
        return fn()

    def close(self) -> None:
        """Nothing to stop: the thread of a launch ends with its generation."""

    def take(self, step: int) -> ReadyRollout | None:
        """The batch generated for ``step``, or None (generate it now). Earlier steps' batches are dropped; this
        one stays (unmodified: the caller gets a shallow copy) until the next take, so a checkpoint written by an
        interrupted step still holds it."""
        self.wait()
        self._ready = {t: r for t, r in self._ready.items() if t >= step}
        ready = self._ready.get(step)
        if ready is None:
            return None
        return dataclasses.replace(ready, batch=dataclasses.replace(ready.batch), metrics=dict(ready.metrics))

    def saved(self, step: int, world_size: int) -> SavedRollouts | None:
        """What a checkpoint taken when ``step`` steps are done stores (None when k = 0: nothing is ever ahead)."""
        self.wait()
        if not self.k:
            return None
        return SavedRollouts(world_size, [r for t, r in sorted(self._ready.items()) if t >= step])

    def restore(self, saved: SavedRollouts | None, step: int, world_size: int) -> list[int]:
        """Resume at ``step`` with a checkpoint's batches; returns the steps kept. Dropped: another number of
        processes (other shares), steps out of range, or batches staler than this run's k allows."""
        ok = saved is not None and saved.world_size == world_size
        self._ready = {r.step: r for r in (saved.rollouts if ok else [])
                       if step <= r.step < self.total and r.step - r.version <= self.k}
        return sorted(self._ready)

    def missing(self, step: int) -> list[int]:
        """Steps an uninterrupted run would have generated before ``step`` trains, but which are not here."""
        return [t for t in range(step, min(step + self.k, self.total)) if step and t not in self._ready]
