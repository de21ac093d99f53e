"""Scoring requests to an endpoint's ``scoringUri``, as ``online_endpoints.invoke`` sends them.

``invoke`` in azure-ai-ml cannot add headers and returns only the body text, so the request
is sent here with the same headers the SDK uses (``Authorization: Bearer <key>``,
``azureml-model-deployment``) plus the project's caller marker.
"""

from __future__ import annotations

import time
from typing import Any

import requests

from workspaces.azure.errors import scrub
from workspaces.errors import TransientWorkspaceError
from workspaces.interface import CALLER_HEADER, ScoreResponse

# Response headers worth keeping; the rest (cookies, auth-layer ids) is dropped.
KEPT_HEADERS = (
    "content-type",
    "azureml-model-deployment",
    "x-request-id",
    "ms-azureml-model-error-statuscode",
    "ms-azureml-model-error-reason",
)


def score(
    scoring_uri: str,
    key: str,
    body: dict[str, Any],
    deployment_name: str | None,
    caller: str | None,
    timeout_s: float,
) -> ScoreResponse:
    """POST ``body`` to the endpoint with its key; ``deployment_name`` pins a deployment
    (else the endpoint's traffic picks one) and ``caller`` marks the project's own requests.

    Any HTTP answer, an error status included, comes back as a ScoreResponse with the
    headers in :data:`KEPT_HEADERS`; only a request that got no answer raises
    ``TransientWorkspaceError``, its text scrubbed of the key.
    """
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key}"}
    if deployment_name:
        headers["azureml-model-deployment"] = deployment_name
    if caller:
        headers[CALLER_HEADER] = caller
    started = time.perf_counter()
    try:
        response = requests.post(scoring_uri, json=body, headers=headers, timeout=timeout_s)
    except requests.RequestException as exc:
        raise TransientWorkspaceError(
            f"scoring request to {scoring_uri} failed ({exc.__class__.__name__}: "
            f"{scrub(str(exc), (key,))[:300]}); retry later"
        ) from None
    latency_ms = (time.perf_counter() - started) * 1000
    return ScoreResponse(
        status_code=response.status_code,
        body=response.text,
        latency_ms=latency_ms,
        headers={k: v for k, v in response.headers.items() if k.lower() in KEPT_HEADERS},
    )
