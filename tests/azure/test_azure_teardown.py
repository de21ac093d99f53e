"""teardown_idle_endpoints through AzureMLWorkspace against the HTTPS fake (ARM + Azure Monitor).

Also counts the HTTP calls one pass makes per endpoint, so the cost of running the flow
every 30 minutes against a real workspace is known (ARM throttles at roughly 12,000 reads
per hour per subscription; Azure Monitor metrics queries are billed per call beyond a quota).
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

import flows.teardown_idle_endpoints as teardown
from tasks import reports
from tests.azure.conftest import make_workspace
from workspaces.interface import (
    MANAGED_BY_VALUE,
    TAG_MANAGED_BY,
    TAG_PROTECTED,
    DeploymentSpec,
    EndpointSpec,
)

MANAGED = {TAG_MANAGED_BY: MANAGED_BY_VALUE}
MODEL = "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/1"


def _endpoint(workspace, name: str, tags: dict[str, str], size: str = "Standard_NC6s_v3"):
    workspace.begin_create_endpoint(EndpointSpec(name=name, description="teardown test", tags=tags))
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name=name, name="demo", model_id=MODEL, instance_type=size, instance_count=2,
        tags=tags,
    ))
    workspace.set_traffic(name, {"demo": 100})
    # The fake finishes provisioning when its operation is polled; the SDK here does not wait.
    fake = workspace._test_fake
    fake.endpoints[name]["properties"]["provisioningState"] = "Succeeded"
    fake.deployments[name]["demo"]["properties"]["provisioningState"] = "Succeeded"


def _calls_for(fake, name: str) -> list[str]:
    """The recorded calls about one endpoint (ARM paths and Azure Monitor resource ids)."""
    calls = []
    for req in fake.requests:
        about = f"/onlineEndpoints/{name}" in req.path or req.path.endswith(f"/done-{name}")
        if req.path.endswith("/metrics:getBatch"):
            about = any(r.endswith(f"/onlineEndpoints/{name}") for r in req.json["resourceids"])
        if about:
            kind = "monitor" if "metrics" in req.path else "arm"
            calls.append(f"{kind} {req.method} {req.path.split('/onlineEndpoints/')[-1]}")
    return calls


@pytest.mark.usefixtures("prefect_server")
def test_teardown_pass_on_azure(fake, workspace, credential, monkeypatch) -> None:
    workspace._test_fake = fake
    _endpoint(workspace, "chatft-used", MANAGED)
    _endpoint(workspace, "chatft-idle", MANAGED, size="Standard_NC24ads_A100_v4")
    _endpoint(workspace, "chatft-keep", {**MANAGED, TAG_PROTECTED: "yes"})
    _endpoint(workspace, "someone-elses", {"team": "research"})
    now = datetime.now(UTC) + timedelta(hours=3)  # the fake stamps createdAt with real time
    fake.add_metric_point("chatft-used", "demo", 4,
                          (now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"))
    sent: list[tuple[str, str]] = []
    monkeypatch.setattr(reports, "emit", lambda event, name, *a, **k: sent.append((event, name)))
    # The pass loads its own workspace, as a scheduled run does: nothing read while the
    # endpoints were made stands for its reads.
    monkeypatch.setattr(teardown, "load_workspace",
                        lambda block: make_workspace(fake, credential))
    fake.requests.clear()

    monkeypatch.setattr(teardown, "utc_now", lambda: now)
    result = teardown.teardown_idle_endpoints(workspace_block="azure-ml-workspace/test")

    outcomes = {d.resource: d.outcome for d in result.decisions}
    assert outcomes == {"chatft-used": "kept", "chatft-idle": "deleted", "chatft-keep": "kept"}
    assert set(fake.endpoints) == {"chatft-used", "chatft-keep", "someone-elses"}
    assert sent == [("endpoint.deleted", "chatft-idle")]
    idle = next(d for d in result.decisions if d.endpoint == "chatft-idle")
    assert idle.instances == "demo: Standard_NC24ads_A100_v4 x 2"
    assert idle.usd_per_hour == pytest.approx(2 * 3.673)
    # One batch query asked Azure Monitor about both endpoints that were not held.
    [query] = fake.sent("POST", r"/metrics:getBatch$")
    assert sorted(r.rsplit("/", 1)[-1] for r in query.json["resourceids"]) == [
        "chatft-idle", "chatft-used"]
    assert query.query["metricnames"] == "RequestsPerMinute"

    per_endpoint = {n: _calls_for(fake, n) for n in ("chatft-used", "chatft-idle", "chatft-keep",
                                                     "someone-elses")}
    shared = [r for r in fake.requests if r.path.endswith("/onlineEndpoints")]
    print(f"\nAzure HTTP calls in one teardown pass over {len(per_endpoint)} endpoints: "
          f"{len(fake.requests)} in all; shared list calls: {len(shared)}")
    for name, calls in per_endpoint.items():
        print(f"  {name}: {len(calls)} call(s): {dict(Counter(calls))}")
    # Listing costs one call per managed endpoint (its deployments) and none for another
    # team's, judging one metrics query, deleting one DELETE plus polling.
    assert len(shared) == 1
    assert per_endpoint["someone-elses"] == []
    assert len(per_endpoint["chatft-keep"]) == 1  # protected: listed, activity not read
    assert len(per_endpoint["chatft-used"]) == 2
    assert len(per_endpoint["chatft-idle"]) <= 6


@pytest.mark.usefixtures("prefect_server")
def test_recorded_smoke_tests_are_not_use_on_azure(fake, workspace, monkeypatch) -> None:
    """Azure Monitor cannot see the caller marker: recorded own requests are subtracted."""
    import time

    from prefect.events.worker import EventsWorker

    from tasks.own_traffic import record_own_requests
    from tests.helpers import count_own_requests

    workspace._test_fake = fake
    _endpoint(workspace, "chatft-smoked", MANAGED)
    _endpoint(workspace, "chatft-mixed", MANAGED)
    now = datetime.now(UTC) + timedelta(hours=3)
    stamp = (now - timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
    fake.add_metric_point("chatft-smoked", "demo", 3, stamp)
    fake.add_metric_point("chatft-mixed", "demo", 5, stamp)
    for name in ("chatft-smoked", "chatft-mixed"):
        record_own_requests(name, "azure", "smoke-test", 3)
    EventsWorker.drain_all()
    deadline = time.monotonic() + 30
    while count_own_requests("chatft-mixed", "azure", now - timedelta(hours=24), now) < 3:
        assert time.monotonic() < deadline, "recorded requests never reached the server"
        time.sleep(0.5)
    monkeypatch.setattr(teardown, "load_workspace", lambda block: workspace)

    monkeypatch.setattr(teardown, "utc_now", lambda: now)
    result = teardown.teardown_idle_endpoints(workspace_block="azure-ml-workspace/test")

    decisions = {d.endpoint: d for d in result.decisions}
    assert decisions["chatft-smoked"].outcome == "deleted"
    assert "idle" in decisions["chatft-smoked"].reason
    assert decisions["chatft-mixed"].outcome == "kept"
    assert "2 organic request(s)" in decisions["chatft-mixed"].reason


@pytest.mark.usefixtures("prefect_server")
def test_teardown_asks_azure_little_per_endpoint(fake, workspace, monkeypatch) -> None:
    """55 endpoints: activity in 2 batch queries (50 ids at most each), one deployments list
    per endpoint, and a deletion is the DELETE plus polls paced by the service's Retry-After."""
    created = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    used = [f"chatft-used-{i:02d}" for i in range(50)]
    idle = [f"chatft-idle-{i}" for i in range(5)]
    for name in used + idle:
        fake.add_endpoint(name, MANAGED, {"demo": "Standard_NC6s_v3"}, created_at=created)
    stamp = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in used:
        fake.add_metric_point(name, "demo", 4, stamp)
    fake.delete_polls = 2  # each deletion answers "still running" twice, Retry-After: 1
    monkeypatch.setattr(reports, "emit", lambda *a, **k: None)
    monkeypatch.setattr(teardown, "load_workspace", lambda block: workspace)
    fake.requests.clear()

    result = teardown.teardown_idle_endpoints(workspace_block="azure-ml-workspace/test")

    assert sorted(result.named("deleted")) == idle
    assert sorted(result.named("kept")) == used
    queries = fake.sent("POST", r"/metrics:getBatch$")
    asked = [rid.rsplit("/", 1)[-1] for q in queries for rid in q.json["resourceids"]]
    assert len(queries) == 2 and all(len(q.json["resourceids"]) <= 50 for q in queries)
    assert sorted(asked) == sorted(used + idle)
    arm = [r for r in fake.requests if "metrics" not in r.path]
    assert [r.path for r in arm if r.path.endswith("/onlineEndpoints")] == [f"{fake.ws_path}"
                                                                            "/onlineEndpoints"]
    for name in used:  # kept: its deployments, listed once; nothing else
        assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in arm
                if f"/onlineEndpoints/{name}" in r.path] == [("GET", "deployments")]
    for name in idle:
        about = [r for r in arm if f"/onlineEndpoints/{name}" in r.path]
        polls = [r for r in arm if r.path.endswith(f"/done-{name}")]
        assert [(r.method, r.path.rsplit("/", 1)[-1]) for r in about] == [
            ("GET", "deployments"), ("DELETE", name)]
        assert len(polls) == 3  # 202, 202, then 200: no extra reads of the endpoint
        # After each 202 (Retry-After: 1) the next poll waits the second it asked for.
        assert all(b.at - a.at >= 0.9 for a, b in zip(polls, polls[1:], strict=False))
