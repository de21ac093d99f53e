"""Process ownership of the local workspace, with real processes and a real kill -9.

Defect 3: the job-alive check raced a process that was just starting.
Defect 2: a flow killed between starting an endpoint's server and recording it left an
orphan that answered health checks, survived delete and took over a re-made endpoint.
Defect 7: edges of the endpoint server (deep JSON, Retry-After, a dead server).
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers import (
    MANAGED_TAGS,
    chat_body,
    kill_processes_under,
    processes_under,
    register_model,
    serve,
)
from tests.workspaces.local.test_jobs import spec_for
from workspaces.fault_injection import SPAWN_HOLD_ENV, SPAWN_MARKER
from workspaces.interface import DeploymentSpec, EndpointSpec
from workspaces.local import jobs as local_jobs
from workspaces.local.endpoints import SERVER_MODULE
from workspaces.local.state import CHALLENGE_HEADER, identity_proof, read_json

IDLE = "tests.workspaces.local.idle_process"


def _recorded_pids(root: Path) -> set[int]:
    return {
        (read_json(record) or {}).get("pid") for record in root.rglob("process.json")
    } - {None}


def _unrecorded(root: Path) -> list[psutil.Process]:
    recorded = _recorded_pids(root)
    return [p for p in processes_under(root) if p.pid not in recorded]


@pytest.fixture(autouse=True)
def _no_leftovers(tmp_path):
    yield
    kill_processes_under(tmp_path)


def test_quick_job_starts_are_never_reported_dead(workspace, monkeypatch):
    """Defect 3: the alive check read /proc before a new process's cmdline was complete."""
    # The job's program is swapped for one that just sleeps: this is about the check.
    monkeypatch.setattr(local_jobs, "JOB_MODULE", IDLE)
    base = spec_for(workspace, "job-0")
    misreported = []
    for i in range(100):
        spec = base.model_copy(update={"name": f"job-{i}", "display_name": f"job-{i}"})
        workspace.jobs.submit(spec, "unused-weights")
        job = workspace.get_job(spec.name)
        if job.status == "Failed":
            misreported.append((spec.name, job.error))
    assert misreported == []


HOLD_FLOW = """
import sys
from workspaces.local import LocalWorkspace
from tests.helpers import MANAGED_TAGS
from workspaces.interface import EndpointSpec
LocalWorkspace(sys.argv[1]).begin_create_endpoint(
    EndpointSpec(name="orphan-check", description="test", tags=dict(MANAGED_TAGS)))
"""


def _kill_after_spawn(root: Path, log: Path) -> None:
    """A real caller, held after the server process exists and before it is recorded: kill -9."""
    env = {**os.environ, SPAWN_HOLD_ENV: SERVER_MODULE}
    with log.open("wb") as out:
        caller = subprocess.Popen(
            [sys.executable, "-c", HOLD_FLOW, str(root)], env=env, start_new_session=True,
            stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[3],
        )
    held = root / "endpoints" / "orphan-check" / SPAWN_MARKER
    deadline = time.monotonic() + 120
    while not held.exists():
        assert caller.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    os.kill(caller.pid, signal.SIGKILL)
    caller.wait()


def _serving(ws, name: str, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        endpoint = ws.get_endpoint(name)
        if endpoint and endpoint.provisioning_state != "Creating":
            break
        time.sleep(0.3)
    return ws.get_endpoint(name)


def test_kill_between_start_and_record_leaves_no_unknown_server(workspace, tmp_path):
    """Defect 2: kill -9 after the server starts, before its pid is recorded; then
    re-run, restart, delete: one endpoint, and no process that no record knows about."""
    root = workspace.root
    _kill_after_spawn(root, tmp_path / "caller.log")
    folder = root / "endpoints" / "orphan-check"
    assert len(processes_under(folder)) == 1  # the server outlived its killed caller

    # The re-run serves the endpoint (not Failed) with exactly one, recorded, server.
    workspace.begin_create_endpoint(EndpointSpec(
        name="orphan-check", description="test", tags=dict(MANAGED_TAGS),
    ))
    endpoint = _serving(workspace, "orphan-check")
    assert endpoint.provisioning_state == "Succeeded" and endpoint.healthy, endpoint
    assert [e.name for e in workspace.list_endpoints()] == ["orphan-check"]
    assert len(processes_under(folder)) == 1
    assert _unrecorded(root) == []
    # The server on the port proves it is the recorded one for this endpoint's id.
    challenge = secrets.token_hex(16)
    health = httpx.get(endpoint.scoring_uri.replace("/score", "/health"), timeout=5,
                       headers={CHALLENGE_HEADER: challenge}).json()
    assert health["proof"] == identity_proof(read_json(folder / "process.json")["token"],
                                             challenge, read_json(folder / "endpoint.json")["id"])

    # restart replaces it: still one server, known to the record.
    assert workspace.restart_endpoint("orphan-check").healthy
    assert len(processes_under(folder)) == 1
    assert _unrecorded(root) == []

    # delete ends every process of the endpoint.
    workspace.begin_delete_endpoint("orphan-check")
    assert processes_under(folder) == []
    assert workspace.list_endpoints() == []


def test_an_unrecorded_server_is_ended_and_never_serves_new_keys(workspace):
    """Defect 2: an orphan answered `restart`'s health check, survived delete, and took
    over a re-made endpoint with its new keys."""
    workspace.begin_create_endpoint(EndpointSpec(
        name="orphan-check", description="test", tags=dict(MANAGED_TAGS),
    ))
    assert _serving(workspace, "orphan-check").healthy
    folder = workspace.root / "endpoints" / "orphan-check"
    (orphan,) = processes_under(folder)
    # The record is lost, as after a kill -9 between start and record on the old code.
    for record in ("process.json", "pid"):
        (folder / record).unlink(missing_ok=True)
    restarted = workspace.restart_endpoint("orphan-check")
    assert restarted.healthy
    (server,) = processes_under(folder)
    assert server.pid != orphan.pid

    # A foreign server (its record lost again) must not take over a re-made endpoint.
    for record in ("process.json", "pid"):
        (folder / record).unlink(missing_ok=True)
    workspace.begin_delete_endpoint("orphan-check")
    assert processes_under(folder) == []
    workspace.begin_create_endpoint(EndpointSpec(
        name="orphan-check", description="test", tags=dict(MANAGED_TAGS),
    ))
    assert _serving(workspace, "orphan-check").healthy
    assert len(processes_under(folder)) == 1 and _unrecorded(workspace.root) == []


def _raw_score(endpoint, key: str, content: bytes) -> httpx.Response:
    return httpx.post(
        endpoint.scoring_uri, content=content, timeout=60,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


def test_an_orphan_whose_endpoint_was_made_again_never_accepts_its_new_keys(workspace):
    """Defect 2: an orphan left by a delete that never saw it re-read the re-made endpoint's
    folder and accepted its new keys. A server now exits once its endpoint is not its own."""
    workspace.begin_create_endpoint(EndpointSpec(
        name="orphan-check", description="test", tags=dict(MANAGED_TAGS),
    ))
    assert _serving(workspace, "orphan-check").healthy
    folder = workspace.root / "endpoints" / "orphan-check"
    (orphan,) = processes_under(folder)
    old_port = read_json(folder / "endpoint.json")["port"]
    # The folder goes away under a server nobody recorded (what a delete did to an orphan).
    for record in ("process.json", "pid"):
        (folder / record).unlink(missing_ok=True)
    for child in folder.iterdir():
        child.unlink()

    workspace.begin_create_endpoint(EndpointSpec(
        name="orphan-check", description="test", tags=dict(MANAGED_TAGS),
    ))
    assert _serving(workspace, "orphan-check").healthy
    new_key = workspace.get_endpoint_keys("orphan-check").primary.get_secret_value()
    # It re-reads the folder every 0.5 s; a busy machine may take longer to schedule it.
    psutil.wait_procs([orphan], timeout=30)
    body = b'{"input_data": {"input_string": [[{"role": "user", "content": "hi"}]]}}'
    try:
        answer = httpx.post(
            f"http://127.0.0.1:{old_port}/score", content=body, timeout=10,
            headers={"Authorization": f"Bearer {new_key}", "Content-Type": "application/json"},
        )
    except httpx.ConnectError:
        answer = None
    assert answer is None, f"the orphan answered the new key: {answer.status_code}"
    assert not orphan.is_running()
    assert len(processes_under(folder)) == 1 and _unrecorded(workspace.root) == []


def test_delete_all_from_the_shell_ends_a_server_no_record_knows(workspace):
    """Defect 2: the orphan survived `make endpoints-delete` (`chatft endpoints delete --all`)."""
    workspace.begin_create_endpoint(EndpointSpec(
        name="orphan-check", description="test", tags=dict(MANAGED_TAGS),
    ))
    assert _serving(workspace, "orphan-check").healthy
    folder = workspace.root / "endpoints" / "orphan-check"
    assert len(processes_under(folder)) == 1
    for record in ("process.json", "pid"):
        (folder / record).unlink(missing_ok=True)
    shell = subprocess.run(
        [sys.executable, "-m", "workspaces.local.cli", "--state-dir", str(workspace.root),
         "endpoints", "delete", "--all"],
        capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[3],
    )
    assert shell.returncode == 0, shell.stderr
    assert "deleted orphan-check" in shell.stdout
    assert processes_under(workspace.root) == []


def _raw_score(endpoint, key: str, content: bytes) -> httpx.Response:
    return httpx.post(
        endpoint.scoring_uri, content=content, timeout=60,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
    )


def test_a_deeply_nested_body_is_a_400_saying_why(workspace, standin_mlflow_model):
    """Defect 7: a 5000-deep body gave a 500 (an uncaught RecursionError)."""
    endpoint = serve(workspace, register_model(workspace, standin_mlflow_model), "edges")
    key = workspace.get_endpoint_keys("edges").primary.get_secret_value()
    deep = b'{"input_data": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = _raw_score(endpoint, key, deep)
    assert response.status_code == 400, response.text
    assert "nested too deeply" in response.json()["error"]["message"]


def test_a_429_says_when_to_retry(workspace, standin_mlflow_model):
    """Defect 7: a 429 carried no Retry-After."""
    endpoint = serve(workspace, register_model(workspace, standin_mlflow_model), "edges")
    key = workspace.get_endpoint_keys("edges").primary.get_secret_value()
    # Slow answers let requests pile up past the limit (2 x 1 x 1 instance).
    workspace.endpoints.set_simulation("edges", "demo", {"delay_s": 3, "body": "{}"})
    time.sleep(1.5)  # the server re-reads endpoint.json every 0.5 s
    answers: list[httpx.Response] = []
    body = b'{"input_data": {"input_string": [[{"role": "user", "content": "hi"}]]}}'
    threads = [
        threading.Thread(target=lambda: answers.append(_raw_score(endpoint, key, body)))
        for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    refused = [r for r in answers if r.status_code == 429]
    assert refused, [r.status_code for r in answers]
    assert all(int(r.headers.get("Retry-After", 0)) >= 1 for r in refused)


@pytest.mark.slow
def test_next_flow_run_brings_a_dead_endpoint_server_back(
    prefect_server, workspace, standin_mlflow_model
):
    """Defect 7: after the server died, the next run reused the endpoint and failed with
    connection refused; now its endpoint and deployment steps bring the server back."""
    from prefect import flow

    from tasks.endpoints import create_deployment, create_endpoint

    model = register_model(workspace, standin_mlflow_model)
    serve(workspace, model, "revive-me")
    kill_processes_under(workspace.root / "endpoints" / "revive-me")
    assert not workspace.get_endpoint("revive-me").healthy

    @flow
    def rerun() -> None:
        create_endpoint(workspace, EndpointSpec(
            name="revive-me", description="test", tags=dict(MANAGED_TAGS),
        ), 3)
        create_deployment(workspace, DeploymentSpec(
            endpoint_name="revive-me", name="demo", model_id=model.id, instance_type="Local_CPU",
        ), 3)

    rerun()
    answer = workspace.invoke("revive-me", chat_body(), timeout_s=60)
    assert answer.status_code == 200, answer.body

