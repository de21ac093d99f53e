"""A person steers a release on Azure ML: promote, abort, roll back (release_control).

The real ``azure-ai-ml`` SDK against the HTTPS fake. For each action: what Azure holds
afterwards (traffic, deployments, the model versions' stage tags, the endpoint's history
ring ``chatft-history-*`` read back newest first), and which requests the action sent, as
the fake's request log has them: only the ones Azure's safe-rollout procedure is made of
(endpoint GET/PUT for traffic and tags, deployment PUT/GET/DELETE, model version GET/PUT
for tags, the scoring and Azure Monitor reads a deployment is tried and watched with),
each at the api-version the SDK pins; never an endpoint deletion, a job, a compute, the
registry or MLflow.

Then every action is killed -9 at a point of its own (a real process, its whole group),
and the next smoke test (its recovery) must leave each endpoint converged: one deployment,
or the kept one, at 100 %, the release done or undone, nothing half-made, and the end it
was heading to kept (an abort stays the person's, a kept deployment is never deleted).
"""

from __future__ import annotations

import copy
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from uuid import uuid4

import psutil
import pytest
from prefect.settings import PREFECT_API_URL

import flows.release_control as control
import flows.smoke_test_endpoints as smoke
from flows.parameters import ReleaseControlRequest, SmokeTestRequest
from tasks.liveness import HEARTBEAT_ENV
from tasks.rollout import TAG_REJECTED_BY
from tests.azure.conftest import make_workspace
from tests.azure.fake_azureml.credential import FakeCredential
from tests.azure.fake_azureml.server import Fault
from tests.helpers import PROJECT_DIR as PROJECT_ROOT
from tests.helpers import run_artifacts, wait_past_liveness
from workspaces.interface import (
    MANAGED_BY_VALUE,
    TAG_MANAGED_BY,
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_STAGE,
    DeploymentSpec,
    EndpointSpec,
)
from workspaces.release_history import TAG_LAST_RELEASE, ReleaseEvent
from workspaces.release_state import RUN_DIED, RecordedRelease, live_shares, release_tags

EP = "steer-ep"
MODEL = "m-steer"
PASSED = {"chatft-gate": "passed", "chatft-gate-eval_loss": "0.3200",
          "chatft-gate-exact_answer_rate": "0.4000"}
# A quick canary: the fake answers at once.
CANARY = {"canary_percent": 20, "watch_seconds": 5, "watch_requests": 3,
          "max_latency_ratio": 100}
HELD_WHY = "a healthy canary, held for a person to promote"


# -- the scene on Azure ----------------------------------------------------------------
def _wait_provisioned(fake, ep: str) -> None:
    deadline = time.monotonic() + 30
    while any(d["properties"]["provisioningState"] != "Succeeded"
              for d in fake.deployments.get(ep, {}).values()):
        assert time.monotonic() < deadline, "the fake's deployments never provisioned"
        time.sleep(0.05)


def build_scene(ws, fake, ep: str, model: str, scene: str) -> None:
    """``ep`` as a release leaves it, versions 1 and 2 of ``model`` registered (both passed
    their gate), version 1 first released on deployment ``blue``:

    - ``held`` / ``held-kept``: request B's canary ``green`` (version 2) held at 10 %
      (``-kept``: the release keeps ``blue`` once promoted);
    - ``promoted``: B promoted ``green`` to 100 %, ``blue`` deleted;
    - ``promoted-kept``: B promoted ``green`` to 100 %, ``blue`` kept at 0 %.
    """
    keep = scene.endswith("-kept")
    ids = {}
    for version in ("1", "2"):
        ids[version] = ws.register_model(model, version, "chatft-job", "d",
                                         {TAG_MANAGED_BY: MANAGED_BY_VALUE}).id
        ws.set_model_stage(model, version, "candidate", PASSED)
    ws.set_model_stage(model, "1", "production")
    ws.begin_create_endpoint(EndpointSpec(name=ep, tags={
        TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_MODEL: model, TAG_MODEL_VERSION: "1"}))
    for name, version in (("blue", "1"), ("green", "2")):
        ws.begin_create_deployment(DeploymentSpec(
            endpoint_name=ep, name=name, model_id=ids[version], instance_type="Standard_NC6s_v3",
            tags={TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_MODEL: model,
                  TAG_MODEL_VERSION: version}))
    _wait_provisioned(fake, ep)
    ws.set_traffic(ep, {"blue": 100}, owner="request-a", claim=True,
                   tags=release_tags("request-a", "done", None, "blue", "run-a"))
    ws.record_release_event(ReleaseEvent(
        endpoint=ep, action="first-release", request="request-a", model=model, version="1",
        deployment="blue", reason="the endpoint did not exist", run="run-a",
        actor="the fine-tune's run"))
    if scene.startswith("held"):
        ws.set_traffic(ep, {"blue": 90, "green": 10}, owner="request-b", claim=True,
                       tags=release_tags("request-b", "held", "blue", "green", str(uuid4()),
                                         keep_previous=keep, reason=HELD_WHY))
        ws.record_release_event(ReleaseEvent(
            endpoint=ep, action="held", request="request-b", model=model, version="2",
            deployment="green", previous=f"{model}:1", reason=HELD_WHY, run="run-b",
            actor="the fine-tune's run"))
        return
    ws.set_traffic(ep, {"green": 100}, owner="request-b", claim=True,
                   tags=release_tags("request-b", "done", "blue", "green", "run-b",
                                     keep_previous=keep))
    if not keep:
        ws.begin_delete_deployment(ep, "blue")
        deadline = time.monotonic() + 30
        while "blue" in fake.deployments.get(ep, {}) or not ws.deletion_finished(ep, "blue"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    ws.set_model_stage(model, "2", "production")
    ws.set_model_stage(model, "1", "retired")
    ws.record_release_event(ReleaseEvent(
        endpoint=ep, action="promoted", request="request-b", model=model, version="2",
        deployment="green", previous=f"{model}:1", reason="the canary was healthy",
        run="run-b", actor="the fine-tune's run"))


# -- reading Azure back ---------------------------------------------------------------
def shares(fake, ep: str = EP) -> dict[str, int]:
    return {k: v for k, v in fake.endpoints[ep]["properties"]["traffic"].items() if v}


def stage(fake, version: str, model: str = MODEL) -> str | None:
    return fake.models[model][version]["properties"]["tags"].get(TAG_STAGE)


def model_tags(fake, version: str, model: str = MODEL) -> dict[str, str]:
    return fake.models[model][version]["properties"]["tags"]


def step(fake, ep: str = EP) -> str | None:
    return RecordedRelease.of(fake.endpoints[ep]["tags"]).step


# What each request is: its ARM resource (the workspace's prefix taken off), else its host
# role. ``other ...`` is anything else (a job, a compute, MLflow, the registry, a blob).
_KINDS = [
    (r"", "workspace"),
    (r"/onlineEndpoints", "endpoints"),
    (r"/onlineEndpoints/[^/]+", "endpoint"),
    (r"/onlineEndpoints/[^/]+/listKeys", "endpoint keys"),
    (r"/onlineEndpoints/[^/]+/deployments", "deployments"),
    (r"/onlineEndpoints/[^/]+/deployments/[^/]+", "deployment"),
    (r"/models/[^/]+/versions", "model versions"),
    (r"/models/[^/]+/versions/[^/]+", "model version"),
]
# The api-version azure-ai-ml 1.35 pins for each (the reference's request map; an endpoint
# is also read at the deployments' version before a deployment is created).
API_VERSIONS = {
    "workspace": {"2024-10-01-preview"},
    "endpoints": {"2022-02-01-preview"},
    "endpoint": {"2022-02-01-preview", "2023-04-01-preview"},
    "endpoint keys": {"2022-02-01-preview"},
    "deployments": {"2023-04-01-preview"},
    "deployment": {"2023-04-01-preview"},
    "model versions": {"2023-08-01-preview"},
    "model version": {"2023-08-01-preview"},
    "metrics": {"2024-02-01"},
    "operation": {None},  # polled at the URL Azure's header named, as given
    "scoring": {None},
}

# The requests of Azure's safe rollout, by what they do: an endpoint's traffic and tags
# are one GET and one PUT of the endpoint (whose operation is polled); a version's tags
# are a GET and a PUT of the model version (the SDK lists the versions first); a new
# deployment is a PUT and its GETs; the old one a DELETE; a deployment is tried by its
# header (``azureml-model-deployment``) with the endpoint's key; a canary watched also
# through Azure Monitor.
READ = {("GET", "workspace"), ("GET", "endpoint"), ("GET", "deployments")}
WRITE_TRAFFIC_AND_TAGS = {("PUT", "endpoint"), ("GET", "operation")}
MODEL_TAGS = {("GET", "model versions"), ("GET", "model version"), ("PUT", "model version")}
DELETE_DEPLOYMENT = {("DELETE", "deployment")}
CREATE_DEPLOYMENT = {("PUT", "deployment"), ("GET", "deployment")}
PROBE = {("POST", "endpoint keys"), ("POST", "scoring")}
WATCH = {("POST", "metrics")}

PROMOTE = READ | WRITE_TRAFFIC_AND_TAGS | MODEL_TAGS | DELETE_DEPLOYMENT
ABORT = READ | WRITE_TRAFFIC_AND_TAGS | MODEL_TAGS | DELETE_DEPLOYMENT
ROLLBACK_AT_ONCE = READ | WRITE_TRAFFIC_AND_TAGS | MODEL_TAGS | PROBE
ROLLBACK_THROUGH_CANARY = (READ | WRITE_TRAFFIC_AND_TAGS | MODEL_TAGS | CREATE_DEPLOYMENT
                           | PROBE | WATCH | DELETE_DEPLOYMENT)


def kind(fake, path: str) -> str:
    if path.startswith(fake.ws_path):
        rest = path[len(fake.ws_path):]
        return next((name for pattern, name in _KINDS if re.fullmatch(pattern, rest)),
                    f"other {rest}")
    if path.startswith("/operations/"):
        return "operation"
    if path.startswith("/score/"):
        return "scoring"
    if path.endswith("/metrics:getBatch"):
        return "metrics"
    return f"other {path}"


def sent_since(fake, start: int) -> set[tuple[str, str]]:
    """(method, kind) of every request since ``start``, each at its pinned api-version."""
    sent = [(r.method, kind(fake, r.path), r.api_version) for r in fake.requests[start:]]
    off = [s for s in sent if s[2] not in API_VERSIONS.get(s[1], set())]
    assert not off, f"requests at an api-version the SDK does not pin: {off}"
    return {(method, what) for method, what, _ in sent}


def act(fake, credential, **fields):
    """One release_control run on a workspace of its own (as a worker loads it): its
    final state and the (method, kind) of every request it sent."""
    start = len(fake.requests)
    request = ReleaseControlRequest.model_validate({"endpoint_name": EP, **fields})
    state = control.release_control(request=request, workspace_block="azure-ml-workspace/t",
                                    return_state=True)
    return state, sent_since(fake, start)


@pytest.fixture
def steer(fake, workspace, credential, prefect_server, monkeypatch, tmp_path):
    """Each release_control run loads a workspace of its own that talks to the fake."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(control, "load_workspace",
                        lambda block: make_workspace(fake, credential))
    return workspace


def history(ws, ep: str = EP) -> list[ReleaseEvent]:
    """The endpoint's history ring as the workspace reads it back (newest first)."""
    return ws.release_history(ep)


def last_release(fake, version: str, model: str = MODEL) -> str:
    """The action of the event the version's ``chatft-last-release`` tag holds."""
    from workspaces.release_history import from_tags

    event = from_tags(EP, model_tags(fake, version, model)[TAG_LAST_RELEASE])
    assert event is not None
    return event.action


def puts_of_traffic(fake, start: int, ep: str = EP) -> list[dict[str, int]]:
    """The live shares each endpoint PUT since ``start`` sent, in order."""
    return [{k: v for k, v in (r.json["properties"].get("traffic") or {}).items() if v}
            for r in fake.requests[start:]
            if r.method == "PUT" and re.search(rf"/onlineEndpoints/{ep}$", r.path)]


def test_promote_then_roll_back_through_a_canary(fake, credential, steer):
    build_scene(steer, fake, EP, MODEL, "held")

    # promote: green takes 100 %, blue is deleted, version 2 production, 1 retired
    start = len(fake.requests)
    state, sent = act(fake, credential, action="promote", reason="the canary looked good",
                      requested_by="dana")
    assert state.is_completed() and state.name == "Completed", state.message
    assert shares(fake) == {"green": 100}
    assert list(fake.deployments[EP]) == ["green"]
    assert (stage(fake, "1"), stage(fake, "2")) == ("retired", "production")
    assert step(fake) == "done"
    assert sent == PROMOTE, sorted(sent ^ PROMOTE)
    [deleted] = [r.path for r in fake.requests[start:] if r.method == "DELETE"]
    assert deleted.endswith(f"/onlineEndpoints/{EP}/deployments/blue")
    promoted = history(steer)
    assert [e.action for e in promoted] == ["promoted", "held", "first-release"]
    assert (promoted[0].version, promoted[0].deployment, promoted[0].previous) == (
        "2", "green", f"{MODEL}:1")
    assert promoted[0].actor.startswith("dana, ")
    assert str(state.state_details.flow_run_id) in promoted[0].run
    assert last_release(fake, "2") == "promoted"

    # rollback (no version: the one that served before): a new deployment of version 1,
    # its contract, a 20 % canary watched, then 100 % and green deleted
    start = len(fake.requests)
    state, sent = act(fake, credential, action="rollback", reason="version 2 refuses too often",
                      requested_by="erin", canary=CANARY)
    assert state.is_completed() and state.name == "Completed", state.message
    [back] = list(fake.deployments[EP])
    assert back.startswith("rollback-") and back != "green"
    assert fake.deployments[EP][back]["tags"][TAG_MODEL_VERSION] == "1"
    assert fake.deployments[EP][back]["properties"]["model"].endswith(
        f"/models/{MODEL}/versions/1")
    assert shares(fake) == {back: 100}
    assert (stage(fake, "1"), stage(fake, "2")) == ("production", "retired")
    assert step(fake) == "done"
    assert sent == ROLLBACK_THROUGH_CANARY, sorted(sent ^ ROLLBACK_THROUGH_CANARY)
    # claimed with the traffic as it was, then the canary share, then all of it
    assert puts_of_traffic(fake, start) == [
        {"green": 100}, {"green": 80, back: 20}, {back: 100}, {back: 100}, {back: 100}]
    [created] = [r for r in fake.requests[start:] if r.method == "PUT"
                 and "/deployments/" in r.path]
    assert created.path.endswith(f"/deployments/{back}")
    [deleted] = [r.path for r in fake.requests[start:] if r.method == "DELETE"]
    assert deleted.endswith(f"/onlineEndpoints/{EP}/deployments/green")
    events = history(steer)
    assert [e.action for e in events] == ["rolled-back", "promoted", "held", "first-release"]
    assert (events[0].version, events[0].deployment, events[0].previous) == (
        "1", back, f"{MODEL}:2")
    assert events[0].actor.startswith("erin, ")
    assert last_release(fake, "1") == "rolled-back"


def test_promote_keeping_the_old_deployment_then_roll_back_at_once(fake, credential, steer):
    build_scene(steer, fake, EP, MODEL, "held-kept")
    state, sent = act(fake, credential, action="promote", reason="good", requested_by="dana")
    assert state.is_completed(), state.message
    assert shares(fake) == {"green": 100}
    assert sorted(fake.deployments[EP]) == ["blue", "green"]  # kept at 0 %
    assert sent == PROMOTE - DELETE_DEPLOYMENT, sorted(sent ^ (PROMOTE - DELETE_DEPLOYMENT))

    # at once onto the kept deployment: one traffic write, no deployment made or deleted
    start = len(fake.requests)
    state, sent = act(fake, credential, action="rollback", version="1", immediate=True,
                      reason="paged: version 2 is slow", requested_by="erin")
    assert state.is_completed() and state.name == "Completed", state.message
    assert shares(fake) == {"blue": 100}
    assert sorted(fake.deployments[EP]) == ["blue", "green"]  # green kept at 0 %
    assert (stage(fake, "1"), stage(fake, "2")) == ("production", "retired")
    assert step(fake) == "done"
    assert sent == ROLLBACK_AT_ONCE, sorted(sent ^ ROLLBACK_AT_ONCE)
    assert puts_of_traffic(fake, start) == [{"green": 100}, {"blue": 100}, {"blue": 100},
                                            {"blue": 100}]
    # the kept deployment answered its contract check before any write
    [probe] = [r for r in fake.requests[start:] if r.path == f"/score/{EP}"]
    assert probe.headers["azureml-model-deployment"] == "blue"
    assert probe.at < next(r.at for r in fake.requests[start:] if r.method == "PUT")
    events = history(steer)
    assert [e.action for e in events] == ["rolled-back", "promoted", "held", "first-release"]
    assert (events[0].version, events[0].deployment, events[0].previous) == (
        "1", "blue", f"{MODEL}:2")
    assert events[0].actor.startswith("erin, ")
    assert last_release(fake, "1") == "rolled-back"


def test_abort_withdraws_the_held_canary_and_rejects_its_model(fake, credential, steer):
    build_scene(steer, fake, EP, MODEL, "held")
    start = len(fake.requests)
    state, sent = act(fake, credential, action="abort", reason="answers too long",
                      requested_by="dana")
    assert state.is_completed() and state.name == "Aborted", state.message
    assert shares(fake) == {"blue": 100}
    assert list(fake.deployments[EP]) == ["blue"]
    two = model_tags(fake, "2")
    assert (two[TAG_STAGE], two[TAG_REJECTED_BY]) == ("rejected", "person")
    assert "answers too long" in two["chatft-rollback-reason"]
    assert stage(fake, "1") == "production"
    assert step(fake) == "undone"
    assert sent == ABORT, sorted(sent ^ ABORT)
    assert puts_of_traffic(fake, start) == [{"blue": 100}] * 3
    [deleted] = [r.path for r in fake.requests[start:] if r.method == "DELETE"]
    assert deleted.endswith(f"/onlineEndpoints/{EP}/deployments/green")
    events = history(steer)
    assert [e.action for e in events] == ["aborted", "held", "first-release"]
    assert (events[0].version, events[0].deployment, events[0].previous) == (
        "2", "green", f"{MODEL}:1")
    assert events[0].actor.startswith("dana, ")
    assert last_release(fake, "2") == "aborted"


# An event is two Azure tags of 256 characters (its facts, its words): the person's
# reason and who asked survive, and the run is kept by its id.
def test_the_history_ring_keeps_each_person_s_reason(fake, credential, steer):
    build_scene(steer, fake, EP, MODEL, "held-kept")
    state, _ = act(fake, credential, action="promote", reason="the canary looked good",
                   requested_by="dana")
    assert state.is_completed(), state.message
    state, _ = act(fake, credential, action="rollback", version="1", immediate=True,
                   reason="paged: version 2 is slow", requested_by="erin")
    assert state.is_completed(), state.message
    rolled_back, promoted = history(steer)[:2]
    assert (rolled_back.action, promoted.action) == ("rolled-back", "promoted")
    assert "paged: version 2 is slow" in rolled_back.reason, rolled_back
    assert "the canary looked good" in promoted.reason, promoted
    assert float(rolled_back.figures["switch seconds"]) < 5, rolled_back


# -- a kill -9 during each action, then the smoke test's recovery -----------------------
# Each action runs in a process of its own, against the fake in this one (its HTTPS port;
# the CA bundle is in the environment), and is killed -9 with its whole process group
# where it stands: held after a step of flows/rollout.py (workspaces/fault_injection.py),
# or, where the action passes none (abort; a rollback at once; a rollback's contract
# check: release_control never reaches "deployment-created"), while the fake holds one of
# its requests unanswered (that request never lands). All actions run at once, each on an
# endpoint of its own, so that one wait past the liveness bound serves them all. They are
# forked from one process that imported the flow and the SDK once (seconds of CPU each).
SPAWN_ACTIONS = """
import json, os, sys, traceback
from types import SimpleNamespace

import flows.release_control as control
from flows.parameters import ReleaseControlRequest
from workspaces.fault_injection import ROLLOUT_HOLD_ENV
from tests.azure.conftest import make_workspace
from tests.azure.fake_azureml.credential import FakeCredential
from tests.azure.fake_azureml.service import FakeAzureML

fake = FakeAzureML(server=SimpleNamespace(port=int(sys.argv[1])))
make_workspace(fake, FakeCredential())._clients.ml  # the SDK's modules, imported here once
control.load_workspace = lambda block: make_workspace(fake, FakeCredential())
actions = json.loads(sys.stdin.readline())  # once the scenes are built
for action in actions:
    pid = os.fork()
    if pid == 0:  # the action's own process group, killed on its own
        os.setsid()
        log = os.open(action["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        os.dup2(log, 1)
        os.dup2(log, 2)
        if action["hold"]:
            os.environ[ROLLOUT_HOLD_ENV] = action["hold"]
        try:
            control.release_control(
                request=ReleaseControlRequest.model_validate_json(action["request"]),
                workspace_block="azure-ml-workspace/fake")
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    print(action["id"], pid, flush=True)
for _ in actions:
    os.wait()
"""
NEW = "<new>"  # the rollback's own deployment, named after its run


@dataclass(frozen=True)
class Kill:
    """One action killed at one point, what the endpoint records right after the kill, and
    what the next pass must leave."""

    id: str
    scene: str
    fields: dict
    point: str | None = None  # checkpoint of flows/rollout.py the run is held after
    held: tuple[str, str, dict | None] | None = None  # (method, path, traffic) not answered
    killed: tuple[str, dict[str, int]] = ("", {})  # step and live shares right after
    serving: str = ""  # the one deployment at 100 % after the recovery
    kept: tuple[str, ...] = ()  # the deployments that may be left
    final: str = "done"
    production: str = ""  # the model version tagged production afterwards

    @property
    def ep(self) -> str:
        return f"k-{self.id}"

    @property
    def model(self) -> str:
        return f"m-{self.id}"


ROLLBACK = {"action": "rollback", "reason": "version 2 refuses too often",
            "requested_by": "erin", "canary": CANARY}
AT_ONCE = {"action": "rollback", "version": "1", "immediate": True,
           "reason": "paged: version 2 is slow", "requested_by": "erin"}
KILLS = [
    # promote: after the write that put green at 100 % (checkpoint "promoted")
    Kill("promote-promoted", "held", {"action": "promote", "reason": "looks good",
                                      "requested_by": "dana"}, point="promoted",
         killed=("promoted", {"green": 100}), serving="green", kept=("green",),
         production="2"),
    # abort: blue back at 100 % (step rolled-back), the canary's deletion sent, unanswered
    Kill("abort-deleting", "held", {"action": "abort", "reason": "answers too long",
                                    "requested_by": "dana"},
         held=("DELETE", "/deployments/green", None), killed=("rolled-back", {"blue": 100}),
         serving="blue", kept=("blue",), final="undone", production="1"),
    # rollback at once: claimed (step deploying), the switch to the kept blue unanswered
    Kill("now-switching", "promoted-kept", AT_ONCE,
         held=("PUT", "", {"blue": 100}), killed=("deploying", {"green": 100}),
         serving="green", kept=("green", "blue"), final="undone", production="2"),
    # rollback at once: switched (step promoted), the first stage tag unanswered
    Kill("now-switched", "promoted-kept", AT_ONCE,
         held=("PUT", "/models/m-now-switched/versions/2", None),
         killed=("promoted", {"blue": 100}), serving="blue", kept=("blue", "green"),
         production="1"),
    # rollback through a canary: its deployment made, the first contract probe unanswered
    Kill("canary-contract", "promoted", ROLLBACK, held=("POST", "/score", None),
         killed=("deploying", {"green": 100}), serving="green", kept=("green",),
         final="undone", production="2"),
    # ... at its canary share (checkpoint "canary-set")
    Kill("canary-set", "promoted", ROLLBACK, point="canary-set",
         killed=("canary", {"green": 80, NEW: 20}), serving="green", kept=("green",),
         final="undone", production="2"),
    # ... promoted, the old deployment deleted, not yet done (checkpoint "old-deleted")
    Kill("canary-old-deleted", "promoted", ROLLBACK, point="old-deleted",
         killed=("promoted", {NEW: 100}), serving=NEW, kept=(NEW,), production="1"),
]


def _hold_request(fake, kill: Kill) -> Fault:
    """The fake takes the action's request and never answers it (the kill comes first)."""
    method, path, traffic = kill.held

    def body_says(request) -> bool:
        return traffic is None or live_shares(
            (request.json or {}).get("properties", {}).get("traffic") or {}) == traffic

    where = (rf"^/score/{kill.ep}$" if path == "/score" else
             rf"{re.escape(path)}$" if path.startswith("/models/") else
             rf"/onlineEndpoints/{kill.ep}{re.escape(path)}$")
    # held past the kill and the recovery's wait, then the connection is dropped
    return fake.server.inject(Fault(method, where, kind="timeout", delay_s=120,
                                    when=body_says))


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _tail(log: Path) -> str:
    return log.read_text(errors="replace")[-3000:] if log.exists() else ""


def _snapshot(fake, ep: str) -> dict:
    return copy.deepcopy({"endpoint": fake.endpoints.get(ep),
                          "deployments": fake.deployments.get(ep, {})})


def _kill_each_at_its_point(fake, tmp_path: Path, spawner: subprocess.Popen,
                            pids: dict[str, int]) -> dict[str, dict]:
    """Start every action (``pids`` gets their process ids), kill -9 each where it
    stands; what its endpoint held then."""
    reached = {}
    actions = []
    for kill in KILLS:
        marker = tmp_path / f"held-{kill.id}"
        if kill.point:
            reached[kill.id] = marker.exists
        else:
            fault = _hold_request(fake, kill)
            reached[kill.id] = lambda fault=fault: fault.hits > 0
        request = ReleaseControlRequest.model_validate({"endpoint_name": kill.ep,
                                                        **kill.fields})
        actions.append({"id": kill.id, "log": str(tmp_path / f"{kill.id}.log"),
                        "hold": f"{kill.point}:{marker}" if kill.point else "",
                        "request": request.model_dump_json()})
    spawner.stdin.write(json.dumps(actions) + "\n")
    spawner.stdin.flush()
    for _ in KILLS:
        line = spawner.stdout.readline()
        assert line, "the actions were not started:\n" + _tail(tmp_path / "spawn.log")
        name, pid = line.split()
        pids[name] = int(pid)
    after_kill: dict[str, dict] = {}
    deadline = time.monotonic() + 240
    while len(after_kill) < len(KILLS):
        for kill in KILLS:
            if kill.id in after_kill:
                continue
            if reached[kill.id]():
                os.killpg(pids[kill.id], signal.SIGKILL)
                after_kill[kill.id] = _snapshot(fake, kill.ep)
                continue
            log = _tail(tmp_path / f"{kill.id}.log")
            assert _alive(pids[kill.id]), f"{kill.id} ended before its kill:\n{log}"
            assert time.monotonic() < deadline, f"{kill.id} never reached its point:\n{log}"
        time.sleep(0.05)
    return after_kill


@pytest.fixture(scope="module")
def killed(fake_server, prefect_server, tmp_path_factory):
    """Every action of KILLS killed -9 at its point, then, once their runs are silent past
    the liveness bound, one smoke test (its recovery first). What each endpoint held right
    after its kill and after the smoke test."""
    fake, tmp_path = fake_server, tmp_path_factory.mktemp("kills")
    fake.reset()
    patch = pytest.MonkeyPatch()
    patch.delenv("AZUREML_CURRENT_CLOUD", raising=False)  # restored by undo()
    patch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    # A run beats every second: a killed one is silent past the bound 19 s later.
    patch.setenv(HEARTBEAT_ENV, "1")
    credential = FakeCredential()
    patch.setattr(smoke, "load_workspace", lambda block: make_workspace(fake, credential))
    with (tmp_path / "spawn.log").open("ab") as log:
        spawner = subprocess.Popen(
            [sys.executable, "-c", SPAWN_ACTIONS, str(fake.server.port)],
            env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True,
            start_new_session=True, cwd=PROJECT_ROOT)
    pids: dict[str, int] = {}
    try:
        with ThreadPoolExecutor(len(KILLS)) as pool:  # while the spawner imports
            for scene in [pool.submit(build_scene, make_workspace(fake, credential), fake,
                                      kill.ep, kill.model, kill.scene) for kill in KILLS]:
                scene.result()
        after_kill = _kill_each_at_its_point(fake, tmp_path, spawner, pids)
        killed_at = time.monotonic()
        spawner.wait(timeout=30)
        wait_past_liveness(killed_at)
        state = smoke.smoke_test_endpoints(
            SmokeTestRequest(download_dir=str(tmp_path / "smoke"), request_timeout_s=5),
            workspace_block="azure-ml-workspace/fake", return_state=True)
        [recovery] = run_artifacts(state.state_details.flow_run_id, "rollout-recovery")
        ws = make_workspace(fake, credential)
        yield {
            "state": state, "recovery": recovery.data, "after_kill": after_kill,
            "after": {kill.id: _snapshot(fake, kill.ep) for kill in KILLS},
            "models": copy.deepcopy(fake.models),
            "history": {kill.id: ws.release_history(kill.ep) for kill in KILLS},
        }
    finally:
        for pid in [*pids.values(), spawner.pid]:
            if _alive(pid):
                os.killpg(pid, signal.SIGKILL)
        spawner.wait()
        patch.undo()


def _named(shares_: dict[str, int], new: str) -> dict[str, int]:
    return {new if k == NEW else k: v for k, v in shares_.items()}


@pytest.mark.parametrize("kill", KILLS, ids=[k.id for k in KILLS])
def test_a_kill_9_during_an_action_converges_on_the_next_pass(killed, kill):
    before = killed["after_kill"][kill.id]
    recorded = RecordedRelease.of(before["endpoint"]["tags"])
    new = recorded.to_deployment or ""
    # right after the kill: what the endpoint says (its step) is what it does (traffic)
    assert (recorded.step, live_shares(before["endpoint"]["properties"]["traffic"])) == (
        kill.killed[0], _named(kill.killed[1], new))

    assert killed["state"].is_completed(), killed["state"].message
    after = killed["after"][kill.id]
    endpoint, deployments = after["endpoint"], after["deployments"]
    serving = new if kill.serving == NEW else kill.serving
    # one deployment takes all live traffic, none mirrored, the release at its end
    assert live_shares(endpoint["properties"]["traffic"]) == {serving: 100}
    assert not live_shares(endpoint["properties"].get("mirrorTraffic") or {})
    assert RecordedRelease.of(endpoint["tags"]).step == kill.final
    # nothing half-made: no deployment but the serving one and one kept on purpose
    kept = [new if d == NEW else d for d in kill.kept]
    assert serving in deployments and set(deployments) <= set(kept), sorted(deployments)
    assert all(d["properties"]["provisioningState"] == "Succeeded"
               for d in deployments.values())
    versions = killed["models"][kill.model]
    assert [v for v, body in versions.items()
            if body["properties"]["tags"].get(TAG_STAGE) == "production"] == [
        kill.production]
    # the recovery said what it did, and the endpoint's history ends with it
    row = next(line for line in killed["recovery"].splitlines() if f"| {kill.ep} |" in line)
    assert ("promotion finished" if kill.final == "done" else "rolled back") in row
    # the end the release was heading to when it was killed (an abort stays an abort, a
    # person's rollback a rollback), else undone
    expected = recorded.ending or ("promoted" if kill.final == "done" else "undone")
    assert killed["history"][kill.id][0].action == expected


# A release its run had decided to withdraw (step rolled-back) keeps that decision when the
# recovery finishes it: an abort stays the person's, never a "run died" undo a re-run retries.
def test_an_abort_killed_after_its_traffic_write_stays_the_person_s_decision(killed):
    after = killed["after"]["abort-deleting"]["endpoint"]
    two = killed["models"]["m-abort-deleting"]["2"]["properties"]["tags"]
    assert two[TAG_STAGE] == "rejected"
    assert not RecordedRelease.of(after["tags"]).reason.startswith(RUN_DIED), after["tags"]
    assert (two[TAG_REJECTED_BY], killed["history"]["abort-deleting"][0].action) == (
        "person", "aborted")
    assert "answers too long" in two["chatft-rollback-reason"]


# A rollback at once moves traffic onto a deployment that was there before it: undoing it
# never deletes that deployment.
def test_a_rollback_at_once_killed_before_its_switch_keeps_the_kept_deployment(killed):
    row = next(line for line in killed["recovery"].splitlines() if "| k-now-switching |" in line)
    assert "blue deleted" not in row, row
    assert sorted(killed["after"]["now-switching"]["deployments"]) == ["blue", "green"]
