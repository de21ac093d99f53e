"""Benchmark: what one teardown pass asks Azure, per endpoint, for 1, 10 and 100 endpoints.

The pass runs through the real azure-ai-ml and azure-monitor-querymetrics SDKs against the
HTTPS fake of Azure ML (tests/azure/fake_azureml), and the calls are counted from the
fake's request log. For each fleet size two passes run: one where every endpoint had
organic requests (all kept) and one where none had (all deleted; the deletion answers
"still running" twice with ``Retry-After: 1`` before it is done, as a real one does for
minutes). Printed per size: the shared listing, management (ARM) calls per kept and per
deleted endpoint, Location polls per deletion, and Azure Monitor queries in all.

Run it:
    python scripts/bench_teardown_calls.py
    python scripts/bench_teardown_calls.py --sizes 1 10 100 250
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

SIZES = (1, 10, 100)


def start_fake(tmp: Path):  # noqa: ANN201 - the fake's own types live under tests/
    from tests.azure.fake_azureml import FakeAzureML, FakeServer
    from tests.azure.fake_azureml.certs import make_certificates
    from tests.azure.fake_azureml.dns import HOST_NAMES

    ca, cert, key = make_certificates(tmp, HOST_NAMES)
    os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = str(ca)
    service = FakeAzureML()
    service.server = FakeServer(service.handle, cert, key).start()
    return service


def seed_managed(fake, names: list[str], used: bool) -> None:  # noqa: ANN001 - the fake
    """Managed endpoints two days old, each with requests an hour ago when ``used``."""
    from workspaces.interface import MANAGED_BY_VALUE, TAG_MANAGED_BY

    created = (datetime.now(UTC) - timedelta(days=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    stamp = (datetime.now(UTC) - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name in names:
        fake.add_endpoint(name, {TAG_MANAGED_BY: MANAGED_BY_VALUE},
                          {"demo": "Standard_NC6s_v3"}, created_at=created)
        if used:
            fake.add_metric_point(name, "demo", 3, stamp)


def one_pass(fake, size: int, used: bool) -> dict[str, float]:  # noqa: ANN001
    import flows.teardown_idle_endpoints as teardown
    from flows.parameters import TeardownRequest
    from tasks import reports
    from tests.azure.conftest import make_workspace
    from tests.azure.fake_azureml.credential import FakeCredential

    fake.reset()
    fake.delete_polls, fake.delete_retry_after_s = 2, "1"
    names = [f"chatft-bench-{i:03d}" for i in range(size)]
    seed_managed(fake, names, used)
    workspace = make_workspace(fake, FakeCredential())
    teardown.load_workspace = lambda block: workspace
    reports.emit = lambda *a, **k: None  # events are not what is measured here
    fake.requests.clear()
    result = teardown.teardown_idle_endpoints(
        TeardownRequest(max_deletions_per_run=size), workspace_block="azure-ml-workspace/bench")
    outcome = "kept" if used else "deleted"
    assert sorted(result.named(outcome)) == names, result.decisions

    monitor = [r for r in fake.requests if r.path.endswith("/metrics:getBatch")]
    polls = [r for r in fake.requests if r.path.startswith("/operations/done-")]
    arm = [r for r in fake.requests if r not in monitor and r not in polls]
    shared = [r for r in arm if r.path.endswith("/onlineEndpoints")]
    per_endpoint = Counter(
        name for r in arm for name in names if f"/onlineEndpoints/{name}" in r.path
        and r.path.split(f"/onlineEndpoints/{name}")[1] in ("", "/deployments")
    )
    other = len(arm) - len(shared) - sum(per_endpoint.values())
    return {
        "shared": len(shared), "other": other,
        "arm_per_endpoint": sum(per_endpoint.values()) / size,
        "polls_per_endpoint": len(polls) / size,
        "monitor": len(monitor),
        "ids_per_query": max((len(r.json["resourceids"]) for r in monitor), default=0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    from prefect.testing.utilities import prefect_test_harness

    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        fake = start_fake(Path(tmp))
        try:
            print("endpoints | shared list | kept: ARM calls/endpoint | deleted: ARM calls/"
                  "endpoint (+ Location polls) | Azure Monitor queries (ids per query)")
            for size in args.sizes:
                kept = one_pass(fake, size, used=True)
                gone = one_pass(fake, size, used=False)
                print(f"{size:>9} | {kept['shared']:>11} | {kept['arm_per_endpoint']:>24.2f} | "
                      f"{gone['arm_per_endpoint']:>19.2f} (+ {gone['polls_per_endpoint']:.2f}) "
                      f"| kept pass {kept['monitor']} ({kept['ids_per_query']}), deleted pass "
                      f"{gone['monitor']} ({gone['ids_per_query']})"
                      + (f"; other ARM calls {kept['other']}/{gone['other']}"
                         if kept["other"] or gone["other"] else ""), flush=True)
        finally:
            fake.server.stop()


if __name__ == "__main__":
    main()
