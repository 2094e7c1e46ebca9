"""A stand-in for ``vllm serve`` (only ``/health`` and ``/inference/v1/generate``), in a thread: deterministic
completions that are a pure function of (prompt, seed), the weight version it holds on every span, and switches
that make it fail the ways real servers do (refuse, answer 500, hang)."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def free_port(count: int = 1) -> int:
    """A base port with ``count`` consecutive free ports."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + count < 65000 and all(_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no free port range")


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def fake_tokens(prompt: list[int], seed: int, n: int) -> list[int]:
    return [(sum(prompt) * 31 + seed * 7 + i) % 100 for i in range(n)]


class FakeServer:
    """``mode``: ok | error (500 on generate) | hang (generate and /health never answer) | drop_reused (keeps
    connections alive, then closes each without an answer at its second request, as uvicorn closes idle ones)."""

    def __init__(self, version: str = "v", mode: str = "ok", stale_answers: int = 0):
        self.version, self.mode, self.served, self.dropped = version, mode, 0, 0
        self.stale_answers = stale_answers       # the first ones carry version "stale" (a router's lagging server)
        self.lock = threading.Lock()
        self.release = threading.Event()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1" if mode == "drop_reused" else "HTTP/1.0"
            requests_seen = 0

            def log_message(self, *args):
                pass

            def parse_request(self):
                self.requests_seen += 1
                if fake.mode == "drop_reused" and self.requests_seen == 2:
                    fake.dropped += 1
                    self.close_connection = True          # the request was read: closed without an answer
                    return False
                return super().parse_request()

            def _send(self, code: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if fake.mode == "hang":
                    fake.release.wait(60)
                self._send(200, {})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                if fake.mode == "hang":
                    fake.release.wait(60)
                    return
                if fake.mode == "error":
                    self._send(500, {"error": "injected failure"})
                    return
                sp = body["sampling_params"]
                ids = fake_tokens(body["token_ids"], sp["seed"], sp["max_tokens"])
                with fake.lock:
                    fake.served += 1
                    version = "stale" if fake.served <= fake.stale_answers else fake.version
                time.sleep(0.01)
                self._send(200, {"choices": [{
                    "token_ids": ids, "finish_reason": "length",
                    "logprobs": {"content": [{"token_id": t, "logprob": -1.0} for t in ids]},
                    "weight_versions": [{"version": version, "start": 0, "end": len(ids)}]}]})

        class Server(ThreadingHTTPServer):
            request_queue_size = 256             # uvicorn's backlog is 2048; the default 5 resets bursts

            def handle_error(self, request, client_address):
                pass                                 # a client that gave up on a hung request

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.address = f"127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
