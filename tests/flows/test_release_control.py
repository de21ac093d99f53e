"""A person steers a release: promote, abort, roll back, status, history (release control).

On the local workspace's real endpoints (server processes serving the stand-in model), the
real MLflow registry and the Prefect test server. The release_control flow is called with
the parameters its run form sends; what is checked is what a person sees afterwards: the
live traffic, the deployments, the model stages, the ``release-history`` artifact, and the
same history read back by a process whose Prefect database is empty.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from uuid import uuid4

import pytest

from flows.parameters import ReleaseControlRequest
from flows.release_control import release_control
from tasks.liveness import HEARTBEAT_ENV
from tests.helpers import (
    MANAGED_TAGS,
    register_model,
    run_table,
    serve,
    wait_deployment_ready,
    wait_past_liveness,
)
from workspaces.fault_injection import ROLLOUT_HOLD_ENV
from workspaces.interface import (
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_ROLLOUT_SINCE,
    TAG_STAGE,
    DeploymentSpec,
)
from workspaces.local import LocalWorkspace
from workspaces.release_history import ReleaseEvent, history_rows
from workspaces.release_state import RecordedRelease, release_tags

EP = "steer-ep"
MODEL = "standin-test"
PASSED = {"chatft-gate": "passed", "chatft-gate-eval_loss": "0.3200",
          "chatft-gate-exact_answer_rate": "0.4000"}
# A quick canary: the stand-in model answers in milliseconds.
CANARY = {"canary_percent": 20, "watch_seconds": 5, "watch_requests": 3,
          "max_latency_ratio": 100, "keep_previous": True}


def _deploy(ws: LocalWorkspace, model_id: str, name: str, version: str) -> None:
    ws.begin_create_deployment(DeploymentSpec(
        endpoint_name=EP, name=name, model_id=model_id, instance_type="Local_CPU",
        tags={**MANAGED_TAGS, TAG_MODEL: MODEL, TAG_MODEL_VERSION: version}))
    wait_deployment_ready(ws, EP, name)


def _hold(ws: LocalWorkspace, request: str, old: str, new: str, share: int = 10) -> None:
    """``new`` held at ``share`` % beside ``old``, as a run with auto_promote off leaves it."""
    ws.set_traffic(EP, {old: 100 - share, new: share}, claim=True, owner=request,
                   tags=release_tags(request, "held", old, new, str(uuid4()),
                                     reason="a healthy canary, held for a person to promote"))


def _act(**fields) -> tuple[object, object]:
    """One release_control run from the form's parameters: (its final state, its run id)."""
    request = ReleaseControlRequest.model_validate({"endpoint_name": EP, **fields})
    state = release_control(request=request, return_state=True)
    return state, state.state_details.flow_run_id


def _refused(message: str, **fields) -> None:
    """The run fails with ``message`` (a refusal names the field)."""
    state, _ = _act(**fields)
    assert state.is_failed(), state
    assert re.search(message, state.message), state.message
    assert "nothing on endpoint steer-ep changed" in state.message


def _shares(ws: LocalWorkspace) -> dict[str, int]:
    return {k: v for k, v in ws.get_endpoint(EP).traffic.items() if v}


def _stage(ws: LocalWorkspace, version: str) -> str | None:
    return ws.get_model(MODEL, version).tags.get(TAG_STAGE)


@pytest.fixture
def steered(workspace: LocalWorkspace, standin_mlflow_model: Path,
            monkeypatch: pytest.MonkeyPatch) -> LocalWorkspace:
    """``steer-ep`` serves version 1 (deployment ``blue``, its first release recorded);
    request B's canary ``green`` (version 2) is held at 10 %. Versions 3 and 4 are
    registered: 4 failed its canary once."""
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    for version in ("1", "2", "3", "4"):
        register_model(workspace, standin_mlflow_model, MODEL, version)
        workspace.set_model_stage(MODEL, version, "candidate", PASSED)
    workspace.set_model_stage(MODEL, "4", "rejected", {
        "chatft-rejected-by": "canary", "chatft-rollback-reason": "error rate 40 %"})
    one = workspace.get_model(MODEL, "1")
    serve(workspace, one, EP, deployment="blue",
          tags={**MANAGED_TAGS, TAG_MODEL: MODEL, TAG_MODEL_VERSION: "1"},
          deployment_tags={TAG_MODEL: MODEL, TAG_MODEL_VERSION: "1"})
    workspace.set_model_stage(MODEL, "1", "production")
    workspace.set_traffic(EP, None, claim=True, owner="request-a",
                          tags=release_tags("request-a", "done", None, "blue", "run-a"))
    workspace.record_release_event(ReleaseEvent(
        endpoint=EP, action="first-release", request="request-a", model=MODEL, version="1",
        deployment="blue", reason="the endpoint did not exist", run="run-a",
        actor="the fine-tune's run"))
    _deploy(workspace, workspace.get_model(MODEL, "2").id, "green", "2")
    _hold(workspace, "request-b", "blue", "green")
    return workspace


def test_promote_abort_and_roll_back_keep_one_history(prefect_server, steered, tmp_path):
    ws = steered
    # promote: the held canary takes 100 %, the old deployment goes, version 2 is production
    state, promoted = _act(action="promote", reason="the canary looked good",
                           requested_by="dana")
    assert state.is_completed(), state.message
    assert _shares(ws) == {"green": 100}
    assert {d.name for d in ws.get_endpoint(EP).deployments} == {"green"}
    assert (_stage(ws, "1"), _stage(ws, "2")) == ("retired", "production")

    # abort: another request's held canary goes, its model is rejected with the reason
    _deploy(ws, ws.get_model(MODEL, "3").id, "red", "3")
    _hold(ws, "request-c", "green", "red", share=30)
    state, _ = _act(action="abort", reason="answers too long", requested_by="dana")
    assert state.name == "Aborted", state.message
    assert _shares(ws) == {"green": 100}
    assert {d.name for d in ws.get_endpoint(EP).deployments} == {"green"}
    three = ws.get_model(MODEL, "3").tags
    assert three[TAG_STAGE] == "rejected" and three["chatft-rejected-by"] == "person"
    assert "answers too long" in three["chatft-rollback-reason"]

    # rollback to the version before (1), through a canary: a new deployment of version 1
    state, _ = _act(action="rollback", reason="version 2 refuses too often",
                    canary=CANARY)
    assert state.is_completed() and state.name == "Completed", state.message
    [back] = [d for d in ws.get_endpoint(EP).deployments if d.name != "green"]
    assert back.name.startswith("rollback-") and back.tags[TAG_MODEL_VERSION] == "1"
    assert _shares(ws) == {back.name: 100}
    assert "green" in {d.name for d in ws.get_endpoint(EP).deployments}  # kept at 0 %
    assert (_stage(ws, "1"), _stage(ws, "2")) == ("production", "retired")

    # rollback at once onto the kept deployment of version 2: no new deployment
    deployments = {d.name for d in ws.get_endpoint(EP).deployments}
    state, at_once = _act(action="rollback", version="2", immediate=True,
                          reason="paged: version 1 is slow")
    assert state.is_completed(), state.message
    assert _shares(ws) == {"green": 100}
    assert {d.name for d in ws.get_endpoint(EP).deployments} == deployments
    switched = float(state.result().history[0].figures["switch seconds"])
    assert switched < 1.0, switched

    # rollback to a version that failed its canary: refused naming it, nothing changed
    before = ws.get_endpoint(EP)
    _refused(r"version: standin-test:4 was rejected by its canary \(error rate 40 %\)",
             action="rollback", version="4", reason="try the other one")
    after = ws.get_endpoint(EP)
    assert (after.traffic, after.tags) == (before.traffic, before.tags)

    # the history: every action with who asked and why, newest first
    rows = run_table(at_once, "release-history")
    assert [r["action"] for r in rows] == [
        "rolled-back", "rolled-back", "aborted", "promoted", "first-release"]
    assert [r["model"] for r in rows] == [f"{MODEL}:{v}" for v in "21321"]
    assert "paged: version 1 is slow" in rows[0]["reason"]
    assert rows[1]["reason"].startswith("version 2 refuses too often (the canary was healthy")
    assert "canary errors 0/" in rows[1]["figures"]
    assert "dana" in rows[2]["asked by"] and "answers too long" in rows[2]["reason"]
    assert "dana" in rows[3]["asked by"] and "the canary looked good" in rows[3]["reason"]
    assert rows[3]["run"].endswith(f"({promoted})")
    assert rows[3]["figures"] == "gate exact 0.4000, gate loss 0.3200"

    # ... and the same, rebuilt from the registry by a process with an empty Prefect database
    assert history_rows(ws.release_history(EP)) == rows
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "fresh-prefect"),
           "PREFECT_API_URL": "", "CHATFT_STATE_DIR": str(ws.root)}
    shown = subprocess.run(
        [sys.executable, "-m", "flows.commands", "release", "status", EP],
        env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0, shown.stderr[-2000:]
    table = shown.stdout[shown.stdout.index("| when (UTC)"):].strip().splitlines()
    assert len(table) == 2 + len(rows)
    for line, row in zip(table[2:], rows, strict=True):
        assert line.startswith(f"| {row['when (UTC)']} | {row['action']} | {row['model']} |")
        assert row["reason"] in line


def test_each_action_is_refused_while_another_requests_release_is_under_way(
        prefect_server, steered):
    ws = steered
    ws.set_traffic(EP, {"blue": 80, "green": 20}, owner="request-b",
                   tags=release_tags("request-b", "canary", "blue", "green", "run-b-live"))
    before = ws.get_endpoint(EP)
    refusals = [
        ({"action": "promote"}, r"action: promote takes a held canary; request request-b's "
         r"release is under way at step canary \(run run-b-live\)"),
        ({"action": "rollback", "reason": "x"}, r"action: request request-b's release is "
         r"canary on the endpoint .*a rollback waits until it ends"),
        ({"action": "abort", "reason": "x", "release_request": "request-c"},
         r"release_request: the release on the endpoint is request request-b's"),
    ]
    for fields, message in refusals:
        _refused(message, **fields)
    after = ws.get_endpoint(EP)
    assert (after.traffic, after.tags) == (before.traffic, before.tags)
    assert RecordedRelease.of(after.tags).step == "canary"


def test_bad_requests_are_refused_naming_the_field():
    from pydantic import ValidationError

    for fields, field in [({"action": "abort"}, "reason"),
                          ({"action": "promote", "version": "2"}, "version"),
                          ({"action": "status", "immediate": True}, "immediate"),
                          ({"action": "demote"}, "action")]:
        with pytest.raises(ValidationError, match=field):
            ReleaseControlRequest.model_validate({"endpoint_name": EP, **fields})


def _held_events(expected: int, timeout_s: float = 20) -> list:
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all()
    deadline = time.monotonic() + timeout_s
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(
                event=EventNameFilter(name=["chatft.release.held-too-long"])), limit=50)
        mine = [e for e in page.events if e.resource.get("prefect.resource.name") == EP]
        if len(mine) >= expected or time.monotonic() > deadline:
            return mine
        time.sleep(0.5)


def test_a_canary_held_past_the_limit_is_reported_once(prefect_server, steered):
    from flows.parameters import SmokeTestRequest
    from flows.smoke_test_endpoints import smoke_test_endpoints

    ws = steered
    day_and_a_half = (datetime.now(UTC) - timedelta(hours=30)).isoformat(timespec="seconds")
    ws.set_traffic(EP, None, tags={TAG_ROLLOUT_SINCE: day_and_a_half})
    request = SmokeTestRequest(endpoint_names=[EP], held_alert_hours=24)
    for _ in range(2):
        state = smoke_test_endpoints(request, return_state=True)
        assert state.is_completed(), state.message
    [event] = _held_events(1)
    assert len(_held_events(2, timeout_s=3)) == 1  # the second pass did not send it again
    assert event.payload["deployment"] == "green" and event.payload["hours"] >= 30
    assert event.payload["serving"] == "blue" and "held for a person" in event.payload["reason"]
    # the hold itself is untouched: traffic and step as they were
    assert _shares(ws) == {"blue": 90, "green": 10}
    assert RecordedRelease.of(ws.get_endpoint(EP).tags).step == "held"


def _kill_action_at(point: str, tmp_path: Path, **fields) -> float:
    """Run one release_control action in its own process until it reaches ``point`` (a
    checkpoint of flows/rollout.py), then kill -9 it; returns when it was killed."""
    from prefect.settings import PREFECT_API_URL

    marker = tmp_path / f"{point}.reached"
    argv = ["--endpoint-name", EP]
    for key, value in fields.items():
        argv += [f"--{key.replace('_', '-')}", str(value)]
    process = subprocess.Popen(
        [sys.executable, "-m", "flows.release_control", *argv],
        env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
             ROLLOUT_HOLD_ENV: f"{point}:{marker}"},
        stdout=(tmp_path / f"{point}.log").open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True, cwd=Path(__file__).resolve().parents[2])
    deadline = time.monotonic() + 300
    while not marker.exists():
        assert process.poll() is None, (tmp_path / f"{point}.log").read_text()[-3000:]
        assert time.monotonic() < deadline, f"{point} not reached"
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    return time.monotonic()


def test_a_killed_action_is_settled_by_the_next_smoke_test(prefect_server, steered, tmp_path,
                                                           monkeypatch):
    from flows.parameters import SmokeTestRequest
    from flows.smoke_test_endpoints import smoke_test_endpoints

    ws = steered
    monkeypatch.setenv(HEARTBEAT_ENV, "1")
    smoke = SmokeTestRequest(endpoint_names=[EP])
    # a promotion killed right after its write: the smoke test finishes it
    killed = _kill_action_at("promoted", tmp_path, action="promote", reason="looks good")
    assert RecordedRelease.of(ws.get_endpoint(EP).tags).step == "promoted"
    wait_past_liveness(killed)
    assert smoke_test_endpoints(smoke, return_state=True).is_completed()
    assert _shares(ws) == {"green": 100}
    assert {d.name for d in ws.get_endpoint(EP).deployments} == {"green"}
    assert (_stage(ws, "1"), _stage(ws, "2")) == ("retired", "production")

    # a rollback killed with its canary at 20 %: undone, and version 1 is not rejected
    killed = _kill_action_at("canary-set", tmp_path, action="rollback",
                             reason="version 2 refuses too often",
                             **{"canary.canary_percent": 20, "canary.watch_seconds": 60})
    recorded = RecordedRelease.of(ws.get_endpoint(EP).tags)
    assert recorded.step == "canary" and recorded.request.startswith("rollback-1-")
    wait_past_liveness(killed)
    assert smoke_test_endpoints(smoke, return_state=True).is_completed()
    assert _shares(ws) == {"green": 100}
    assert {d.name for d in ws.get_endpoint(EP).deployments} == {"green"}
    assert RecordedRelease.of(ws.get_endpoint(EP).tags).step == "undone"
    assert (_stage(ws, "1"), _stage(ws, "2")) == ("retired", "production")
    history = ws.release_history(EP)
    assert [e.action for e in history[:2]] == ["undone", "promoted"]
    assert "smoke test's recovery" in history[0].actor
