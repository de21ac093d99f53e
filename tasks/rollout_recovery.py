"""Ending the rollouts whose run died: what the scheduled smoke test does before it probes.

A rollout records its step on the endpoint with an expiry (flows/rollout.py). A run that
is alive moves on before its step expires; one killed (kill -9, a lost worker) leaves the
step behind. Once it has expired:

- ``deploying``, ``mirror``, ``canary``: undone. All live traffic goes back to the
  deployment the rollout started from (in the write that records ``rolled-back``), the new
  deployment is deleted, its model version tagged rejected, and ``chatft.rollout.rolled-back``
  notifies through the smoke test's automation.
- ``rolled-back``: the new deployment is deleted.
- ``promoted``: the old deployment is deleted (unless the rollout asked to keep it).

Each ends in ``undone`` or ``done``, so a second pass, or the killed request's re-run,
finds nothing left to do.
"""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from tasks import reports
from tasks.policies import transient_retries
from tasks.rollout import remove_deployment, step_tags
from workspaces.errors import ResourceNotFound
from workspaces.interface import (
    ROLLOUT_ACTIVE_STEPS,
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_ROLLOUT_EXPIRES,
    TAG_ROLLOUT_FROM,
    TAG_ROLLOUT_KEEP_PREVIOUS,
    TAG_ROLLOUT_REQUEST,
    TAG_ROLLOUT_STEP,
    TAG_ROLLOUT_TO,
    Endpoint,
    Workspace,
)

UNDONE_STEPS = frozenset({"deploying", "mirror", "canary"})


class SettledRollout(BaseModel):
    """What a pass did to one endpoint's abandoned rollout."""

    endpoint: str
    step: str
    action: str


def parse_time(text: str) -> datetime | None:
    """An ISO time from a tag (UTC when it names no zone), None when it is not one."""
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def expired(endpoint: Endpoint, now: datetime) -> bool:
    """Whether the endpoint's rollout step is left over from a dead run."""
    if endpoint.tags.get(TAG_ROLLOUT_STEP) not in ROLLOUT_ACTIVE_STEPS:
        return False
    expires = parse_time(endpoint.tags.get(TAG_ROLLOUT_EXPIRES, ""))
    return expires is not None and expires <= now


def _delete(workspace: Workspace, endpoint: str, name: str | None) -> bool:
    return bool(name) and remove_deployment(workspace, endpoint, name)


def settle(workspace: Workspace, endpoint: Endpoint) -> SettledRollout:
    """Finish or undo one expired rollout (see the module docstring)."""
    tags = endpoint.tags
    step, request = tags[TAG_ROLLOUT_STEP], tags.get(TAG_ROLLOUT_REQUEST, "")
    old, new = tags.get(TAG_ROLLOUT_FROM) or None, tags.get(TAG_ROLLOUT_TO, "")
    deployments = {d.name: d for d in endpoint.deployments}
    if step == "promoted":
        keep = tags.get(TAG_ROLLOUT_KEEP_PREVIOUS) == "true"
        gone = not keep and _delete(workspace, endpoint.name, old)
        workspace.set_traffic(endpoint.name, None,
                              tags=step_tags(request, "done", old, new, None, keep))
        return SettledRollout(endpoint=endpoint.name, step=step,
                              action="promotion finished: " + (
                                  f"old deployment {old} deleted" if gone else
                                  f"old deployment {old or 'none'} kept"))
    if step in UNDONE_STEPS and old in deployments:
        workspace.set_traffic(endpoint.name, {old: 100},
                              mirror={} if workspace.kind == "azure" else None,
                              tags=step_tags(request, "rolled-back", old, new, None))
    dropped = _delete(workspace, endpoint.name, new) if new != old else False
    workspace.set_traffic(endpoint.name, None, tags=step_tags(request, "undone", old, new, None))
    model = deployments.get(new)
    if model is not None and model.tags.get(TAG_MODEL) and model.tags.get(TAG_MODEL_VERSION):
        try:
            workspace.set_model_stage(
                model.tags[TAG_MODEL], model.tags[TAG_MODEL_VERSION], "rejected",
                {"chatft-rollback-reason": f"its rollout was abandoned at step {step}"})
        except (ResourceNotFound, NotImplementedError):
            pass
    reason = f"the run releasing {new} died at step {step}; its rollout expired"
    reports.emit("rollout.rolled-back", endpoint.name, workspace.kind, {
        "deployment": new, "restored": old, "reason": reason, "by": "smoke-test"})
    return SettledRollout(
        endpoint=endpoint.name, step=step,
        action=f"rolled back: {old or 'nothing'} takes all traffic"
        + (f", new deployment {new} deleted" if dropped else ""))


@task(name="settle-abandoned-rollouts", cache_policy=NO_CACHE, **transient_retries())
def settle_abandoned_rollouts(workspace: Workspace) -> list[Endpoint]:
    """Finish or undo every managed endpoint's rollout whose run died (expired step).

    Returns the workspace's endpoints as they are afterwards (listed again only when a
    rollout was settled), so the caller does not list them, and every deployment of each,
    a second time (on Azure one request per endpoint).
    """
    now = datetime.now(UTC)
    endpoints = workspace.list_endpoints()
    settled = [settle(workspace, endpoint) for endpoint in endpoints
               if endpoint.managed and expired(endpoint, now)]
    logger = get_run_logger()
    for item in settled:
        logger.warning("Abandoned rollout on %s (step %s): %s", item.endpoint, item.step,
                       item.action)
    if settled:
        create_markdown_artifact(
            key="rollout-recovery",
            markdown="## Abandoned rollouts ended by this run\n\n| endpoint | step left | "
            "what was done |\n|---|---|---|\n" + "\n".join(
                f"| {s.endpoint} | {s.step} | {s.action} |" for s in settled),
            description="Rollouts whose run died, finished or undone",
        )
    return workspace.list_endpoints() if settled else endpoints
