"""smoke_test_endpoints through AzureMLWorkspace against the HTTPS fake.

The flow lists the workspace's online endpoints over ARM, fetches keys with listKeys and
scores each deployment at the endpoint's scoringUri, as against a real workspace.
"""

from __future__ import annotations

import pytest

import flows.smoke_test_endpoints as smoke
from flows.parameters import SmokeTestRequest
from tasks import reports
from tasks.endpoint_probes import RESULTS_ARTIFACT_KEY
from tests.azure.fake_azureml.server import Fault
from tests.helpers import run_table
from workspaces.interface import (
    CALLER_HEADER,
    MANAGED_BY_VALUE,
    TAG_MANAGED_BY,
    TAG_MODEL,
    DeploymentSpec,
    EndpointSpec,
)

MANAGED = {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_MODEL: "phi3-ultrachat"}
MODEL = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/1"


def _endpoint(workspace, name: str, tags: dict[str, str]) -> None:
    workspace.begin_create_endpoint(EndpointSpec(name=name, description="smoke test", tags=tags))
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name=name, name="demo", model_id=MODEL, instance_type="Standard_NC6s_v3",
        instance_count=1, tags=tags,
    ))
    workspace.set_traffic(name, {"demo": 100})


@pytest.mark.usefixtures("prefect_server")
def test_smoke_test_on_azure(fake, workspace, monkeypatch, tmp_path) -> None:
    _endpoint(workspace, "chatft-good", MANAGED)
    _endpoint(workspace, "chatft-busy", MANAGED)
    _endpoint(workspace, "chatft-gone", MANAGED)
    _endpoint(workspace, "someone-elses", {"team": "research"})
    fake.server.inject(Fault("POST", r"^/score/chatft-busy$", status=429,
                             body={"error": {"message": "Too many requests"}}))
    fake.server.inject(Fault("POST", r"^/score/chatft-gone$", kind="reset"))
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(reports, "emit", lambda event, name, *a, **k: sent.append((event, name)))
    monkeypatch.setattr(smoke, "load_workspace", lambda block: workspace)
    fake.requests.clear()

    state = smoke.smoke_test_endpoints(
        SmokeTestRequest(download_dir=str(tmp_path / "data"), request_timeout_s=5),
        workspace_block="azure-ml-workspace/test", return_state=True,
    )

    assert state.is_failed()
    with pytest.raises(smoke.SmokeTestFailed) as failure:
        state.result()
    assert "chatft-busy (demo: throttled_429)" in str(failure.value)
    assert "chatft-gone (demo: unreachable)" in str(failure.value)
    assert "chatft-good" not in str(failure.value)
    assert sorted(sent) == [
        # requests that reached an endpoint are recorded, so teardown can subtract them
        ("own-requests", "chatft-busy"),
        ("own-requests", "chatft-good"),
        ("smoke-test.completed", workspace.cache_scope),
        ("smoke-test.failed", "chatft-busy"),
        ("smoke-test.failed", "chatft-gone"),
    ]
    # Scoring went to each managed endpoint's scoringUri with its key and the caller marker;
    # the endpoint not managed by the project was never scored.
    scored = {r.path: r for r in fake.scoring_requests}
    assert set(scored) == {"/score/chatft-good"}  # faults answered the other two
    good = scored["/score/chatft-good"]
    key = fake.keys["chatft-good"]["primaryKey"]
    assert good.headers["authorization"] == f"Bearer {key}"
    assert good.headers[CALLER_HEADER] == "smoke-test"
    assert good.headers["azureml-model-deployment"] == "demo"
    messages = good.json["input_data"]["input_string"][0]
    assert messages[-1]["role"] == "user"
    assert good.json["input_data"]["parameters"]["max_new_tokens"] == 32
    assert not fake.sent("POST", r"/score/someone-elses")
    assert fake.sent("POST", r"/onlineEndpoints/chatft-good/listKeys")


@pytest.mark.usefixtures("prefect_server")
def test_probes_fan_out_one_request_per_endpoint_at_a_time(fake, workspace, monkeypatch,
                                                          tmp_path) -> None:
    """With the defaults, the fleet's probes are in flight together (the old default sent 4
    at a time), an endpoint never gets two requests at once, and each request keeps its own
    timeout: the hanging endpoints time out while the others answer."""
    names = [f"chatft-fleet-{i:02d}" for i in range(20)]
    for name in names:
        fake.add_endpoint(name, MANAGED, {"demo": "Standard_NC6s_v3"})
    hanging = names[:3]
    for name in hanging:
        fake.server.inject(Fault("POST", rf"^/score/{name}$", kind="timeout", delay_s=8,
                                 times=2))
    fake.score_delay_s = 2.0
    monkeypatch.setattr(reports, "emit", lambda *a, **k: None)
    monkeypatch.setattr(smoke, "load_workspace", lambda block: workspace)

    state = smoke.smoke_test_endpoints(
        SmokeTestRequest(download_dir=str(tmp_path / "data"), request_timeout_s=3,
                         requests_per_deployment=2),
        workspace_block="azure-ml-workspace/test", return_state=True,
    )

    assert state.is_failed()
    rows = _artifact_rows(state.state_details.flow_run_id)
    assert len(rows) == 40
    assert {r["status"] for r in rows if r["endpoint"] in hanging} == {"client_timeout"}
    assert {r["status"] for r in rows if r["endpoint"] not in hanging} == {"ok"}
    assert fake.scoring_peak >= 10
    assert set(fake.scoring_peak_per_endpoint.values()) == {1}
    # one listing of the endpoints and one of each endpoint's deployments per run (the
    # rollout recovery and the plan each listed them: two per endpoint)
    listed = [r.path for r in fake.sent("GET", r"/onlineEndpoints/[^/]+/deployments$")]
    assert sorted(listed) == sorted(set(listed)) and len(listed) == len(names)
    assert len(fake.sent("GET", r"/onlineEndpoints$")) == 1


def _artifact_rows(flow_run_id) -> list[dict]:  # noqa: ANN001
    return run_table(flow_run_id, RESULTS_ARTIFACT_KEY)


@pytest.mark.usefixtures("prefect_server")
def test_no_data_folder_is_written_in_the_current_directory(
    fake, workspace, monkeypatch, tmp_path
) -> None:
    """The smoke test on Azure once prepared its conversations in ./smoke-test-dataset: in
    the checkout, on a worker. With no download_dir, the data goes under the user's cache
    folder, by workspace; the current directory is left alone."""
    _endpoint(workspace, "chatft-good", MANAGED)
    monkeypatch.setattr(smoke, "load_workspace", lambda block: workspace)
    cwd, cache = tmp_path / "checkout", tmp_path / "cache"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))

    result = smoke.smoke_test_endpoints(SmokeTestRequest(request_timeout_s=5),
                                        workspace_block="azure-ml-workspace/test")

    assert result.endpoints_tested == ["chatft-good"]
    assert list(cwd.iterdir()) == []
    assert list(cache.glob("chatft-flows/*/smoke-test-dataset/*/test_gen.jsonl"))
