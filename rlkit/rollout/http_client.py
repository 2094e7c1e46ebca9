"""HTTP client of one stock ``vllm serve`` process: token ids in, token ids and sampling log-probs out.

Routes used (vLLM 0.32; the RL routes exist only with ``VLLM_SERVER_DEV_MODE=1`` on the server):

* ``POST /inference/v1/generate`` (needs ``--enable-scale-out``): ``token_ids`` + ``sampling_params`` with a
  per-request ``seed`` and ``logprobs: 0`` -> the sampled ids, their log-probs (processed, i.e. under the
  distribution actually sampled, when the server runs ``--logprobs-mode processed_logprobs``) and
  ``weight_versions``: which weight version sampled which output tokens. ``prompt_logprobs`` on the same route is
  the sync canary's probe.
* ``GET /health``, ``GET /weight_info``, ``GET /server_info`` (dtype), ``POST /pause?mode=keep``, ``/resume``.
* weight transfer: ``/init_weight_transfer_engine``, ``/start_weight_update``, ``/update_weights``,
  ``/finish_weight_update`` -- the four methods of vLLM's ``VLLMWeightSyncClient`` protocol, so this class is
  the ``client`` handed to a vLLM ``TrainerWeightTransferEngine``.

Every failure (refused connection, timeout, HTTP error, malformed answer) raises :class:`ServerError` naming the
address and what happened; the fleet (:mod:`rlkit.rollout.fleet`) decides what to do with the server.
"""

from __future__ import annotations

import ipaddress
import re
import threading
from dataclasses import dataclass
from typing import Any

import requests

from rlkit.rollout import FINISH_LENGTH, FINISH_STOP, Completion, SamplingParams


class ServerError(RuntimeError):
    """One request to one server failed (the server may be dead, hung, paused with abort, or misconfigured)."""


@dataclass(frozen=True)
class VersionSpan:
    """Output tokens ``[start, end)`` of a completion were sampled by weight version ``version`` (vLLM's span)."""

    version: str
    start: int
    end: int


@dataclass
class Generated:
    """One finished generation: the completion and the weight versions that sampled its tokens."""

    completion: Completion
    spans: list[VersionSpan]


def parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (or ``http://host:port``) -> (host, port); a clear error otherwise."""
    text = re.sub(r"^https?://", "", str(address).strip()).rstrip("/")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"rollout server address '{address}' is not host:port (e.g. 127.0.0.1:8000)")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ServerClient:
    """Blocking calls to one server; safe to use from many threads (one ``requests.Session`` per thread)."""

    def __init__(self, address: str, *, request_timeout_s: float = 600.0, control_timeout_s: float = 300.0):
        host, port = parse_address(address)
        self.address = f"{host}:{port}"
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        self.request_timeout_s, self.control_timeout_s = request_timeout_s, control_timeout_s
        self._local = threading.local()

    # ------------------------------------------------------------------------------------------ transport
    def _session(self) -> requests.Session:
        if not hasattr(self._local, "session"):
            self._local.session = requests.Session()
        return self._local.session

    def _send(self, method: str, path: str, json: Any, params: dict | None, timeout: float | None):
        session = self._session()
        self._local.reused = getattr(self._local, "used", False)
        self._local.used = True
        return session.request(method, f"{self.url}{path}", json=json, params=params,
                               timeout=timeout or self.control_timeout_s)

    def call(self, method: str, path: str, *, json: Any = None, params: dict | None = None,
             timeout: float | None = None) -> Any:
        """One request; the decoded JSON answer (None for an empty body). Raises :class:`ServerError`.

        A kept-alive connection that the server closed while idle (uvicorn closes them after 5 s) fails with a
        reset before the server reads the request: such a request is sent once more on a new connection."""
        try:
            try:
                r = self._send(method, path, json, params, timeout)
            except requests.ConnectionError as exc:
                if _reason(exc) not in _STALE or not self._local.reused:
                    raise
                self._local.session.close()
                self._local.session = requests.Session()
                r = self._send(method, path, json, params, timeout)
        except requests.Timeout:
            raise ServerError(f"{self.address}: no answer to {path} within {timeout or self.control_timeout_s:g} s "
                              "(hung?)") from None
        except requests.ConnectionError as exc:
            raise ServerError(f"{self.address}: cannot connect ({_reason(exc)})") from None
        if r.status_code == 404 and path not in ("/health",):
            raise ServerError(f"{self.address}: {path} not found: start the server with VLLM_SERVER_DEV_MODE=1 "
                              "and --enable-scale-out (`rlkit rollout-server --print-only` shows the command)")
        if r.status_code >= 400:
            raise ServerError(f"{self.address}: {path} answered {r.status_code}: {r.text[-500:]}")
        return r.json() if r.content else None

    # ------------------------------------------------------------------------------------------ generation
    def generate(self, prompt_ids: list[int], seed: int, params: SamplingParams, request_id: str) -> Generated:
        greedy = params.temperature == 0
        sampling = {"max_tokens": params.max_new_tokens, "temperature": params.temperature,
                    "top_p": 1.0 if greedy else params.top_p,
                    "top_k": -1 if (greedy or params.top_k == 0) else params.top_k,
                    "seed": int(seed), "logprobs": 0, "detokenize": False}
        out = self.call("POST", "/inference/v1/generate", timeout=self.request_timeout_s,
                        json={"request_id": request_id, "token_ids": list(prompt_ids), "sampling_params": sampling})
        return to_generated(self.address, out)

    def probe(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        """log pi_server(response_ids[t] | prompt, response[:t]) at temperature 1 (prompt log-probs)."""
        seq = list(prompt_ids) + list(response_ids)
        out = self.call("POST", "/inference/v1/generate", timeout=self.request_timeout_s,
                        json={"token_ids": seq, "sampling_params": {"max_tokens": 1, "prompt_logprobs": 0,
                                                                     "detokenize": False}})
        entries = (out or {}).get("prompt_logprobs") or []
        try:
            return [float(e[str(t)]["logprob"]) for e, t in zip(entries[len(prompt_ids):], response_ids)]
        except (KeyError, TypeError) as exc:
            raise ServerError(f"{self.address}: malformed prompt_logprobs in the probe answer ({exc})") from None

    def health(self, timeout: float = 5.0) -> bool:
        try:
            self.call("GET", "/health", timeout=timeout)
            return True
        except ServerError:
            return False

    def weight_version(self) -> str | None:
        return (self.call("GET", "/weight_info") or {}).get("weight_version")

    def dtype(self) -> str | None:
        """The dtype the server computes in (from ``/server_info``), e.g. ``float32``; None if not reported."""
        info = self.call("GET", "/server_info") or {}
        found = re.search(r"dtype=torch\.(\w+)", str(info.get("vllm_config", "")))
        return found.group(1) if found else None

    def pause(self) -> None:
        """Stop scheduling; in-flight requests keep their state and continue after :meth:`resume`."""
        self.call("POST", "/pause", params={"mode": "keep", "clear_cache": "true"})

    def resume(self) -> None:
        self.call("POST", "/resume")

    # ------------------------------------------------------------------------------------------ weight transfer
    def init_weight_transfer_engine(self, init_info: dict[str, Any]) -> None:
        self.call("POST", "/init_weight_transfer_engine", json={"init_info": init_info})

    def start_weight_update(self) -> None:
        self.call("POST", "/start_weight_update")

    def update_weights(self, update_info: dict[str, Any]) -> None:
        self.call("POST", "/update_weights", json={"update_info": update_info})

    def finish_weight_update(self, weight_version: str | None = None) -> None:
        self.call("POST", "/finish_weight_update", json={"weight_version": weight_version})


def to_generated(address: str, out: Any) -> Generated:
    """A ``/inference/v1/generate`` answer -> :class:`Generated` (raises :class:`ServerError` if malformed)."""
    try:
        choice = out["choices"][0]
        ids = [int(t) for t in choice["token_ids"]]
        content = (choice.get("logprobs") or {}).get("content") or []
        lps = [float(c["logprob"]) for c in content]
        spans = [VersionSpan(str(s["version"]), int(s["start"]), int(s["end"]))
                 for s in choice.get("weight_versions") or []]
        reason = choice.get("finish_reason")
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise ServerError(f"{address}: malformed generate answer ({exc!r})") from None
    if reason == "abort":
        raise ServerError(f"{address}: the request was aborted by the server")
    if len(lps) != len(ids):
        raise ServerError(f"{address}: {len(ids)} tokens but {len(lps)} log-probs: the server must return "
                          "logprobs (sampling_params.logprobs=0)")
    return Generated(Completion(token_ids=ids, logprobs=lps, finish_reason=FINISH_LENGTH if reason == "length"
                                else FINISH_STOP), spans)


_STALE = ("connection reset", "connection aborted", "remote end closed connection without response")


def _reason(exc: Exception) -> str:
    text = str(exc)
    for hint in ("Connection refused", "Name or service not known", "Connection reset", "timed out",
                 "Connection aborted", "Remote end closed connection without response"):
        if hint in text:
            return hint.lower()
    return text[-200:]
