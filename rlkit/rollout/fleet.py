"""A fleet of stock ``vllm serve`` processes: liveness, dynamic balancing, streamed results, failover.

* **Balancing.** Every request (one completion) goes to the live server with the fewest requests in flight, up to
  ``max_inflight`` per server; a server gets the next request as soon as one of its own finishes, so a fast
  server takes more. Results are collected as they finish. A completion's randomness depends only on its seed,
  so the result does not depend on which server served it, nor on how many servers there are.
* **Failures.** A request that fails (connection refused or reset, HTTP error, a malformed or aborted answer)
  drops its server with a warning and goes back to the queue, with every other request in flight there. A server
  with requests in flight that has not answered anything for ``health_every_s`` is asked ``/health`` (answer
  within ``health_timeout_s``); no answer drops it too (a hung server). A dropped server is retried, at most every
  ``reconnect_every_s``, when the engine syncs weights, and is used again only once it holds the current ones.
  With no server left the call raises :class:`RolloutWorkerError` naming every address and what happened.
* **Router.** A fleet of one router (vllm-router, llm-d, ...) in front of the servers: a completion of another
  weight version (a server behind it that missed a sync) is asked again instead of dropping the router; more than
  3n + 10 such answers in one call is an error naming the router.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Callable

from rlkit.rollout import RolloutWorkerError, SamplingParams
from rlkit.rollout.http_client import Generated, ServerClient, ServerError

log = logging.getLogger("rlkit.fleet")

Acceptor = Callable[[Generated], "str | None"]     # None = keep the result, else why it is refused


@dataclass
class Server:
    client: ServerClient
    alive: bool = False
    error: str = "never connected"
    holds: str | None = None          # the weight version of this run it holds (None: not ours yet)
    retry_at: float = 0.0
    last_answer: float = 0.0
    inflight: set[Future] = field(default_factory=set)
    sender: Any = None                # rank 0: the weight-transfer engine of this server's group

    @property
    def address(self) -> str:
        return self.client.address

    def describe(self) -> str:
        state = ("up" if self.holds else "up, without this run's current weights") if self.alive else self.error
        return f"{self.address} ({state})"


class ServerFleet:
    def __init__(self, addresses: list[str], *, max_inflight: int = 64, request_timeout_s: float = 600.0,
                 control_timeout_s: float = 300.0, health_every_s: float = 15.0, health_timeout_s: float = 10.0,
                 reconnect_every_s: float = 10.0, router: bool = False):
        if max_inflight < 1:
            raise ValueError(f"rollout.engine.max_inflight must be >= 1, got {max_inflight}")
        self.servers = [Server(ServerClient(a, request_timeout_s=request_timeout_s,
                                            control_timeout_s=control_timeout_s)) for a in addresses]
        self.max_inflight, self.reconnect_every_s = max_inflight, reconnect_every_s
        self.health_every_s, self.health_timeout_s = health_every_s, health_timeout_s
        self.pool = ThreadPoolExecutor(max_workers=max_inflight * len(self.servers), thread_name_prefix="rlkit-http")
        self.requeued, self.router, self.refused = 0, router, 0
        self._ids = itertools.count()

    # ------------------------------------------------------------------------------------------ liveness
    def alive(self) -> list[Server]:
        return [s for s in self.servers if s.alive]

    def usable(self, version: str | None) -> list[Server]:
        return [s for s in self.servers if s.alive and (version is None or s.holds == version)]

    def connect_all(self, timeout_s: float) -> None:
        """Wait (up to ``timeout_s``) until every server answers ``/health``; at least one must."""
        deadline = time.monotonic() + timeout_s
        while True:
            for s in self.servers:
                if not s.alive:
                    self._try(s)
            if all(s.alive for s in self.servers) or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
        if not self.alive():
            raise RolloutWorkerError(
                f"no rollout server reachable after {timeout_s:g} s: {'; '.join(s.describe() for s in self.servers)}."
                " Start them first (`rlkit rollout-server --model MODEL --servers N` starts them and prints the "
                "`vllm serve` command lines), or raise rollout.engine.connect_timeout_s if they are still loading.")
        for s in self.servers:
            if not s.alive:
                log.warning("rollout server %s is not reachable (%s); continuing with the others, it is retried at "
                            "every weight sync", s.address, s.error)

    def _try(self, s: Server) -> bool:
        if s.client.health(self.health_timeout_s):
            s.alive, s.error, s.last_answer = True, "", time.monotonic()
            return True
        s.error = "not answering /health (down, still starting, or wrong address)"
        return False

    def revive(self) -> list[Server]:
        """Dropped servers whose back-off has passed and that answer again (they hold no weights of ours yet)."""
        now, back = time.monotonic(), []
        for s in self.servers:
            if not s.alive and now >= s.retry_at:
                if self._try(s):
                    s.holds, s.sender = None, None
                    log.info("rollout server %s is back", s.address)
                    back.append(s)
                else:
                    s.retry_at = now + self.reconnect_every_s
        return back

    def drop(self, s: Server, reason: str) -> None:
        if not s.alive:
            return
        s.alive, s.error, s.holds, s.sender = False, reason, None, None
        s.retry_at = time.monotonic() + self.reconnect_every_s
        log.warning("rollout server %s dropped: %s; %d server(s) left", s.address, reason, len(self.alive()))

    def none_left(self) -> RolloutWorkerError:
        return RolloutWorkerError(
            "every rollout server is gone: " + "; ".join(s.describe() for s in self.servers)
            + ". Restart them and run the same training command again: it resumes from the last checkpoint "
              "(train.resume=auto).")

    # ------------------------------------------------------------------------------------------ generation
    def generate(self, prompts: list[list[int]], seeds: list[int], params: SamplingParams,
                 version: Callable[[], "str | None"], accept: Acceptor) -> list[Generated]:
        """One :class:`Generated` per prompt, balanced over the servers holding ``version()`` (asked at every
        dispatch: a weight sync may happen while this call runs, from another thread)."""
        results: list[Generated | None] = [None] * len(prompts)
        pending: deque[int] = deque(range(len(prompts)))
        owner: dict[Future, tuple[Server, int]] = {}
        call, self.refused = next(self._ids), 0
        while pending or owner:
            self._fill(pending, owner, prompts, seeds, params, version, call)
            if not owner:
                raise self.none_left()
            done, _ = wait(list(owner), timeout=1.0, return_when=FIRST_COMPLETED)
            for fut in done:
                if fut not in owner:
                    continue
                s, index = owner.pop(fut)
                s.inflight.discard(fut)
                try:
                    got = fut.result()
                    refused = accept(got)
                except ServerError as exc:
                    got, refused = None, str(exc)
                if refused is None:
                    s.last_answer, results[index] = time.monotonic(), got
                    continue
                pending.appendleft(index)
                self.requeued += 1
                if self.router and got is not None:        # a server behind the router missed a sync: ask again
                    self._check_router(refused, len(prompts))
                else:
                    self._lose(s, refused, owner, pending)
            self._check_hung(owner, pending)
        return results  # type: ignore[return-value]

    def _fill(self, pending, owner, prompts, seeds, params, version, call) -> None:
        servers = self.usable(version())
        while pending and servers:
            s = min(servers, key=lambda x: len(x.inflight))
            if len(s.inflight) >= self.max_inflight:
                return
            if not s.inflight:
                s.last_answer = time.monotonic()
            index = pending.popleft()
            fut = self.pool.submit(s.client.generate, prompts[index], seeds[index], params, f"rlkit-{call}-{index}")
            owner[fut] = (s, index)
            s.inflight.add(fut)

    def _lose(self, s: Server, reason: str, owner: dict, pending: deque) -> None:
        """Drop ``s`` and put every request still in flight there back in the queue."""
        lost = [f for f in s.inflight if f in owner]
        for fut in lost:
            pending.appendleft(owner.pop(fut)[1])
        self.requeued += len(lost)
        s.inflight = set()
        self.drop(s, reason)

    def _check_router(self, refused: str, n: int) -> None:
        self.refused += 1
        if self.refused > 3 * n + 10:
            raise RolloutWorkerError(f"the router {self.servers[0].address} keeps answering with completions "
                                     f"{refused}: list every server behind it in rollout.engine.addresses, so that "
                                     "each one receives the weights")

    def _check_hung(self, owner: dict, pending: deque) -> None:
        now = time.monotonic()
        for s in self.alive():
            if s.inflight and now - s.last_answer > self.health_every_s:
                if s.client.health(self.health_timeout_s):
                    s.last_answer = time.monotonic()
                else:
                    self._lose(s, f"no answer for {now - s.last_answer:.0f} s and /health timed out (hung?)",
                               owner, pending)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
