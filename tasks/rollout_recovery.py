"""Ending the releases whose run died: what the scheduled smoke test does before it probes.

A release records its flow run on the endpoint (flows/rollout.py). A release is settled
only once that run is over: in a final state on the Prefect server, or silent past the
liveness bound (tasks/liveness.py). A live run's release is never touched. A dead run's
is taken through the same moves a run takes (workspaces/release_state.py):

- ``deploying``, ``mirror``, ``canary``: undone. All live traffic goes back to the
  deployment the release started from (in the write that records ``rolled-back``), the new
  deployment is deleted, its model version tagged rejected, and ``chatft.rollout.rolled-back``
  notifies through the smoke test's automation. A first release (nothing to go back to)
  loses its deployment, which took no traffic, and the endpoint waits for the next one.
- ``rolled-back``: the new deployment is deleted.
- ``promoted``: the new model is production, the old one retired, the old deployment
  deleted (unless the release asked to keep it).
- ``held``: a person's; listed with its age, never changed. One older than the smoke
  test's ``held_alert_hours`` (a day by default) is reported once, by the event
  ``chatft.release.held-too-long``, which the notification automation sends.

When the deployment a release started from is gone (a hand edit), nothing is undone: the
release is held for a person, with the reason. An endpoint that cannot be settled gets a
row with the reason and what fixes it; every other endpoint is still settled and probed.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run
from pydantic import BaseModel

from tasks import reports
from tasks.liveness import run_liveness
from tasks.rollout import ReleaseCursor, finish_promotion, finish_rollback, record_step
from workspaces.interface import TAG_ROLLOUT_RUN, TAG_ROLLOUT_STEP, Endpoint, Workspace
from workspaces.release_state import RUN_DIED, RecordedRelease


class SettledRollout(BaseModel):
    """What a pass found and did on one endpoint's release."""

    endpoint: str
    step: str
    action: str
    settled: bool = True


def _age(since: datetime | None) -> str:
    if since is None:
        return "since an unknown time"
    hours = (datetime.now(UTC) - since).total_seconds() / 3600
    return f"since {since.isoformat(timespec='minutes')} ({hours:.1f} h)"


# Endpoint tag: the ``since`` of the held release already reported as too old, so the
# notification goes out once per hold, not once per smoke test.
TAG_HELD_REPORTED = "chatft-held-reported"


def _report_held(workspace: Workspace, endpoint: Endpoint, recorded: RecordedRelease,
                 limit_hours: float) -> str:
    """A hold older than ``limit_hours``: ``chatft.release.held-too-long`` once (the
    endpoint remembers it in a tag written only while the hold is unchanged)."""
    if recorded.since is None:
        return ""
    hours = (datetime.now(UTC) - recorded.since).total_seconds() / 3600
    if hours < limit_hours:
        return ""
    since = recorded.since.isoformat(timespec="seconds")
    if endpoint.tags.get(TAG_HELD_REPORTED) == since:
        return f"; older than {limit_hours:g} h (reported already)"
    workspace.set_traffic(endpoint.name, None, tags={TAG_HELD_REPORTED: since}, expect={
        TAG_ROLLOUT_STEP: "held", TAG_ROLLOUT_RUN: recorded.run or ""})
    reports.emit("release.held-too-long", endpoint.name, workspace.kind, {
        "deployment": recorded.to_deployment, "serving": recorded.from_deployment,
        "request": recorded.request, "since": since, "hours": round(hours, 1),
        "reason": recorded.reason, "limit_hours": limit_hours})
    return f"; older than {limit_hours:g} h: reported (chatft.release.held-too-long)"


def settle(workspace: Workspace, endpoint: Endpoint, this_run: str,
           held_limit_hours: float = 24.0) -> SettledRollout | None:
    """Finish or undo one release whose run is over (see the module docstring); None when
    the endpoint has no release in progress. A hold older than ``held_limit_hours`` is
    reported once."""
    recorded = RecordedRelease.of(endpoint.tags)
    step = recorded.step or ""
    if not recorded.occupied:
        return None
    if step == "held":
        reported = _report_held(workspace, endpoint, recorded, held_limit_hours)
        return SettledRollout(endpoint=endpoint.name, step=step, settled=True,
                              action=f"held for a person {_age(recorded.since)}"
                              + (f": {recorded.reason}" if recorded.reason else "")
                              + reported + "; promote or abort it with release-control")
    liveness = run_liveness(recorded.run, recorded.since)
    if liveness.alive:
        return SettledRollout(endpoint=endpoint.name, step=step,
                              action=f"under way, left alone: {liveness.why}")
    cursor = ReleaseCursor.recorded(
        endpoint, this_run, recovery=True,
        actor=f"the smoke test's recovery ({this_run}) for run {recorded.run or 'unknown'}")
    old, new = cursor.old, cursor.new
    deployments = {d.name for d in endpoint.deployments}
    if step == "promoted":
        _, retired = finish_promotion(
            workspace, cursor, action=recorded.ending or "promoted",
            why=recorded.reason or f"the promotion its run left was finished ({liveness.why})")
        return SettledRollout(endpoint=endpoint.name, step=step, action=(
            f"promotion finished ({liveness.why}): {new} serves; "
            + (f"old deployment {old} kept" if recorded.keep_previous or not old else
               f"old deployment {old} deleted") + (f", {retired} retired" if retired else "")))
    reason = f"{RUN_DIED} {new} died at step {step} ({liveness.why})"
    if step != "rolled-back" and old and old not in deployments:
        record_step(workspace, cursor, "held", check_traffic=False,
                    reason=f"the deployment it started from, {old}, is gone")
        return SettledRollout(
            endpoint=endpoint.name, step=step, settled=False,
            action=f"not undone: {reason}, and the deployment it started from, {old}, is gone "
            f"(changed by hand), so live traffic stays {cursor.traffic or 'none'}; held for a "
            "person: re-run the request to finish it, or route the traffic and delete the "
            "deployment you do not want")
    if step != "rolled-back" and old:
        cursor = cursor.at(record_step(workspace, cursor, "rolled-back", traffic={old: 100},
                                       mirror={} if workspace.kind == "azure" else None,
                                       reason=reason, ending="undone"))
    ending = "undone"
    if step == "rolled-back":  # decided before the run died: its own reason and end
        reason, ending = recorded.reason or reason, recorded.ending or "undone"
    finish_rollback(workspace, cursor, reason, action=ending)
    reports.emit("rollout.rolled-back", endpoint.name, workspace.kind, {
        "deployment": new, "restored": old, "reason": reason, "by": "smoke-test"})
    return SettledRollout(
        endpoint=endpoint.name, step=step,
        action=f"rolled back ({liveness.why}): {old or 'nothing'} takes all traffic, "
        + (f"deployment {new} kept at 0 % (it served before the release)" if recorded.reused
           else f"new deployment {new} deleted"))


def _settle_or_say(workspace: Workspace, endpoint: Endpoint, this_run: str,
                   held_limit_hours: float) -> SettledRollout | None:
    try:
        return settle(workspace, endpoint, this_run, held_limit_hours)
    except Exception as exc:  # noqa: BLE001 - one endpoint must not stop the others
        return SettledRollout(
            endpoint=endpoint.name, step=RecordedRelease.of(endpoint.tags).step or "",
            settled=False,
            action=f"could not be settled: {exc.__class__.__name__}: {str(exc)[:300]}. "
            "Re-run the request that started it to finish it, or route all traffic to the "
            "deployment that should serve and delete the other")


@task(name="settle-abandoned-rollouts", cache_policy=NO_CACHE)
def settle_abandoned_rollouts(workspace: Workspace, held_limit_hours: float = 24.0
                              ) -> tuple[list[Endpoint], list[SettledRollout]]:
    """Finish or undo every managed endpoint's release whose run is over.

    Returns the workspace's endpoints as they are afterwards (listed again only when a
    release was settled), so the caller does not list them, and every deployment of each,
    a second time (on Azure one request per endpoint); and one row per release found.
    """
    this_run = str(flow_run.get_id() or "smoke-test")
    endpoints = workspace.list_endpoints()
    rows = [row for endpoint in endpoints if endpoint.managed
            if (row := _settle_or_say(workspace, endpoint, this_run, held_limit_hours))
            is not None]
    logger = get_run_logger()
    changed = False
    for row in rows:
        changed |= row.action.startswith(("rolled back", "promotion finished", "not undone"))
        (logger.info if row.settled else logger.warning)(
            "Release on %s (step %s): %s", row.endpoint, row.step, row.action)
    if rows:
        create_markdown_artifact(
            key="rollout-recovery",
            markdown="## Releases in progress\n\n| endpoint | step | what was found or done "
            "|\n|---|---|---|\n" + "\n".join(
                f"| {r.endpoint} | {r.step} | {r.action.replace('|', '/')} |" for r in rows),
            description="Releases under way, held, or whose run died (finished or undone)",
        )
    return (workspace.list_endpoints() if changed else endpoints), rows
