"""teardown_idle_endpoints: delete the endpoints this project made that nobody uses.

Runs on a schedule (every 30 minutes, see prefect.yaml) against the workspace named by
``workspace_block`` (same meaning as in finetune_and_deploy). It looks only at endpoints
tagged ``managed-by: chat-finetune-flows`` and, for each one, decides:

- kept: protected (tag ``chatft-protected``), younger than the grace period, still being
  provisioned, its activity could not be read (never guessed), or it had organic requests
  in the idle window (the project's own smoke-test and walkthrough requests are not use);
- deleted: no organic request in the idle window, including endpoints that never served
  (their creating run crashed before a deployment took traffic);
- skipped: would be deleted, but this pass already reached ``max_deletions_per_run``.

Deployments in state Failed on an endpoint that is kept are deleted on their own (the
endpoint stays). ``dry_run`` reports "would delete" and deletes nothing. Every decision is
in the table artifact ``teardown-decisions``; each deletion (and each failed one) emits an
event; the run ends Failed if any deletion failed, after the artifact is written.
docs/teardown-rules.md lists the rules.

Run it:
    python -m flows.teardown_idle_endpoints --dry-run      # local workspace, report only
    python -m flows.teardown_idle_endpoints --workspace-block azure-ml-workspace/prod
    python -m flows.teardown_idle_endpoints --help         # every rule of the pass
or from a Prefect server: the ``teardown-idle-endpoints`` deployment in prefect.yaml.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.states import State

from blocks import load_workspace
from flows.cli import parse_request
from flows.parameters import TeardownRequest, WorkspaceBlock, form_title
from flows.reported_failure import install as quiet_reported_failures
from flows.startup import skip_final_collection
from tasks import reports
from tasks.endpoints import delete_endpoint
from tasks.own_traffic import attribute_own_requests, count_own_requests_by_endpoint
from tasks.teardown import (
    delete_deployment_and_wait,
    list_endpoints,
    load_prices,
    read_endpoints_activity,
    report_decisions,
)
from tasks.teardown_rules import (
    DELETE_FAILED,
    DELETED,
    WOULD_DELETE,
    Decision,
    TeardownResult,
    TeardownRules,
    apply_cap,
    as_utc,
    hold_reason,
    iso,
    judge_endpoint,
    oldest_first,
    summary_text,
    table_rows,
)
from workspaces.errors import WorkspaceError
from workspaces.interface import EndpointActivity, Workspace

quiet_reported_failures()


# -- steps -------------------------------------------------------------------------------
def read_activities(
    workspace: Workspace, endpoints: list[str], rules: TeardownRules
) -> dict[str, EndpointActivity]:
    """Every endpoint's activity in the window, in one task; any error means unreadable.

    The workspace batches the reads (Azure: one Azure Monitor query per 50 endpoints), and
    the project's own recorded requests are counted in one events query for all of them.
    """
    if not endpoints:
        return {}
    start, end = rules.window_start, rules.now
    state: State = read_endpoints_activity(workspace, endpoints, start, end, return_state=True)
    if not state.is_completed():
        error = state.result(raise_on_failure=False)
        reason = f"{error.__class__.__name__}: {str(error)[:300]}"
        return {name: EndpointActivity.unreadable(name, start, end, reason) for name in endpoints}
    read: dict[str, EndpointActivity] = state.result()
    activities = {
        name: read.get(name) or EndpointActivity.unreadable(
            name, start, end, "the workspace returned no activity for this endpoint")
        for name in endpoints
    }
    # Azure counts every request; take off what our own flows recorded sending.
    unattributed = [n for n, a in activities.items() if a.available and not a.callers_known]
    if unattributed:
        try:
            own = count_own_requests_by_endpoint(unattributed, workspace.kind, start, end)
        except Exception as exc:  # unreadable records mean unreadable activity
            reason = f"the project's own requests could not be counted: {exc}"[:300]
            own = None
        for name in unattributed:
            activities[name] = (
                attribute_own_requests(activities[name], own[name]) if own is not None
                else EndpointActivity.unreadable(name, start, end, reason)
            )
    return activities


def carry_out(
    workspace: Workspace, decisions: list[Decision], rules: TeardownRules, timeout_minutes: float
) -> None:
    """Run the deletions side by side, wait for each, record and announce every outcome."""
    todo = [d for d in decisions if d.delete]
    if rules.dry_run:
        for decision in todo:
            decision.outcome = WOULD_DELETE
        return
    futures = [
        delete_deployment_and_wait.submit(workspace, d.endpoint, d.deployment, timeout_minutes)
        if d.deployment else
        delete_endpoint.submit(workspace, d.endpoint, timeout_minutes)
        for d in todo
    ]
    for decision, future in zip(todo, futures, strict=True):
        future.wait()
        if future.state.is_completed():
            decision.outcome = DELETED
        else:
            error = future.state.result(raise_on_failure=False)
            decision.outcome = DELETE_FAILED
            decision.error = f"{error.__class__.__name__}: {str(error)[:300]}"
        _announce(decision, workspace.kind)


def _announce(decision: Decision, workspace_kind: str) -> None:
    kind = "deployment" if decision.deployment else "endpoint"
    name = decision.resource.replace("/", ".")
    payload = {"reason": decision.reason, "instances": decision.instances,
               "usd_per_hour_saved": decision.usd_per_hour,
               "last_organic_request_at": iso(decision.last_organic_request_at)}
    if decision.outcome == DELETED:
        reports.emit(f"{kind}.deleted", name, workspace_kind, payload, resource_kind=kind)
    else:
        reports.emit(f"{kind}.deletion-failed", name, workspace_kind,
                     {**payload, "error": decision.error}, resource_kind=kind)


# -- the flow ----------------------------------------------------------------------------
def utc_now() -> datetime:
    """The pass's clock. Tests replace this function; it is not a run parameter.

    A clock step cannot age an endpoint here: the local workspace places its request times
    and creation times on the current wall clock by their time since boot, and Azure
    reports times from its own clocks, which a step of this machine's clock corrects
    toward (an NTP step moves a wrong clock to the right time).
    """
    return datetime.now(UTC)


@flow(
    name="teardown-idle-endpoints",
    description="Delete managed online endpoints that had no organic requests in a window.",
    log_prints=True,
)
def teardown_idle_endpoints(
    request: Annotated[TeardownRequest, form_title("What to tear down")] = TeardownRequest(),  # noqa: B008
    workspace_block: WorkspaceBlock = "",
) -> TeardownResult:
    """Delete idle managed endpoints and Failed deployments; report every decision.

    Args:
        request: the pass's rules (idle hours, grace period, cap, dry run).
        workspace_block: where to run, as a Prefect block: local-workspace/NAME or
            azure-ml-workspace/NAME. Leave empty for the embedded local workspace in
            $CHATFT_STATE_DIR (default ./.workspace).

    Returns:
        Every decision of the pass (the rows of the ``teardown-decisions`` artifact); a
        failed deletion fails the run after the others went ahead.

    Example:
        ``teardown_idle_endpoints(request=TeardownRequest(idle_hours=24, dry_run=True))``
    """
    logger = get_run_logger()
    dry_run = request.dry_run
    rules = TeardownRules(now=as_utc(utc_now()), idle_hours=request.idle_hours,
                          grace_minutes=request.grace_minutes,
                          max_deletions=request.max_deletions_per_run, dry_run=dry_run)
    workspace = load_workspace(workspace_block)
    prices = load_prices(request.price_file)

    everything = list_endpoints(workspace)
    managed = sorted((e for e in everything if e.managed), key=oldest_first)
    logger.info("%d managed endpoint(s) to judge; %d other endpoint(s) are not ours and "
                "are left alone", len(managed), len(everything) - len(managed))

    to_read = [e.name for e in managed if hold_reason(e, rules) is None]
    activities = read_activities(workspace, to_read, rules)
    decisions = [row for e in managed
                 for row in judge_endpoint(e, rules, prices, activities.get(e.name))]
    apply_cap(decisions, rules.max_deletions)
    carry_out(workspace, decisions, rules, request.delete_timeout_minutes)

    result = TeardownResult(now=rules.now, dry_run=dry_run, decisions=decisions)
    summary = summary_text(result, rules, prices)
    report_decisions(table_rows(decisions, rules), summary)
    logger.info(summary)
    counts = Counter(d.outcome for d in decisions)
    reports.name_run(
        "teardown" + (" (dry run)" if dry_run else "") + ": "
        + (", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items()))
           or "no managed endpoint")
    )
    failed = result.named(DELETE_FAILED)
    if failed:
        raise WorkspaceError(f"deletion failed for {', '.join(failed)}; the others went ahead. "
                             "See the teardown-decisions artifact for the errors.")
    return result


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.teardown_idle_endpoints``: parse the rules from ``argv``, run, print
    each decision."""
    request, workspace_block = parse_request(
        TeardownRequest, "python -m flows.teardown_idle_endpoints", argv
    )
    result = teardown_idle_endpoints(request=request, workspace_block=workspace_block)
    for d in result.decisions:
        print(f"{d.outcome:13} {d.resource:40} {d.reason}")


if __name__ == "__main__":
    main()
    skip_final_collection()
