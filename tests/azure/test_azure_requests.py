"""What one finetune_and_deploy run asks Azure that it already knows: settings that do not
change during a run (the workspace itself, the region's VM sizes) are read once, each
absent resource is asked for once before it is made, the job's metrics are read once with
what MLflow answers per search, and a whole run stays within its request budget
(scripts/bench_azure_requests.py prints the same counts by kind)."""

from __future__ import annotations

from collections import Counter

import pytest

import flows.finetune_and_deploy as flow_module
from flows.parameters import FinetuneRequest
from tests.azure.conftest import make_block_workspace, make_workspace
from tests.azure.fake_azureml.service import JOB_PROGRESS
from workspaces.azure import absence
from workspaces.errors import OwnershipConflict
from workspaces.interface import TAG_REQUEST, EndpointSpec


def test_a_run_reads_the_workspace_and_vm_sizes_once(fake, credential, prefect_server,
                                                      monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AZUREML_RUN_POLLING_INTERVAL_MIN", "0")
    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))
    for run in ("first", "re-run"):
        # Each flow run loads its workspace (and so its SDK clients) anew.
        workspace = make_workspace(fake, credential)
        monkeypatch.setattr(flow_module, "load_workspace", lambda block, ws=workspace: ws)
        fake.requests.clear()

        result = flow_module.finetune_and_deploy(request=request)

        assert result.reply, run
        assert len(fake.sent("GET", rf"^{fake.ws_path}$")) == 1, run
        assert len(fake.sent("GET", r"/vmSizes$")) == 1, run


def test_a_rerun_reads_its_endpoint_once_and_lists_its_deployments_once(
    fake, credential, prefect_server, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("AZUREML_RUN_POLLING_INTERVAL_MIN", "0")
    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))
    monkeypatch.setattr(flow_module, "load_workspace",
                        lambda block: make_workspace(fake, credential))
    first = flow_module.finetune_and_deploy(request=request)
    fake.requests.clear()

    again = flow_module.finetune_and_deploy(request=request)

    endpoint = f"/onlineEndpoints/{again.endpoint_name}"
    assert again.reply == first.reply
    # The pre-flight's ownership check, the reuse of the endpoint and the traffic check
    # each need the endpoint's state and tags as they are now; its deployments are listed
    # once, and the deployment itself is read once, when it is reused.
    assert len(fake.sent("GET", rf"{endpoint}/deployments$")) == 1
    assert len(fake.sent("GET", rf"{endpoint}/deployments/demo$")) == 1
    assert len(fake.sent("GET", rf"{endpoint}$")) <= 3


# What a run costs on Azure, counted as Azure would answer it: the job runs as Azure runs
# the registry's pipeline (its MLflow runs nested under one node), and the workspace signs
# in as the blocks make it (tests/azure/test_azure_signin.py counts that part).
FIRST_RUN_MAX = 65
RERUN_MAX = 17


@pytest.fixture
def registry_flow(fake, prefect_server, monkeypatch, tmp_path):  # noqa: ANN001, ANN201
    for name in ("AZURE_AUTHORITY_HOST", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZUREML_RUN_POLLING_INTERVAL_MIN", "0")
    monkeypatch.setattr(flow_module, "load_workspace", lambda block: make_block_workspace(fake))
    fake.registry_layout = True
    return FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))


def _resource_type(fake, path: str) -> str:  # noqa: ANN001
    """``computes``, ``jobs``, ``models``, ``onlineEndpoints``, ``deployments``: the type
    of the resource a workspace path names (a model version is its model's)."""
    types = [t for t in path.split(f"{fake.ws_path}/", 1)[-1].split("/")[0::2] if t != "versions"]
    return types[-1]


def _tally(requests: list) -> str:  # noqa: ANN001 - the fake's Recorded
    return ", ".join(f"{n} x {k}" for k, n in Counter(
        f"{r.method} {r.path.rsplit('/', 2)[-2]}/{r.path.rsplit('/', 1)[-1][:24]} {r.status}"
        for r in requests).most_common())


def test_a_first_run_asks_each_thing_once_and_stays_within_its_request_budget(
    fake, registry_flow
) -> None:
    result = flow_module.finetune_and_deploy(request=registry_flow)
    sent = list(fake.requests)

    assert result.reply
    assert len(sent) <= FIRST_RUN_MAX, _tally(sent)
    # Each absent resource is asked for once before it is made; the endpoint twice: by the
    # pre-flight, and again before its creation, hours of training later on Azure.
    absent = Counter(_resource_type(fake, r.path)
                     for r in sent if r.method == "GET" and r.status == 404)
    assert absent == {"computes": 1, "jobs": 1, "models": 1, "onlineEndpoints": 2,
                      "deployments": 1}, absent
    # Once there, the job is read by the wait, once a poll, and by nothing else.
    reads = [r for r in fake.sent("GET", rf"/jobs/{result.job_name}$") if r.status == 200]
    assert len(reads) == len(JOB_PROGRESS) - 1
    # MLflow: the experiment, one search per level of the pipeline down to its finetune
    # step, and the history of the loss curves only; nothing asked twice.
    mlflow = [r for r in sent if "/mlflow/" in r.path]
    calls = Counter(r.path.split("/mlflow/", 2)[-1] for r in mlflow)
    assert calls == {"experiments/get-by-name": 1, "runs/search": 2,
                     "metrics/get-history": 3}, calls
    assert {r.query.get("metric_key") for r in mlflow if r.path.endswith("get-history")} == {
        "loss", "eval_loss", "train_loss"}
    keys = [(r.path, tuple(sorted(r.query.items())), r.raw_body) for r in mlflow]
    assert len(set(keys)) == len(keys)


def test_a_rerun_stays_within_its_request_budget_and_reads_no_metrics(
    fake, registry_flow
) -> None:
    flow_module.finetune_and_deploy(request=registry_flow)
    fake.requests.clear()

    flow_module.finetune_and_deploy(request=registry_flow)

    sent = list(fake.requests)
    assert len(sent) <= RERUN_MAX, _tally(sent)
    assert [r.path for r in sent if "/mlflow/" in r.path] == []
    assert [r.path for r in sent if r.status == 404] == []


def test_an_absence_read_a_moment_ago_is_the_check_before_the_creation(fake, workspace):
    """The task reads the endpoint, finds none and asks the workspace to create it: that
    read is the ownership check, not a second identical 404."""
    spec = EndpointSpec(name="ep-new", tags={TAG_REQUEST: "req-a"}, owner="req-a")
    assert workspace.get_endpoint("ep-new") is None

    workspace.begin_create_endpoint(spec)

    assert [r.status for r in fake.sent("GET", r"/onlineEndpoints/ep-new$")] == [404]
    assert len(fake.sent("PUT", r"/onlineEndpoints/ep-new$")) == 1


def test_an_older_absence_is_read_again_and_another_requests_endpoint_refused(
    fake, workspace, monkeypatch
):
    """Once the absence is older than ABSENCE_STANDS_S, the write reads the endpoint again:
    one another request made meanwhile is refused, and nothing is written."""
    monkeypatch.setattr(absence, "ABSENCE_STANDS_S", 0.0)
    assert workspace.get_endpoint("ep-taken") is None
    fake.add_endpoint("ep-taken", {TAG_REQUEST: "req-b"}, {})

    with pytest.raises(OwnershipConflict, match="request req-b"):
        workspace.begin_create_endpoint(
            EndpointSpec(name="ep-taken", tags={TAG_REQUEST: "req-a"}, owner="req-a"))

    assert fake.sent("PUT", r"/onlineEndpoints/ep-taken$") == []
