"""A credential that hands out unsigned JWTs, as azure-ai-ml decodes ``aud`` from them."""

from __future__ import annotations

import base64
import json
import time
from typing import Any

from azure.core.credentials import AccessToken


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned_jwt(scope: str, expires: int) -> str:
    """A three-segment JWT with no signature; ``aud`` is the scope minus ``/.default``."""
    audience = scope.split()[0].removesuffix("/.default") if scope else ""
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    claims = _b64(json.dumps({"aud": audience, "exp": expires, "oid": "fake"}).encode())
    return f"{header}.{claims}.{_b64(b'signature')}"


class FakeCredential:
    """``get_token`` returns a three-segment base64url JWT, aud = the scope minus /.default."""

    def __init__(self) -> None:
        self.scopes: list[str] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.scopes.extend(scopes)
        expires = int(time.time()) + 3600
        return AccessToken(unsigned_jwt(scopes[0] if scopes else "", expires), expires)
