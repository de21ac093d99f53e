"""Recording and showing an endpoint's release history (workspaces/release_history.py).

Every end of a release calls :func:`record_release`: the event goes to the workspace's
registry (where it outlives the Prefect server's database), and to Prefect as the event
``chatft.release.<action>`` with who asked and why, for automations. :func:`report_history`
shows the endpoint's history as the table artifact ``release-history``, newest first.
"""

from __future__ import annotations

import getpass
import socket
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.runtime import flow_run

from tasks import reports
from workspaces.errors import WorkspaceError
from workspaces.interface import Workspace
from workspaces.release_history import ReleaseEvent, history_rows

# The model tags of the gate's figures (tasks/release_gate.py), by their short name here.
GATE_FIGURES = {"gate loss": "chatft-gate-eval_loss",
                "gate exact": "chatft-gate-exact_answer_rate"}


def this_run() -> str:
    """The flow run doing this, as ``name (id)``; "" outside a run."""
    run_id = flow_run.get_id()
    return f"{flow_run.get_name()} ({run_id})" if run_id else ""


def who_asked(requested_by: str = "") -> str:
    """Who asked for what this run does, as far as anyone knows it.

    A self-hosted Prefect server records no user (it names only the automation that
    started a run), so the run form's ``requested_by`` says who the person is; then the
    automation, the schedule, or the deployment (a run started from the UI or the API);
    outside a deployment, the shell's user and host.
    """
    said = f"{requested_by.strip()}, " if requested_by.strip() else ""
    run_id = flow_run.get_id()
    run = None
    if run_id:
        try:
            with get_client(sync_client=True) as client:
                run = client.read_flow_run(run_id)
                named = (client.read_deployment(run.deployment_id).name
                         if run.deployment_id else None)
        except Exception:  # noqa: BLE001 - who asked is a courtesy; the run id is kept anyway
            run = None
    if run is not None and run.created_by is not None and run.created_by.display_value:
        return f"{said}{run.created_by.type.lower()} {run.created_by.display_value}"
    if run is not None and named and run.auto_scheduled:
        return f"{said}the schedule of deployment {named}"
    if run is not None and named:
        return f"{said}deployment {named} (started from the UI or the API)"
    return f"{said}{getpass.getuser()}@{socket.gethostname()} (shell)"


def gate_figures(tags: dict[str, str]) -> dict[str, str]:
    """The gate's figures a model version carries, by their short name."""
    return {short: tags[tag] for short, tag in GATE_FIGURES.items() if tag in tags}


@task(name="record-release", cache_policy=NO_CACHE)
def record_release(workspace: Workspace, event: ReleaseEvent) -> ReleaseEvent:
    """Append ``event`` to its endpoint's history and emit ``chatft.release.<action>``.

    The run and its actor are filled in when the event does not name them, and the gate's
    figures from the model version. A history the workspace cannot write is said in the
    log and the event, never a reason to undo what the release did.
    """
    update: dict[str, Any] = {}
    if not event.run:
        update["run"] = this_run()
    if not event.actor:
        update["actor"] = who_asked()
    if event.model and event.version:
        found = workspace.get_model(event.model, event.version)
        if found is not None:
            update["figures"] = {**gate_figures(found.tags), **event.figures}
    event = event.model_copy(update=update)
    written = True
    try:
        workspace.record_release_event(event)
    except (WorkspaceError, NotImplementedError) as exc:
        written = False
        get_run_logger().error("The release history of %s could not be written: %s",
                               event.endpoint, exc)
    reports.emit(f"release.{event.action}", event.endpoint, workspace.kind, {
        **event.model_dump(mode="json", exclude={"seq"}), "in_history": written})
    return event


def report_history(workspace: Workspace, endpoint_name: str) -> list[ReleaseEvent]:
    """Table artifact ``release-history``: the endpoint's history as its registry keeps it,
    newest first."""
    events = workspace.release_history(endpoint_name)
    where = ("the workspace's MLflow registry (experiment releases/" + endpoint_name + ")"
             if workspace.kind == "local" else
             "the endpoint's tags (the newest 10) and its model versions' tags")
    create_table_artifact(
        key="release-history", table=history_rows(events),
        description=f"Every release on {endpoint_name}, newest first: what, when, on what "
        f"figures, why, by whom. Read from {where}.")
    return events
