"""Microsoft Entra ID sign-in for a service principal, as MSAL asks for it.

A ``ClientSecretCredential`` (azure-identity over MSAL) first reads the tenant's OpenID
configuration, ``GET https://login.microsoftonline.com/<tenant>/v2.0/.well-known/
openid-configuration``, then posts the client-credentials grant to the ``token_endpoint``
that document names. Both are answered here with the documented shapes (OpenID Connect
Discovery 1.0; the v2.0 token response: token_type, expires_in, access_token), so the
tests and the request benchmark count authentication as it happens on Azure. The
access token is an unsigned JWT whose ``aud`` is the requested scope, as azure-ai-ml
decodes it.
"""

from __future__ import annotations

import time
from urllib.parse import parse_qs

from tests.azure.fake_azureml.credential import unsigned_jwt
from tests.azure.fake_azureml.server import Recorded, Response

LOGIN_HOST = "login.microsoftonline.com"
TENANT_ID = "72f988bf-0000-4000-8000-2d7cd011db47"
CLIENT_ID = "8b7c9f51-0000-4000-8000-6f1c3c5a2e10"
CLIENT_SECRET = "fake-client-secret-Q8~x"


def is_signin(req: Recorded) -> bool:
    return req.host.split(":")[0] == LOGIN_HOST


def _error(status: int, error: str, code: int, text: str) -> Response:
    return Response(status, {"error": error, "error_description": f"AADSTS{code}: {text}",
                             "error_codes": [code], "timestamp": time.strftime("%F %TZ")})


def answer(req: Recorded) -> Response:
    tenant, _, rest = req.path.lstrip("/").partition("/")
    if tenant == "common" and rest == "discovery/instance":
        # MSAL asks this after a refused token request, to learn the authority's aliases.
        return Response(200, {
            "tenant_discovery_endpoint": f"https://{LOGIN_HOST}/{TENANT_ID}/v2.0/.well-known/"
                                         "openid-configuration",
            "api-version": "1.1",
            "metadata": [{"preferred_network": LOGIN_HOST, "preferred_cache": "login.windows.net",
                          "aliases": [LOGIN_HOST, "login.windows.net", "login.microsoft.com",
                                      "sts.windows.net"]}],
        })
    if tenant != TENANT_ID:
        return _error(400, "invalid_tenant", 90002, f"Tenant '{tenant}' not found.")
    base = f"https://{LOGIN_HOST}/{tenant}"
    if req.method == "GET" and rest == "v2.0/.well-known/openid-configuration":
        return Response(200, {
            "issuer": f"{base}/v2.0",
            "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
            "token_endpoint": f"{base}/oauth2/v2.0/token",
            "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
            "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
            "jwks_uri": f"https://{LOGIN_HOST}/{tenant}/discovery/v2.0/keys",
            "token_endpoint_auth_methods_supported": [
                "client_secret_post", "private_key_jwt", "client_secret_basic"],
            "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
            "scopes_supported": ["openid", "profile", "email", "offline_access"],
            "tenant_region_scope": "EU",
            "cloud_instance_name": "microsoftonline.com",
        })
    if req.method == "POST" and rest == "oauth2/v2.0/token":
        form = {k: v[0] for k, v in parse_qs(req.raw_body.decode()).items()}
        if form.get("grant_type") != "client_credentials":
            return _error(400, "unsupported_grant_type", 70003, "The grant type is not supported.")
        if form.get("client_id") != CLIENT_ID:
            return _error(400, "unauthorized_client", 700016,
                          f"Application with identifier '{form.get('client_id')}' was not found.")
        if form.get("client_secret") != CLIENT_SECRET:
            return _error(401, "invalid_client", 7000215, "Invalid client secret provided.")
        scope = form.get("scope", "")
        expires = 3599
        return Response(200, {"token_type": "Bearer", "expires_in": expires,
                              "ext_expires_in": expires,
                              "access_token": unsigned_jwt(scope, int(time.time()) + expires)})
    return _error(404, "invalid_request", 900561, f"no sign-in route for {req.method} /{rest}")
