"""`local_server.py up` talks to a busy server: a 503 (SQLite locked) is tried again.

Seen in a fresh-clone CI run: the PATCH that makes a deployment refuse unknown parameters
answered 503, `up` died, and every server test errored at setup.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.error import HTTPError

import pytest

from tests.helpers import load_local_server

local_server = load_local_server()


class _Busy(BaseHTTPRequestHandler):
    answers: list[int] = []
    seen: list[str] = []

    def do_PATCH(self) -> None:  # noqa: N802 - the http.server convention
        self.seen.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
        status = self.answers.pop(0)
        body = b'{"ok": true}' if status == 200 else b'{"detail": "database is locked"}'
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def busy_server():
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    server = local_server.Server(Path("unused"), "127.0.0.1", http.server_address[1])
    yield server
    http.shutdown()


def test_a_busy_answer_is_tried_again(busy_server):
    _Busy.answers, _Busy.seen = [503, 503, 200], []
    assert local_server.api(busy_server, "PATCH", "/deployments/x", {"a": 1}) == {"ok": True}
    assert [json.loads(body) for body in _Busy.seen] == [{"a": 1}] * 3


def test_a_refusal_is_not_tried_again(busy_server):
    _Busy.answers, _Busy.seen = [422], []
    with pytest.raises(HTTPError, match="422"):
        local_server.api(busy_server, "PATCH", "/deployments/x", {"a": 1})
    assert len(_Busy.seen) == 1
