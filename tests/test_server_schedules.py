"""Schedules fire on a server started the way ``make server-up`` starts it.

``scripts/local_server.py up`` starts ``prefect server start`` (SQLite, its own
PREFECT_HOME in tmp), deploys prefect.yaml and starts a process worker; nothing of the
product is changed. Only the test's environment shortens the scheduler's loop, and the
test adds a short interval schedule to ``smoke-test-endpoints`` through the API (as a
person would in the UI), so a scheduled run falls due within seconds instead of at the
top of the hour.

Outcomes checked: the scheduler (not the test) creates the runs of the deployment's own
hourly schedule; one scheduler-created run goes through the worker to Completed; the
server's and the worker's logs hold no traceback and no ERROR line. A dependency that
breaks the scheduler (SQLAlchemy 2.1 with Prefect 3.8.8) fails this test.

Figures (time from server-up to the first scheduler-created run, and to its Completed
state) are printed; run with ``-s`` to see them.
"""

from __future__ import annotations

import importlib.util
import re
import socket
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytestmark = pytest.mark.slow

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEPLOYMENT = "smoke-test-endpoints"
# Lines that mean something went wrong in a Prefect server or worker log.
TROUBLE = re.compile(r"Traceback \(most recent call last\)|\| ERROR |\bERROR\b\s*\|| ERROR:")


def _load_local_server() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "local_server", PROJECT_DIR / "scripts" / "local_server.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


local_server = _load_local_server()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def trouble_in(path: Path) -> list[str]:
    """The log's traceback and ERROR lines, each with the line after it for context."""
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [" / ".join(lines[i:i + 2]) for i, line in enumerate(lines) if TROUBLE.search(line)]


class ServerUp:
    def __init__(self, server: Any, started: float, deployed: list[str]):
        from prefect.client.orchestration import SyncPrefectClient

        self.server = server
        self.started = started
        self.up_s = time.monotonic() - started
        self.deployed = deployed
        self.client = SyncPrefectClient(server.api_url)
        self.client.__enter__()

    def deployment_id(self, name: str) -> Any:
        return self.client.read_deployment_by_name(f"{name}/{name}").id

    def logs(self) -> str:
        return "\n".join(
            f"--- {name} log (tail) ---\n" + (path.read_text()[-4000:] if path.exists() else "")
            for name in ("server", "worker") for path in [self.server.log_file(name)]
        )

    def scheduled_runs(self, deployment_id: Any) -> list[Any]:
        from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

        return self.client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=[deployment_id])
        ))


@pytest.fixture(scope="module")
def server_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerUp]:
    root = tmp_path_factory.mktemp("server-schedules")
    server = local_server.Server(
        root / "prefect-home", "127.0.0.1", _free_port(),
        extra_env={
            # The scheduler's pass every 2 s instead of 60 s, and a few runs per pass:
            # settings of this test's server only.
            "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2",
            "PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS": "2",
            "PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS": "5",
            "HF_HUB_OFFLINE": "1",
        },
    )
    running: ServerUp | None = None
    started = time.monotonic()
    try:
        deployed = local_server.up(server, root / "workspace", query_seconds=2)
        running = ServerUp(server, started, deployed)
        yield running
    finally:
        if running is not None:
            running.client.__exit__(None, None, None)
        local_server.down(server)


def test_scheduler_creates_runs_and_one_completes_through_the_worker(server_up: ServerUp) -> None:
    from prefect.client.schemas.schedules import IntervalSchedule

    assert DEPLOYMENT in server_up.deployed
    deployment_id = server_up.deployment_id(DEPLOYMENT)

    # 1. The deployment's own hourly schedule: the scheduler fills Upcoming by itself.
    deadline = time.monotonic() + 120
    while not (runs := server_up.scheduled_runs(deployment_id)):
        assert time.monotonic() < deadline, (
            f"the scheduler created no run of {DEPLOYMENT} in 120 s\n{server_up.logs()}"
        )
        time.sleep(1)
    first_scheduled_s = time.monotonic() - server_up.started
    assert all(r.auto_scheduled and r.state_name == "Scheduled" for r in runs)

    # 2. A short interval added through the API, as a person would add one in the UI, so a
    # scheduler-created run falls due now; the worker must take it to Completed.
    server_up.client.create_deployment_schedules(
        deployment_id, [(IntervalSchedule(interval=timedelta(seconds=20)), True)]
    )
    deadline = time.monotonic() + 300
    while True:
        runs = server_up.scheduled_runs(deployment_id)
        done = [r for r in runs if r.auto_scheduled and r.state and r.state.is_completed()]
        if done:
            break
        crashed = [r for r in runs if r.state and r.state.type.value in ("FAILED", "CRASHED")]
        assert not crashed, f"{crashed[0].state_name}: {crashed[0].state.message}\n" \
                            f"{server_up.logs()}"
        assert time.monotonic() < deadline, (
            f"no scheduled run of {DEPLOYMENT} completed in 300 s: "
            f"{sorted({r.state_name for r in runs})}\n{server_up.logs()}"
        )
        time.sleep(2)
    completed_s = time.monotonic() - server_up.started
    # stop the short schedule so the worker goes quiet before the logs are read
    server_up.client.pause_deployment(deployment_id)
    print(f"\nserver-up took {server_up.up_s:.1f} s; from its start to the first "
          f"scheduler-created run {first_scheduled_s:.1f} s, to a scheduled run Completed "
          f"{completed_s:.1f} s")

    problems = {name: trouble_in(server_up.server.log_file(name))
                for name in ("server", "worker")}
    assert problems == {"server": [], "worker": []}, server_up.logs()
