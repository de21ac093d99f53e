"""The tasks of a release onto a live endpoint: its pre-flight, its recorded steps, the watch.

The orchestration (which step follows which, and how a re-run resumes) is in
flows/rollout.py; docs/rollout.md tells the whole procedure. Every write that moves
traffic also records the rollout's step in the endpoint's tags, in the same request, so
what the endpoint says and what it does never disagree, whoever reads it after a crash.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.endpoint_probes import ProbeResult, SmokeTarget, probe_once, probe_target
from tasks.endpoints import DELETE_POLL_MAX_DELAY_S
from tasks.policies import transient_retries
from tasks.release_history import record_release
from tasks.waiting import poll_until
from workspaces.errors import InvalidRequest, OwnershipConflict, ResourceNotFound
from workspaces.interface import (
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_ROLLOUT_REQUEST,
    TAG_ROLLOUT_RUN,
    TAG_ROLLOUT_STEP,
    TAG_STAGE,
    Endpoint,
    Workspace,
)
from workspaces.ownership import claim_for_rollout
from workspaces.release_history import ReleaseEvent
from workspaces.release_state import (
    ROLLBACK_PREFIX,
    RecordedRelease,
    RolloutStep,
    allowed,
    live_shares,
    release_tags,
)
from workspaces.scoring import normalize_answer


class WatchLimits(BaseModel):
    """How the canary is watched and judged (the request's ``rollout`` settings)."""

    canary_percent: int
    watch_seconds: float
    watch_requests: int
    max_error_rate: float
    max_latency_ratio: float
    exact_answer_margin: float = Field(
        0.0, description="How far the new deployment's live exact-answer rate may fall "
        "below the current one's on the same probes (the gate's margin)")


class RolloutPlan(BaseModel):
    """Where a canary release starts from, as the pre-flight found the endpoint."""

    endpoint_exists: bool
    current_deployment: str | None = Field(
        None, description="The deployment serving the model in production now, if any"
    )
    current_model: str | None = None
    current_version: str | None = None
    new_deployment: str
    resume_step: str | None = Field(
        None, description="This request's own rollout found on the endpoint, at this step"
    )


def production_deployment(workspace: Workspace, endpoint: Endpoint) -> str | None:
    """The deployment that serves production: what the release recorded on the endpoint,
    else the one deployment taking live traffic, else the one whose model version the
    registry names production. Never a share or a name order: a held 50/50 canary is not
    production.

    Raises:
        InvalidRequest: live traffic is split and nothing says which deployment serves
            production (a hand edit); the message says how to settle it.
    """
    live = sorted(live_shares(endpoint.traffic))
    deployments = {d.name for d in endpoint.deployments}
    recorded = RecordedRelease.of(endpoint.tags)
    named = recorded.production()
    if named and (named in live or recorded.occupied and named in deployments):
        return named
    if len(live) <= 1:
        return live[0] if live else None
    staged = [name for name in live if _stage_of(workspace, endpoint, name) == "production"]
    if len(staged) == 1:
        return staged[0]
    raise InvalidRequest(
        f"endpoint_name: endpoint {endpoint.name} splits live traffic "
        f"{dict(sorted(endpoint.traffic.items()))} and "
        + ("no" if not staged else "more than one") + " deployment serves the registry's "
        "production version; route 100 % to the deployment that should serve, then release"
    )


def _stage_of(workspace: Workspace, endpoint: Endpoint, deployment: str) -> str | None:
    tags = endpoint.tags_of(deployment)
    name, version = tags.get(TAG_MODEL), tags.get(TAG_MODEL_VERSION)
    if not name or not version:
        return None
    model = workspace.get_model(name, version)
    return model.tags.get(TAG_STAGE) if model is not None else None


def canary_deployment_name(deployment_name: str, suffix: str) -> str:
    """``<deployment_name>-<suffix>``: a new name per release, within Azure's 32 characters."""
    return f"{deployment_name[:21].rstrip('-')}-{suffix}"


# Not cached: the endpoint can change between runs (another release, a teardown).
@task(name="check-rollout-target", cache_policy=NO_CACHE, **transient_retries())
def check_rollout_target(
    workspace: Workspace,
    endpoint_name: str | None,
    model_name: str,
    request_id: str,
    new_deployment: str,
    mirror_percent: int,
    delete_endpoint: bool,
) -> RolloutPlan:
    """Refuse, before any training, a canary that cannot be carried out; else say where
    it starts from.

    Raises:
        InvalidRequest: naming the field: no endpoint_name, an endpoint this project does
            not manage or that serves another base model family, another request's rollout
            under way, mirroring on a workspace without it, delete_endpoint with a canary.
    """
    if not endpoint_name:
        raise InvalidRequest(
            "endpoint_name: rollout.strategy canary releases onto a named endpoint; name the "
            "endpoint your applications call (or use rollout.strategy new-endpoint)"
        )
    if delete_endpoint:
        raise InvalidRequest(
            "delete_endpoint: a canary release keeps the endpoint serving; it cannot also "
            "delete it (set delete_endpoint=false)"
        )
    if mirror_percent and workspace.kind != "azure":
        raise InvalidRequest(
            f"rollout.mirror_percent: mirrored traffic is an Azure ML feature; the "
            f"{workspace.kind} workspace has none (allowed here: 0)"
        )
    endpoint = workspace.get_endpoint(endpoint_name)
    if endpoint is None:
        return RolloutPlan(endpoint_exists=False, new_deployment=new_deployment)
    if not endpoint.managed:
        raise InvalidRequest(
            f"endpoint_name: endpoint {endpoint_name} is not managed by this project (it has "
            "no managed-by=chat-finetune-flows tag); a canary goes only onto an endpoint this "
            "project made"
        )
    try:  # the claim's own refusal, said before training
        claim_for_rollout(f"endpoint {endpoint_name}", endpoint.tags, request_id)
    except OwnershipConflict as exc:
        raise InvalidRequest(f"endpoint_name: {exc}") from None
    current = production_deployment(workspace, endpoint)
    tags = endpoint.tags_of(current)
    serves = tags.get(TAG_MODEL)
    if current and serves and serves != model_name:
        raise InvalidRequest(
            f"endpoint_name: endpoint {endpoint_name} serves {serves}, a model of another base "
            f"family than this request's ({model_name}); a canary compares models of one "
            "family: choose that family's foundation_model, or another endpoint_name"
        )
    mine = endpoint.tags.get(TAG_ROLLOUT_REQUEST) == request_id
    return RolloutPlan(
        endpoint_exists=True,
        current_deployment=current,
        current_model=serves if current else None,
        current_version=tags.get(TAG_MODEL_VERSION) if current else None,
        new_deployment=new_deployment,
        resume_step=endpoint.tags.get(TAG_ROLLOUT_STEP) if mine else None,
    )


# Not cached: quota changes with everything else running in the subscription.
@task(name="check-canary-room", cache_policy=NO_CACHE, **transient_retries())
def check_canary_room(workspace: Workspace, instance_type: str, instance_count: int) -> None:
    """Refuse, before training, a canary the workspace has no quota to run beside the
    deployment that serves now.

    Raises:
        QuotaExceeded: naming the vCPUs needed and free, and what to do.
    """
    from workspaces.errors import QuotaExceeded
    from workspaces.failure_advice import QUOTA_ADVICE

    problem = workspace.serving_quota_problem(instance_type, instance_count)
    if problem:
        raise QuotaExceeded(
            f"rollout: {problem}. {QUOTA_ADVICE}; or choose a smaller instance_type or "
            "instance_count, or release with rollout.strategy new-endpoint (a new endpoint "
            "once the old one is deleted)")


class ReleaseCursor(BaseModel):
    """One release as its driver (a run, a re-run, the recovery) last saw it on the endpoint.

    Every write states what it expects (the recorded step and run, the live shares) and is
    refused when the endpoint says otherwise: a person's traffic change, another run.
    """

    endpoint: str
    request_id: str
    run: str = Field(description="The flow run that moves the release now")
    old: str | None = Field(None, description="The deployment it started from")
    new: str
    keep_previous: bool = False
    step: str | None = Field(None, description="The step recorded when last seen")
    recorded_run: str | None = Field(None, description="The run recorded when last seen")
    traffic: dict[str, int] = Field(default_factory=dict, description="Live shares last seen")
    recovery: bool = Field(False, description="Moved by the scheduled recovery, for the "
                           "request the endpoint records (no ownership of its own)")
    actor: str = Field("", description="Who asked for the release, for its history")
    reused: bool = Field(False, description="The new deployment existed before the release "
                         "(a rollback onto a kept one): never deleted by its undoing")

    @classmethod
    def seen(cls, endpoint: Endpoint, **fields: Any) -> ReleaseCursor:
        """A cursor at what ``endpoint`` records now."""
        return cls(endpoint=endpoint.name, **fields).at(endpoint)

    @classmethod
    def recorded(cls, endpoint: Endpoint, run: str, actor: str = "",
                 recovery: bool = False) -> ReleaseCursor:
        """A cursor for the release ``endpoint`` records (its request, deployments and
        settings), moved by ``run``: a person's action, or the recovery."""
        r = RecordedRelease.of(endpoint.tags)
        return cls.seen(endpoint, request_id=r.request or "", run=run, recovery=recovery,
                        old=r.from_deployment, new=r.to_deployment or "",
                        keep_previous=r.keep_previous, reused=r.reused, actor=actor)

    def at(self, endpoint: Endpoint) -> ReleaseCursor:
        """This cursor once ``endpoint`` is what its own write returned."""
        recorded = RecordedRelease.of(endpoint.tags)
        return self.model_copy(update={"step": recorded.step, "recorded_run": recorded.run,
                                       "traffic": live_shares(endpoint.traffic)})


@task(name="record-rollout-step", task_run_name="rollout-{step}", cache_policy=NO_CACHE,
      **transient_retries())
def record_step(
    workspace: Workspace,
    cursor: ReleaseCursor,
    step: RolloutStep,
    traffic: dict[str, int] | None = None,
    mirror: dict[str, int] | None = None,
    claim: bool = False,
    reason: str = "",
    check_traffic: bool = True,
    ending: str = "",
) -> Endpoint:
    """Move traffic (or not) and record the release's ``step`` on the endpoint, in one write.

    The write is refused (``ConcurrentChange``) unless the endpoint still records the step
    and run the cursor last saw and (with ``check_traffic``) its live shares; ``step`` must
    be a move :data:`workspaces.release_state.TRANSITIONS` allows. ``claim`` makes the
    endpoint this request's, refused while another request's release is under way or held.
    """
    if not allowed(cursor.step, step):
        raise InvalidRequest(f"a release recorded at step {cursor.step} cannot move to {step}")
    endpoint = workspace.set_traffic(
        cursor.endpoint, traffic, owner=None if cursor.recovery else cursor.request_id,
        mirror=mirror, claim=claim,
        tags=release_tags(cursor.request_id, step, cursor.old, cursor.new, cursor.run,
                          cursor.keep_previous, reason, ending, cursor.reused),
        expect={TAG_ROLLOUT_STEP: cursor.step or "", TAG_ROLLOUT_RUN: cursor.recorded_run or ""},
        expect_traffic=cursor.traffic if check_traffic else None,
    )
    get_run_logger().info(
        "Rollout on %s: step %s, traffic %s%s", cursor.endpoint, step, endpoint.traffic,
        f", mirrored {mirror}" if mirror else "",
    )
    return endpoint


def remove_deployment(
    workspace: Workspace, endpoint_name: str, name: str, timeout_minutes: float = 30
) -> bool:
    """Delete one deployment and wait until it is gone; False when it was gone already."""
    try:
        workspace.begin_delete_deployment(endpoint_name, name)
    except ResourceNotFound:
        return False
    poll_until(
        lambda: workspace.deletion_finished(endpoint_name, name), bool, timeout_minutes * 60,
        f"deletion of deployment {name} of endpoint {endpoint_name}",
        max_delay_s=DELETE_POLL_MAX_DELAY_S,
    )
    return True


@task(name="delete-deployment", cache_policy=NO_CACHE, **transient_retries())
def delete_deployment(
    workspace: Workspace, endpoint_name: str, name: str, timeout_minutes: float = 30
) -> bool:
    """The task of :func:`remove_deployment`, saying what it deleted."""
    deleted = remove_deployment(workspace, endpoint_name, name, timeout_minutes)
    if deleted:
        get_run_logger().info("Deleted deployment %s of endpoint %s", name, endpoint_name)
    return deleted


@task(name="check-deployment-contract", cache_policy=NO_CACHE)
def check_contract(
    workspace: Workspace, endpoint_name: str, deployment: str, bodies: list[dict[str, Any]],
    timeout_s: float,
) -> list[ProbeResult]:
    """The smoke test's contract checks, sent to one deployment by its header (0 % traffic)."""
    target = SmokeTarget(endpoint=endpoint_name, deployment=deployment)
    results = probe_target(workspace, target, bodies, timeout_s)
    logger = get_run_logger()
    for result in results:
        (logger.info if result.ok else logger.warning)(
            "Contract check of %s/%s: %s in %s ms %s", endpoint_name, deployment,
            result.status, result.latency_ms, result.reason)
    return results


class DeploymentFigures(BaseModel):
    """What one deployment did while the canary was watched."""

    deployment: str
    role: str = Field(description="current or new")
    requests: int = 0
    errors: int = 0
    median_latency_ms: float | None = None
    probes: int = 0
    probe_errors: int = 0
    broken_replies: int = Field(
        0, description="Answers with a success status that broke the scoring contract "
        "(an empty or malformed reply): errors whatever their status")
    source: str = ""
    exact_answers: int = Field(0, description="Probes with a known answer it answered exactly")
    judged_answers: int = Field(0, description="Probes with a known answer it answered")

    @property
    def exact_answer_rate(self) -> float | None:
        """Exact answers over answered probes with a known answer (None: none answered)."""
        return self.exact_answers / self.judged_answers if self.judged_answers else None

    @property
    def error_rate(self) -> float:
        """Errors over requests (0 when there were none)."""
        return self.errors / self.requests if self.requests else 0.0


class WatchVerdict(BaseModel):
    """The canary's figures and whether they allow promotion."""

    healthy: bool
    seconds: float
    share: int
    current: DeploymentFigures | None
    new: DeploymentFigures
    reasons: list[str]
    interrupted: str | None = Field(
        None, description="A traffic change the release did not make, which stopped the watch")


def _figures(
    name: str, role: str, probes: list[ProbeResult], activity: Any,
    answers: dict[int, str] | None = None,
) -> DeploymentFigures:
    """A deployment's figures: from the workspace's per-deployment log when it keeps one
    (real traffic and probes together), else from the probes' own results. ``answers``
    holds the reference answer of each probe (by its index in ``probes``) that has one."""
    mine = [p for p in probes if p.deployment == name]
    judged = [(p, answers[i]) for i, p in enumerate(probes)
              if p.deployment == name and p.ok and (answers or {}).get(i)]
    failed = [p for p in mine if not p.ok and not _caller_fault(p)]
    # The request log counts server errors by status; a 200 whose reply breaks the
    # contract is an error to a user all the same.
    broken = [p for p in failed if p.http_status is not None and p.http_status < 400]
    figures = DeploymentFigures(
        deployment=name, role=role, probes=len(mine), probe_errors=len(failed),
        broken_replies=len(broken), judged_answers=len(judged),
        exact_answers=sum(normalize_answer(p.reply_excerpt) == normalize_answer(answer)
                          for p, answer in judged))
    if activity is not None and activity.available and name in activity.latency_ms_by_deployment:
        figures.requests = activity.requests_by_deployment.get(name, 0)
        figures.errors = activity.errors_by_deployment.get(name, 0) + len(broken)
        figures.median_latency_ms = activity.latency_ms_by_deployment[name]
        figures.source = "request log"
    else:
        figures.requests, figures.errors = len(mine), len(failed)
        answered = [p.latency_ms for p in mine if p.ok and p.latency_ms is not None]
        figures.median_latency_ms = statistics.median(answered) if answered else None
        figures.source = "probes"
    return figures


def _caller_fault(probe: ProbeResult) -> bool:
    # Throttling (429) says the deployment is busy, not broken; it is not an error here.
    return probe.status == "throttled_429"


@task(name="watch-canary", cache_policy=NO_CACHE)
def watch_canary(
    workspace: Workspace,
    endpoint_name: str,
    current: str | None,
    new: str,
    bodies: list[dict[str, Any]],
    settings: WatchLimits,
    timeout_s: float = 60.0,
    expected_traffic: dict[str, int] | None = None,
    answers: list[str] | None = None,
) -> WatchVerdict:
    """Watch both deployments under the canary share, then judge the new one.

    Real traffic is split by the endpoint; probes (one at a time, by deployment header)
    make up what it does not bring, until each deployment has answered
    ``watch_requests`` requests and ``watch_seconds`` have passed (at most three times
    that long, and a minute, when requests stay scarce).
    """
    logger = get_run_logger()
    start_wall = datetime.now(UTC)
    started = time.monotonic()
    deadline = settings.watch_seconds * 3 + 60
    names = [n for n in (current, new) if n]
    probes: list[ProbeResult] = []
    asked: dict[int, int] = {}  # probe -> the body it sent, for those with an answer
    turn = 0
    checked = started
    interrupted = None
    while True:
        elapsed = time.monotonic() - started
        seen = {n: sum(p.deployment == n for p in probes) for n in names}
        wanting = [n for n in names if seen[n] < settings.watch_requests]
        done = (elapsed >= settings.watch_seconds and not wanting) or elapsed >= deadline
        if expected_traffic is not None and (done or time.monotonic() - checked
                                             >= TRAFFIC_CHECK_S):
            checked = time.monotonic()
            interrupted = traffic_change(workspace, endpoint_name, expected_traffic)
            if interrupted:
                break
        if done:
            break
        if not wanting:
            time.sleep(min(1.0, settings.watch_seconds - elapsed))
            continue
        name = wanting[turn % len(wanting)]
        index = seen[name] % len(bodies)  # each deployment gets the same sequence
        turn += 1
        if answers and index < len(answers) and answers[index]:
            asked[len(probes)] = index
        probes.append(probe_once(
            workspace, SmokeTarget(endpoint=endpoint_name, deployment=name), bodies[index],
            timeout_s))
    seconds = time.monotonic() - started
    if interrupted:
        logger.warning("Canary: the watch stopped: %s", interrupted)
    try:
        activity = workspace.get_endpoint_activity(endpoint_name, start_wall, datetime.now(UTC))
    except Exception as exc:  # noqa: BLE001 - the probes' own results still judge
        logger.warning("Could not read the activity of %s (%s); judging on the probes alone",
                       endpoint_name, exc)
        activity = None
    expected = {probe: answers[index] for probe, index in asked.items()} if answers else {}
    new_figures = _figures(new, "new", probes, activity, expected)
    current_figures = (_figures(current, "current", probes, activity, expected)
                       if current else None)
    healthy, reasons = _judge(new_figures, current_figures, settings, seconds, interrupted,
                              len(set(asked.values())))
    for line in reasons:
        (logger.info if line.startswith("pass") else logger.warning)("Canary: %s", line)
    return WatchVerdict(healthy=healthy, seconds=round(seconds, 1), share=settings.canary_percent,
                        current=current_figures, new=new_figures, reasons=reasons,
                        interrupted=interrupted)


def _judge(
    new: DeploymentFigures, current: DeploymentFigures | None, settings: WatchLimits,
    seconds: float, interrupted: str | None, questions: int,
) -> tuple[bool, list[str]]:
    """Whether the new deployment is healthy on the watch's figures, with every reason
    (``pass ...``, ``FAIL ...`` or ``note ...``); ``questions`` with a known answer."""
    reasons = [f"FAIL {interrupted}"] if interrupted else []
    healthy = not interrupted
    if new.broken_replies:
        reasons.append(f"note {new.broken_replies} answer(s) of the new deployment "
                       "broke the scoring contract with a success status; counted as errors")
    if new.requests < settings.watch_requests:
        healthy = False
        reasons.append(f"FAIL the new deployment answered {new.requests} request(s) in "
                       f"{seconds:.0f} s; {settings.watch_requests} were needed to judge it")
    rate = new.error_rate
    ok = rate <= settings.max_error_rate
    healthy &= ok
    reasons.append(f"{'pass' if ok else 'FAIL'} error rate {rate:.1%} "
                   f"({new.errors}/{new.requests}), needs <= "
                   f"{settings.max_error_rate:.1%}")
    base = current.median_latency_ms if current else None
    if base and new.median_latency_ms is not None:
        ratio = new.median_latency_ms / base
        ok = ratio <= settings.max_latency_ratio
        healthy &= ok
        reasons.append(f"{'pass' if ok else 'FAIL'} median latency {ratio:.2f}x the current "
                       f"deployment's ({new.median_latency_ms:.0f} ms / {base:.0f} ms), "
                       f"needs <= {settings.max_latency_ratio:g}x")
    elif new.median_latency_ms is None:
        healthy = False
        reasons.append("FAIL the new deployment answered no request successfully")
    quality = _quality(current, new, settings.exact_answer_margin, questions)
    if quality:
        healthy &= quality.startswith("pass")
        reasons.append(quality)
    return healthy, reasons


def _quality(current: DeploymentFigures | None, new: DeploymentFigures,
             margin: float, questions: int) -> str | None:
    """The live quality check: exact answers of both on the same probes, or None when there
    is nothing to compare. One question's worth of slack (of the ``questions`` distinct
    ones asked): a handful of probes is not the gate's held-out set, and one flip is not a
    worse model."""
    if current is None or new.exact_answer_rate is None or current.exact_answer_rate is None:
        return None
    slack = margin + 1 / max(1, min(questions, new.judged_answers, current.judged_answers))
    ok = new.exact_answer_rate >= current.exact_answer_rate - slack
    return (f"{'pass' if ok else 'FAIL'} live exact answers {new.exact_answers}/"
            f"{new.judged_answers} against the current deployment's {current.exact_answers}/"
            f"{current.judged_answers} on the same probes, needs >= "
            f"{max(0.0, current.exact_answer_rate - slack):.0%}")


# How often the watch reads the endpoint for a traffic change it did not make (one GET on
# Azure each time).
TRAFFIC_CHECK_S = 10.0


def traffic_change(workspace: Workspace, endpoint_name: str,
                   expected: dict[str, int]) -> str | None:
    """What changed in the endpoint's live shares against ``expected``; None when nothing."""
    endpoint = workspace.get_endpoint(endpoint_name)
    now = live_shares(endpoint.traffic) if endpoint is not None else {}
    wanted = live_shares(expected)
    if endpoint is None:
        return f"endpoint {endpoint_name} was deleted during the watch"
    if now != wanted:
        return (f"the traffic of {endpoint_name} was changed during the watch by someone "
                f"else: it is {now or 'none'}, the release had set {wanted}")
    return None


# -- the ends of a release, shared by the run, its re-run and the recovery ---------------
def deployment_model(endpoint: Endpoint | None, name: str | None) -> tuple[str, str] | None:
    """The model name and version a deployment was made with (its own tags), if known."""
    deployment = next((d for d in (endpoint.deployments if endpoint else []) if d.name == name),
                      None)
    if deployment is None:
        return None
    model, version = deployment.tags.get(TAG_MODEL), deployment.tags.get(TAG_MODEL_VERSION)
    return (model, version) if model and version else None


def _set_stage(workspace: Workspace, model: tuple[str, str] | None, stage: str,
               tags: dict[str, str] | None = None, only_from: str | None = None) -> None:
    if model is None:
        return
    try:
        if only_from is not None:
            found = workspace.get_model(*model)
            if found is None or found.tags.get(TAG_STAGE) != only_from:
                return
        workspace.set_model_stage(model[0], model[1], stage, tags)  # type: ignore[arg-type]
    except (ResourceNotFound, NotImplementedError):
        pass


def _event(cursor: ReleaseCursor, action: str, model: tuple[str, str] | None, reason: str,
           figures: dict[str, str] | None, previous: str | None) -> ReleaseEvent:
    return ReleaseEvent(
        endpoint=cursor.endpoint, action=action, request=cursor.request_id,  # type: ignore[arg-type]
        model=model[0] if model else "", version=model[1] if model else "",
        deployment=cursor.new, previous=previous or "", reason=reason[:500],
        figures=figures or {}, actor=cursor.actor)


def finish_promotion(
    workspace: Workspace, cursor: ReleaseCursor, timeout_minutes: float = 30,
    after_delete: Callable[[], None] | None = None, model: tuple[str, str] | None = None,
    why: str = "", figures: dict[str, str] | None = None, action: str = "promoted",
) -> tuple[Endpoint, str | None]:
    """From ``promoted``: the new model (``model``, else the one its deployment was made
    with) is production, the old one retired, the old deployment deleted (unless kept),
    the release ``done`` and in the endpoint's history as ``action`` with ``why``.
    Returns the endpoint and the retired model as name:version."""
    endpoint = workspace.get_endpoint(cursor.endpoint)
    new_model = model or deployment_model(endpoint, cursor.new)
    old_model = deployment_model(endpoint, cursor.old)
    _set_stage(workspace, new_model, "production")
    _set_stage(workspace, old_model, "retired", only_from="production")
    if cursor.old and not cursor.keep_previous and cursor.old != cursor.new:
        delete_deployment(workspace, cursor.endpoint, cursor.old, timeout_minutes)
        if after_delete is not None:
            after_delete()
    endpoint = record_step(workspace, cursor, "done", check_traffic=False)
    retired = ":".join(old_model) if old_model else None
    record_release(workspace, _event(cursor, action, new_model, why, figures,
                                     retired or cursor.old))
    return endpoint, retired


# Who withdrew a model, on the model version: a rollback may go back to a version a person
# aborted or whose run died, never to one the gate or its canary found at fault.
TAG_REJECTED_BY = "chatft-rejected-by"
REJECTED_BY = {"canary-failed": "canary", "aborted": "person", "undone": "recovery"}


def finish_rollback(
    workspace: Workspace, cursor: ReleaseCursor, reason: str,
    figures: dict[str, str] | None = None, timeout_minutes: float = 30,
    model: tuple[str, str] | None = None, action: str = "canary-failed",
) -> Endpoint:
    """From ``rolled-back`` (or a claim that never took traffic): the new model (``model``,
    else the one its deployment was made with) is tagged rejected with the reason (a
    rollback's earlier version goes back to retired instead: it served well before), its
    deployment deleted unless it still takes live traffic, the release ``undone`` and in
    the endpoint's history as ``action``."""
    endpoint = workspace.get_endpoint(cursor.endpoint)
    withdrawn = model or deployment_model(endpoint, cursor.new)
    earlier = cursor.request_id.startswith(ROLLBACK_PREFIX)
    _set_stage(workspace, withdrawn, "retired" if earlier else "rejected",
               {"chatft-rollback-reason": reason[:250], **(figures or {}),
                **({} if earlier else {TAG_REJECTED_BY: REJECTED_BY.get(action, action)})})
    live = live_shares(endpoint.traffic) if endpoint is not None else {}
    if cursor.new != cursor.old and not cursor.reused and not live.get(cursor.new):
        delete_deployment(workspace, cursor.endpoint, cursor.new, timeout_minutes)
    endpoint = record_step(workspace, cursor, "undone", check_traffic=False, reason=reason)
    record_release(workspace, _event(cursor, action, withdrawn, reason, figures, ":".join(
        deployment_model(endpoint, cursor.old) or ()) or cursor.old))
    return endpoint
