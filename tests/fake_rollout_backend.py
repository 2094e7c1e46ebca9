"""A stand-in for the vLLM backend of a rollout worker: the same interface, deterministic completions, and real
weight transfer over the gloo group, so the worker protocol, balancing and failure handling can be tested in
seconds. Fault injection through the environment: FAKE_STEP_S (seconds per engine step), FAKE_HANG_AFTER_STEPS,
FAKE_CRASH_AFTER_STEPS."""

from __future__ import annotations

import os
import time

from rlkit.rollout import FINISH_LENGTH, FINISH_STOP, Completion, SamplingParams
from rlkit.rollout.protocol import open_group, receive_buckets


def fake_completion(prompt_ids: list[int], seed: int, params: SamplingParams) -> Completion:
    """What a fake worker returns for one request: a pure function of prompt, seed and max_new_tokens."""
    length = 1 + seed % params.max_new_tokens
    ids = [(seed * 7 + k + sum(prompt_ids)) % 50 + 10 for k in range(length)]
    reason = FINISH_LENGTH if length == params.max_new_tokens else FINISH_STOP
    return Completion(token_ids=ids, logprobs=[-0.1 * (k + 1) for k in range(length)], finish_reason=reason)


def checksum(tensors) -> float:
    return float(sum(float(t.double().sum()) for t in tensors))


class FakeBackend:
    def __init__(self, model: str, tensor_parallel_size: int = 1, **_):
        self.model, self.tp = model, 1
        self.queue: dict[str, list] = {}
        self.weights: dict = {}
        self.steps = 0
        self.step_s = float(os.environ.get("FAKE_STEP_S", "0"))
        self.hang_after = int(os.environ.get("FAKE_HANG_AFTER_STEPS", "-1"))
        self.crash_after = int(os.environ.get("FAKE_CRASH_AFTER_STEPS", "-1"))

    def info(self) -> dict:
        return {"model": self.model, "dtype": "float32", "tp": 1, "cuda": False, "devices": [], "max_model_len": 128}

    def add(self, request_id, prompt_ids, seed, params) -> None:
        self.queue[request_id] = [1 + seed % 3, list(prompt_ids), seed, params]

    def step(self):
        self.steps += 1
        if self.steps == self.hang_after:
            time.sleep(3600)
        if self.steps == self.crash_after:
            raise RuntimeError("injected engine failure")
        time.sleep(self.step_s)
        done = []
        for rid, entry in list(self.queue.items()):
            entry[0] -= 1
            if entry[0] <= 0:
                del self.queue[rid]
                completion = fake_completion(entry[1], entry[2], entry[3])
                completion.extras["pid"] = os.getpid()
                done.append((rid, completion))
        return done

    def has_unfinished(self) -> bool:
        return bool(self.queue)

    def abort(self, request_ids) -> None:
        for rid in request_ids:
            self.queue.pop(rid, None)

    def join(self, addr, port, prefix, world, backend, timeout_s) -> None:
        self.group = open_group(addr, port, prefix, 1, world, backend, timeout_s)

    def receive(self, manifests) -> None:
        for name, tensor in receive_buckets(self.group, manifests, "cpu"):
            self.weights[name] = tensor.clone()

    def probe(self, prompt_ids, response_ids) -> list[float]:
        return [checksum(self.weights.values())] * len(response_ids)
