"""Benchmark: a team's Prefect server under load and through a kill -9, SQLite and PostgreSQL.

For each database, on a fresh home: ``manager.up`` (as ``make server-up`` and ``make
server-up DB=postgres`` run it: the project's PostgreSQL, shared result storage,
deployments), the stand-in base model in the local workspace, and two process workers, A
and B, each with a Prefect home of its own and at most ``--worker-limit`` flow runs at
once. The smoke-test and teardown deployments' one-at-a-time limits are lifted, as a
person would lift them in the UI, so their runs overlap.

Load: a first fine-tune makes the endpoint the smoke tests probe; then 25 smoke tests, 25
teardown passes (dry runs: each judges the endpoint and deletes nothing) and a second
fine-tune (another request) are submitted at once. Printed: runs per minute (runs ended /
minutes from submission to the last end), the p95 and worst latency of API probes (a
flow-run query and a deployment read, every 0.5 s through the load), runs that ended
Crashed or Failed, and the server log's ERROR lines (SQLite's "database is locked" among
them) and 5xx answers.

Kill: 10 smoke tests, 10 teardowns and a third fine-tune are submitted; once runs are
Running, the server's process group gets SIGKILL, and 10 s later ``up`` starts it again.
Printed: how each run ended (a run not ended 5 min after the restart is counted as left
Running); then the killed fine-tune's request is run again and the workspace is counted
for that request: jobs, endpoints, deployments (one each: nothing duplicated).

Run it (about 15 minutes on 2 cores):
    python scripts/bench_team_server.py
    python scripts/bench_team_server.py --db postgres --smoke 10 --teardowns 10
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

PROJECT_DIR = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_DIR))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from server import manager  # noqa: E402
from server.api import api  # noqa: E402
from server.instance import Server  # noqa: E402
from tests.helpers import TROUBLE, free_port  # noqa: E402

FINETUNE = "finetune-and-deploy"
SMOKE = "smoke-test-endpoints"
TEARDOWN = "teardown-idle-endpoints"
RUN_TIMEOUT_S = 1200
LEFT_RUNNING_AFTER_S = 300


class Probe(threading.Thread):
    """Times two API calls every 0.5 s until stopped: what a person's UI waits for."""

    def __init__(self, server: Any, deployment_id: str):
        super().__init__(daemon=True)
        self.server, self.deployment_id = server, deployment_id
        self.latencies: list[float] = []
        self.statuses: Counter = Counter()
        self.halt = threading.Event()

    def call(self, method: str, path: str, body: bytes | None) -> None:
        request = urllib.request.Request(  # noqa: S310 - our own server
            self.server.api_url + path, method=method, data=body,
            headers={"Content-Type": "application/json"})
        started = time.monotonic()
        try:
            with urllib.request.urlopen(request, timeout=60) as resp:  # noqa: S310
                resp.read()
                self.statuses[resp.status] += 1
        except urllib.error.HTTPError as exc:
            self.statuses[exc.code] += 1
        except OSError:
            self.statuses["no answer"] += 1
            return
        self.latencies.append(time.monotonic() - started)

    def run(self) -> None:
        while not self.halt.wait(0.5):
            self.call("POST", "/flow_runs/filter", b'{"limit": 50}')
            self.call("GET", f"/deployments/{self.deployment_id}", None)


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1] if len(values) >= 20 else max(values or [0])


class Bench:
    def __init__(self, db: str, root: Path, standin: Path, worker_limit: int):
        from workspaces.local.catalog import STANDIN_NAME, STANDIN_VERSION

        self.db, self.root = db, root
        self.state_dir = root / "workspace"
        shutil.copytree(standin, self.state_dir / "catalog" / STANDIN_NAME / STANDIN_VERSION)
        self.server = Server(
            root / "prefect-home", "127.0.0.1", free_port(),
            # runs start when the bench asks, not at the top of the hour
            extra_env={"PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
                       "HF_HUB_OFFLINE": "1"})
        self.worker_limit = worker_limit
        self.client: Any = None
        self.finetunes = 0
        self.why: dict[Any, str] = {}

    # -- set-up ----------------------------------------------------------------------------
    def up(self) -> None:
        manager.up(self.server, self.state_dir, query_seconds=2, db=self.db)
        self.server.stop("worker")  # two workers of our own instead, with a run limit
        for name in ("worker-a", "worker-b"):
            manager.start_worker(self.server, 2, name=name, worker_name=name,
                                 home=self.root / name, limit=self.worker_limit)
        from prefect.client.orchestration import SyncPrefectClient

        self.client = SyncPrefectClient(self.server.api_url)
        self.client.__enter__()
        for name in (SMOKE, TEARDOWN):
            api(self.server, "PATCH", f"/deployments/{self.deployment_id(name)}",
                {"concurrency_limit": None})

    def down(self) -> None:
        from workspaces.local import LocalWorkspace

        if self.client is not None:
            self.client.__exit__(None, None, None)
        workspace = LocalWorkspace(self.state_dir)
        for endpoint in workspace.list_endpoints():
            workspace.begin_delete_endpoint(endpoint.name)
        for name in ("worker-a", "worker-b"):
            self.server.stop(name)
        manager.down(self.server)

    def deployment_id(self, name: str) -> str:
        return str(self.client.read_deployment_by_name(f"{name}/{name}").id)

    # -- runs ------------------------------------------------------------------------------
    def finetune_parameters(self) -> dict[str, Any]:
        from workspaces.local.catalog import STANDIN_NAME

        self.finetunes += 1  # another request each time: another learning rate
        return {"request": {"foundation_model": STANDIN_NAME,
                            "download_dir": str(self.root / "data"),
                            "training": {"num_train_epochs": 1,
                                         "learning_rate": 1e-4 * self.finetunes}}}

    def submit(self, smoke: int, teardowns: int, finetune: bool) -> list[Any]:
        runs = []
        if finetune:
            runs.append(self.client.create_flow_run_from_deployment(
                self.deployment_id(FINETUNE), parameters=self.finetune_parameters()))
        for _ in range(smoke):
            runs.append(self.client.create_flow_run_from_deployment(
                self.deployment_id(SMOKE), parameters={"request": {"requests_per_deployment": 1}}))
        for _ in range(teardowns):
            runs.append(self.client.create_flow_run_from_deployment(
                self.deployment_id(TEARDOWN), parameters={"request": {"dry_run": True}}))
        return runs

    def wait(self, runs: list[Any], timeout_s: float) -> dict[Any, str]:
        """Each run's state when all ended or at the deadline (type names, Prefect's);
        why a run failed or crashed is kept in ``self.why``."""
        deadline = time.monotonic() + timeout_s
        while True:
            states = {}
            for run in runs:
                try:
                    state = self.client.read_flow_run(run.id).state
                except Exception:  # noqa: BLE001 - the server may be restarting
                    state = None
                states[run.id] = (state.type.value if state else "UNKNOWN")
                if state and states[run.id] in ("FAILED", "CRASHED"):
                    self.why[run.id] = " ".join((state.message or "").split())[:160]
            finals = ("COMPLETED", "FAILED", "CRASHED", "CANCELLED")
            if all(s in finals for s in states.values()) or time.monotonic() > deadline:
                return states
            time.sleep(2)

    def server_log_trouble(self) -> tuple[int, int]:
        text = self.server.log_file("server").read_text(errors="replace")
        errors = sum(1 for line in text.splitlines() if TROUBLE.search(line))
        return errors, text.count("database is locked")

    # -- the two phases ----------------------------------------------------------------------
    def load(self, smoke: int, teardowns: int) -> dict[str, Any]:
        first = self.submit(0, 0, finetune=True)
        assert self.wait(first, RUN_TIMEOUT_S)[first[0].id] == "COMPLETED", "first fine-tune"
        errors_before, _ = self.server_log_trouble()
        probe = Probe(self.server, self.deployment_id(SMOKE))
        probe.start()
        started = time.monotonic()
        runs = self.submit(smoke, teardowns, finetune=True)
        states = self.wait(runs, RUN_TIMEOUT_S)
        minutes = (time.monotonic() - started) / 60
        probe.halt.set()
        probe.join()
        errors, locked = self.server_log_trouble()
        ended = sum(1 for s in states.values() if s in ("COMPLETED", "FAILED", "CRASHED",
                                                          "CANCELLED"))
        return {
            "runs": len(runs), "runs_per_min": ended / minutes, "minutes": minutes,
            "p95_ms": 1000 * p95(probe.latencies), "max_ms": 1000 * max(probe.latencies),
            "states": Counter(states.values()),
            "why": Counter(self.why[r.id] for r in runs if r.id in self.why),
            "server_errors": errors - errors_before, "locked": locked,
            "http_5xx": sum(n for code, n in probe.statuses.items()
                            if isinstance(code, int) and code >= 500),
        }

    def kill(self, smoke: int, teardowns: int) -> dict[str, Any]:
        runs = self.submit(smoke, teardowns, finetune=True)
        finetune_run, parameters = runs[0], None
        deadline = time.monotonic() + 300
        while sum(1 for r in runs if (self.client.read_flow_run(r.id).state.type.value
                                      == "RUNNING")) < 3:
            assert time.monotonic() < deadline, "no run started"
            time.sleep(1)
        running_at_kill = sum(1 for r in runs
                              if self.client.read_flow_run(r.id).state.type.value == "RUNNING")
        pid = self.server.running_pid("server")
        os.killpg(pid, signal.SIGKILL)
        time.sleep(10)
        restart = time.monotonic()
        manager.start_server(self.server, db=self.db)
        restart_s = time.monotonic() - restart
        states = self.wait(runs, LEFT_RUNNING_AFTER_S)
        parameters = self.client.read_flow_run(finetune_run.id).parameters
        again = self.client.create_flow_run_from_deployment(
            self.deployment_id(FINETUNE), parameters=parameters)
        rerun = self.wait([again], RUN_TIMEOUT_S)[again.id]
        return {"running_at_kill": running_at_kill, "restart_s": restart_s,
                "states": Counter(states.values()),
                "why": Counter(self.why[r.id] for r in runs if r.id in self.why),
                "finetune": states[finetune_run.id], "rerun": rerun,
                "workspace": self.count_request(parameters)}

    def count_request(self, parameters: dict[str, Any]) -> dict[str, int]:
        """Jobs, endpoints and deployments the workspace holds for this request."""
        from flows.parameters import FinetuneRequest
        from workspaces.interface import TAG_REQUEST
        from workspaces.local import LocalWorkspace

        workspace = LocalWorkspace(self.state_dir)
        request = FinetuneRequest.model_validate(parameters["request"])
        request_id = request.request_id(workspace.cache_scope)
        endpoints = [e for e in workspace.list_endpoints()
                     if e.tags.get(TAG_REQUEST) == request_id]
        return {"jobs": len(workspace.find_jobs(request_id)), "endpoints": len(endpoints),
                "deployments": sum(len(e.deployments) for e in endpoints)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", choices=manager.DATABASES, nargs="+",
                        default=list(manager.DATABASES))
    parser.add_argument("--smoke", type=int, default=25)
    parser.add_argument("--teardowns", type=int, default=25)
    parser.add_argument("--worker-limit", type=int, default=6)
    args = parser.parse_args()
    from workspaces.local.catalog import STANDIN_NAME, STANDIN_VERSION, build_standin

    scratch = Path(tempfile.mkdtemp(prefix="chatft-bench-team-"))
    scratch.chmod(0o755)  # PostgreSQL runs as nobody when this runs as root
    standin = build_standin(scratch / "catalog" / STANDIN_NAME / STANDIN_VERSION)
    results = {}
    try:
        for db in args.db:
            bench = Bench(db, scratch / db, standin, args.worker_limit)
            try:
                bench.up()
                print(f"[{db}] load: 1 fine-tune first, then {args.smoke} smoke tests, "
                      f"{args.teardowns} teardowns and 1 fine-tune at once", flush=True)
                load = bench.load(args.smoke, args.teardowns)
                print(f"[{db}] {load}", flush=True)
                kill = bench.kill(10, 10)
                print(f"[{db}] kill -9: {kill}", flush=True)
                results[db] = (load, kill)
            finally:
                bench.down()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\n{'':34}" + "".join(f"{db:>26}" for db in results))
    rows = [
        (f"runs (2 workers, limit {args.worker_limit} each)", lambda ld, k: f"{ld['runs']}"),
        ("runs/min", lambda ld, k: f"{ld['runs_per_min']:.1f}"),
        ("API p95 / worst (ms)", lambda ld, k: f"{ld['p95_ms']:.0f} / {ld['max_ms']:.0f}"),
        ("ended", lambda ld, k: ", ".join(f"{n} {s.lower()}" for s, n in ld["states"].items())),
        ("server ERROR lines (locked)", lambda ld, k: f"{ld['server_errors']} ({ld['locked']})"),
        ("probe 5xx answers", lambda ld, k: f"{ld['http_5xx']}"),
        ("kill -9: running at kill", lambda ld, k: f"{k['running_at_kill']}"),
        ("kill -9: server back in (s)", lambda ld, k: f"{k['restart_s']:.1f}"),
        ("kill -9: runs ended", lambda ld, k: ", ".join(
            f"{n} {s.lower()}" for s, n in k["states"].items())),
        ("kill -9: killed fine-tune, re-run", lambda ld, k: f"{k['finetune'].lower()}, "
                                                         f"{k['rerun'].lower()}"),
        ("kill -9: job/endpoint/deployment", lambda ld, k: "{jobs}/{endpoints}/{deployments}"
         .format(**k["workspace"])),
    ]
    for label, cell in rows:
        print(f"{label:34}" + "".join(f"{cell(*results[db]):>26}" for db in results))


if __name__ == "__main__":
    main()
