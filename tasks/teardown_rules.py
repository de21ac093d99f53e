"""The rules of ``teardown_idle_endpoints``: what is kept, what is deleted, and why.

Pure decisions on what the workspace reported (no task, no workspace call), so the flow
reads as list, judge, delete, report, and the rules can be read on their own;
docs/teardown-rules.md states them in words.

Example::

    rules = TeardownRules(now=datetime.now(UTC), idle_hours=24, grace_minutes=60,
                          max_deletions=10, dry_run=True)
    hold_reason(endpoint, rules)    # 'protected (tag chatft-protected='yes')', or None
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from tasks.teardown import PriceTable, format_usd
from workspaces.interface import (
    TAG_PROTECTED,
    TAG_ROLLOUT_SINCE,
    TAG_ROLLOUT_STEP,
    TAG_ROLLOUT_TO,
    Endpoint,
    EndpointActivity,
)
from workspaces.release_state import RecordedRelease

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
        """The start of the idle window: ``idle_hours`` before the pass."""
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
        """``endpoint`` or ``endpoint/deployment``, as the table and events name it."""
        return f"{self.endpoint}/{self.deployment}" if self.deployment else self.endpoint


class TeardownResult(BaseModel):
    """What one pass decided and did; the same rows as the ``teardown-decisions`` artifact."""

    now: datetime
    dry_run: bool
    decisions: list[Decision]

    def named(self, outcome: str) -> list[str]:
        """The resources that ended with ``outcome`` (e.g. ``deleted``)."""
        return [d.resource for d in self.decisions if d.outcome == outcome]


# -- rules -------------------------------------------------------------------------------
def is_protected(endpoint: Endpoint) -> bool:
    """Whether the protection tag is set (any value but false/0/no/off protects)."""
    value = endpoint.tags.get(TAG_PROTECTED)
    return value is not None and value.strip().lower() not in NOT_PROTECTED_VALUES


def hold_reason(endpoint: Endpoint, rules: TeardownRules) -> str | None:
    """Why the endpoint is kept without even reading its activity, or None."""
    if is_protected(endpoint):
        return f"protected (tag {TAG_PROTECTED}={endpoint.tags[TAG_PROTECTED]!r})"
    recorded = RecordedRelease.of(endpoint.tags)
    if recorded.occupied:
        # Deleting it would cut the release in two: its run, a re-run or the smoke test
        # (once the run is over) ends it; a held one waits for a person.
        return (f"a rollout is under way (step {recorded.step} since "
                f"{endpoint.tags.get(TAG_ROLLOUT_SINCE, 'unknown')}"
                + (": it waits for a person to promote or abort it" if recorded.step == "held"
                   else ": its run finishes it, or the smoke test once the run is over")
                + ")")
    if endpoint.provisioning_state in CHANGING_STATES:
        return f"endpoint is {endpoint.provisioning_state}; the next pass decides"
    changing = [d.name for d in endpoint.deployments if d.provisioning_state in CHANGING_STATES]
    if changing:
        return f"deployment {', '.join(changing)} is being provisioned; the next pass decides"
    if endpoint.created_at is None:
        return "creation time unknown, so the grace period cannot be checked"
    age = rules.now - as_utc(endpoint.created_at)
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


def leftover_deployment_rows(endpoint: Endpoint, prices: PriceTable) -> list[Decision]:
    """Rows naming working deployments that take no traffic: kept after a promotion, or
    left by a rollout that ended badly. Reported, never deleted: a person decides."""
    rows = []
    releasing = endpoint.tags.get(TAG_ROLLOUT_TO)
    for deployment in endpoint.deployments:
        if (deployment.provisioning_state != "Succeeded"
                or endpoint.traffic.get(deployment.name, 0) > 0
                or deployment.name == releasing and endpoint.tags.get(TAG_ROLLOUT_STEP) != "done"):
            continue
        rows.append(Decision(
            endpoint=endpoint.name, deployment=deployment.name, delete=False,
            reason="leftover: takes no traffic and still costs (kept after a promotion, or "
            "left by a rollout); delete it if it is not wanted",
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
    if row.delete:
        return [row]
    return [row, *failed_deployment_rows(endpoint, prices),
            *leftover_deployment_rows(endpoint, prices)]


# -- report ------------------------------------------------------------------------------
def table_rows(decisions: list[Decision], rules: TeardownRules) -> list[dict[str, str]]:
    """The rows of the ``teardown-decisions`` table, one per endpoint or failed deployment."""
    saving = (DELETED, WOULD_DELETE)
    return [{
        "endpoint": d.endpoint,
        "deployment": d.deployment or "(whole endpoint)",
        "decision": d.outcome,
        "reason": d.reason + (f" -- error: {d.error}" if d.error else ""),
        "last organic request": iso(d.last_organic_request_at)
        or ("none in window" if d.activity != "not read" else "not read"),
        "requests in window": d.activity,
        "age": _duration(rules.now - as_utc(d.created_at)) if d.created_at else "unknown",
        "instances": d.instances,
        "est. USD/hour": format_usd(d.usd_per_hour),
        "est. USD/hour saved": format_usd(d.usd_per_hour) if d.outcome in saving else "-",
    } for d in decisions]


def summary_text(result: TeardownResult, rules: TeardownRules, prices: PriceTable) -> str:
    """One paragraph: the counts, the rules of the pass and the estimated saving."""
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


# -- times -----------------------------------------------------------------------------
def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive time (from the UI or a test) means UTC, as every
    workspace reports."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def oldest_first(endpoint: Endpoint) -> tuple[float, str]:
    """Sort key: oldest first, so the cap spends its deletions on the longest-standing
    endpoints."""
    created = as_utc(endpoint.created_at).timestamp() if endpoint.created_at else float("inf")
    return created, endpoint.name


def iso(moment: datetime | None) -> str:
    """``2026-12-05 11:00:00 UTC``, or "" for no time."""
    return as_utc(moment).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else ""


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


