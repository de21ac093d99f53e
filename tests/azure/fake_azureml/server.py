"""HTTPS plumbing of the fake: request recording, fault injection, dispatch."""

from __future__ import annotations

import json
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    """One request as the SDK sent it."""

    method: str
    host: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    raw_body: bytes
    at: float = field(default_factory=time.monotonic)
    # The status it was answered with (None until answered, or when the connection dropped).
    status: int | None = None

    @property
    def api_version(self) -> str | None:
        return self.query.get("api-version")

    @property
    def json(self) -> Any:
        return json.loads(self.raw_body) if self.raw_body else None


@dataclass
class Response:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)

    def encoded(self) -> tuple[bytes, str]:
        if self.body is None:
            return b"", "application/json"
        if isinstance(self.body, bytes):
            return self.body, self.headers.get("Content-Type", "application/octet-stream")
        if isinstance(self.body, str):
            return self.body.encode(), self.headers.get("Content-Type", "text/plain")
        return json.dumps(self.body).encode(), "application/json"


@dataclass
class Fault:
    """A response (or a dropped connection) served instead of the real one.

    ``kind``: "respond" (status/body/headers), "reset" (close the socket, no answer) or
    "timeout" (hold the request ``delay_s`` seconds, then close).
    """

    method: str
    path_pattern: str
    status: int = 500
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    times: int = 1
    kind: str = "respond"
    delay_s: float = 5.0
    when: Callable[[Recorded], bool] | None = None
    hits: int = 0

    def matches(self, req: Recorded) -> bool:
        if self.times <= 0 or req.method != self.method:
            return False
        if not re.search(self.path_pattern, req.path):
            return False
        return self.when is None or bool(self.when(req))


class FakeServer:
    """Threaded HTTPS server handing each request to ``handler`` unless a fault matches."""

    def __init__(self, handler: Callable[[Recorded], Response], cert: Path, key: Path) -> None:
        self.handler = handler
        self.requests: list[Recorded] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet test output
                pass

            def _serve(self) -> None:
                owner._serve(self)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def inject(self, fault: Fault) -> Fault:
        with self._lock:
            self.faults.append(fault)
        return fault

    def _take_fault(self, req: Recorded) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.matches(req):
                    fault.times -= 1
                    fault.hits += 1
                    return fault
        return None

    def _serve(self, h: BaseHTTPRequestHandler) -> None:
        url = urlsplit(h.path)
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length else b""
        query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        req = Recorded(
            method=h.command,
            host=h.headers.get("Host", ""),
            path=url.path,
            query=query,
            headers={k.lower(): v for k, v in h.headers.items()},
            raw_body=raw,
        )
        with self._lock:
            self.requests.append(req)
        fault = self._take_fault(req)
        if fault is not None and fault.kind in ("reset", "timeout"):
            if fault.kind == "timeout":
                time.sleep(fault.delay_s)
            h.close_connection = True
            try:
                h.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        try:
            response = (
                Response(fault.status, fault.body, dict(fault.headers))
                if fault is not None
                else self.handler(req)
            )
        except Exception as exc:  # noqa: BLE001 - a fake bug must surface as a 500, not a hang
            response = Response(500, {"error": {"code": "FakeBug", "message": repr(exc)}})
        payload, content_type = response.encoded()
        req.status = response.status
        h.send_response(response.status)
        headers = {"Content-Type": content_type, **response.headers}
        for name, value in headers.items():
            h.send_header(name, value)
        h.send_header("Content-Length", str(len(payload)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(payload)
