"""smoke_test_endpoints against real local endpoints, one fault of each kind.

Three endpoint servers serve the whole module: ``smoke-faults`` with one deployment per
fault drill (healthy, slow, garbage, ``{}``, 429, 424), ``smoke-dead`` whose server is
killed, and ``smoke-badkey`` whose key file is rotated behind its server's back. A fourth
endpoint, tagged ``chatft-no-smoke-test``, is never started serving and must be skipped.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.client.orchestration import get_client

from flows.parameters import ScoringParameters, SmokeTestRequest
from flows.smoke_test_endpoints import smoke_test_endpoints
from tasks.endpoint_probes import (
    RESULTS_ARTIFACT_KEY,
    SMOKE_TEST_CALLER,
    classify_exception,
    classify_reply,
    plan_from_endpoints,
)
from tests.helpers import MANAGED_TAGS, register_model, run_table, serve
from workspaces.interface import (
    TAG_NO_SMOKE_TEST,
    Deployment,
    DeploymentSpec,
    Endpoint,
    EndpointSpec,
    ScoreResponse,
)
from workspaces.local import LocalWorkspace
from workspaces.local.catalog import STANDIN_NAME, STANDIN_VERSION
from workspaces.local.state import write_json

pytestmark = pytest.mark.usefixtures("prefect_server")

FAULTS = "smoke-faults"
DEAD = "smoke-dead"
BADKEY = "smoke-badkey"
SKIPPED = "smoke-skipped"
TIMEOUT_S = 6.0
# deployment on FAULTS -> (simulation, expected status)
DRILLS = {
    "healthy": (None, "ok"),
    "slow": ({"delay_s": 10}, "client_timeout"),
    "garbage": ({"body": "garbage"}, "bad_reply"),
    "filtered": ({"status_code": 200, "body": "{}"}, "content_filtered"),
    "busy": ({"status_code": 429, "body": '{"error": {"message": "too many requests"}}'},
             "throttled_429"),
    "broken": ({"status_code": 424, "body": '{"error": {"message": "CUDA out of memory"}}'},
               "model_error_424"),
}
EXPECTED = {
    **{(FAULTS, name): status for name, (_, status) in DRILLS.items()},
    (DEAD, "demo"): "unreachable",
    (BADKEY, "demo"): "unauthorized_401",
}


def _traffic(names: list[str]) -> dict[str, int]:
    share, rest = divmod(100, len(names))
    return {name: share + (1 if i < rest else 0) for i, name in enumerate(names)}


def _add_deployments(ws: LocalWorkspace, model_id: str) -> None:
    for name in DRILLS:
        if name != "demo" and ws.get_deployment(FAULTS, name) is None:
            ws.begin_create_deployment(DeploymentSpec(
                endpoint_name=FAULTS, name=name, model_id=model_id, instance_type="Local_CPU",
                instance_count=1, tags={"chatft-model-version": "7"},
            ))
    deadline = time.monotonic() + 120
    while any(ws.get_deployment(FAULTS, n).provisioning_state == "Creating" for n in DRILLS):
        assert time.monotonic() < deadline, "fault deployments not ready"
        time.sleep(0.2)


def _rotate_key_file(ws: LocalWorkspace, name: str) -> None:
    # The server keeps the keys it read at start; the workspace now sends a new one, as
    # after a key regeneration the serving side never picked up. The server re-reads
    # keys.json whenever endpoint.json changes, and the first read of an endpoint that
    # answers records it Succeeded (a write): that read must come before the rotation, or
    # the smoke test's own listing makes the server take the new key (seen once in CI).
    # The server also polls endpoint.json (every 0.5 s, later on a loaded machine): a write
    # it has not seen yet when keys.json changes makes it read the new key too, so the
    # rotation waits until the last write is a few polls old.
    deadline = time.monotonic() + 60
    while ws.get_endpoint(name).provisioning_state != "Succeeded":
        assert time.monotonic() < deadline, f"{name} never settled"
        time.sleep(0.2)
    config = ws.root / "endpoints" / name / "endpoint.json"
    while (age := time.time() - config.stat().st_mtime) < 3:
        time.sleep(3 - age)
    write_json(ws.root / "endpoints" / name / "keys.json",
               {"primary": secrets.token_urlsafe(32), "secondary": secrets.token_urlsafe(32)},
               private=True)


@pytest.fixture(scope="module")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, standin_dir: Path, standin_mlflow_model: Path
) -> Iterator[LocalWorkspace]:
    """The module's endpoints (built once; each drill is set per test)."""
    ws = LocalWorkspace(tmp_path_factory.mktemp("smoke") / "workspace")
    target = ws.root / "catalog" / STANDIN_NAME / STANDIN_VERSION
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(standin_dir, target)
    model = register_model(ws, standin_mlflow_model)
    try:
        ws.begin_create_endpoint(EndpointSpec(
            name=SKIPPED, description="opted out",
            tags={**MANAGED_TAGS, TAG_NO_SMOKE_TEST: "true"},
        ))
        serve(ws, model, FAULTS, deployment="healthy")
        serve(ws, model, DEAD)
        serve(ws, model, BADKEY)
        _add_deployments(ws, model.id)
        ws.set_traffic(FAULTS, _traffic(list(DRILLS)))
        ws.endpoints.stop(DEAD)
        _rotate_key_file(ws, BADKEY)
        yield ws
    finally:
        for endpoint in ws.list_endpoints():
            ws.begin_delete_endpoint(endpoint.name)


def _set_drills(ws: LocalWorkspace, drills: dict[str, tuple[dict | None, str]]) -> None:
    for name, (simulation, _) in drills.items():
        ws.endpoints.set_simulation(FAULTS, name, simulation)
    time.sleep(1.2)  # the server re-reads endpoint.json every 0.5 s


def _run(ws: LocalWorkspace, monkeypatch: pytest.MonkeyPatch, **parameters):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(ws.root))
    request = SmokeTestRequest(request_timeout_s=TIMEOUT_S, seed=1,
                               scoring=ScoringParameters(max_new_tokens=8), **parameters)
    return smoke_test_endpoints(request, return_state=True)


def _artifact_rows(flow_run_id) -> list[dict]:  # noqa: ANN001
    return run_table(flow_run_id, RESULTS_ARTIFACT_KEY)


def _events_of_run(flow_run_id, expected: int, timeout_s: float = 30) -> list:
    """Events the run emitted, read back from the test server (persisted asynchronously)."""
    from prefect.events.clients import get_events_client  # noqa: F401 - ensures workers
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(
                filter=EventFilter(event=EventNameFilter(prefix=["chatft.smoke-test."])),
                limit=50,  # the API caps a page at 50; newest first
            )
        mine = [e for e in page.events if e.payload.get("flow_run_id") == str(flow_run_id)]
        if len(mine) >= expected or time.monotonic() > deadline:
            return mine
        time.sleep(0.5)


def test_every_fault_is_named_and_the_run_fails(fleet, monkeypatch):
    _set_drills(fleet, DRILLS)
    started = time.monotonic()

    state = _run(fleet, monkeypatch, max_concurrency=8)

    elapsed = time.monotonic() - started
    assert state.is_failed()
    with pytest.raises(Exception, match=r"3 of 3 endpoint\(s\) failed") as failure:
        state.result()
    assert "smoke-dead (demo: unreachable)" in str(failure.value)

    rows = _artifact_rows(state.state_details.flow_run_id)
    statuses = {(r["endpoint"], r["deployment"]): r["status"] for r in rows}
    assert statuses == {**EXPECTED, (SKIPPED, "-"): "skipped"}
    by_key = {(r["endpoint"], r["deployment"]): r for r in rows}
    healthy = by_key[(FAULTS, "healthy")]
    assert healthy["reason"] == "" and healthy["reply"] and healthy["latency_ms"] > 0
    assert healthy["model"] == MANAGED_TAGS["chatft-model"]
    assert by_key[(FAULTS, "busy")]["reason"].endswith("too many requests")
    assert "CUDA out of memory" in by_key[(FAULTS, "broken")]["reason"]
    assert by_key[(FAULTS, "broken")]["version"] == "7"
    assert "request_timeout_s=6" in by_key[(FAULTS, "slow")]["reason"]
    assert by_key[(FAULTS, "slow")]["latency_ms"] < 9000
    assert "key" in by_key[(BADKEY, "demo")]["reason"]
    assert TAG_NO_SMOKE_TEST in by_key[(SKIPPED, "-")]["reason"]
    # The slow (10 s) deployment does not hold up the others: it is cut at 6 s, in parallel.
    assert elapsed < 40
    # No key in the artifact.
    keys = [json.loads((fleet.root / "endpoints" / n / "keys.json").read_text())
            for n in (FAULTS, BADKEY)]
    dump = json.dumps(rows)
    assert not any(k in dump for pair in keys for k in pair.values())

    events = _events_of_run(state.state_details.flow_run_id, expected=4)
    names = sorted((e.event, e.resource.id) for e in events)
    assert [n for n in names if n[0] == "chatft.smoke-test.failed"] == [
        ("chatft.smoke-test.failed", f"chatft.endpoint.{n}") for n in (BADKEY, DEAD, FAULTS)
    ]
    [summary] = [e for e in events if e.event == "chatft.smoke-test.completed"]
    assert summary.resource["chatft.smoke-test.outcome"] == "failed"
    assert summary.resource["chatft.workspace"] == "local"
    assert summary.payload["endpoints_failed"] == [BADKEY, DEAD, FAULTS]
    assert summary.payload["requests"] == len(EXPECTED)
    assert summary.payload["requests_ok"] == 1
    [dead] = [e for e in events if e.resource.id == f"chatft.endpoint.{DEAD}"]
    assert dead.resource["chatft.smoke-test.status"] == "unreachable"
    assert dead.payload["failures"][0]["reason"]


def test_healthy_endpoint_passes_with_marked_requests(fleet, monkeypatch):
    _set_drills(fleet, {name: (None, "ok") for name in DRILLS})
    before = time.time()

    state = _run(fleet, monkeypatch, endpoint_names=[FAULTS], requests_per_deployment=2)

    assert state.is_completed(), state.message
    result = state.result()
    assert result.endpoints_tested == [FAULTS] and result.endpoints_failed == []
    assert len(result.results) == 2 * len(DRILLS)
    assert all(r.status == "ok" and r.reply_excerpt for r in result.results)
    # Every request carried the caller marker, so teardown can subtract it.
    from datetime import UTC, datetime

    activity = fleet.get_endpoint_activity(
        FAULTS, datetime.fromtimestamp(before, UTC), datetime.now(UTC)
    )
    assert activity.requests_by_caller == {SMOKE_TEST_CALLER: 2 * len(DRILLS)}


def test_a_named_endpoint_that_is_gone_fails_the_run(fleet, monkeypatch):
    state = _run(fleet, monkeypatch, endpoint_names=["no-such-endpoint"])

    assert state.is_failed()
    rows = _artifact_rows(state.state_details.flow_run_id)
    assert [(r["endpoint"], r["status"]) for r in rows] == [("no-such-endpoint", "not_found")]


# -- pure functions: no server needed -----------------------------------------------------
def _endpoint(name: str, state: str = "Succeeded", tags: dict | None = None,
              traffic: dict | None = None) -> Endpoint:
    traffic = {"blue": 100} if traffic is None else traffic
    return Endpoint(
        name=name, scoring_uri=None, provisioning_state=state,
        tags=dict(MANAGED_TAGS, **(tags or {})), traffic=traffic,
        deployments=[Deployment(name=d, endpoint_name=name, model_id="m:1", instance_type="x",
                                instance_count=1, provisioning_state="Succeeded",
                                tags={"chatft-model-version": "3"}) for d in traffic],
    )


def test_plan_skips_provisioning_opted_out_and_idle_endpoints():
    plan = plan_from_endpoints([
        _endpoint("ready", traffic={"blue": 90, "green": 10, "old": 0}),
        _endpoint("creating", state="Creating"),
        _endpoint("opted-out", tags={TAG_NO_SMOKE_TEST: "true"}),
        _endpoint("opted-in", tags={TAG_NO_SMOKE_TEST: "false"}),
        _endpoint("idle", traffic={}),
    ], missing=[])

    assert [(t.endpoint, t.deployment, t.version) for t in plan.targets] == [
        ("opted-in", "blue", "3"), ("ready", "blue", "3"), ("ready", "green", "3"),
    ]
    assert {s.endpoint: s.reason for s in plan.skipped} == {
        "creating": "still provisioning (Creating)",
        "opted-out": f"tagged {TAG_NO_SMOKE_TEST}=true",
        "idle": "no deployment takes traffic",
    }


@pytest.mark.parametrize(("code", "body", "status"), [
    (200, '{"output": "Hello"}', "ok"),
    (200, "{}", "content_filtered"),
    (200, '{"output": ""}', "bad_reply"),
    (200, '{"output": 3}', "bad_reply"),
    (200, '["Hello"]', "bad_reply"),
    (200, "<html>", "bad_reply"),
    (408, "{}", "timeout_408"),
    (401, "", "unauthorized_401"),
    (503, '{"error": {"message": "not ready"}}', "http_503"),
])
def test_classify_reply(code, body, status):
    assert classify_reply(ScoreResponse(status_code=code, body=body, latency_ms=1))[0] == status


def test_classify_exception_sees_through_workspace_wrapping():
    import httpx
    import requests

    from workspaces.errors import TransientWorkspaceError

    def wrapped(exc: Exception) -> Exception:
        try:
            try:
                raise exc
            except Exception:
                raise TransientWorkspaceError("scoring failed; retry later") from None
        except TransientWorkspaceError as outer:
            return outer

    assert classify_exception(httpx.ConnectError("refused"), 5)[0] == "unreachable"
    assert classify_exception(httpx.ReadTimeout("slow"), 5)[0] == "client_timeout"
    assert classify_exception(wrapped(requests.ReadTimeout()), 5)[0] == "client_timeout"
    assert classify_exception(wrapped(requests.ConnectionError()), 5)[0] == "unreachable"
    assert classify_exception(ValueError("boom"), 5)[0] == "probe_error"


def test_a_pass_that_tested_nothing_says_so_instead_of_all_answered(
    prefect_server, tmp_path, monkeypatch
):
    """#24 point 7: the first scheduled smoke test on a fresh server reported "0
    endpoint(s), all answered", as green as a real pass, having tested nothing."""
    monkeypatch.setenv("CHATFT_STATE_DIR", str(tmp_path / "empty-workspace"))
    state = smoke_test_endpoints(return_state=True)
    assert state.is_completed()
    assert state.name == "NothingTested", state.name
    assert "no endpoint was tested" in state.message
    assert "no managed endpoint in the workspace" in state.message
    assert state.result().endpoints_tested == []
