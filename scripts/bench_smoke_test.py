"""Benchmark: wall time of one smoke-test run over 1, 10, 100 and 1,000 endpoints.

Every endpoint answers after an injected 1 s delay. The endpoints are fakes: one small
FastAPI server on 127.0.0.1, in its own process as a real endpoint is, that waits, then
answers ``{"output": ...}``, behind a local workspace whose endpoint list holds N managed
endpoints all pointing at it; requests go through the local workspace's shared client. The flow runs
against a temporary Prefect server, so task runs, artifacts and events cost what they cost
on a real one.

It prints the wall time per fleet size, the ratio to the 1-endpoint run (goals: 100/1 at
most 3, 1000/1 under 10, at the defaults) and the process's peak resident memory after
each size (ru_maxrss: it only grows, so a flat figure from 100 to 1,000 endpoints means
memory stays bounded).

Run it:
    python scripts/bench_smoke_test.py                    # the flow's default max_concurrency
    python scripts/bench_smoke_test.py --max-concurrency 4 --max-concurrency 32
    python scripts/bench_smoke_test.py --sizes 1 10 100 --delay-s 0.5
"""

from __future__ import annotations

import argparse
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

from workspaces.interface import (  # noqa: E402
    MANAGED_BY_VALUE,
    TAG_MANAGED_BY,
    Deployment,
    Endpoint,
    ScoreResponse,
)
from workspaces.local import LocalWorkspace  # noqa: E402
from workspaces.local.endpoints import http_client  # noqa: E402

SIZES = (1, 10, 100, 1000)


SLOW_SERVER = """
import asyncio, sys
import uvicorn
from fastapi import FastAPI

app = FastAPI()


@app.post("/score")
async def score() -> dict[str, str]:
    await asyncio.sleep(float(sys.argv[2]))
    return {"output": "a reply after the injected delay"}

# A backlog for 1,000 connections at once; access logs off, as on a real front end.
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", backlog=2048)
"""


def start_slow_server(delay_s: float) -> tuple[str, subprocess.Popen[bytes]]:
    """A scoring server answering every request after ``delay_s``: (URL, its process).

    Its own process, as a real endpoint is: in the benchmark's process it would compete
    with the probes for the GIL and make the flow look slower than it is.
    """
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-c", SLOW_SERVER, str(port), str(delay_s)])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return f"http://127.0.0.1:{port}/score", process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError("the slow scoring server did not start within 60 s")


class FleetWorkspace(LocalWorkspace):
    """A local workspace that lists N managed endpoints, all served by the slow server."""

    def __init__(self, state_dir: Path, url: str, count: int) -> None:
        super().__init__(state_dir)
        self.url = url
        self.count = count

    def _endpoint(self, name: str) -> Endpoint:
        return Endpoint(
            name=name, scoring_uri=self.url, provisioning_state="Succeeded",
            traffic={"demo": 100}, tags={TAG_MANAGED_BY: MANAGED_BY_VALUE},
            deployments=[Deployment(name="demo", endpoint_name=name, model_id="bench:1",
                                    instance_type="Local_CPU", instance_count=1,
                                    provisioning_state="Succeeded")],
        )

    def list_endpoints(self) -> list[Endpoint]:
        return [self._endpoint(f"bench-{i:03d}") for i in range(self.count)]

    def get_endpoint(self, name: str) -> Endpoint | None:
        return self._endpoint(name)

    def invoke(self, endpoint_name: str, body: dict[str, Any], deployment_name: str | None = None,
               caller: str | None = None, timeout_s: float = 90.0) -> ScoreResponse:
        # The same shared client the local workspace scores with (one per process).
        started = time.perf_counter()
        response = http_client().post(self.url, json=body, timeout=timeout_s)
        return ScoreResponse(status_code=response.status_code, body=response.text,
                             latency_ms=(time.perf_counter() - started) * 1000)


def run_once(workspace: FleetWorkspace, max_concurrency: int | None, data_dir: Path) -> float:
    import flows.smoke_test_endpoints as smoke
    from flows.parameters import SmokeTestRequest

    # The flow loads its workspace from a block slug; here it is the benchmark's fleet.
    smoke.load_workspace = lambda block: workspace
    knobs = {} if max_concurrency is None else {"max_concurrency": max_concurrency}
    started = time.perf_counter()
    result = smoke.smoke_test_endpoints(SmokeTestRequest(
        seed=1, download_dir=str(data_dir), **knobs))
    elapsed = time.perf_counter() - started
    assert len(result.endpoints_tested) == workspace.count, result.endpoints_tested
    return elapsed


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--max-concurrency", type=int, action="append",
                        help="repeatable; default: the flow's default")
    parser.add_argument("--delay-s", type=float, default=1.0)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    from tasks.endpoint_probes import DEFAULT_MAX_CONCURRENCY

    url, server = start_slow_server(args.delay_s)
    try:
        measure(args, url, DEFAULT_MAX_CONCURRENCY)
    finally:
        server.terminate()
        server.wait(timeout=30)


def measure(args: argparse.Namespace, url: str, default_concurrency: int) -> None:
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        data_dir = Path(tmp) / "data"
        run_once(FleetWorkspace(Path(tmp) / "ws", url, 1), None, data_dir)  # warm-up
        for concurrency in args.max_concurrency or [None]:
            label = (f"{default_concurrency} (default)" if concurrency is None
                     else str(concurrency))
            print(f"max_concurrency={label}, reply delay {args.delay_s:g} s:", flush=True)
            first = None
            for n in args.sizes:
                seconds = run_once(FleetWorkspace(Path(tmp) / "ws", url, n), concurrency,
                                   data_dir)
                first = first or seconds
                print(f"  {n:>4} endpoint(s): {seconds:6.2f} s  ratio to first size "
                      f"{seconds / first:4.1f}  peak RSS {peak_rss_mib():6.0f} MiB  "
                      f"load average {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
