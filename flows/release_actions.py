"""What a person can do to an endpoint's release: promote, abort, roll back.

Each action moves the release through the same state machine as a fine-tune's rollout
(workspaces/release_state.py, ``tasks.rollout.record_step``): every write states the step,
run and live shares it expects and is refused when the endpoint says otherwise, so an
action and a run (or two actions) never both land. The ends are the rollout's own
(``finish_promotion``, ``finish_rollback``), so the history, the model stages and the
recovery of a killed run are the same. docs/rollout.md, "Steering a release", tells it.
"""

from __future__ import annotations

import time

from prefect import get_run_logger

from flows.parameters import ReleaseControlRequest, RolloutParameters
from flows.rollout import (
    Release,
    ReleaseOutcome,
    claim,
    finish_promoting,
    promote,
    report_decision,
    try_and_watch,
)
from tasks.data import ensure_dataset
from tasks.endpoints import create_deployment
from tasks.rollout import (
    TAG_REJECTED_BY,
    ReleaseCursor,
    check_contract,
    deployment_model,
    finish_rollback,
    production_deployment,
    record_step,
)
from workspaces.errors import ConcurrentChange, InvalidRequest
from workspaces.interface import (
    TAG_DATASET,
    TAG_MODEL,
    TAG_STAGE,
    DeploymentSpec,
    Endpoint,
    RegisteredModel,
    Workspace,
    managed_tags,
)
from workspaces.release_history import TOOK_PRODUCTION
from workspaces.release_state import ROLLBACK_PREFIX, UNDER_WAY, RecordedRelease
from workspaces.ultrachat import SAMPLE_SOURCE

PROBE_DATASET_DIR = "release-control-dataset"

# A version rejected for one of these was at fault; a rollback never goes back to it.
FAULTS = frozenset({"gate", "canary"})


class Action:
    """One person's action on one endpoint, as the flow run that carries it out."""

    def __init__(self, workspace: Workspace, request: ReleaseControlRequest,
                 endpoint: Endpoint, this_run: str, actor: str) -> None:
        """``endpoint`` as read at the start; ``actor`` is who asked (for the history)."""
        self.workspace, self.request, self.endpoint = workspace, request, endpoint
        self.this_run, self.actor = this_run, actor
        self.recorded = RecordedRelease.of(endpoint.tags)
        self.probes: tuple[str, int] | None = None  # (test_gen file, seed) of a rollback

    def prepare_probes(self, model: RegisteredModel) -> None:
        """The held-out conversations a rollback's contract and canary probe with: the
        request's dataset, else the one the version was trained on."""
        dataset = self.request.dataset or model.tags.get(TAG_DATASET) or SAMPLE_SOURCE
        split_pc = float(model.tags.get("dataset-split-pc") or 5)
        folder = str(self.workspace.data_folder(PROBE_DATASET_DIR))
        prepared = ensure_dataset(dataset, split_pc, folder, self.workspace.cache_scope)
        self.probes = (prepared.files["test_gen"], int(time.time()) % 100_000)

    @property
    def name(self) -> str:
        """The endpoint's name."""
        return self.endpoint.name

    def refuse(self, field: str, why: str) -> InvalidRequest:
        """The refusal to raise: it names the field and says nothing changed."""
        return InvalidRequest(f"{field}: {why}; nothing on endpoint {self.name} changed")

    def release(self, cursor: ReleaseCursor, model: RegisteredModel,
                settings: RolloutParameters | None = None, promoted_as: str = "promoted",
                asked: str = "") -> Release:
        """The rollout's :class:`Release` carrying this action through its steps."""
        test_gen, seed = self.probes or ("", 0)
        return Release(
            workspace=self.workspace, name=self.name,
            settings=settings or RolloutParameters(strategy="canary"),
            timeout_minutes=self.request.deployment_timeout_minutes, model=model,
            test_gen=test_gen, probe_seed=seed, this_run=self.this_run, cursor=cursor,
            promoted_as=promoted_as, asked=asked)

    def recorded_cursor(self) -> ReleaseCursor:
        """The release the endpoint records, moved by this run for its request."""
        return ReleaseCursor.recorded(self.endpoint, self.this_run, self.actor)

    def check_named_release(self) -> None:
        """Refuse when the request names a release the endpoint does not hold."""
        wanted = self.request.release_request
        if wanted and wanted != self.recorded.request:
            raise self.refuse("release_request", (
                f"the release on the endpoint is request {self.recorded.request or 'none'}'s"
                f" (step {self.recorded.step or 'none'}), not {wanted}'s"))

    def model_of(self, deployment: str | None) -> RegisteredModel:
        """The registered model a deployment serves (refused when it is unknown)."""
        named = deployment_model(self.endpoint, deployment)
        model = self.workspace.get_model(*named) if named else None
        if model is None:
            raise self.refuse("endpoint_name", f"the model of deployment {deployment} is not "
                              "in the registry (its deployment carries no model tags)")
        return model


def promote_held(action: Action) -> ReleaseOutcome:
    """A held canary to 100 %: the old deployment deleted (or kept), the model production."""
    recorded = action.recorded
    action.check_named_release()
    if recorded.step != "held":
        raise action.refuse("action", _not_held(recorded))
    run = action.release(action.recorded_cursor(), action.model_of(recorded.to_deployment))
    why = action.request.reason or "promoted by a person, no reason given"
    try:
        return promote(run, why)
    except ConcurrentChange as exc:
        raise action.refuse("action", f"the endpoint changed while promoting: {exc}") from None


def _not_held(recorded: RecordedRelease) -> str:
    if recorded.step in UNDER_WAY:
        return (f"promote takes a held canary; request {recorded.request}'s release is under "
                f"way at step {recorded.step} (run {recorded.run}): wait for its watch to end, "
                "or abort it")
    return (f"promote takes a held canary; the endpoint holds none (its last release is "
            f"{recorded.step or 'none'})")


def abort(action: Action) -> ReleaseOutcome:
    """A canary (under way or held) back to the deployment it started from; its model
    tagged rejected with the person's reason."""
    recorded = action.recorded
    action.check_named_release()
    if recorded.step not in ("deploying", "mirror", "canary", "held"):
        raise action.refuse("action", (
            f"abort takes a canary or a held release; the endpoint's release is at step "
            f"{recorded.step or 'none'}" + (" (being finished: the run or the recovery ends "
                                            "it)" if recorded.step in UNDER_WAY else "")))
    old = recorded.from_deployment
    if old and old not in {d.name for d in action.endpoint.deployments}:
        raise action.refuse("action", f"the deployment the release started from, {old}, is "
                            "gone (changed by hand): route the traffic yourself")
    cursor = action.recorded_cursor()
    model = deployment_model(action.endpoint, recorded.to_deployment)
    why = action.request.reason
    try:
        if old:
            cursor = cursor.at(record_step(
                action.workspace, cursor, "rolled-back", traffic={old: 100},
                mirror={} if action.workspace.kind == "azure" else None, reason=why,
                ending="aborted"))
        endpoint = finish_rollback(action.workspace, cursor, why, model=model, action="aborted")
    except ConcurrentChange as exc:
        raise action.refuse("action", f"the endpoint changed while aborting: {exc}") from None
    report_decision(action.name, "aborted", [
        f"**Aborted**: {old or 'nothing'} takes all traffic; deployment "
        f"{recorded.to_deployment} ({':'.join(model or ()) or 'model unknown'}) was deleted and "
        "the version tagged rejected.", f"Why: {why}."])
    return ReleaseOutcome(outcome="aborted", released=False, serving=old, endpoint=endpoint,
                          message=f"aborted {recorded.to_deployment}: {action.request.reason}")


# -- rollback ---------------------------------------------------------------------------
def rollback_target(action: Action) -> tuple[str | None, RegisteredModel]:
    """The serving deployment and the version to put back, checked (refused naming the
    field when the version may not serve)."""
    recorded = action.recorded
    if recorded.occupied:
        raise action.refuse("action", (
            f"request {recorded.request}'s release is {recorded.step} on the endpoint "
            f"(run {recorded.run}): a rollback waits until it ends; abort it first"))
    current = production_deployment(action.workspace, action.endpoint)
    serving = deployment_model(action.endpoint, current)
    name = serving[0] if serving else action.endpoint.tags.get(TAG_MODEL, "")
    version = action.request.version or _version_before(action, serving)
    if serving and version == serving[1]:
        raise action.refuse("version", f"{name}:{version} already serves production")
    model = action.workspace.get_model(name, version) if name else None
    if model is None:
        raise action.refuse("version", f"{name}:{version} is not in the registry")
    _check_eligible(action, model)
    return current, model


def _version_before(action: Action, serving: tuple[str, str] | None) -> str:
    history = action.workspace.release_history(action.name)
    took = [e for e in history if e.action in TOOK_PRODUCTION and e.version]
    now = serving[1] if serving else (took[0].version if took else None)
    earlier = [e.version for e in took if e.version != now]
    if not earlier:
        raise action.refuse("version", (
            "the endpoint's release history names no version that served before "
            f"{now or 'the current one'}; name the version to put back"))
    return earlier[0]


def _check_eligible(action: Action, model: RegisteredModel) -> None:
    label = f"{model.name}:{model.version}"
    if model.tags.get("chatft-gate") != "passed":
        raise action.refuse("version", f"{label} never passed its gate (tag chatft-gate is "
                            f"{model.tags.get('chatft-gate', 'absent')})")
    by = model.tags.get(TAG_REJECTED_BY)
    if model.tags.get(TAG_STAGE) == "rejected" and (by is None or by in FAULTS):
        why = model.tags.get("chatft-rollback-reason") or model.tags.get("chatft-gate-reason")
        raise action.refuse("version", f"{label} was rejected by its {by or 'release'}"
                            + (f" ({why})" if why else "") + "; a rollback goes only to a "
                            "version that never failed a gate or a canary")


def rollback(action: Action) -> ReleaseOutcome:
    """An earlier version back in production: at once onto its kept deployment, or
    through a new deployment, the contract and a canary like any release."""
    current, model = rollback_target(action)
    kept = next((d.name for d in action.endpoint.deployments
                 if deployment_model(action.endpoint, d.name) == (model.name, model.version)),
                None)
    if action.request.immediate and kept is None:
        raise action.refuse("immediate", (
            f"{model.name}:{model.version} has no deployment on the endpoint (none was kept "
            "with keep_previous); roll back through a canary (immediate false)"))
    action.prepare_probes(model)
    request_id = f"{ROLLBACK_PREFIX}{model.version}-{action.this_run[:8]}"[:100]
    reason = action.request.reason
    if action.request.immediate:
        return _at_once(action, model, request_id, current, kept or "", reason)
    return _through_canary(action, model, request_id, reason)


def _contract(action: Action, run: Release, deployment: str) -> None:
    from flows.rollout import probes

    results = check_contract(action.workspace, action.name, deployment, probes(run)[0][:1],
                             90.0)
    failed = next((r for r in results if not r.ok), None)
    if failed is not None:
        raise action.refuse("immediate", f"the kept deployment {deployment} does not answer "
                            f"as the contract says ({failed.status}: {failed.reason})")


def _at_once(action: Action, model: RegisteredModel, request_id: str, current: str | None,
             kept: str, reason: str) -> ReleaseOutcome:
    cursor = ReleaseCursor.seen(action.endpoint, request_id=request_id, run=action.this_run,
                                old=current, new=kept, keep_previous=True, actor=action.actor,
                                reused=True)
    run = action.release(cursor, model, promoted_as="rolled-back")
    _contract(action, run, kept)  # before any write: a kept deployment may have died
    try:
        claim(run)
        if run.cursor.old != current:
            raise ConcurrentChange(f"production moved to {run.cursor.old} during the claim")
        # From the claim landing to all traffic on the kept deployment: one write.
        started = time.monotonic()
        run.write("promoted", traffic={kept: 100})
    except ConcurrentChange as exc:
        _let_go(run, str(exc))
        raise action.refuse("action", f"the endpoint changed during the rollback: {exc}"
                            ) from None
    switched = time.monotonic() - started
    get_run_logger().info("Rollback of %s: all traffic on %s after %.2f s", action.name, kept,
                          switched)
    outcome = finish_promoting(run, reason, {"switch seconds": f"{switched:.2f}"})
    return outcome.model_copy(update={"outcome": "rolled-back-at-once", "message": (
        f"{model.name}:{model.version} ({kept}) serves {action.name} again, traffic switched "
        f"in {switched:.2f} s; {current} kept at 0 %")})


def _let_go(run: Release, why: str) -> None:
    """A claim that lost its race is undone if it landed (nothing took traffic)."""
    if run.cursor.step == "deploying" and run.cursor.recorded_run == run.this_run:
        try:
            run.write("undone", check_traffic=False, reason=f"rollback abandoned: {why}")
        except ConcurrentChange:
            pass


def _through_canary(action: Action, model: RegisteredModel, request_id: str,
                    reason: str) -> ReleaseOutcome:
    settings = action.request.canary.model_copy(update={"strategy": "canary"})
    new = f"rollback-{action.this_run.replace('-', '')[:8]}"
    cursor = ReleaseCursor.seen(action.endpoint, request_id=request_id, run=action.this_run,
                                new=new, keep_previous=settings.keep_previous,
                                actor=action.actor)
    run = action.release(cursor, model, settings, promoted_as="rolled-back", asked=reason)
    try:
        endpoint = claim(run)
    except ConcurrentChange as exc:
        raise action.refuse("action", f"the endpoint changed during the claim: {exc}") from None
    create_deployment(action.workspace, DeploymentSpec(
        endpoint_name=action.name, name=new, model_id=model.id,
        instance_type=_size_of(endpoint, run.cursor.old)[0],
        instance_count=_size_of(endpoint, run.cursor.old)[1], tags=managed_tags(
            request_id, action.this_run, model.name, model.version), owner=request_id),
        action.request.deployment_timeout_minutes)
    outcome = try_and_watch(run)
    if outcome.outcome == "promoted":
        return outcome.model_copy(update={"outcome": "rolled-back", "message": (
            f"{model.name}:{model.version} serves {action.name} again (deployment {new}, "
            f"through a {settings.canary_percent} % canary): {action.request.reason}")})
    if outcome.outcome == "rolled-back":
        return outcome.model_copy(update={"outcome": "rollback-failed"})
    return outcome


def _size_of(endpoint: Endpoint, deployment: str | None) -> tuple[str, int]:
    found = next((d for d in endpoint.deployments if d.name == deployment), None)
    if found is None:
        found = endpoint.deployments[0] if endpoint.deployments else None
    return (found.instance_type, found.instance_count) if found else ("local", 1)


