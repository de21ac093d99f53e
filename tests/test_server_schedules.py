"""Schedules fire on a server started the way ``make server-up`` starts it.

``chatft server up`` starts ``prefect server start`` (SQLite, its own
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

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

from server import manager
from server.instance import Server
from tests.helpers import CHATFT, PROJECT_DIR, free_port, trouble_in

pytestmark = pytest.mark.slow

DEPLOYMENT = "smoke-test-endpoints"



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
    """The server as a person starts it: ``chatft server up`` run as a command,
    with a non-default port, home and state folder; it is stopped at the end by pasting the
    ``Stop it:`` command that ``up`` printed (test_the_printed_commands_stop_what_up_started)."""
    import os
    import subprocess

    root = tmp_path_factory.mktemp("server-schedules")
    home, state, port = root / "prefect-home", root / "workspace", free_port()
    # The scheduler's pass every 2 s instead of 60 s, and a few runs per pass: settings of
    # this test's server only, given to it through the environment `up` passes on.
    env = dict(os.environ, PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="2",
               PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="2",
               PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS="5", HF_HUB_OFFLINE="1")
    env.pop("PREFECT_API_URL", None)
    server = Server(home, "127.0.0.1", port)
    running: ServerUp | None = None
    started = time.monotonic()
    try:
        done = subprocess.run(
            [CHATFT, "server", "up",
             "--port", str(port), "--home", str(home), "--state-dir", str(state),
             "--worker-query-seconds", "2"],
            env=env, cwd=root, capture_output=True, text=True, timeout=600,
        )
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        deployed = [line.removeprefix("Deployed ") for line in done.stdout.splitlines()
                    if line.startswith("Deployed ")]
        running = ServerUp(server, started, deployed)
        running.printed = done.stdout
        running.state_dir = state
        yield running
    finally:
        if running is not None:
            running.client.__exit__(None, None, None)
        # Whatever a test left: nothing of this server may outlive the module.
        if server.running_pid("server") or server.running_pid("worker"):
            manager.down(server)


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
    # (an hourly run that fell due meanwhile may already be with the worker)
    assert all(r.auto_scheduled for r in runs)
    # the teardown cadence has a fixed anchor: it does not restart at every server-up
    teardown = server_up.client.read_deployment(server_up.deployment_id("teardown-idle-endpoints"))
    anchor = teardown.schedules[0].schedule.anchor_date
    assert anchor.isoformat().startswith("2026-01-01T00:00:00")

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


BAD_PARAMETERS = [
    # (deployment, parameters, what the 409 must name)
    ("finetune-and-deploy", {"request": {"endpoint_name": "1abc"}}, "request.endpoint_name"),
    ("finetune-and-deploy", {"request": {"deployment_name": "Bad_Name!"}},
     "request.deployment_name"),
    ("finetune-and-deploy", {"request": {"dataset_split_pc": 500}}, "request.dataset_split_pc"),
    ("finetune-and-deploy", {"request": {"training": {"epochs": 2}}}, "'epochs' was unexpected"),
    ("finetune-and-deploy", {"delete_endpoint": True}, "'delete_endpoint' was unexpected"),
    ("smoke-test-endpoints", {"request": {"endpoint_names": ["ok-name", "1abc"]}},
     "request.endpoint_names[1]"),
    ("smoke-test-endpoints", {"request": {"max_concurrency": 0}}, "request.max_concurrency"),
    ("smoke-test-endpoints", {"request": {"bogus": 1}}, "'bogus' was unexpected"),
    ("smoke-test-endpoints", {"endpoint_names": ["a-b-c"]}, "'endpoint_names' was unexpected"),
    ("teardown-idle-endpoints", {"request": {"idle_hours": -5}}, "request.idle_hours"),
    ("teardown-idle-endpoints", {"request": {"bogus": 1}}, "'bogus' was unexpected"),
    ("teardown-idle-endpoints", {"workspace_block": "Azure ML/prod"}, "workspace_block"),
    ("finetune-and-deploy", {"workspace_block": "no-slash"}, "workspace_block"),
    ("release-control", {"request": {"endpoint_name": "chatft-demo", "action": "abort"}},
     "'reason' is a required property"),
    ("release-control", {"request": {"endpoint_name": "chatft-demo", "action": "demote"}},
     "'demote' is not one of"),
    ("release-control", {"request": {"action": "status"}},
     "'endpoint_name' is a required property"),
    # the test-only clock is gone from the form
    ("teardown-idle-endpoints", {"now": "2030-01-01T00:00:00Z"}, "'now' was unexpected"),
]


def test_server_refuses_bad_values_naming_the_field(server_up: ServerUp) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    answers = {}
    for deployment, parameters, expected in BAD_PARAMETERS:
        deployment_id = server_up.deployment_id(deployment)
        try:
            server_up.client.create_flow_run_from_deployment(deployment_id, parameters=parameters)
            answers[deployment, expected] = "201 Created"
        except PrefectHTTPStatusError as refused:
            text = refused.response.text
            answers[deployment, expected] = (
                "ok" if refused.response.status_code == 409 and expected in text else text
            )
        # nothing half-created: no run other than the scheduler's exists
        manual = [r for r in server_up.scheduled_runs(deployment_id) if not r.auto_scheduled]
        assert manual == [], f"{deployment} {parameters} created a run"
    assert all(answer == "ok" for answer in answers.values()), answers


class WebhookReceiver:
    """A local webhook (127.0.0.1, free port) that keeps what it receives, with the time."""

    def __init__(self) -> None:
        import json
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        self.received: list[tuple[float, dict[str, Any]]] = []
        received = self.received

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append((time.time(), json.loads(body or b"{}")))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_a_failing_smoke_test_notifies_the_webhook(server_up: ServerUp) -> None:
    import subprocess
    import sys

    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    receiver = WebhookReceiver()
    try:
        # until the user gives a URL, the automation waits disabled (no failed deliveries)
        automations = server_up.client.read_automations_by_name("chatft smoke test failed")
        assert len(automations) == 1 and not automations[0].enabled
        env = server_up.server.env()
        # The user fills in the block's URL (here from Python, as the UI's Edit would).
        save = ("import sys; from prefect.blocks.notifications import "
                "CustomWebhookNotificationBlock as B; b = B.load('chatft-alerts'); "
                "b.url = sys.argv[1]; b.save('chatft-alerts', overwrite=True)")
        subprocess.run([sys.executable, "-c", save, receiver.url], env=env, check=True,
                       cwd=PROJECT_DIR)
        # server-up again: the automation is enabled, not duplicated, and the URL is kept
        again = ("import sys; from pathlib import Path; from server import provisioning as s; "
                 "s.save_server_objects(Path(sys.argv[1]), None)")
        subprocess.run([sys.executable, "-c", again, str(server_up.state_dir)], env=env,
                       check=True, cwd=PROJECT_DIR)
        automations = server_up.client.read_automations_by_name("chatft smoke test failed")
        assert len(automations) == 1 and automations[0].enabled

        gone = "gone-endpoint"
        deadline = time.monotonic() + 300
        while True:
            flow_run = server_up.client.create_flow_run_from_deployment(
                server_up.deployment_id(DEPLOYMENT),
                parameters={"request": {"endpoint_names": [gone]}},
            )
            while not (state := server_up.client.read_flow_run(flow_run.id).state).is_final():
                assert time.monotonic() < deadline, server_up.logs()
                time.sleep(1)
            # The deployment runs one at a time (concurrency limit 1, cancel the newcomer);
            # a run of the short schedule the first test added may hold the slot.
            if not (state.is_cancelled() and "concurrency limit" in (state.message or "")):
                break
            assert time.monotonic() < deadline, server_up.logs()
            time.sleep(5)
        assert state.is_failed(), state.message
        failed_at = state.timestamp.timestamp()
        # One readable error in the worker log, and no traceback of ours or of Prefect's
        # engine (it once held two: "Encountered exception" and "Engine execution exited").
        time.sleep(2)  # the worker copies the run's output line by line
        worker_log = server_up.server.log_file("worker").read_text(errors="replace")
        assert "Engine execution exited" not in worker_log, worker_log[-6000:]
        assert "Traceback" not in worker_log, worker_log[-6000:]
        errors = trouble_in(server_up.server.log_file("worker"))
        assert len(errors) == 1 and "failed the smoke test: gone-endpoint" in errors[0], errors

        deadline = time.monotonic() + 60
        while not receiver.received:
            assert time.monotonic() < deadline, (
                f"no notification within 60 s of the failed run\n{server_up.logs()}"
            )
            time.sleep(0.5)
        arrived, message = receiver.received[0]
        print(f"\nnotification latency: {arrived - failed_at:.1f} s after the run failed")
        assert len(server_up.client.read_flow_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[flow_run.id])))) == 1
        text = f"{message.get('subject')}\n{message.get('text')}"
        assert gone in message["subject"]
        assert "Failure class: not_found" in text
        assert f"{server_up.server.ui_url}/runs/flow-run/{flow_run.id}" in text, text

        # A release rolled back goes to the same webhook, through the same automation.
        emit = ("from tasks import reports; reports.emit('rollout.rolled-back', 'release-ep', "
                "'local', {'deployment': 'demo-2', 'restored': 'demo-1', "
                "'reason': 'error rate 100.0% (5/5), needs <= 5.0%'})")
        subprocess.run([sys.executable, "-c", emit], env=env, check=True, cwd=PROJECT_DIR)
        deadline = time.monotonic() + 60
        while len(receiver.received) < 2:
            assert time.monotonic() < deadline, f"no rollback notification\n{server_up.logs()}"
            time.sleep(0.5)
        message = receiver.received[1][1]
        assert message["subject"] == "Release rolled back: release-ep", message
        assert "deployment demo-2 was rolled back" in message["text"]
        assert "demo-1 takes all traffic again" in message["text"]
        assert "Why: error rate 100.0%" in message["text"]
    finally:
        receiver.close()


def _wait_final(server_up: ServerUp, flow_run_id: Any, timeout_s: float = 300) -> Any:
    deadline = time.monotonic() + timeout_s
    while not (state := server_up.client.read_flow_run(flow_run_id).state).is_final():
        assert time.monotonic() < deadline, server_up.logs()
        time.sleep(1)
    return state


def test_up_says_when_schedules_fire_and_its_run_now_command_works(server_up: ServerUp) -> None:
    """A new user once waited for the next full hour, and nothing said when the first
    smoke test was due. ``up`` names each schedule's first run and prints a command that
    runs the smoke test now; pasted as printed, it makes a run that completes."""
    import subprocess

    printed = server_up.printed
    assert re.search(r"smoke-test-endpoints: first scheduled run at \d{4}-\d\d-\d\d "
                     r"\d\d:00 UTC \(in \d+ min\)", printed), printed
    assert re.search(r"teardown-idle-endpoints: first scheduled run at .* UTC \(in \d+ min\)",
                     printed), printed
    assert "finetune-and-deploy: no schedule" in printed
    assert ("Checked: finetune-and-deploy, smoke-test-endpoints, teardown-idle-endpoints, "
            "release-control refuse a run with an unknown parameter (409)") in printed
    assert "Checked: automation 'chatft smoke test failed' exists" in printed
    [run_now] = [line.split(":", 1)[1].strip() for line in printed.splitlines()
                 if line.startswith("Run the first smoke test now:")]
    # pasted into a shell, as a person does (it starts with the API address assignment)
    done = subprocess.run(["bash", "-c", run_now], cwd="/", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    flow_run_id = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout).group(1)
    state = _wait_final(server_up, flow_run_id)
    # the state folder of this server has no endpoint yet: said so, not "all answered"
    assert state.is_completed() and state.name == "NothingTested", state


def test_up_again_while_runs_are_in_flight(server_up: ServerUp) -> None:
    """The docs say to run ``up`` again after filling in the webhook URL; a second ``up``
    once died on a busy server (503 on a PATCH) and left a deployment accepting unknown
    parameters. Run again while runs are in flight, it keeps the same server and worker,
    checks what it configured, and the runs in flight complete."""
    import os
    import subprocess
    import sys

    from prefect.exceptions import PrefectHTTPStatusError

    server = server_up.server
    pids = (server.running_pid("server"), server.running_pid("worker"))
    teardown = server_up.deployment_id("teardown-idle-endpoints")
    smoke = server_up.deployment_id(DEPLOYMENT)
    in_flight = [server_up.client.create_flow_run_from_deployment(
        teardown, parameters={"request": {"dry_run": True}})]
    server_up.client.resume_deployment(smoke)  # the 20-s schedule of the first test
    try:
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        env.pop("PREFECT_API_URL", None)
        again = subprocess.run(
            [sys.executable, "-m", "server", "up",
             "--port", str(server.port), "--home", str(server.home),
             "--state-dir", str(server_up.state_dir),
             "--worker-query-seconds", "2"],
            env=env, cwd="/", capture_output=True, text=True, timeout=600,
        )
        in_flight += [r for r in server_up.scheduled_runs(smoke)
                      if r.state and r.state.is_running()]
    finally:
        server_up.client.pause_deployment(smoke)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "Server already running" in again.stdout and "Worker already running" in again.stdout
    assert (server.running_pid("server"), server.running_pid("worker")) == pids
    assert "refuse a run with an unknown parameter (409)" in again.stdout
    assert "Checked: automation 'chatft smoke test failed' exists" in again.stdout
    for flow_run in in_flight:
        state = _wait_final(server_up, flow_run.id)
        assert state.is_completed() or "concurrency limit" in (state.message or ""), state
    # what the check promised holds: a misplaced top-level field is refused, one automation
    for deployment in ("teardown-idle-endpoints", DEPLOYMENT, "finetune-and-deploy"):
        with pytest.raises(PrefectHTTPStatusError) as refused:
            server_up.client.create_flow_run_from_deployment(
                server_up.deployment_id(deployment), parameters={"dry_run": True})
        assert refused.value.response.status_code == 409
    assert len(server_up.client.read_automations_by_name("chatft smoke test failed")) == 1


def test_the_printed_commands_stop_what_up_started(server_up: ServerUp) -> None:
    """Run last: pasted as printed, from another folder, ``Stop it:`` stops the worker and
    the server of this home and port (printed commands once dropped the options in use, and
    ``down`` then said "No server running" while both kept running)."""
    import shlex
    import subprocess

    [stop] = [line.split(":", 1)[1].strip() for line in server_up.printed.splitlines()
              if line.startswith("Stop it:")]
    assert f"--port {server_up.server.port}" in stop and str(server_up.server.home) in stop
    worker, server = (server_up.server.running_pid(n) for n in ("worker", "server"))
    assert worker and server
    done = subprocess.run(shlex.split(stop), cwd="/", capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Stopped worker" in done.stdout and "Stopped server" in done.stdout, done.stdout
    assert not server_up.server.running_pid("worker")
    assert not server_up.server.running_pid("server")
    assert not server_up.server.healthy()
