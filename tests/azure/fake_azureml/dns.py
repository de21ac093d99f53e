"""Name resolution that sends the fake's hosts to it.

The storage client needs ``.blob.core.`` in a host to find the account name, so blobs go
to ``<account>.blob.core.fake.test``: every ``*.fake.test`` resolves to 127.0.0.1. Sign-in
goes to the real authority host, ``login.microsoftonline.com`` on port 443 (MSAL asks
login.microsoftonline.com itself to vouch for any other authority), and Azure Monitor to
the regional ``<location>.metrics.monitor.azure.com`` a workspace built from its blocks
uses: those hosts resolve to 127.0.0.1 *and the fake's port*, so the TLS check still sees
the real host name, which the fake's certificate carries.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tests.azure.fake_azureml.signin import LOGIN_HOST

MONITOR_SUFFIX = ".metrics.monitor.azure.com"
HOST_NAMES = ["localhost", "*.blob.core.fake.test", LOGIN_HOST, f"*{MONITOR_SUFFIX}"]


def resolver(port: int, real: Callable[..., Any] = socket.getaddrinfo) -> Callable[..., Any]:
    """A ``getaddrinfo`` that answers for the fake on ``port`` and asks ``real`` otherwise."""

    def getaddrinfo(host: Any, service: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(host, str) and host.endswith(".fake.test"):
            host = "127.0.0.1"
        elif host == LOGIN_HOST or (isinstance(host, str) and host.endswith(MONITOR_SUFFIX)):
            host, service = "127.0.0.1", port
        return real(host, service, *args, **kwargs)

    return getaddrinfo


@contextmanager
def routed_to(port: int) -> Iterator[None]:
    """Resolve the fake's hosts to the fake on ``port`` inside the block."""
    real = socket.getaddrinfo
    socket.getaddrinfo = resolver(port, real)
    try:
        yield
    finally:
        socket.getaddrinfo = real
