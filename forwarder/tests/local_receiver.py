"""A real HTTP server on 127.0.0.1 that stands in for the zulip-listeners receiver in tests.

It records every request (path, lower-cased headers, raw body, when it arrived and the status
it got) and answers from a script of responses; when the script runs out it asks ``answer``
(a function of the request, e.g. to refuse one realm), and when that gives nothing it answers
``200 {"accepted": N, "duplicates": 0}``.  A scripted response can also drop the connection
or stall, to provoke client-side errors.

``GET`` requests (the forwarder's readiness probe, ``/readyz``) are recorded apart, in
``probes``, and answered ``readyz_status`` (200 unless a test changes it), or what
``readyz_answer`` returns for the request when it is set.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    drop_connection: bool = False
    stall_seconds: float = 0.0


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)
    status: int = 0

    def json(self) -> Any:
        return json.loads(self.body)


class LocalReceiver:
    def __init__(self, port: int = 0) -> None:
        self.requests: list[Recorded] = []
        self.probes: list[Recorded] = []
        self.script: deque[Reply] = deque()
        self.answer: Callable[[Recorded], Reply | None] | None = None
        self.readyz_status = 200
        self.readyz_answer: Callable[[Recorded], int] | None = None
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}/zulip/events"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def reply(self, *replies: Reply) -> None:
        self.script.extend(replies)

    def _next_reply(self, recorded: Recorded) -> Reply:
        reply = self._choose(recorded)
        recorded.status = reply.status
        return reply

    def _choose(self, recorded: Recorded) -> Reply:
        with self._lock:
            self.requests.append(recorded)
            if self.script:
                return self.script.popleft()
            answer = self.answer
        chosen = answer(recorded) if answer is not None else None
        if chosen is not None:
            return chosen
        try:
            accepted = len(recorded.json()["events"])
        except (ValueError, KeyError, TypeError):
            accepted = 0
        return Reply(200, {"accepted": accepted, "duplicates": 0})

    def _probe_status(self, recorded: Recorded) -> int:
        with self._lock:
            self.probes.append(recorded)
            answer = self.readyz_answer
        recorded.status = answer(recorded) if answer is not None else self.readyz_status
        return recorded.status

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                headers = {key.lower(): value for key, value in self.headers.items()}
                status = receiver._probe_status(Recorded(self.path, headers, b""))
                ready = "ready" if status == 200 else "unavailable"
                self._send(Reply(status, {"status": ready}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                headers = {key.lower(): value for key, value in self.headers.items()}
                reply = receiver._next_reply(Recorded(self.path, headers, body))
                if reply.drop_connection:
                    self.close_connection = True
                    return
                if reply.stall_seconds:
                    time.sleep(reply.stall_seconds)
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                payload = json.dumps(reply.body if reply.body is not None else {}).encode()
                try:
                    self.send_response(reply.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    for key, value in reply.headers.items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    self.close_connection = True  # the client gave up (timeout tests)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler
