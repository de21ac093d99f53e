"""Calls of a running server's REST API, tried again while the server is busy."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from server.instance import Server

# A busy SQLite-backed server answers 503 while its database is locked (a worker and the
# scheduler write at the same moment); `up` once died on such a PATCH and left a
# deployment half-configured. These are retried, with back-off, for up to about a minute.
BUSY_STATUSES = (429, 503)
API_ATTEMPTS = 8


def api(server: Server, method: str, path: str, body: object = None) -> object:
    """One call of the server's REST API; the parsed JSON answer (None when empty).

    A busy answer (503, 429) is tried again, after its Retry-After or a growing pause.
    """
    for attempt in range(API_ATTEMPTS):
        request = urllib.request.Request(  # noqa: S310 - our own server's http URL
            server.api_url + path, method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers=server.headers(),
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310 - ours
                text = resp.read()
            return json.loads(text) if text else None
        except urllib.error.HTTPError as exc:
            # A server with CSRF protection on refuses a change without a token (403,
            # "Missing CSRF token."): get one, once, and send the call again.
            if exc.code == 403 and server._csrf is None and b"CSRF" in exc.read():
                server.fetch_csrf_token()
                continue
            if exc.code not in BUSY_STATUSES or attempt == API_ATTEMPTS - 1:
                raise
            pause = _retry_after(exc) or min(0.5 * 2**attempt, 15.0)
            time.sleep(pause)
    raise AssertionError("unreachable")


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    try:
        return min(float(exc.headers.get("Retry-After", "")), 15.0)
    except ValueError:
        return None
