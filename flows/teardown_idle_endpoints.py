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
from datetime import UTC, datetime, timedelta

from prefect import flow, get_run_logger
from prefect.states import State
from pydantic import BaseModel, Field

from blocks import load_workspace
from flows.cli import parse_request
from flows.parameters import TeardownRequest, WorkspaceBlock
from tasks import reports
from tasks.own_traffic import attribute_own_requests, count_own_requests_by_endpoint
from tasks.teardown import (
    PriceTable,
    delete_deployment_and_wait,
    delete_endpoint_and_wait,
    format_usd,
    list_endpoints,
    load_prices,
    read_endpoints_activity,
    report_decisions,
)
from workspaces.errors import WorkspaceError
from workspaces.interface import TAG_PROTECTED, Endpoint, EndpointActivity, Workspace

# Tag values that switch protection off; any other value (even empty) protects.
NOT_PROTECTED_VALUES = frozenset({"false", "0", "no", "off"})
# States in which the resource is changing now; deleting it would race whoever changes it.
CHANGING_STATES = frozenset({"Creating", "Updating", "Scaling", "Deleting"})

KEPT, DELETED, WOULD_DELETE, SKIPPED, DELETE_FAILED = (
    "kept", "deleted", "would delete", "skipped", "delete failed",
)


class TeardownRules(BaseModel):
    """The thresholds of one pass, fixed at its start so every endpoint meets the same rules."""

    now: datetime
    idle_hours: float
    grace_minutes: float
    max_deletions: int
    dry_run: bool

    @property
    def window_start(self) -> datetime:
        return self.now - timedelta(hours=self.idle_hours)


class Decision(BaseModel):
    """What the pass decided about one endpoint, or about one failed deployment on it."""

    endpoint: str
    deployment: str | None = Field(default=None, description="Set for a failed-deployment row")
    delete: bool = Field(description="The rules say delete (before the cap and dry run)")
    outcome: str = KEPT
    reason: str
    created_at: datetime | None = None
    last_organic_request_at: datetime | None = None
    activity: str = "not read"
    instances: str = "none"
    usd_per_hour: float | None = 0.0
    error: str | None = None

    @property
    def resource(self) -> str:
        return f"{self.endpoint}/{self.deployment}" if self.deployment else self.endpoint


class TeardownResult(BaseModel):
    """What one pass decided and did; the same rows as the ``teardown-decisions`` artifact."""

    now: datetime
    dry_run: bool
    decisions: list[Decision]

    def named(self, outcome: str) -> list[str]:
        return [d.resource for d in self.decisions if d.outcome == outcome]


# -- rules -------------------------------------------------------------------------------
def is_protected(endpoint: Endpoint) -> bool:
    value = endpoint.tags.get(TAG_PROTECTED)
    return value is not None and value.strip().lower() not in NOT_PROTECTED_VALUES


def hold_reason(endpoint: Endpoint, rules: TeardownRules) -> str | None:
    """Why the endpoint is kept without even reading its activity, or None."""
    if is_protected(endpoint):
        return f"protected (tag {TAG_PROTECTED}={endpoint.tags[TAG_PROTECTED]!r})"
    if endpoint.provisioning_state in CHANGING_STATES:
        return f"endpoint is {endpoint.provisioning_state}; the next pass decides"
    changing = [d.name for d in endpoint.deployments if d.provisioning_state in CHANGING_STATES]
    if changing:
        return f"deployment {', '.join(changing)} is being provisioned; the next pass decides"
    if endpoint.created_at is None:
        return "creation time unknown, so the grace period cannot be checked"
    age = rules.now - _utc(endpoint.created_at)
    if age < timedelta(minutes=rules.grace_minutes):
        return (f"younger than the grace period ({_duration(age)} < "
                f"{rules.grace_minutes:g} min)")
    return None


def serves_traffic(endpoint: Endpoint) -> bool:
    """Whether some working deployment takes a share of the endpoint's traffic."""
    working = {d.name for d in endpoint.deployments if d.provisioning_state == "Succeeded"}
    return any(share > 0 and name in working for name, share in endpoint.traffic.items())


def activity_verdict(
    endpoint: Endpoint, activity: EndpointActivity, rules: TeardownRules
) -> tuple[bool, str]:
    """(delete?, reason) from the requests of the idle window."""
    window = f"{rules.idle_hours:g} h"
    if not activity.available:
        return False, f"activity unreadable, not guessed: {activity.reason or 'no reason given'}"
    if activity.organic_requests > 0:
        return False, f"in use: {activity.organic_requests} organic request(s) in the last {window}"
    own = activity.total_requests - activity.organic_requests
    own_note = f" (only the project's own requests: {own})" if own else ""
    if not serves_traffic(endpoint):
        return True, (f"never served: no working deployment takes traffic (its creating run "
                      f"may have crashed); no organic request in the last {window}{own_note}")
    return True, f"idle: no organic request in the last {window}{own_note}"


def failed_deployment_rows(endpoint: Endpoint, prices: PriceTable) -> list[Decision]:
    """Rows for the Failed deployments of a kept endpoint: delete those that take no traffic."""
    rows = []
    for deployment in endpoint.deployments:
        if deployment.provisioning_state != "Failed":
            continue
        share = endpoint.traffic.get(deployment.name, 0)
        rows.append(Decision(
            endpoint=endpoint.name,
            deployment=deployment.name,
            delete=share == 0,
            reason=(f"deployment Failed: {(deployment.error or 'no error reported')[:200]}"
                    if share == 0 else
                    f"deployment Failed but takes {share}% of traffic; route it away first"),
            created_at=endpoint.created_at,
            instances=f"{deployment.instance_type} x {deployment.instance_count}",
            usd_per_hour=prices.deployment_cost(deployment),
        ))
    return rows


def apply_cap(decisions: list[Decision], cap: int) -> None:
    """Let the first ``cap`` deletions (oldest endpoints first) through; skip the rest."""
    allowed = cap
    for decision in decisions:
        if not decision.delete:
            continue
        if allowed > 0:
            allowed -= 1
        else:
            decision.delete = False
            decision.outcome = SKIPPED
            decision.reason = f"cap reached (max_deletions_per_run={cap}); {decision.reason}"


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


def judge_endpoint(
    endpoint: Endpoint, rules: TeardownRules, prices: PriceTable,
    activity: EndpointActivity | None,
) -> list[Decision]:
    """The endpoint's row, followed by rows for Failed deployments when the endpoint stays.

    ``activity`` is None for an endpoint held without reading it (``hold_reason``).
    """
    row = Decision(
        endpoint=endpoint.name, delete=False, reason="", created_at=endpoint.created_at,
        instances=", ".join(f"{d.name}: {d.instance_type} x {d.instance_count}"
                            for d in endpoint.deployments) or "none",
        usd_per_hour=prices.endpoint_cost(endpoint),
    )
    held = hold_reason(endpoint, rules)
    if held or activity is None:
        row.reason = held or "activity not read"
        return [row]
    row.activity = _activity_text(activity)
    row.last_organic_request_at = activity.last_organic_request_at
    row.delete, row.reason = activity_verdict(endpoint, activity, rules)
    return [row] if row.delete else [row, *failed_deployment_rows(endpoint, prices)]


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
        delete_endpoint_and_wait.submit(workspace, d.endpoint, timeout_minutes)
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
               "last_organic_request_at": _iso(decision.last_organic_request_at)}
    if decision.outcome == DELETED:
        reports.emit(f"{kind}.deleted", name, workspace_kind, payload, resource_kind=kind)
    else:
        reports.emit(f"{kind}.deletion-failed", name, workspace_kind,
                     {**payload, "error": decision.error}, resource_kind=kind)


# -- report ------------------------------------------------------------------------------
def table_rows(decisions: list[Decision], rules: TeardownRules) -> list[dict[str, str]]:
    saving = (DELETED, WOULD_DELETE)
    return [{
        "endpoint": d.endpoint,
        "deployment": d.deployment or "(whole endpoint)",
        "decision": d.outcome,
        "reason": d.reason + (f" -- error: {d.error}" if d.error else ""),
        "last organic request": _iso(d.last_organic_request_at)
        or ("none in window" if d.activity != "not read" else "not read"),
        "requests in window": d.activity,
        "age": _duration(rules.now - _utc(d.created_at)) if d.created_at else "unknown",
        "instances": d.instances,
        "est. USD/hour": format_usd(d.usd_per_hour),
        "est. USD/hour saved": format_usd(d.usd_per_hour) if d.outcome in saving else "-",
    } for d in decisions]


def summary_text(result: TeardownResult, rules: TeardownRules, prices: PriceTable) -> str:
    counts = {o: len(result.named(o))
              for o in (DELETED, WOULD_DELETE, DELETE_FAILED, SKIPPED, KEPT)}
    saved = [d.usd_per_hour for d in result.decisions if d.outcome in (DELETED, WOULD_DELETE)]
    known = sum(v for v in saved if v is not None)
    unknown = sum(1 for v in saved if v is None)
    return (
        ("DRY RUN, nothing deleted. " if rules.dry_run else "")
        + f"Teardown pass at {rules.now:%Y-%m-%d %H:%M} UTC: "
        + (", ".join(f"{n} {o}" for o, n in counts.items() if n)
           or "no managed endpoint in the workspace")
        + f". Rules: idle {rules.idle_hours:g} h, grace {rules.grace_minutes:g} min, "
        f"at most {rules.max_deletions} deletion(s) per run. Estimated saving "
        f"{known:.2f} USD/hour" + (f" (+{unknown} of unknown price)" if unknown else "")
        + f" from illustrative list prices as of {prices.price_date} ({prices.source}); "
        "edit that file to match your prices."
    )


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
    request: TeardownRequest = TeardownRequest(),  # noqa: B008 - Prefect shows it as the form
    workspace_block: WorkspaceBlock = "",
) -> TeardownResult:
    """Delete idle managed endpoints and Failed deployments; report every decision.

    Args:
        request: the pass's rules (idle hours, grace period, cap, dry run).
        workspace_block: where to run, as a Prefect block: local-workspace/<name> or
            azure-ml-workspace/<name>. Leave empty for the embedded local workspace in
            $CHATFT_STATE_DIR (default ./.workspace).
    """
    logger = get_run_logger()
    dry_run = request.dry_run
    rules = TeardownRules(now=_utc(utc_now()), idle_hours=request.idle_hours,
                          grace_minutes=request.grace_minutes,
                          max_deletions=request.max_deletions_per_run, dry_run=dry_run)
    workspace = load_workspace(workspace_block)
    prices = load_prices(request.price_file)

    everything = list_endpoints(workspace)
    managed = sorted((e for e in everything if e.managed), key=_age_key)
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


# -- helpers -----------------------------------------------------------------------------
def _utc(moment: datetime) -> datetime:
    # A naive time from the UI or a test means UTC, as every workspace reports.
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _age_key(endpoint: Endpoint) -> tuple[float, str]:
    # Oldest first, so the cap spends its deletions on the longest-standing endpoints.
    created = _utc(endpoint.created_at).timestamp() if endpoint.created_at else float("inf")
    return created, endpoint.name


def _iso(moment: datetime | None) -> str:
    return _utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


def _duration(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    if minutes < 120:
        return f"{minutes} min"
    hours = minutes // 60
    return f"{hours} h" if hours < 48 else f"{hours // 24} d {hours % 24} h"


def _activity_text(activity: EndpointActivity) -> str:
    if not activity.available:
        return "unreadable"
    parts = [f"{caller} {count}" for caller, count in sorted(activity.requests_by_caller.items())]
    return ", ".join(parts) or "none"


def main(argv: list[str] | None = None) -> None:
    request, workspace_block = parse_request(
        TeardownRequest, "python -m flows.teardown_idle_endpoints", argv
    )
    result = teardown_idle_endpoints(request=request, workspace_block=workspace_block)
    for d in result.decisions:
        print(f"{d.outcome:13} {d.resource:40} {d.reason}")


if __name__ == "__main__":
    main()
