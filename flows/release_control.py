"""release_control: a person sees and steers the release on an endpoint.

Four actions (flows/release_actions.py, docs/rollout.md "Steering a release"):

- ``status``: what serves, what is held and since when, on what figures;
- ``promote``: a held canary to 100 %;
- ``abort``: a canary or held release back to the serving deployment, its model rejected;
- ``rollback``: an earlier model version back in production, through the contract and a
  canary, or at once (``immediate``) onto its kept deployment.

Every action writes the artifacts ``release-status`` and ``release-history`` (the
endpoint's history as its registry keeps it, newest first), records who asked and why,
and emits ``chatft.release.<action>``. A refused action changes nothing and fails the run
with a message naming the field.

Run it:
    chatft release status chatft-demo                      # local workspace, a shell
    chatft release rollback chatft-demo --reason "answers got worse"
    python -m flows.release_control --endpoint-name NAME --action promote \\
        --workspace-block azure-ml-workspace/prod         # either workspace
or from a Prefect server: deployment ``release-control/release-control``.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from prefect.states import Completed, State
from pydantic import BaseModel

from blocks import load_workspace
from flows.cli import parse_request
from flows.parameters import ReleaseControlRequest, WorkspaceBlock, form_title
from flows.release_actions import Action, abort, promote_held, rollback
from flows.reported_failure import install as quiet_reported_failures
from flows.rollout import ReleaseOutcome
from flows.startup import skip_final_collection
from tasks import reports
from tasks.liveness import release_heartbeat
from tasks.release_history import gate_figures, report_history, who_asked
from tasks.rollout import deployment_model
from workspaces.errors import InvalidRequest
from workspaces.interface import TAG_STAGE, Endpoint, Workspace
from workspaces.release_history import ReleaseEvent
from workspaces.release_state import RecordedRelease

quiet_reported_failures()

# How a run that did not move production ends, by its outcome (the type stays Completed).
STATE_NAMES = {"held": "Held", "rollback-failed": "RollbackFailed", "aborted": "Aborted"}


class ReleaseControlResult(BaseModel):
    """What the action did, and the endpoint's history afterwards."""

    endpoint: str
    action: str
    outcome: str
    message: str
    serving: list[str]
    history: list[ReleaseEvent]


def status_lines(workspace: Workspace, endpoint: Endpoint) -> list[str]:
    """What serves, what is held and since when, on what figures."""
    lines = []
    for name, share in sorted(endpoint.traffic.items(), key=lambda kv: -kv[1]):
        named = deployment_model(endpoint, name)
        model = workspace.get_model(*named) if named else None
        tags = model.tags if model else {}
        figures = ", ".join(f"{k} {v}" for k, v in gate_figures(tags).items()) or "none"
        lines.append(f"- **{name}**: {share} % of live traffic, model "
                     f"{':'.join(named) if named else 'unknown'} (stage "
                     f"{tags.get(TAG_STAGE, 'unknown')}; gate figures: {figures})")
    recorded = RecordedRelease.of(endpoint.tags)
    if recorded.step:
        age = ""
        if recorded.since is not None:
            hours = (datetime.now(UTC) - recorded.since).total_seconds() / 3600
            age = f" since {recorded.since:%Y-%m-%d %H:%M} UTC ({hours:.1f} h)"
        lines.append(f"- Release: request {recorded.request}, step **{recorded.step}**{age}, "
                     f"from {recorded.from_deployment or 'nothing'} to "
                     f"{recorded.to_deployment}, run {recorded.run}"
                     + (f"; {recorded.reason}" if recorded.reason else ""))
    return lines or ["- Nothing serves: the endpoint has no deployment with traffic."]


def _act(workspace: Workspace, request: ReleaseControlRequest, endpoint: Endpoint,
         run: str, actor: str) -> ReleaseOutcome:
    if request.action == "status":
        return ReleaseOutcome(outcome="status", released=False, serving=None,
                              endpoint=endpoint, message=f"status of {endpoint.name}")
    action = Action(workspace, request, endpoint, run, actor)
    do = {"promote": promote_held, "abort": abort, "rollback": rollback}[request.action]
    with release_heartbeat(run):
        return do(action)


@flow(
    name="release-control",
    description="See and steer the release on an endpoint: status, promote a held canary, "
    "abort a canary, roll back to an earlier model version.",
    log_prints=True,
)
def release_control(
    request: Annotated[ReleaseControlRequest, form_title("What to do")],
    workspace_block: WorkspaceBlock = "",
) -> ReleaseControlResult | State:
    """Carry out ``request.action`` on ``request.endpoint_name``.

    Args:
        request: the endpoint, the action, the reason and the action's settings.
        workspace_block: local-workspace/NAME or azure-ml-workspace/NAME; empty = the
            embedded local workspace in $CHATFT_STATE_DIR (default ./.workspace).

    Returns:
        What the action did and the endpoint's history; a refused action fails the run
        with the field and the reason, and changes nothing.
    """
    workspace = load_workspace(workspace_block)
    endpoint = workspace.get_endpoint(request.endpoint_name)
    if endpoint is None or not endpoint.managed:
        raise InvalidRequest(
            f"endpoint_name: {request.endpoint_name} "
            + ("does not exist" if endpoint is None else "is not managed by this project")
            + f" in the {workspace.kind} workspace")
    run_id = str(flow_run.get_id() or "")
    actor = who_asked(request.requested_by)
    reports.name_run(f"release-control: {request.action} {request.endpoint_name}")
    outcome = _act(workspace, request, endpoint, run_id or "shell", actor)
    endpoint = workspace.get_endpoint(request.endpoint_name) or endpoint
    lines = status_lines(workspace, endpoint)
    create_markdown_artifact(
        key="release-status",
        markdown=f"## {endpoint.name}: {outcome.message}\n\n" + "\n".join(lines)
        + f"\n\nAsked by {actor}" + (f": {request.reason}" if request.reason else "") + ".",
        description=f"What serves {endpoint.name} after {request.action}")
    history = report_history(workspace, endpoint.name)
    get_run_logger().info("%s: %s", endpoint.name, outcome.message)
    result = ReleaseControlResult(
        endpoint=endpoint.name, action=request.action, outcome=outcome.outcome,
        message=outcome.message, serving=lines, history=history)
    name = STATE_NAMES.get(outcome.outcome)
    return Completed(name=name, message=outcome.message, data=result) if name else result


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.release_control``: parse the request from ``argv``, run, print."""
    from workspaces.release_history import history_table

    request, workspace_block = parse_request(
        ReleaseControlRequest, "python -m flows.release_control", argv)
    try:
        result = release_control(request=request, workspace_block=workspace_block)
    except InvalidRequest as exc:
        raise SystemExit(f"refused: {exc}") from None
    print(result.message)
    print("\n".join(result.serving))
    print(f"\nRelease history of {result.endpoint}, newest first:\n")
    print(history_table(result.history))


if __name__ == "__main__":
    main()
    skip_final_collection()
