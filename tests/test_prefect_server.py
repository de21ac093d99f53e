"""End to end through a real Prefect server, as a person using the UI would.

``chatft server up`` (server/manager.py's ``up``) starts ``prefect server start`` (SQLite, its own
PREFECT_HOME in tmp), registers the blocks, saves ``local-workspace/default`` with a tmp
state_dir, creates the ``chatft-process`` pool, deploys prefect.yaml and starts a process
worker. The test then starts runs through the API exactly as the UI's run form does
(``create_flow_run_from_deployment`` with parameters) and reads back run history,
artifacts and events. Everything it started is stopped at the end: endpoints, worker,
server.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest

from server import manager
from server.instance import Server
from tests.helpers import PROJECT_DIR, free_port
from workspaces.local import LocalWorkspace
from workspaces.local.catalog import STANDIN_NAME, STANDIN_VERSION

# no timeout of its own: the first test also builds the session's stand-in model when no
# earlier test did (minutes on a loaded 2-core runner); pyproject's 900 s applies.
pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 300




class Stack:
    """The running server, its API client and the tmp folders of one test module."""

    def __init__(self, server: Any, state_dir: Path, data_dir: Path, deployed: list[str]):
        from prefect.client.orchestration import SyncPrefectClient

        self.server = server
        self.state_dir = state_dir
        self.data_dir = data_dir
        self.deployed = deployed
        self.client = SyncPrefectClient(server.api_url)
        self.client.__enter__()

    def deployment_id(self, name: str) -> UUID:
        if name not in self.deployed:
            pytest.fail(f"deployment {name} is missing: `chatft server up` deployed only "
                        f"{', '.join(self.deployed) or 'nothing'}")
        return self.client.read_deployment_by_name(f"{name}/{name}").id

    def run(self, deployment: str, parameters: dict[str, Any]) -> Any:
        """Start a run the way the UI's run form does, and wait until it ends."""
        flow_run = self.client.create_flow_run_from_deployment(
            self.deployment_id(deployment), parameters=parameters
        )
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while True:
            flow_run = self.client.read_flow_run(flow_run.id)
            if flow_run.state and flow_run.state.is_final():
                return flow_run
            if time.monotonic() > deadline:
                pytest.fail(f"{deployment} run still {flow_run.state_name} after "
                            f"{RUN_TIMEOUT_S} s\n{self.worker_log()}")
            time.sleep(2)

    def worker_log(self, chars: int = 6000) -> str:
        path = self.server.log_file("worker")
        return "worker log:\n" + (path.read_text()[-chars:] if path.exists() else "(none)")

    def artifacts(self, flow_run_id: UUID) -> list[Any]:
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        return self.client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )

    def artifact_keys(self, flow_run_id: UUID) -> set[str]:
        return {a.key for a in self.artifacts(flow_run_id) if a.key}

    def events(self, name: str, timeout_s: float = 30) -> list[dict[str, Any]]:
        """Events named ``name`` as the server stored them (the persister lags a little)."""
        deadline = time.monotonic() + timeout_s
        while True:
            response = httpx.post(
                f"{self.server.api_url}/events/filter",
                json={"filter": {"event": {"name": [name]}}, "limit": 50}, timeout=30,
            )
            response.raise_for_status()
            events = response.json()["events"]
            if events or time.monotonic() > deadline:
                return events
            time.sleep(1)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, standin_dir: Path) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("prefect-server")
    state_dir = root / "workspace"
    # the stand-in base model, built once per session, so the run only fine-tunes it
    shutil.copytree(standin_dir, state_dir / "catalog" / STANDIN_NAME / STANDIN_VERSION)
    server = Server(
        root / "prefect-home", "127.0.0.1", free_port(),
        extra_env={
            # runs start only when the test asks (no hourly smoke test, no teardown pass)
            "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "false",
            "HF_HUB_OFFLINE": "1",
        },
    )
    running: Stack | None = None
    try:
        deployed = manager.up(server, state_dir, query_seconds=2)
        assert set(deployed) == {"finetune-and-deploy", "smoke-test-endpoints",
                                 "teardown-idle-endpoints", "release-control"}
        running = Stack(server, state_dir, root / "data", deployed)
        yield running
    finally:
        if running is not None:
            running.client.__exit__(None, None, None)
        workspace = LocalWorkspace(state_dir)
        for endpoint in workspace.list_endpoints():
            workspace.begin_delete_endpoint(endpoint.name)
        manager.down(server)
        assert manager.status(server)["server_pid"] is None


@pytest.fixture(scope="module")
def finetune_run(stack: Stack) -> Any:
    flow_run = stack.run("finetune-and-deploy", {
        "request": {
            "foundation_model": STANDIN_NAME,
            "download_dir": str(stack.data_dir / "ultrachat_200k_dataset"),
            "training": {"num_train_epochs": 1},
        },
    })
    assert flow_run.state.is_completed(), (
        f"{flow_run.state_name}: {flow_run.state.message}\n{stack.worker_log()}"
    )
    return flow_run


def test_deployments_come_from_prefect_yaml(stack: Stack) -> None:
    deployment = stack.client.read_deployment(stack.deployment_id("finetune-and-deploy"))
    assert deployment.work_pool_name == "chatft-process"
    assert deployment.parameters == {"workspace_block": "local-workspace/default"}
    assert deployment.enforce_parameter_schema
    assert deployment.global_concurrency_limit and deployment.global_concurrency_limit.limit == 1
    assert deployment.concurrency_options.collision_strategy.value == "ENQUEUE"
    directory = deployment.pull_steps[0]["prefect.deployments.steps.set_working_directory"]
    assert Path(directory["directory"]) == PROJECT_DIR
    for name, schedule in (("smoke-test-endpoints", "cron"), ("teardown-idle-endpoints",
                                                             "interval")):
        scheduled = stack.client.read_deployment(stack.deployment_id(name))
        assert scheduled.schedules and hasattr(scheduled.schedules[0].schedule, schedule)
        assert scheduled.schedules[0].schedule.timezone == "UTC"


def test_server_refuses_a_bad_parameter_naming_the_field(stack: Stack) -> None:
    from prefect.exceptions import PrefectHTTPStatusError

    with pytest.raises(PrefectHTTPStatusError) as refused:
        stack.client.create_flow_run_from_deployment(
            stack.deployment_id("finetune-and-deploy"),
            parameters={"request": {"dataset_split_pc": 500}},
        )
    assert refused.value.response.status_code == 409
    assert "request.dataset_split_pc" in refused.value.response.text


def test_finetune_run_leaves_history_artifacts_and_events(stack: Stack, finetune_run: Any) -> None:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    history = stack.client.read_flow_runs(deployment_filter=DeploymentFilter(
        id=DeploymentFilterId(any_=[stack.deployment_id("finetune-and-deploy")])
    ))
    assert [r.id for r in history] == [finetune_run.id]
    # the run renames itself after what it made: "<model> -> <endpoint>"
    model, endpoint_name = finetune_run.name.split(" -> ")
    assert model == STANDIN_NAME and endpoint_name.startswith("ultrachat-completion-")

    keys = stack.artifact_keys(finetune_run.id)
    assert {"foundation-model", "train-sft-preview", "finetune-job", "finetune-metrics",
            "registered-model", "endpoint", "sample-score"} <= keys
    artifacts = stack.artifacts(finetune_run.id)
    # the job's final status, not the "Queued" it had at submission
    job_artifact = next(a for a in artifacts if a.key == "finetune-job")
    assert "| status | Completed |" in job_artifact.data
    # every link the UI shows opens in a browser; local paths are shown as text
    assert not [a.key for a in artifacts if "file://" in str(a.data)]

    deployed = stack.events("chatft.endpoint.deployed")
    assert [e["resource"]["prefect.resource.name"] for e in deployed] == [endpoint_name]
    assert deployed[0]["payload"]["model"]

    endpoint = LocalWorkspace(stack.state_dir).get_endpoint(endpoint_name)
    assert endpoint is not None and endpoint.provisioning_state == "Succeeded"


def test_smoke_test_then_teardown_dry_run(stack: Stack, finetune_run: Any) -> None:
    endpoint_name = finetune_run.name.split(" -> ")[1]

    smoke = stack.run("smoke-test-endpoints", {"request": {
        "endpoint_names": [endpoint_name],
        "download_dir": str(stack.data_dir / "smoke"),
        "request_timeout_s": 120,
    }})
    assert smoke.state.is_completed(), f"{smoke.state.message}\n{stack.worker_log()}"
    assert "smoke-test-results" in stack.artifact_keys(smoke.id)
    completed = stack.events("chatft.smoke-test.completed")
    assert completed and endpoint_name in completed[0]["payload"]["endpoints_tested"]

    teardown = stack.run("teardown-idle-endpoints", {"request": {"dry_run": True}})
    assert teardown.state.is_completed(), f"{teardown.state.message}\n{stack.worker_log()}"
    assert "teardown-decisions" in stack.artifact_keys(teardown.id)
    # a dry run deletes nothing
    assert LocalWorkspace(stack.state_dir).get_endpoint(endpoint_name) is not None


def test_release_control_from_the_api(stack: Stack, finetune_run: Any) -> None:
    """The fourth deployment: a bad action is refused (409) naming the field; a status run
    completes and its artifacts are readable through the API."""
    from prefect.exceptions import PrefectHTTPStatusError

    endpoint_name = finetune_run.name.split(" -> ")[1]
    with pytest.raises(PrefectHTTPStatusError) as refused:
        stack.client.create_flow_run_from_deployment(
            stack.deployment_id("release-control"),
            parameters={"request": {"endpoint_name": endpoint_name, "action": "demote"}})
    assert refused.value.response.status_code == 409
    assert "request.action" in refused.value.response.text

    status = stack.run("release-control", {"request": {"endpoint_name": endpoint_name,
                                                       "requested_by": "the test"}})
    assert status.state.is_completed(), f"{status.state.message}\n{stack.worker_log()}"
    artifacts = {a.key: a for a in stack.artifacts(status.id)}
    assert {"release-status", "release-history"} <= set(artifacts)
    assert f"status of {endpoint_name}" in artifacts["release-status"].data
    assert "the test, deployment release-control" in artifacts["release-status"].data
