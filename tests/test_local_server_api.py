"""`chatft server up` talks to a busy server: a 503 (SQLite locked) is tried again.

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

from server.api import api
from server.auth import basic_header
from server.instance import Server
from tests.helpers import answer_json


class _Busy(BaseHTTPRequestHandler):
    answers: list[int] = []
    seen: list[str] = []

    def do_PATCH(self) -> None:  # noqa: N802 - the http.server convention
        self.seen.append(self.rfile.read(int(self.headers["Content-Length"])).decode())
        status = self.answers.pop(0)
        answer_json(self, status, {"ok": True} if status == 200 else
                    {"detail": "database is locked"},
                    {"Retry-After": "0"} if status == 503 else None)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def busy_server():
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Busy)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    server = Server(Path("unused"), "127.0.0.1", http.server_address[1])
    yield server
    http.shutdown()


def test_a_busy_answer_is_tried_again(busy_server):
    _Busy.answers, _Busy.seen = [503, 503, 200], []
    assert api(busy_server, "PATCH", "/deployments/x", {"a": 1}) == {"ok": True}
    assert [json.loads(body) for body in _Busy.seen] == [{"a": 1}] * 3


def test_a_refusal_is_not_tried_again(busy_server):
    _Busy.answers, _Busy.seen = [422], []
    with pytest.raises(HTTPError, match="422"):
        api(busy_server, "PATCH", "/deployments/x", {"a": 1})
    assert len(_Busy.seen) == 1


class _Guarded(BaseHTTPRequestHandler):
    """A server with an auth string and Prefect's CSRF protection on, as a team may run it."""

    auth = basic_header("team:a-test-string")
    tokens: dict[str, str] = {}

    def do_GET(self) -> None:  # noqa: N802 - the http.server convention
        if self.headers.get("Authorization") != self.auth:
            return answer_json(self, 401, {"exception_message": "Unauthorized"})
        client = self.path.partition("client=")[2]
        self.tokens[client] = "token-" + client
        answer_json(self, 200, {"token": self.tokens[client], "client": client})

    def do_PATCH(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        token = self.headers.get("Prefect-Csrf-Token")
        if token is None or self.tokens.get(self.headers.get("Prefect-Csrf-Client")) != token:
            return answer_json(self, 403, {"detail": "Missing CSRF token."})
        if self.headers.get("Authorization") != self.auth:
            return answer_json(self, 401, {"exception_message": "Unauthorized"})
        answer_json(self, 200, {"ok": True})

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_with_auth_and_csrf_protection_is_spoken_to(tmp_path: Path) -> None:
    http = ThreadingHTTPServer(("127.0.0.1", 0), _Guarded)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    auth_file = tmp_path / "auth"
    auth_file.write_text("team:a-test-string\n")
    auth_file.chmod(0o600)
    try:
        server = Server(tmp_path, "127.0.0.1", http.server_address[1],
                        auth_file=auth_file)
        assert api(server, "PATCH", "/deployments/x", {"a": 1}) == {"ok": True}
        assert api(server, "PATCH", "/deployments/y", {"a": 2}) == {"ok": True}
        assert len(_Guarded.tokens) == 1  # one token, fetched once, for both calls
        stranger = Server(tmp_path / "other", "127.0.0.1", http.server_address[1])
        with pytest.raises(HTTPError, match="401"):
            api(stranger, "PATCH", "/deployments/x", {"a": 1})
    finally:
        http.shutdown()
