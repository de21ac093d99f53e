"""teardown_idle_endpoints against real local endpoints, with a clock the tests set.

Endpoints are real server processes (most without a deployment, to keep the module quick);
activity is simulated by appending records with chosen times to each endpoint's request
log, exactly as the server writes them. ``now`` is set a few hours after the endpoints were
created, so they are past the grace period without waiting.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import flows.teardown_idle_endpoints as teardown
from flows.parameters import TeardownRequest
from flows.teardown_idle_endpoints import teardown_idle_endpoints
from tasks import reports
from tasks.teardown import DECISIONS_ARTIFACT
from tests.helpers import MANAGED_TAGS, register_model, serve, wait_deployment_ready
from workspaces.errors import InvalidRequest
from workspaces.interface import TAG_PROTECTED, DeploymentSpec, EndpointActivity, EndpointSpec
from workspaces.local import LocalWorkspace

pytestmark = pytest.mark.usefixtures("prefect_server")


# -- helpers -----------------------------------------------------------------------------
def create_endpoints(ws: LocalWorkspace, tags_by_name: dict[str, dict[str, str]]) -> None:
    """Create endpoints without deployments (started side by side) and wait until they answer."""
    for name, tags in tags_by_name.items():
        ws.begin_create_endpoint(EndpointSpec(name=name, description="teardown test", tags=tags))
    deadline = time.monotonic() + 60
    for name in tags_by_name:
        while (e := ws.get_endpoint(name)) is None or e.provisioning_state == "Creating":
            assert time.monotonic() < deadline, f"endpoint {name} did not start"
            time.sleep(0.2)
        assert e.provisioning_state == "Succeeded", e


def log_requests(ws: LocalWorkspace, name: str, *requests: tuple[datetime, str]) -> None:
    """Append (time, caller) records to the endpoint's request log, as its server would."""
    with (ws.root / "endpoints" / name / "requests.jsonl").open("a", encoding="utf-8") as log:
        for moment, caller in requests:
            log.write(json.dumps({"time": moment.timestamp(), "request_id": str(uuid.uuid4()),
                                  "caller": caller, "deployment": None, "status": 200}) + "\n")


def names(ws: LocalWorkspace) -> set[str]:
    return {e.name for e in ws.list_endpoints()}


def outcomes(result: teardown.TeardownResult) -> dict[str, str]:
    return {d.resource: d.outcome for d in result.decisions}


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalWorkspace]:
    """A fresh local workspace without the stand-in model (these endpoints serve nothing, so
    the session's model build is not needed); its endpoints are deleted after the test."""
    ws = LocalWorkspace(tmp_path / "workspace")
    yield ws
    for endpoint in ws.list_endpoints():
        ws.begin_delete_endpoint(endpoint.name)


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Run the flow against a given workspace object (in place of a block)."""

    def _run(ws: LocalWorkspace, now: datetime | None = None, return_state: bool = False,
             **rules: Any) -> Any:
        monkeypatch.setattr(teardown, "load_workspace", lambda block: ws)
        # the pass's clock is the module's utc_now(), not a run parameter
        if now is not None:
            monkeypatch.setattr(teardown, "utc_now", lambda: now)
        return teardown_idle_endpoints(TeardownRequest(**rules), return_state=return_state)

    return _run


@pytest.fixture
def events(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, dict[str, Any]]]:
    sent: list[tuple[str, str, dict[str, Any]]] = []
    monkeypatch.setattr(
        reports, "emit",
        lambda event, name, kind, payload, resource_kind="endpoint": sent.append(
            (event, name, payload)),
    )
    return sent


def later(hours: float = 3) -> datetime:
    """A clock past the default grace period of endpoints created just now."""
    return datetime.now(UTC) + timedelta(hours=hours)


def latest_artifact_rows() -> list[dict[str, str]]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[DECISIONS_ARTIFACT])),
            sort=ArtifactSort.CREATED_DESC, limit=1,
        )
    data = artifact.data
    return json.loads(data) if isinstance(data, str) else data


# -- tests -------------------------------------------------------------------------------
def test_used_endpoint_kept_idle_and_smoke_only_deleted_protected_and_foreign_untouched(
    local: LocalWorkspace, run, events
) -> None:
    create_endpoints(local, {
        "ep-used": MANAGED_TAGS,
        "ep-idle": MANAGED_TAGS,
        "ep-smoke-only": MANAGED_TAGS,
        "ep-protected": {**MANAGED_TAGS, TAG_PROTECTED: "true"},
        "ep-not-ours": {"team": "someone-else"},
    })
    now = later()
    log_requests(local, "ep-used", (now - timedelta(hours=2), "organic"),
                 (now - timedelta(minutes=5), "smoke-test"))
    # Organic use before the window does not count, nor does the project's own traffic.
    log_requests(local, "ep-idle", (now - timedelta(hours=30), "organic"))
    log_requests(local, "ep-smoke-only", *[(now - timedelta(minutes=m), "smoke-test")
                                               for m in (10, 40, 70)],
                 (now - timedelta(hours=1), "finetune-and-deploy"))

    result = run(local, now=now)

    assert outcomes(result) == {"ep-used": "kept", "ep-idle": "deleted",
                                "ep-smoke-only": "deleted", "ep-protected": "kept"}
    assert names(local) == {"ep-used", "ep-protected", "ep-not-ours"}
    by_name = {d.resource: d for d in result.decisions}
    assert "in use: 1 organic" in by_name["ep-used"].reason
    assert by_name["ep-used"].last_organic_request_at is not None
    assert "protected" in by_name["ep-protected"].reason
    assert "project's own requests: 4" in by_name["ep-smoke-only"].reason
    assert sorted((e, n) for e, n, _ in events) == [
        ("endpoint.deleted", "ep-idle"), ("endpoint.deleted", "ep-smoke-only")]

    rows = {r["endpoint"]: r for r in latest_artifact_rows()}
    assert set(rows) == {"ep-used", "ep-idle", "ep-smoke-only", "ep-protected"}
    assert rows["ep-idle"]["decision"] == "deleted"
    assert rows["ep-idle"]["last organic request"] == "none in window"
    assert rows["ep-used"]["requests in window"] == "organic 1, smoke-test 1"
    assert rows["ep-idle"]["est. USD/hour saved"] == "0.00"  # no deployment, nothing billed
    assert rows["ep-protected"]["last organic request"] == "not read"


def test_young_endpoints_are_kept_and_a_dry_run_deletes_nothing(
    local: LocalWorkspace, run, events
) -> None:
    create_endpoints(local, {"ep-a": MANAGED_TAGS, "ep-b": MANAGED_TAGS})

    young = run(local, now=datetime.now(UTC) + timedelta(minutes=20))
    assert outcomes(young) == {"ep-a": "kept", "ep-b": "kept"}
    assert all("younger than the grace period" in d.reason for d in young.decisions)

    dry = run(local, now=later(), dry_run=True)
    assert outcomes(dry) == {"ep-a": "would delete", "ep-b": "would delete"}
    assert names(local) == {"ep-a", "ep-b"}
    assert events == []
    assert {r["decision"] for r in latest_artifact_rows()} == {"would delete"}


class UnreadableActivity(LocalWorkspace):
    """Activity of one endpoint says unavailable, of another raises."""

    def get_endpoint_activity(self, endpoint_name: str, start: datetime,
                              end: datetime) -> EndpointActivity:
        if endpoint_name == "ep-unavailable":
            return EndpointActivity(endpoint_name=endpoint_name, start=start, end=end,
                                    available=False, reason="metrics service said no")
        if endpoint_name == "ep-raises":
            raise InvalidRequest("metrics query refused")
        return super().get_endpoint_activity(endpoint_name, start, end)


def test_unreadable_activity_is_never_taken_for_idle(local: LocalWorkspace, run) -> None:
    create_endpoints(local, {"ep-log-broken": MANAGED_TAGS, "ep-unavailable": MANAGED_TAGS,
                                 "ep-raises": MANAGED_TAGS})
    # A request log that cannot be read (a directory where the file should be).
    (local.root / "endpoints" / "ep-log-broken" / "requests.jsonl").mkdir()

    result = run(UnreadableActivity(local.root), now=later())

    assert outcomes(result) == {"ep-log-broken": "kept", "ep-unavailable": "kept",
                                "ep-raises": "kept"}
    reasons = {d.endpoint: d.reason for d in result.decisions}
    assert "request log unreadable" in reasons["ep-log-broken"]
    assert "metrics service said no" in reasons["ep-unavailable"]
    assert "InvalidRequest: metrics query refused" in reasons["ep-raises"]
    assert names(local) == {"ep-log-broken", "ep-unavailable", "ep-raises"}


def test_deletions_beyond_the_cap_are_skipped_oldest_first(
    local: LocalWorkspace, run
) -> None:
    create_endpoints(local, {"ep-first": MANAGED_TAGS})
    create_endpoints(local, {"ep-second": MANAGED_TAGS})
    create_endpoints(local, {"ep-third": MANAGED_TAGS})

    result = run(local, now=later(), max_deletions_per_run=2)

    assert outcomes(result) == {"ep-first": "deleted", "ep-second": "deleted",
                                "ep-third": "skipped"}
    [skipped] = [d for d in result.decisions if d.outcome == "skipped"]
    assert skipped.reason.startswith("cap reached (max_deletions_per_run=2)")
    assert names(local) == {"ep-third"}


class RefusesOneDeletion(LocalWorkspace):
    """Deleting ``ep-stuck`` fails (a lock on the resource, say); the others work."""

    def begin_delete_endpoint(self, name: str) -> None:
        if name == "ep-stuck":
            raise InvalidRequest("endpoint ep-stuck has a delete lock")
        super().begin_delete_endpoint(name)


def test_a_failed_deletion_is_reported_and_the_others_still_go(
    local: LocalWorkspace, run, events
) -> None:
    create_endpoints(local, {"ep-gone-1": MANAGED_TAGS, "ep-stuck": MANAGED_TAGS,
                                 "ep-gone-2": MANAGED_TAGS})

    state = run(RefusesOneDeletion(local.root), now=later(), return_state=True)

    assert state.is_failed()
    assert "ep-stuck" in state.message
    assert names(local) == {"ep-stuck"}
    rows = {r["endpoint"]: r for r in latest_artifact_rows()}
    assert rows["ep-stuck"]["decision"] == "delete failed"
    assert "delete lock" in rows["ep-stuck"]["reason"]
    assert {rows["ep-gone-1"]["decision"], rows["ep-gone-2"]["decision"]} == {"deleted"}
    assert sorted((e, n) for e, n, _ in events) == [
        ("endpoint.deleted", "ep-gone-1"), ("endpoint.deleted", "ep-gone-2"),
        ("endpoint.deletion-failed", "ep-stuck")]


def test_failed_deployment_is_deleted_and_the_used_endpoint_kept_until_idle(
    workspace: LocalWorkspace, run, events, standin_mlflow_model: Path, tmp_path: Path
) -> None:
    model = register_model(workspace, standin_mlflow_model)
    serve(workspace, model, "ep-serving")
    broken_dir = tmp_path / "broken-model"
    broken_dir.mkdir()
    (broken_dir / "MLmodel").write_text("this is not an MLflow model\n")
    broken = register_model(workspace, broken_dir, name="broken", version="1")
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name="ep-serving", name="broken", model_id=broken.id, instance_type="Local_CPU",
        instance_count=1, tags={},
    ))
    deadline = time.monotonic() + 60
    while workspace.get_deployment("ep-serving", "broken").provisioning_state == "Creating":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    now = later()
    log_requests(workspace, "ep-serving", (now - timedelta(hours=1), "organic"))

    kept = run(workspace, now=now)

    assert outcomes(kept) == {"ep-serving": "kept", "ep-serving/broken": "deleted"}
    endpoint = workspace.get_endpoint("ep-serving")
    assert [d.name for d in endpoint.deployments] == ["demo"] and endpoint.healthy
    assert ("deployment.deleted", "ep-serving.broken") in [(e, n) for e, n, _ in events]
    assert {r["deployment"] for r in latest_artifact_rows()} == {"(whole endpoint)", "broken"}

    # Two days on, nobody used it: idle (it serves traffic, so not "never served").
    idle = run(workspace, now=now + timedelta(days=2))
    [decision] = idle.decisions
    assert decision.outcome == "deleted" and decision.reason.startswith("idle:")
    assert decision.instances == "demo: Local_CPU x 1" and decision.usd_per_hour == 0.0
    assert names(workspace) == set()


def test_a_working_deployment_without_traffic_is_reported_as_a_leftover_not_deleted(
    workspace: LocalWorkspace, run, standin_mlflow_model: Path
) -> None:
    """Kept after a promotion (keep_previous) or left by a rollout: it costs, so the pass
    names it; whether it goes is a person's decision."""
    model = register_model(workspace, standin_mlflow_model)
    serve(workspace, model, "ep-kept")
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name="ep-kept", name="previous", model_id=model.id, instance_type="Local_CPU"))
    wait_deployment_ready(workspace, "ep-kept", "previous", timeout_s=60)
    now = later()
    log_requests(workspace, "ep-kept", (now - timedelta(hours=1), "organic"))

    result = run(workspace, now=now, dry_run=False)

    assert outcomes(result) == {"ep-kept": "kept", "ep-kept/previous": "kept"}
    leftover = next(d for d in result.decisions if d.deployment == "previous")
    assert leftover.reason.startswith("leftover: takes no traffic")
    assert [d.name for d in workspace.get_endpoint("ep-kept").deployments] == [
        "demo", "previous"]


def test_price_table_is_dated_and_unknown_sizes_say_so() -> None:
    from tasks.teardown import PRICE_FILE, format_usd, load_prices
    from workspaces.interface import Deployment, Endpoint

    header = PRICE_FILE.read_text().splitlines()[:5]
    assert any("ILLUSTRATIVE" in line for line in header)
    prices = load_prices()
    assert prices.price_date and prices.price_date != "undated"

    def endpoint(*sizes: tuple[str, int]) -> Endpoint:
        return Endpoint(name="e", scoring_uri=None, provisioning_state="Succeeded", deployments=[
            Deployment(name=f"d{i}", endpoint_name="e", model_id="m", instance_type=size,
                       instance_count=count, provisioning_state="Succeeded")
            for i, (size, count) in enumerate(sizes)])

    for size in ("Standard_NC6s_v3", "Standard_NC12s_v3", "Standard_NC24s_v3",
                 "Standard_NC24ads_A100_v4", "Standard_NC48ads_A100_v4",
                 "Standard_NC96ads_A100_v4", "Standard_ND96asr_v4", "Standard_DS3_v2",
                 "Standard_F4s_v2", "Local_CPU"):
        assert prices.endpoint_cost(endpoint((size, 1))) is not None, size
    assert prices.endpoint_cost(endpoint(("Local_CPU", 1))) == 0.0
    two = prices.endpoint_cost(endpoint(("Standard_NC6s_v3", 2)))
    assert two == pytest.approx(2 * prices.endpoint_cost(endpoint(("Standard_NC6s_v3", 1))))
    assert format_usd(prices.endpoint_cost(endpoint(("Standard_Made_Up", 1)))) == "unknown"


def test_a_pass_over_no_managed_endpoint_says_so(local: LocalWorkspace, run) -> None:
    from tests.helpers import run_artifacts

    state = run(local, return_state=True)
    assert state.is_completed() and state.result().decisions == []
    [artifact] = run_artifacts(state.state_details.flow_run_id, DECISIONS_ARTIFACT)
    assert ": no managed endpoint in the workspace. Rules: idle" in artifact.description
    assert json.loads(artifact.data)[0]["decision"] == "none"
