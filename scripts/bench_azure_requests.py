"""Benchmark: the requests our flows send to Azure, authentication included.

The flows run unchanged through the real azure-ai-ml SDK against the HTTPS fake of Azure
ML (tests/azure/fake_azureml), on the shipped sample data, each run with a workspace built
from the blocks as ``load_workspace`` builds it: a service principal that signs in through
MSAL (OpenID discovery, then a token request per scope) to the fake's Entra ID. The fake's
request log is grouped by verb and resource type.

Scenarios:
- ``finetune_and_deploy``, first run and re-run of the same request (the re-run finds
  everything and creates nothing, so what it sends is the price of checking); the job runs
  as Azure runs the registry's chat_completion_pipeline (its MLflow runs nested under one
  node, its finetune step logging what HF Trainer logs), and the fake answers MLflow as an
  MLflow tracking server does. The last line counts GETs identical to one sent before in
  the same run (waits' polls included);
- one ``smoke_test_endpoints`` run over the managed endpoints (10 seeded, plus the
  finetune run's), two requests each: requests per endpoint beside its scoring requests;
- ``teardown_idle_endpoints`` over 10 managed endpoints and 5 of another team, once with
  every managed endpoint in use (all kept) and once idle (all deleted): requests per
  managed endpoint.

Run it:
    python scripts/bench_azure_requests.py
"""

from __future__ import annotations

import os
import re
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
    (r"/\.well-known/openid-configuration$", "sign-in: OpenID discovery"),
    (r"/oauth2/v2\.0/token$", "sign-in: token"),
    (r"/discovery/instance$", "sign-in: instance discovery"),
    (r"/metrics:getBatch$", "monitor metrics"),
    (r"^/operations/", "LRO poll"),
    (r"^/score/", "scoring"),
    (r"/mlflow/runs/search$", "mlflow runs/search"),
    (r"/mlflow/metrics/get-history$", "mlflow metric history"),
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
    from tests.azure.fake_azureml.dns import HOST_NAMES, routed_to

    for name in ("AZURE_AUTHORITY_HOST", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory() as tmp, prefect_test_harness(server_startup_timeout=120):
        ca, cert, key = make_certificates(Path(tmp), HOST_NAMES)
        os.environ["REQUESTS_CA_BUNDLE"] = os.environ["SSL_CERT_FILE"] = str(ca)
        fake = FakeAzureML()
        fake.server = FakeServer(fake.handle, cert, key).start()
        fake.reset()
        try:
            with routed_to(fake.server.port):
                runs = finetune_requests(fake, Path(tmp))
                smoke = smoke_test_requests(fake, Path(tmp))
                teardown = {outcome: teardown_requests(fake, outcome == "kept")
                            for outcome in ("kept", "deleted")}
        finally:
            fake.server.stop()

    keys = sorted(set().union(*runs.values()) - {REPEATED},
                  key=lambda k: (k.split(" ", 1)[1], k))
    print(f"{'request (verb, resource type)':40} {'first run':>10} {'re-run':>8}")
    for k in keys:
        print(f"{k:40} {runs['first run'][k]:>10} {runs['re-run'][k]:>8}")
    totals = {label: sum(n for k, n in c.items() if k != REPEATED) for label, c in runs.items()}
    print(f"{'total':40} {totals['first run']:>10} {totals['re-run']:>8}")
    print(f"{REPEATED:40} {runs['first run'][REPEATED]:>10} {runs['re-run'][REPEATED]:>8}")
    endpoints = smoke["POST scoring"] // SMOKE_REQUESTS
    print(f"\nsmoke test, {endpoints} endpoints x {SMOKE_REQUESTS} requests "
          f"{'total':>9} {'per endpoint':>13}")
    for k in sorted(smoke, key=lambda k: (k.split(" ", 1)[1], k)):
        print(f"{k:40} {smoke[k]:>10} {smoke[k] / endpoints:>13.1f}")
    management = sum(n for k, n in smoke.items() if not k.endswith(" scoring"))
    print(f"{'all but scoring':40} {management:>10} {management / endpoints:>13.1f}")
    print(f"\nteardown, {TEARDOWN_MANAGED} managed endpoints and {TEARDOWN_FOREIGN} of another "
          "team, per managed endpoint")
    print(f"{'request (verb, resource type)':40} {'all kept':>10} {'all deleted':>12}")
    for k in sorted(set().union(*teardown.values()), key=lambda k: (k.split(" ", 1)[1], k)):
        print(f"{k:40} {teardown['kept'][k] / TEARDOWN_MANAGED:>10.1f} "
              f"{teardown['deleted'][k] / TEARDOWN_MANAGED:>12.1f}")
    print(f"{'total':40} {sum(teardown['kept'].values()) / TEARDOWN_MANAGED:>10.1f} "
          f"{sum(teardown['deleted'].values()) / TEARDOWN_MANAGED:>12.1f}")


def finetune_requests(fake, tmp: Path) -> dict[str, Counter]:  # noqa: ANN001 - test fakes
    """A first run and a re-run of the same request, each tallied."""
    import flows.finetune_and_deploy as flow_module
    from flows.parameters import FinetuneRequest
    from tests.azure.conftest import make_block_workspace

    request = FinetuneRequest(dataset="sample", download_dir=str(tmp / "dl"))
    # A new workspace (credential included) per run, as each flow run loads its block anew.
    flow_module.load_workspace = lambda block: make_block_workspace(fake)
    # The job runs as Azure runs the registry's pipeline: its MLflow runs are nested as there.
    fake.registry_layout = True
    runs = {}
    for label in ("first run", "re-run"):
        fake.requests.clear()
        flow_module.finetune_and_deploy(request=request)
        runs[label] = tally(list(fake.requests))
        runs[label][REPEATED] = repeated_gets(list(fake.requests))
    return runs


REPEATED = "(of these: GETs repeating one before)"


def repeated_gets(requests: list) -> int:  # noqa: ANN001 - the fake's Recorded
    """GETs identical (host, path, query) to an earlier GET of the run, polls included."""
    seen: set[tuple] = set()
    repeats = 0
    for r in requests:
        if r.method == "GET":
            key = (r.host, r.path, tuple(sorted(r.query.items())))
            repeats += key in seen
            seen.add(key)
    return repeats


SMOKE_ENDPOINTS = 10
SMOKE_REQUESTS = 2


def smoke_test_requests(fake, tmp: Path) -> Counter:  # noqa: ANN001 - test fakes
    """One smoke-test run over SMOKE_ENDPOINTS seeded endpoints, tallied."""
    import flows.smoke_test_endpoints as smoke_module
    from flows.parameters import SmokeTestRequest
    from tests.azure.conftest import make_block_workspace
    from workspaces.interface import MANAGED_BY_VALUE, TAG_MANAGED_BY, TAG_MODEL

    for i in range(SMOKE_ENDPOINTS):
        fake.add_endpoint(f"chatft-bench-{i:02d}",
                          {TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_MODEL: "phi3-ultrachat"},
                          {"demo": "Standard_NC6s_v3"})
    smoke_module.load_workspace = lambda block: make_block_workspace(fake)
    fake.requests.clear()
    smoke_module.smoke_test_endpoints(
        SmokeTestRequest(download_dir=str(tmp / "smoke"), requests_per_deployment=SMOKE_REQUESTS),
        workspace_block="azure-ml-workspace/bench", return_state=True,
    )
    return tally(list(fake.requests))


TEARDOWN_MANAGED = 10
TEARDOWN_FOREIGN = 5


def teardown_requests(fake, used: bool) -> Counter:  # noqa: ANN001 - test fakes
    """One teardown pass over a fresh workspace: managed endpoints in use (kept) or idle
    (deleted; each deletion answers "still running" once before it is done), tallied."""
    from bench_teardown_calls import seed_managed

    import flows.teardown_idle_endpoints as teardown
    from flows.parameters import TeardownRequest
    from tests.azure.conftest import make_block_workspace

    fake.reset()
    fake.delete_polls, fake.delete_retry_after_s = 1, "1"
    for i in range(TEARDOWN_FOREIGN):
        fake.add_endpoint(f"search-ranker-{i}", {"team": "search"}, {"blue": "Standard_DS3_v2"})
    names = [f"chatft-bench-{i:02d}" for i in range(TEARDOWN_MANAGED)]
    seed_managed(fake, names, used)
    teardown.load_workspace = lambda block: make_block_workspace(fake)
    fake.requests.clear()
    result = teardown.teardown_idle_endpoints(
        TeardownRequest(max_deletions_per_run=TEARDOWN_MANAGED),
        workspace_block="azure-ml-workspace/bench")
    outcome = "kept" if used else "deleted"
    assert sorted(result.named(outcome)) == names, result.decisions
    return tally(list(fake.requests))


if __name__ == "__main__":
    main()
