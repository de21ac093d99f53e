"""Benchmark: the requests our flows send to Azure: a finetune first run and re-run, a smoke test.

The flow runs unchanged through the real azure-ai-ml SDK against the HTTPS fake of Azure
ML (tests/azure/fake_azureml), on the shipped sample data; the fake's request log is
grouped by verb and resource type. The re-run is the same request again: everything is
found, nothing is created, so what it sends is the price of checking. Then one
``smoke_test_endpoints`` run over the managed endpoints (10 seeded, plus the finetune
run's), two requests each: the management calls it makes per endpoint beside its scoring
requests.

Run it:
    python scripts/bench_azure_requests.py
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ.setdefault("AZUREML_RUN_POLLING_INTERVAL_MIN", "0")

# (pattern on the path, resource type), first match wins; "{id}" parts are dropped.
KINDS = [
    (r"/metrics:getBatch$", "monitor metrics"),
    (r"^/operations/", "LRO poll"),
    (r"^/score/", "scoring"),
    (r"/mlflow/", "mlflow"),
    (r"/history/", "run history"),
    (r"/registries/|/registrymanagement/|^/discovery$", "registry"),
    (r"/listKeys$", "endpoint listKeys"),
    (r"/deployments(/[^/]+)?$", "deployment"),
    (r"/onlineEndpoints(/[^/]+)?$", "endpoint"),
    (r"/datastores", "datastore"),
    (r"/jobs", "job"),
    (r"/models/", "model"),
    (r"/computes/", "compute"),
    (r"/vmSizes$", "vm sizes"),
    (r"/usages$", "usages"),
    (r"/workspaces/[^/]+$", "workspace"),
]


def kind_of(host: str, path: str) -> str:
    if ".blob." in host:
        return "blob"
    return next((kind for pattern, kind in KINDS if re.search(pattern, path)), path)


def tally(requests: list) -> Counter:  # noqa: ANN001 - the fake's Recorded
    return Counter(f"{r.method} {kind_of(r.host, r.path)}" for r in requests)


def main() -> None:
    from prefect.testing.utilities import prefect_test_harness

    from tests.azure.fake_azureml import FakeAzureML, FakeServer
    from tests.azure.fake_azureml.certs import make_certificates

    real = socket.getaddrinfo

    def fake_dns(host, *args, **kwargs):  # noqa: ANN001, ANN202 - blob hosts of the fake
        return real("127.0.0.1" if str(host).endswith(".fake.test") else host, *args, **kwargs)

    socket.getaddrinfo = fake_dns
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        ca, cert, key = make_certificates(Path(tmp), ["localhost", "*.blob.core.fake.test"])
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = str(ca)
        fake = FakeAzureML()
        fake.server = FakeServer(fake.handle, cert, key).start()
        fake.reset()
        try:
            import flows.finetune_and_deploy as flow_module
            from flows.parameters import FinetuneRequest
            from tests.azure.conftest import make_workspace
            from tests.azure.fake_azureml.credential import FakeCredential

            request = FinetuneRequest(dataset="sample", download_dir=str(Path(tmp) / "dl"))
            runs = {}
            for label in ("first run", "re-run"):
                # A new workspace object per run, as each flow run loads its block anew.
                workspace = make_workspace(fake, FakeCredential())
                flow_module.load_workspace = lambda block, ws=workspace: ws
                fake.requests.clear()
                flow_module.finetune_and_deploy(request=request)
                runs[label] = tally(list(fake.requests))
            smoke = smoke_test_requests(fake, make_workspace(fake, FakeCredential()), Path(tmp))
        finally:
            fake.server.stop()
            socket.getaddrinfo = real

    keys = sorted(set().union(*runs.values()), key=lambda k: (k.split(" ", 1)[1], k))
    print(f"{'request (verb, resource type)':40} {'first run':>10} {'re-run':>8}")
    for k in keys:
        print(f"{k:40} {runs['first run'][k]:>10} {runs['re-run'][k]:>8}")
    print(f"{'total':40} {sum(runs['first run'].values()):>10} {sum(runs['re-run'].values()):>8}")
    endpoints = smoke["POST scoring"] // SMOKE_REQUESTS
    print(f"\nsmoke test, {endpoints} endpoints x {SMOKE_REQUESTS} requests "
          f"{'total':>9} {'per endpoint':>13}")
    for k in sorted(smoke, key=lambda k: (k.split(" ", 1)[1], k)):
        print(f"{k:40} {smoke[k]:>10} {smoke[k] / endpoints:>13.1f}")
    management = sum(n for k, n in smoke.items() if not k.endswith(" scoring"))
    print(f"{'management calls (all but scoring)':40} {management:>10} "
          f"{management / endpoints:>13.1f}")


SMOKE_ENDPOINTS = 10
SMOKE_REQUESTS = 2


def smoke_test_requests(fake, workspace, tmp: Path) -> Counter:  # noqa: ANN001 - test fakes
    """One smoke-test run over SMOKE_ENDPOINTS seeded endpoints, tallied."""
    import flows.smoke_test_endpoints as smoke_module
    from flows.parameters import SmokeTestRequest
    from workspaces.interface import MANAGED_BY_VALUE, TAG_MANAGED_BY, TAG_MODEL

    for i in range(SMOKE_ENDPOINTS):
        fake.add_endpoint(f"chatft-bench-{i:02d}",
                          {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_MODEL: "phi3-ultrachat"},
                          {"demo": "Standard_NC6s_v3"})
    smoke_module.load_workspace = lambda block: workspace
    fake.requests.clear()
    smoke_module.smoke_test_endpoints(
        SmokeTestRequest(download_dir=str(tmp / "smoke"), requests_per_deployment=SMOKE_REQUESTS),
        workspace_block="azure-ml-workspace/bench", return_state=True,
    )
    return tally(list(fake.requests))


if __name__ == "__main__":
    main()
