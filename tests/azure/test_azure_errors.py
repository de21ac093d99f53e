"""Faults injected at the HTTP level come out as the right workspace errors, without secrets."""

from __future__ import annotations

import traceback

import pytest

from tests.azure.conftest import make_workspace
from tests.azure.fake_azureml import Fault
from workspaces.errors import (
    AuthenticationFailed,
    InvalidRequest,
    QuotaExceeded,
    ResourceNotFound,
    TransientWorkspaceError,
    WorkspaceError,
)
from workspaces.interface import DeploymentSpec, EndpointSpec

COMPUTE = r"/computes/gpu-cluster-big$"
LEAKY = "AccountKey=c2VjcmV0LWtleS12YWx1ZQ== sig=abcdef0123 Bearer eyJhbGciOi.eyJhdWQiOi.c2ln"


def _error(status: int, code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


@pytest.mark.parametrize(
    ("fault", "expected", "words"),
    [
        (
            Fault(
                "GET",
                COMPUTE,
                429,
                _error(429, "TooManyRequests", "slow down"),
                {"Retry-After": "1"},
            ),
            TransientWorkspaceError,
            "retry later",
        ),
        (
            Fault("GET", COMPUTE, 500, _error(500, "InternalServerError", "boom")),
            TransientWorkspaceError,
            "retry later",
        ),
        (
            Fault("GET", COMPUTE, 503, _error(503, "ServiceUnavailable", "busy")),
            TransientWorkspaceError,
            "retry later",
        ),
        (Fault("GET", COMPUTE, kind="reset"), TransientWorkspaceError, "unreachable"),
        (
            Fault("GET", COMPUTE, 401, _error(401, "ExpiredAuthenticationToken", "expired")),
            AuthenticationFailed,
            "credentials block",
        ),
        (
            Fault("GET", COMPUTE, 403, _error(403, "AuthorizationFailed", "no access")),
            AuthenticationFailed,
            "AzureML Data Scientist",
        ),
        (
            Fault("GET", COMPUTE, 400, _error(400, "BadArgument", "bad name")),
            InvalidRequest,
            "bad name",
        ),
        (
            Fault("GET", COMPUTE, 409, _error(409, "Conflict", "busy with another operation")),
            InvalidRequest,
            "HTTP 409",
        ),
    ],
    ids=["429", "500", "503", "reset", "401", "403", "400", "409"],
)
def test_faults_map_to_workspace_errors(fake, workspace, fault, expected, words):
    fake.server.inject(fault)
    with pytest.raises(expected, match=words):
        workspace.get_compute("gpu-cluster-big")


@pytest.mark.parametrize("status", [400, 409, 503])
def test_the_services_words_come_once(fake, workspace, status):
    """Messages read "(UserError) X ... Code: UserError Message: X": azure-core's text of
    an error repeats its code and message; they are said once."""
    message = "Compute name gpu-cluster-big is reserved in this region"
    fake.server.inject(Fault("GET", COMPUTE, status, _error(status, "UserError", message),
                             times=10))
    with pytest.raises(WorkspaceError) as info:
        workspace.get_compute("gpu-cluster-big")
    text = str(info.value)
    assert text.count(message) == 1, text
    assert "UserError: " + message in text and "Code:" not in text, text


def test_timeout_is_transient(fake, credential):
    workspace = make_workspace(fake, credential, read_timeout=0.5)
    fake.server.inject(Fault("GET", COMPUTE, kind="timeout", delay_s=2))
    with pytest.raises(TransientWorkspaceError):
        workspace.get_compute("gpu-cluster-big")


def test_sdk_retries_throttling_honouring_retry_after(fake, credential):
    fake.add_compute("gpu-cluster-big", "Standard_NC6s_v3")
    workspace = make_workspace(fake, credential, retry_total=1)
    fault = fake.server.inject(
        Fault("GET", COMPUTE, 429, _error(429, "TooManyRequests", "x"), {"Retry-After": "1"})
    )
    assert workspace.get_compute("gpu-cluster-big").name == "gpu-cluster-big"
    assert fault.hits == 1 and len(fake.sent("GET", COMPUTE)) == 2


def test_quota_refusal(fake, workspace):
    fake.endpoints["ep-1"] = {}
    fake.server.inject(
        Fault(
            "PUT",
            r"/deployments/demo$",
            400,
            _error(
                400,
                "OutOfQuota",
                "Not enough cluster CPU quota. The amount of additional CPU "
                "quota requested is 8, and you are currently using 14.",
            ),
        )
    )
    fake.server.inject(
        Fault(
            "GET",
            r"/onlineEndpoints/ep-1$",
            200,
            {
                "id": f"{fake.ws_path}/onlineEndpoints/ep-1",
                "name": "ep-1",
                "location": "eastus",
                "properties": {"authMode": "Key", "provisioningState": "Succeeded"},
            },
        )
    )
    with pytest.raises(QuotaExceeded, match="quota"):
        workspace.begin_create_deployment(DeploymentSpec(
            endpoint_name="ep-1", name="demo", model_id="azureml:m:1",
            instance_type="Standard_NC6s_v3", instance_count=1, tags={},
        ))


def test_missing_resources(fake, workspace):
    assert workspace.get_compute("gpu-cluster-big") is None
    assert workspace.get_endpoint("nope") is None
    with pytest.raises(ResourceNotFound):
        workspace.get_endpoint_keys("nope")


def test_unreachable_scoring_uri_is_transient_and_hides_the_key(fake, workspace):
    workspace.begin_create_endpoint(EndpointSpec(name="ep-1", description="", tags={}))
    key = fake.keys["ep-1"]["primaryKey"]
    fake.endpoints["ep-1"]["properties"]["scoringUri"] = "https://127.0.0.1:9/score"
    with pytest.raises(TransientWorkspaceError) as info:
        workspace.invoke("ep-1", {"input_data": {}})
    assert key not in _everything(info.value)


def _everything(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


@pytest.mark.parametrize("status", [400, 401, 403, 429, 500])
def test_no_secret_in_error_text(fake, workspace, credential, status):
    fake.server.inject(Fault("GET", COMPUTE, status, _error(status, "Leaky", f"echo: {LEAKY}")))
    with pytest.raises(Exception) as info:
        workspace.get_compute("gpu-cluster-big")
    text = _everything(info.value)
    token = credential.get_token("https://management.azure.com/.default").token
    for secret in (
        "c2VjcmV0LWtleS12YWx1ZQ==",
        "sig=abcdef0123",
        "eyJhbGciOi.eyJhdWQiOi.c2ln",
        token.split(".")[0] + "." + token.split(".")[1],
    ):
        assert secret not in text
