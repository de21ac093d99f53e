"""A real kill -9 of a real finetune_and_deploy process at each long step, then a re-run.

After the re-run there is exactly one job, one model version, one endpoint and one
deployment, and no process started for the workspace that no record knows about.

Two of the points hold the flow inside ``spawn_detached`` (``CHATFT_HOLD_AFTER_SPAWN``):
after the job or endpoint server process exists and before its pid is recorded, the
narrowest window, where a kill -9 used to leave an orphan server (issue 14, defect 2).
The other two are found by watching the workspace's state, as a user would see it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest, TrainingParameters
from tests.helpers import chat_body, processes_under
from workspaces.fault_injection import SPAWN_HOLD_ENV, SPAWN_MARKER
from workspaces.local import LocalWorkspace
from workspaces.local.endpoints import SERVER_MODULE
from workspaces.local.jobs import JOB_MODULE
from workspaces.local.state import PROCESS_FILE, TOKEN_ENV, read_json

STANDIN = "phi3-tiny-standin"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
RUN_FLOW = """
import sys
from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest
finetune_and_deploy(request=FinetuneRequest.model_validate_json(sys.argv[1]))
"""


def _held(module: str) -> Callable[[LocalWorkspace], bool]:
    """The flow sits between starting ``module``'s process and recording its pid."""
    folder = "jobs" if module == JOB_MODULE else "endpoints"
    return lambda ws: any((ws.root / folder).glob(f"*/{SPAWN_MARKER}"))


def _model_versions(ws: LocalWorkspace) -> int:
    # Read-only, straight from the registry's SQLite file: an MLflow client here could
    # race the flow and the job creating the schema.
    db = ws.root / "mlflow.db"
    if not db.exists():
        return 0
    for _ in range(50):
        try:
            with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                return conn.execute("SELECT count(*) FROM model_versions").fetchone()[0]
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return 0
            time.sleep(0.1)  # locked for a write
    raise AssertionError(f"{db} stayed locked")


def _model_registered(ws: LocalWorkspace) -> bool:
    return _model_versions(ws) > 0


def _deployment_created(ws: LocalWorkspace) -> bool:
    return any(
        (read_json(config) or {}).get("deployments")
        for config in (ws.root / "endpoints").glob("*/endpoint.json")
    )


# In flow order: (name, module the flow is held after starting or None, when to kill).
KILL_POINTS = [
    ("job started, pid not recorded", JOB_MODULE, _held(JOB_MODULE)),
    ("model registered", None, _model_registered),
    ("endpoint server started, pid not recorded", SERVER_MODULE, _held(SERVER_MODULE)),
    ("deployment created", None, _deployment_created),
]


def _unknown(root: Path) -> list[str]:
    """Processes of the workspace that no record names by pid or by identity token."""
    records = [read_json(r) or {} for r in root.rglob(PROCESS_FILE)]
    pids = {r.get("pid") for r in records}
    tokens = {r.get("token") for r in records}
    unknown = []
    for proc in processes_under(root):
        try:
            if proc.pid not in pids and proc.environ().get(TOKEN_ENV) not in tokens:
                unknown.append(" ".join(proc.cmdline()))
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return unknown


def _counts(ws: LocalWorkspace) -> dict[str, int]:
    """What exists, read from the files alone: a workspace read would adopt a process
    whose pid was never recorded, and the re-run is the one that must do that."""
    configs = [read_json(c) or {} for c in ws.root.glob("endpoints/*/endpoint.json")]
    return {
        "jobs": len(list(ws.root.glob("jobs/*/spec.json"))),
        "model versions": _model_versions(ws),
        "endpoints": len(configs),
        "deployments": sum(len(c.get("deployments", {})) for c in configs),
    }


ONE_OF_EACH = dict.fromkeys(("jobs", "model versions", "endpoints", "deployments"), 1)


def kill_flow_when(
    reached: Callable[[], bool], request: FinetuneRequest, log: Path, what: str,
    env: dict[str, str] | None = None, deadline_s: float = 600,
) -> None:
    """Run the request's flow in its own process (with ``env`` added) until ``reached()``,
    then kill -9 its whole process group."""
    from prefect.settings import PREFECT_API_URL

    with log.open("ab") as out:
        flow_process = subprocess.Popen(
            [sys.executable, "-c", RUN_FLOW, request.model_dump_json()],
            env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(), **(env or {})},
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=PROJECT_ROOT,
        )
    try:
        deadline = time.monotonic() + deadline_s
        while not reached():
            assert flow_process.poll() is None, f"{what}: " + log.read_text()[-3000:]
            assert time.monotonic() < deadline, f"the flow never reached: {what}"
            time.sleep(0.2)
    finally:
        os.killpg(flow_process.pid, signal.SIGKILL)
        flow_process.wait()


def _kill_flow_at(point: str, hold: str | None, reached, ws, request, log: Path) -> None:
    """Kill the flow once the workspace shows ``point`` (held after a spawn, if ``hold``)."""
    env = {SPAWN_HOLD_ENV: hold} if hold else {}
    kill_flow_when(lambda: reached(ws), request, log, point, env)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_kill_9_at_each_step_then_rerun_leaves_one_of_each_and_no_orphan(
    prefect_server, workspace, tmp_path, monkeypatch
):
    """Each run is killed at the next point; each re-run recovers what the last kill left.

    One chain instead of one fresh workspace per point: the points come in flow order,
    so each re-run both recovers from the previous kill and reaches the next point, and
    the whole matrix costs one flow's training and model loading, not four.
    """
    root = workspace.root.resolve()
    monkeypatch.setenv("CHATFT_STATE_DIR", str(root))
    request = FinetuneRequest(
        foundation_model=STANDIN,
        training=TrainingParameters(num_train_epochs=1),
        dataset_split_pc=3,
        download_dir=str(tmp_path / "dl"),
    )
    request_id = request.request_id(workspace.cache_scope)
    try:
        for point, hold, reached in KILL_POINTS:
            if hold == SERVER_MODULE:
                # The kill at "model registered" polls the registry and can land after the
                # flow went on to start the endpoint's server (a few ms later). Then no
                # run would start a server again; a crash of that server (kill -9) makes
                # the next run start one, so it reaches the hold whatever the timing.
                running = [p for p in processes_under(root) if SERVER_MODULE in p.cmdline()]
                for proc in running:
                    os.killpg(proc.pid, signal.SIGKILL)
                psutil.wait_procs(running, timeout=10)
            _kill_flow_at(point, hold, reached, workspace, request, tmp_path / "flow.log")
            # Right after the kill: nothing twice, and every process is a recorded one
            # (a start whose pid was never written is known by its token).
            assert max(_counts(workspace).values()) <= 1, (point, _counts(workspace))
            assert _unknown(root) == [], point
            for held in root.rglob(SPAWN_MARKER):
                held.unlink()

        result = finetune_and_deploy(request=request)
        assert result.job_reused and result.endpoint_reused
        assert [j.name for j in workspace.find_jobs(request_id)] == [result.job_name]
        assert _counts(workspace) == ONE_OF_EACH
        (endpoint,) = workspace.list_endpoints()
        assert endpoint.healthy and [d.name for d in endpoint.deployments] == ["demo"]
        servers = [p for p in processes_under(root) if SERVER_MODULE in p.cmdline()]
        assert len(servers) == 1 and _unknown(root) == []
        assert not [p for p in processes_under(root) if JOB_MODULE in p.cmdline()]  # it finished

        # The server dies (kill -9): the next run brings it back instead of failing with
        # "connection refused" (defect 7).
        os.killpg(servers[0].pid, signal.SIGKILL)
        psutil.wait_procs(servers, timeout=10)
        again = finetune_and_deploy(request=request)
        assert workspace.get_endpoint(again.endpoint_name).healthy
        assert workspace.invoke(again.endpoint_name, chat_body(), timeout_s=60).status_code == 200
        assert _counts(workspace) == ONE_OF_EACH
        assert len([p for p in processes_under(root) if SERVER_MODULE in p.cmdline()]) == 1
        assert _unknown(root) == []
    finally:
        for endpoint in workspace.list_endpoints():
            workspace.begin_delete_endpoint(endpoint.name)
        for proc in processes_under(root):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
