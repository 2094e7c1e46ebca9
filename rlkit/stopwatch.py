"""Wall-clock seconds per stage of one RL step, logged as ``time/<stage>`` (and ``time/step`` for the whole)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator


class Stopwatch:
    """``with watch("score"): ...`` adds the block's seconds to stage "score"; :meth:`metrics` reports them.

    A stage timed twice sums; ``time/step`` runs from construction to :meth:`metrics` (so it also holds whatever
    no stage covers)."""

    def __init__(self) -> None:
        self.started = time.perf_counter()
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, stage: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        out = {f"time/{stage}": s for stage, s in self.seconds.items()}
        out["time/step"] = time.perf_counter() - self.started
        return out
