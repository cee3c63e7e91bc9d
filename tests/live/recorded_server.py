"""A web service on 127.0.0.1 that answers as a real one would, for the forecast clients' tests.

The internet cannot be reached here, so each client is tested against this server, which serves
responses in the service's documented format (the format's source is named where each response is
made, in ``test_fetched.py``), and also the ways a real service fails: an error status with its
body, an answer slower than the client waits, a malformed body. Each request takes the next
*mode* of a script (the last one repeats), so a test can walk a client through a sequence of
failures; every request is recorded (path and query) for the test to check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Answer:
    """One response: status, body, content type; ``delay_s`` before it (a timeout when long)."""

    status: int = 200
    body: bytes | str = b""
    content_type: str = "application/json"
    delay_s: float = 0.0


@dataclass
class RecordedServer:
    """``modes``: name → (query dict → :class:`Answer`); ``script``: the modes in request order."""

    modes: dict[str, Callable[[dict[str, str]], Answer]]
    script: list[str]
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                u = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(u.query).items()}
                with server._lock:
                    server.requests.append((u.path, query))
                    mode = server.script[min(len(server.requests), len(server.script)) - 1]
                a = server.modes[mode](query)
                if a.delay_s:
                    time.sleep(a.delay_s)
                body = a.body.encode() if isinstance(a.body, str) else a.body
                try:
                    self.send_response(a.status)
                    self.send_header("Content-Type", a.content_type)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (a timeout test)

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> RecordedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
