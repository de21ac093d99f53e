"""Helpers for tests that need a registered model, a serving endpoint or the local server."""

from __future__ import annotations

import hashlib
import re
import socket
import sys
import time
from datetime import datetime
from pathlib import Path

from workspaces.interface import (
    MANAGED_BY_VALUE,
    TAG_MANAGED_BY,
    DeploymentSpec,
    Endpoint,
    EndpointSpec,
    FoundationModel,
    RegisteredModel,
)
from workspaces.local import LocalWorkspace
from workspaces.model_tags import retirement_status

MANAGED_TAGS = {
    TAG_MANAGED_BY: MANAGED_BY_VALUE,
    "chatft-model": "phi3-tiny-standin-ultrachat-200k",
}


def register_model(
    ws: LocalWorkspace, model_dir: Path, name: str = "standin-test", version: str = "1"
) -> RegisteredModel:
    """Register an MLflow model folder in the workspace's registry (no training)."""
    return ws.registry.register(name, version, str(model_dir), None, "test model", {})


def serve(
    ws: LocalWorkspace,
    model: RegisteredModel,
    name: str,
    tags: dict[str, str] | None = None,
    deployment: str = "demo",
    timeout_s: float = 120,
    instance_count: int = 1,
    deployment_tags: dict[str, str] | None = None,
) -> Endpoint:
    """Create an endpoint with one deployment taking 100 % of traffic; wait until ready."""
    ws.begin_create_endpoint(EndpointSpec(
        name=name, description="test endpoint", tags=dict(MANAGED_TAGS if tags is None else tags),
    ))
    deadline = time.monotonic() + timeout_s
    while (e := ws.get_endpoint(name)) is None or e.provisioning_state == "Creating":
        assert time.monotonic() < deadline, f"endpoint {name} not ready"
        time.sleep(0.2)
    ws.begin_create_deployment(DeploymentSpec(
        endpoint_name=name, name=deployment, model_id=model.id, instance_type="Local_CPU",
        instance_count=instance_count, tags=dict(deployment_tags or {}),
    ))
    wait_deployment_ready(ws, name, deployment, deadline - time.monotonic())
    return ws.set_traffic(name, {deployment: 100})


def wait_deployment_ready(ws: LocalWorkspace, endpoint: str, name: str,
                          timeout_s: float = 120) -> None:
    """Wait while the deployment is Creating; it must then have Succeeded."""
    deadline = time.monotonic() + timeout_s
    while (d := ws.get_deployment(endpoint, name)).provisioning_state == "Creating":
        assert time.monotonic() < deadline, f"deployment {name} not ready"
        time.sleep(0.2)
    assert d.provisioning_state == "Succeeded", d.error


def wait_past_liveness(killed_at: float) -> None:
    """Sleep until a release's run killed at ``killed_at`` (time.monotonic) has been silent
    past the liveness bound, so the next smoke test may settle its release."""
    from tasks.liveness import liveness_bound_s

    time.sleep(max(0.0, liveness_bound_s() + 2 - (time.monotonic() - killed_at)))


def chat_body(text: str = "What is 2 plus 3?", max_new_tokens: int = 8) -> dict:
    return {
        "input_data": {
            "input_string": [[{"role": "user", "content": text}]],
            "parameters": {
                "temperature": 0.6,
                "top_p": 0.9,
                "do_sample": True,
                "max_new_tokens": max_new_tokens,
            },
        },
        "params": {},
    }


PROJECT_DIR = Path(__file__).resolve().parent.parent
# The project's command as `make server-up` runs it: the console script of this venv.
CHATFT = str(Path(sys.executable).with_name("chatft"))


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The API answers at most 200 rows per read (PREFECT_API_DEFAULT_LIMIT). Tests share one
# server, so an unfiltered read returns the session's *oldest* rows, not this run's: read
# one flow run's rows, page by page.
_PAGE = 200


def run_logs(flow_run_id: object) -> list:
    """Every log of one flow run (its tasks included), oldest first."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    logs: list = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                limit=_PAGE, offset=len(logs),
            )
            logs += page
            if len(page) < _PAGE:
                return logs


def run_artifacts(flow_run_id: object, key: str | None = None) -> list:
    """Every artifact one flow run (or its tasks) wrote, optionally only those of one key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        ArtifactFilterKey,
    )

    artifact_filter = ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
    if key is not None:
        artifact_filter.key = ArtifactFilterKey(any_=[key])
    artifacts: list = []
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_artifacts(
                artifact_filter=artifact_filter, limit=_PAGE, offset=len(artifacts)
            )
            artifacts += page
            if len(page) < _PAGE:
                return artifacts


def processes_under(root: Path) -> list:
    """Every live process started for a folder under ``root`` (its command line names it)."""
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE and str(root) in " ".join(proc.cmdline()):
                found.append(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def kill_processes_under(root: Path) -> None:
    """SIGKILL every process started for a folder under ``root``, with its session."""
    import os
    import signal

    for proc in processes_under(root):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def answer_json(handler: object, status: int, body: object,
                headers: dict[str, str] | None = None) -> None:
    """Send ``body`` as JSON from an ``http.server`` handler (the tests' fake servers)."""
    import json

    data = json.dumps(body).encode()
    handler.send_response(status)  # type: ignore[attr-defined]
    for name, value in {"Content-Type": "application/json", **(headers or {})}.items():
        handler.send_header(name, value)  # type: ignore[attr-defined]
    handler.send_header("Content-Length", str(len(data)))  # type: ignore[attr-defined]
    handler.end_headers()  # type: ignore[attr-defined]
    handler.wfile.write(data)  # type: ignore[attr-defined]


def run_table(flow_run_id: object, key: str) -> list[dict]:
    """The rows of the one table artifact ``key`` that a flow run wrote."""
    import json

    [artifact] = run_artifacts(flow_run_id, key)
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


# Lines that mean something went wrong in a Prefect server or worker log.
TROUBLE = re.compile(r"Traceback \(most recent call last\)|\| ERROR |\bERROR\b\s*\|| ERROR:")


def trouble_in(path: Path) -> list[str]:
    """The log's traceback and ERROR lines, each with the line after it for context."""
    if not path.exists():
        return []
    lines = path.read_text(errors="replace").splitlines()
    return [" / ".join(lines[i:i + 2]) for i, line in enumerate(lines) if TROUBLE.search(line)]


def prompt_id_for(prompt: str) -> str:
    """ultrachat's prompt_id: the sha256 hex digest of the prompt (for rows a test writes)."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def retirement_notice(model: FoundationModel) -> str | None:
    """The refusal sentence when the model is retired (true-ish tag or a date that has passed)."""
    return retirement_status(model)[0]


def count_own_requests(endpoint_name: str, workspace_kind: str, start: datetime,
                       end: datetime) -> int:
    """Requests the project recorded as its own for one endpoint in [start, end - lag)."""
    from tasks.own_traffic import count_own_requests_by_endpoint  # Prefect: only when asked

    return count_own_requests_by_endpoint([endpoint_name], workspace_kind, start, end).get(
        endpoint_name, 0)
