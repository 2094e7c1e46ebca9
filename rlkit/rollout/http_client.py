"""HTTP client of one stock ``vllm serve`` process: token ids in, token ids and sampling log-probs out.

Routes used (vLLM 0.32; the RL routes exist only with ``VLLM_SERVER_DEV_MODE=1`` on the server):

* ``POST /inference/v1/generate`` (needs ``--enable-scale-out``): ``token_ids`` + ``sampling_params`` with a
  per-request ``seed`` and ``logprobs: 0`` -> the sampled ids, their log-probs (processed, i.e. under the
  distribution actually sampled, when the server runs ``--logprobs-mode processed_logprobs``) and
  ``weight_versions``: which weight version sampled which output tokens. ``prompt_logprobs`` on the same route is
  the sync canary's probe.
* ``GET /health``, ``GET /weight_info``, ``GET /server_info`` (dtype), ``POST /pause?mode=keep``, ``/resume``,
  ``/update_weight_version``.
* LoRA (servers with ``--enable-lora`` and ``VLLM_ALLOW_RUNTIME_LORA_UPDATING=1``): ``POST /v1/load_lora_adapter``;
  with :attr:`ServerClient.adapter` set, every generate and probe request names that adapter (``model``).
* weight transfer: ``/init_weight_transfer_engine``, ``/start_weight_update``, ``/update_weights``,
  ``/finish_weight_update`` -- the four methods of vLLM's ``VLLMWeightSyncClient`` protocol, so this class is
  the ``client`` handed to a vLLM ``TrainerWeightTransferEngine``.

Every failure (refused connection, timeout, HTTP error, malformed answer) raises :class:`ServerError` naming the
address and what happened; the fleet (:mod:`rlkit.rollout.fleet`) decides what to do with the server.
"""

from __future__ import annotations

import ipaddress
import re
import socket
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


def check_addresses(addresses: list[str] | str, allow_remote: bool) -> list[str]:
    if isinstance(addresses, str):
        addresses = [a for a in addresses.split(",") if a.strip()]
    if not addresses:
        raise ValueError("rollout.engine.addresses is empty: list the host:port of every vLLM server "
                         "(`rlkit rollout-server` prints them)")
    remote = [a for a in addresses if not is_loopback(parse_address(a)[0])]
    if remote and not allow_remote:
        raise ValueError(
            f"rollout server address(es) {remote} are not loopback: vLLM's weight and control routes have no "
            "authentication, so anyone who can reach them can replace the weights or run worker methods. Put the "
            "servers on a private network or behind a firewall (README, 'Rollout servers'), then set "
            "rollout.engine.allow_remote=true")
    return [a.strip() for a in addresses]


def reachable_from(host: str) -> str:
    """This machine's address on the route to ``host`` (where that server can reach our TCPStore)."""
    if is_loopback(host):
        return "127.0.0.1"
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.connect((host, 9))                  # no packet is sent: this only picks the route
        return sock.getsockname()[0]



class ServerClient:
    """Blocking calls to one server; safe to use from many threads (one ``requests.Session`` per thread)."""

    def __init__(self, address: str, *, request_timeout_s: float = 600.0, control_timeout_s: float = 300.0):
        host, port = parse_address(address)
        self.address = f"{host}:{port}"
        self.url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
        self.request_timeout_s, self.control_timeout_s = request_timeout_s, control_timeout_s
        self._local = threading.local()
        self.adapter: str | None = None      # the LoRA adapter every request uses (None: the base weights)

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
        """One request; the decoded JSON answer (its text if not JSON, None if empty). Raises :class:`ServerError`.

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
        if r.status_code == 404 and r.text.replace(" ", "") == '{"detail":"NotFound"}':   # FastAPI: no such route
            raise ServerError(f"{self.address}: no route {path}: start the server with VLLM_SERVER_DEV_MODE=1 "
                              "and --enable-scale-out (`rlkit rollout-server --print-only` shows the command)")
        if r.status_code >= 400:
            raise ServerError(f"{self.address}: {path} answered {r.status_code}: {r.text[-500:]}")
        if not r.content:
            return None
        try:
            return r.json()
        except ValueError:                       # a plain-text answer (e.g. /v1/load_lora_adapter's "Success: ...")
            return r.text

    # ------------------------------------------------------------------------------------------ generation
    def generate(self, prompt_ids: list[int], seed: int, params: SamplingParams, request_id: str) -> Generated:
        greedy = params.temperature == 0
        sampling = {"max_tokens": params.max_new_tokens, "temperature": params.temperature,
                    "top_p": 1.0 if greedy else params.top_p,
                    "top_k": -1 if (greedy or params.top_k == 0) else params.top_k,
                    "seed": int(seed), "logprobs": 0, "detokenize": False}
        out = self.call("POST", "/inference/v1/generate", timeout=self.request_timeout_s,
                        json=self._body({"request_id": request_id, "token_ids": list(prompt_ids),
                                         "sampling_params": sampling}))
        return to_generated(self.address, out)

    def _body(self, body: dict) -> dict:
        return body if self.adapter is None else body | {"model": self.adapter}

    def probe(self, prompt_ids: list[int], response_ids: list[int]) -> list[float]:
        """log pi_server(response_ids[t] | prompt, response[:t]) at temperature 1 (prompt log-probs)."""
        seq = list(prompt_ids) + list(response_ids)
        out = self.call("POST", "/inference/v1/generate", timeout=self.request_timeout_s,
                        json=self._body({"token_ids": seq, "sampling_params": {"max_tokens": 1, "prompt_logprobs": 0,
                                                                                "detokenize": False}}))
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

    def world_size(self) -> int:
        """The server's model workers (TP x PP x DP), each a member of the weight group."""
        info = self.call("GET", "/get_world_size", params={"include_dp": "true"}) or {}
        return int(info.get("world_size", 1)) if isinstance(info, dict) else int(info)

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

    def update_weight_version(self, version: str) -> None:
        self.call("POST", "/update_weight_version", json={"new_version": version})

    def load_lora_adapter(self, name: str, path: str) -> None:
        """Load (or replace in place) adapter ``name`` from ``path``, a peft directory the server can read."""
        try:
            self.call("POST", "/v1/load_lora_adapter", json={"lora_name": name, "lora_path": path,
                                                              "load_inplace": True})
        except ServerError as exc:
            if "no route" in str(exc):
                raise ServerError(f"{self.address}: no runtime LoRA loading: start the server with "
                                  "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 and --enable-lora --max-lora-rank R "
                                  "(`rlkit rollout-server --lora-rank R` adds them)") from None
            raise

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
