"""Step 7 as a canary release onto a live endpoint: gate, try, share, watch, decide.

``finetune_and_deploy`` calls :func:`release` instead of its plain deploy when the request
asks for ``rollout.strategy: canary``. The order (docs/rollout.md):

1. **Gate**, before any traffic: the new model against the base model and the model in
   production, on the same held-out data. A loser is registered and tagged rejected with
   its figures; the endpoint is not touched.
2. **Claim** the endpoint for this request (refused while another rollout is under way)
   and create the new deployment at 0 %.
3. **Contract**: the smoke test's checks, sent to the new deployment by its header.
4. (Azure, optional) a **mirrored** share, then the **canary** share of live traffic.
5. **Watch** both deployments, then **promote** (100 % to the new one, the old deleted) or
   **roll back** (100 % to the old one, the new deleted).

Each traffic change records the step in the endpoint's tags in the same write, so a re-run
of the request resumes where a killed run stopped, and the scheduled smoke test undoes a
rollout whose run died (tasks/rollout_recovery.py). Every decision is an artifact with its
figures, and an event: ``chatft.rollout.started``, ``.promoted``, ``.rolled-back``,
``.rejected``.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from flows.deploy_step import create_endpoint_and_deployment
from flows.finetune_result import already_serving_message
from flows.parameters import FinetuneRequest, RolloutParameters
from flows.preflight import FinetunePlan
from tasks import reports
from tasks.endpoints import create_deployment, sample_questions
from tasks.finetune import get_job_metrics
from tasks.release_gate import (
    Contender,
    GateDecision,
    GateMargins,
    job_figures,
    judge,
    same_held_out_data,
)
from tasks.release_history import record_release, who_asked
from tasks.rollout import (
    TAG_REJECTED_BY,
    ReleaseCursor,
    RolloutPlan,
    WatchLimits,
    WatchVerdict,
    check_contract,
    deployment_model,
    finish_promotion,
    finish_rollback,
    production_deployment,
    record_step,
    watch_canary,
)
from workspaces.errors import ConcurrentChange, OwnershipConflict
from workspaces.fault_injection import hold_after_rollout_step
from workspaces.interface import (
    TAG_MODEL,
    TAG_MODEL_VERSION,
    Endpoint,
    EndpointSpec,
    JobMetrics,
    RegisteredModel,
    Workspace,
)
from workspaces.ownership import claim_for_rollout
from workspaces.release_history import ReleaseEvent
from workspaces.release_state import RUN_DIED, UNDER_WAY, RecordedRelease, release_tags

PROBE_SEEDS = 5


class ReleaseOutcome(BaseModel):
    """How a release ended, for the run's result and its final state."""

    outcome: str = Field(description="first-release, promoted, held, rolled-back, rejected, "
                         "refused, already-serving")
    released: bool = Field(description="Whether the new model now takes live traffic")
    serving: str | None = Field(description="The deployment serving production")
    endpoint: Endpoint | None = None
    message: str


class Release(BaseModel):
    """What one release carries from step to step: a fine-tune's (:func:`release`) or a
    person's rollback to an earlier version (flows/release_control.py)."""

    model_config = {"arbitrary_types_allowed": True}

    workspace: Any
    name: str = Field(description="The endpoint released onto")
    settings: RolloutParameters
    timeout_minutes: float
    model: RegisteredModel
    test_gen: str = Field(description="The held-out conversations the probes come from")
    probe_seed: int
    this_run: str
    cursor: ReleaseCursor
    promoted_as: str = Field("promoted", description="The history's word for its promotion")
    asked: str = Field("", description="A person's reason for the release, first in the "
                       "history's reason of each of its ends")

    def write(self, step: str, **fields: Any) -> Endpoint:
        """Record ``step`` (and its traffic) on the endpoint; the cursor follows."""
        endpoint = record_step(self.workspace, self.cursor, step, **fields)
        self.cursor = self.cursor.at(endpoint)
        return endpoint


def release(
    workspace: Workspace,
    request: FinetuneRequest,
    plan: FinetunePlan,
    model: RegisteredModel,
    metrics: JobMetrics,
    held_out: dict[str, str],
    this_run: str,
) -> ReleaseOutcome:
    """Release ``model`` onto ``plan.endpoint_name`` as the request's rollout settings say.

    ``held_out`` holds this request's prepared test_sft and test_gen files.
    """
    rollout = plan.rollout
    assert rollout is not None
    settings = request.rollout
    endpoint = workspace.get_endpoint(plan.endpoint_name)
    if endpoint is None:
        # Nothing in production: the gate holds the model against the base model only.
        decision = gate(workspace, rollout.model_copy(update={"current_deployment": None,
                        "current_model": None, "current_version": None}),
                        model, metrics, settings, held_out, plan.parameters)
        if not decision.passed:
            return _reject(workspace, plan, model, decision, None, None)
        return _first_release(workspace, request, plan, model, this_run, decision)
    new = rollout.new_deployment
    recorded = RecordedRelease.of(endpoint.tags)
    mine = recorded.request == plan.request_id and recorded.to_deployment == new
    run = Release(
        workspace=workspace, name=plan.endpoint_name, settings=settings,
        timeout_minutes=request.deployment_timeout_minutes, model=model,
        test_gen=held_out["test_gen"], probe_seed=int(plan.model_version), this_run=this_run,
        cursor=ReleaseCursor.seen(
            endpoint, request_id=plan.request_id, run=this_run, new=new,
            old=recorded.from_deployment if mine else rollout.current_deployment,
            keep_previous=settings.keep_previous, actor=who_asked()))
    if mine and recorded.step is not None:
        finished = _resume(run, recorded, settings.auto_promote)
        if finished is not None:
            return finished
        get_run_logger().info("Resuming this request's rollout on %s from step %s",
                              plan.endpoint_name, recorded.step)
    resuming = mine and recorded.step in UNDER_WAY

    # 1. the gate, before anything on the endpoint changes
    decision = gate(workspace, rollout, model, metrics, settings, held_out, plan.parameters)
    if not decision.passed:
        if resuming:
            return _roll_back(run, None, "the gate refused the model: " + "; ".join(
                r for r in decision.reasons if r.startswith("FAIL")))
        return _reject(workspace, plan, model, decision, run.cursor.old, endpoint)

    # 2. claim the endpoint; if production changed since the pre-flight, gate again
    try:
        endpoint = claim(run, resuming)
    except (OwnershipConflict, ConcurrentChange) as exc:
        return _refused(run, str(exc))
    if not resuming and run.cursor.old != rollout.current_deployment:
        decision = _gate_again(run, plan, held_out, metrics, endpoint)
        if not decision.passed:
            run.write("undone", check_traffic=False,
                      reason="the gate refused the model against the production model "
                      "that served at the claim")
            return _reject(workspace, plan, model, decision, run.cursor.old, endpoint)
    workspace.set_model_stage(model.name, model.version, "candidate", decision.tags())
    if recorded.step is None or not mine:
        reports.emit("rollout.started", plan.endpoint_name, workspace.kind, {
            "model": model.name, "version": model.version, "from": run.cursor.old,
            "to": new, "canary_percent": settings.canary_percent})
    create_deployment(workspace, plan.deployment_spec(model, this_run),
                      request.deployment_timeout_minutes)
    hold_after_rollout_step("deployment-created")
    try:
        return try_and_watch(run)
    except ConcurrentChange as exc:
        return _hold_for_person(run, str(exc))


def _resume(run: Release, recorded: RecordedRelease, auto_promote: bool
            ) -> ReleaseOutcome | None:
    """Finish this request's own release from the step an earlier run recorded; None when
    it goes on from its claim."""
    name, new, old = run.name, run.cursor.new, run.cursor.old
    step = recorded.step
    if step == "done":
        return ReleaseOutcome(outcome="already-serving", released=True, serving=new,
                              endpoint=run.workspace.get_endpoint(name),
                              message=already_serving_message(
                                  run.model.name, run.model.version, name, new))
    if step == "undone" and recorded.reason.startswith(RUN_DIED):
        return None  # the recovery undid it because its run died: this run tries again
    if step == "undone":
        return ReleaseOutcome(outcome="rolled-back", released=False, serving=old,
                              endpoint=run.workspace.get_endpoint(name),
                              message=f"an earlier run of this request rolled {new} back "
                              f"({recorded.reason or 'no reason recorded'}); {old} serves "
                              f"{name}")
    if step == "rolled-back":
        return _finish_roll_back(run, None, recorded.reason or
                                 "finishing the rollback a killed run left",
                                 recorded.ending or "canary-failed")
    if step == "promoted":
        return finish_promoting(run, "finishing the promotion a killed run left"
                                + (f" ({recorded.reason})" if recorded.reason else ""))
    if step == "held" and not auto_promote:
        why = recorded.reason or "at its canary share"
        return ReleaseOutcome(outcome="held", released=True, serving=old,
                              endpoint=run.workspace.get_endpoint(name),
                              message=f"{new} is held ({why}); promote or abort it, or re-run "
                              "with rollout.auto_promote=true to promote it")
    if step == "held":
        try:
            return promote(run, "promoted by a re-run with auto_promote on (the canary "
                            "was healthy)")
        except ConcurrentChange as exc:
            return _hold_for_person(run, str(exc))
    return None


def claim(run: Release, resuming: bool = False) -> Endpoint:
    """Claim the endpoint, recording where the release starts from as it is at the write.

    The endpoint is read, production found (:func:`production_deployment`), and the claim
    written only if nothing changed in between (else read again): what the gate is
    compared with is what served when the claim landed.
    """
    for _ in range(3):
        endpoint = run.workspace.get_endpoint(run.name)
        if endpoint is None:
            raise ConcurrentChange(f"endpoint {run.name} was deleted before the claim")
        # Another request's release under way or held is refused here, as the write would
        # refuse it: the step check below knows only this request's own moves.
        claim_for_rollout(f"endpoint {run.name}", endpoint.tags, run.cursor.request_id)
        recorded = RecordedRelease.of(endpoint.tags)
        old = recorded.from_deployment if resuming else production_deployment(
            run.workspace, endpoint)
        run.cursor = ReleaseCursor.seen(
            endpoint, request_id=run.cursor.request_id, run=run.this_run, new=run.cursor.new,
            old=old, keep_previous=run.cursor.keep_previous, actor=run.cursor.actor,
            reused=run.cursor.reused)
        back = {old: 100} if resuming and old and recorded.step in ("mirror", "canary") else None
        try:
            return run.write("deploying", claim=True, traffic=back,
                             mirror={} if back and run.settings.mirror_percent else None)
        except ConcurrentChange:
            continue
    raise ConcurrentChange(f"endpoint {run.name} kept changing while this release claimed it")


def _gate_again(run: Release, plan: FinetunePlan, held_out: dict[str, str],
                metrics: JobMetrics, endpoint: Endpoint) -> GateDecision:
    """The gate against the production model that served when the claim landed."""
    old = run.cursor.old
    tags = endpoint.tags_of(old)
    get_run_logger().warning(
        "Production on %s changed since the pre-flight (now %s): gating again against it",
        run.name, old or "nothing")
    current = plan.rollout.model_copy(update={
        "current_deployment": old, "current_model": tags.get(TAG_MODEL) if old else None,
        "current_version": tags.get(TAG_MODEL_VERSION) if old else None})
    return gate(run.workspace, current, run.model, metrics, run.settings, held_out,
                plan.parameters)


def try_and_watch(run: Release) -> ReleaseOutcome:
    """Contract at 0 %, mirror, canary, watch, then promote, hold or roll back."""
    settings, old, new = run.settings, run.cursor.old, run.cursor.new
    if old is None:
        # Nothing serves yet: no traffic to compare with; the contract decides.
        return _promote_after_contract(run)
    bodies, answers = probes(run)
    contract = check_contract(run.workspace, run.name, new, bodies[:3], 90.0)
    if not all(r.ok for r in contract):
        failed = next(r for r in contract if not r.ok)
        return _roll_back(run, None, f"the new deployment broke the scoring contract "
                          f"({failed.status}: {failed.reason})")
    limits = WatchLimits(**settings.model_dump(include=set(WatchLimits.model_fields)),
                         exact_answer_margin=settings.gate_exact_answer_margin)
    if settings.mirror_percent:
        run.write("mirror", mirror={new: settings.mirror_percent})
        mirrored = watch_canary(run.workspace, run.name, old, new, bodies, limits,
                                expected_traffic=run.cursor.traffic, answers=answers)
        report_watch(run.name, mirrored, f"mirrored {settings.mirror_percent} %")
        if mirrored.interrupted:
            return _hold_for_person(run, mirrored.interrupted)
        if not mirrored.healthy:
            return _roll_back(run, mirrored, "the new deployment failed while mirrored")
    run.write("canary", traffic={old: 100 - settings.canary_percent,
                                 new: settings.canary_percent},
              mirror={} if settings.mirror_percent else None)
    hold_after_rollout_step("canary-set")
    verdict = watch_canary(run.workspace, run.name, old, new, bodies, limits,
                           expected_traffic=run.cursor.traffic, answers=answers)
    report_watch(run.name, verdict, f"canary {settings.canary_percent} %")
    if verdict.interrupted:
        return _hold_for_person(run, verdict.interrupted)
    if not verdict.healthy:
        return _roll_back(run, verdict,
                          "; ".join(r for r in verdict.reasons if r.startswith("FAIL")))
    if not settings.auto_promote:
        why = "a healthy canary, held for a person to promote"
        endpoint = run.write("held", reason=why)
        record_held(run, why, watch_figures(verdict))
        return ReleaseOutcome(outcome="held", released=True, serving=old, endpoint=endpoint,
                              message=f"the canary {new} is healthy and held at "
                              f"{settings.canary_percent} %: promote or abort it, or re-run "
                              "with rollout.auto_promote=true to promote it")
    return promote(run, "the canary was healthy: " + "; ".join(verdict.reasons),
                   watch_figures(verdict))


def probes(run: Release) -> tuple[list[dict[str, Any]], list[str]]:
    """The watch's probe bodies and their reference answers. Greedy, as the job's own
    evaluation is: both deployments answer the same questions the same way each time, so
    their exact answers compare the models, not the sampling."""
    from flows.parameters import SMOKE_SCORING

    seed = run.probe_seed
    greedy = SMOKE_SCORING.model_copy(update={"do_sample": False}).model_dump()
    pairs = sample_questions(run.test_gen, greedy, [seed + i for i in range(PROBE_SEEDS)])
    return [body for body, _ in pairs], [answer for _, answer in pairs]


def gate(
    workspace: Workspace,
    rollout: RolloutPlan,
    model: RegisteredModel,
    metrics: JobMetrics,
    settings: RolloutParameters,
    held_out: dict[str, str],
    parameters: dict[str, str],
) -> GateDecision:
    """Compare the new model with the base model and the model in production."""
    new = Contender(label=f"new (version {model.version})",
                    figures=job_figures(metrics), source=f"job {model.tags.get('job-name')}")
    base = job_figures(metrics, "base_")
    rivals = [Contender(label="base (foundation model)", figures=base, required=False,
                        source="the same job's evaluation before tuning" if base else
                        "the workspace's pipeline does not evaluate the base model")]
    if rollout.current_model and rollout.current_version:
        rivals.append(_production_contender(workspace, rollout, model, held_out, parameters))
    margins = GateMargins(loss=settings.gate_loss_margin,
                          exact_answer=settings.gate_exact_answer_margin)
    decision = judge(new, rivals, margins)
    logger = get_run_logger()
    for line in decision.reasons:
        (logger.warning if line.startswith("FAIL") else logger.info)("Gate: %s", line)
    report_gate(decision)
    return decision


def _production_contender(
    workspace: Workspace, rollout: RolloutPlan, model: RegisteredModel,
    held_out: dict[str, str], parameters: dict[str, str],
) -> Contender:
    production = workspace.get_model(rollout.current_model, rollout.current_version)
    label = f"production (version {rollout.current_version})"
    if production is None:
        return Contender(label=label, source="the model is not in the registry")
    if same_held_out_data(model.tags, production.tags):
        job = production.tags.get("job-name", "")
        theirs = get_job_metrics(workspace, job) if job else JobMetrics()
        return Contender(label=label, figures=job_figures(theirs),
                         source=f"job {job}, same held-out files and truncation")
    # Measured on other files, or cut at another max_seq_length: scored again on this
    # request's files with the job's code and settings, so the figures are like for like.
    get_run_logger().info(
        "The model in production was evaluated on other held-out files or another "
        "max_seq_length; scoring it on this request's with the fine-tune job's evaluation code")
    scored = workspace.evaluate_model(production, held_out["test_sft"], held_out["test_gen"],
                                      parameters)
    return Contender(
        label=label, figures=job_figures(JobMetrics(evaluation=scored or {})),
        source="scored again on this request's held-out files with the job's evaluation "
        "code" if scored is not None else
        f"its job was evaluated on other held-out files or another max_seq_length and the "
        f"{workspace.kind} workspace cannot score it again; train both on the same dataset, "
        "dataset_split_pc and max_seq_length to compare them")


def _reject(
    workspace: Workspace, plan: FinetunePlan, model: RegisteredModel, decision: GateDecision,
    old: str | None, endpoint: Endpoint | None,
) -> ReleaseOutcome:
    """The gate refused the model: tagged rejected with its figures; the endpoint as it was."""
    workspace.set_model_stage(model.name, model.version, "rejected",
                              {**decision.tags(), TAG_REJECTED_BY: "gate"})
    if endpoint is not None:
        record_release(workspace, ReleaseEvent(
            endpoint=plan.endpoint_name, action="rejected", request=plan.request_id,
            model=model.name, version=model.version, previous=old or "",
            reason="; ".join(r for r in decision.reasons if r.startswith("FAIL"))[:500]))
    reports.emit("rollout.rejected", plan.endpoint_name, workspace.kind,
                 {"model": model.name, "version": model.version, "reasons": decision.reasons})
    failed = [r for r in decision.reasons if r.startswith("FAIL")]
    report_decision(plan.endpoint_name, "rejected by the gate", [
        f"**Not released**: {model.name}:{model.version} is registered and tagged rejected; "
        + (f"{old} keeps all traffic and nothing on {plan.endpoint_name} changed."
           if endpoint is not None else f"{plan.endpoint_name} was not created."),
        *[f"- {r}" for r in decision.reasons]])
    return ReleaseOutcome(
        outcome="rejected", released=False, serving=old, endpoint=endpoint,
        message=f"{model.name}:{model.version} was not released by the gate: "
        + "; ".join(failed))


def _refused(run: Release, why: str) -> ReleaseOutcome:
    """The endpoint could not be claimed (another release holds it): nothing changed."""
    report_decision(run.name, "refused", [
        f"**Not released**: {run.model.name}:{run.model.version} passed the gate, but "
        f"{run.name} could not be claimed for it: {why}.",
        "Nothing on the endpoint changed. Re-run this request once that release has ended: "
        "the re-run gates again against the model that serves then."])
    return ReleaseOutcome(outcome="refused", released=False, serving=run.cursor.old,
                          endpoint=run.workspace.get_endpoint(run.name),
                          message=f"{run.name} could not be claimed: {why}")


def _hold_for_person(run: Release, what_changed: str) -> ReleaseOutcome:
    """Someone else changed the endpoint during the release: stop, record held, take no
    further step. A person decides (promote, abort), not the run."""
    try:
        endpoint = run.write("held", check_traffic=False, reason=f"stopped: {what_changed}")
    except ConcurrentChange:
        return _taken_over(run, what_changed)
    record_held(run, f"stopped: {what_changed}")
    reports.emit("rollout.held", run.name, run.workspace.kind, {
        "model": run.model.name, "version": run.model.version, "deployment": run.cursor.new,
        "reason": what_changed})
    report_decision(run.name, "held for a person", [
        f"**Held**: the release of {run.model.name}:{run.model.version} stopped and wrote "
        "nothing more, because " + what_changed + ".",
        f"The traffic stays as it is now: {endpoint.traffic}. Promote or abort the release "
        "once you have decided."])
    return ReleaseOutcome(outcome="held", released=False, serving=run.cursor.old,
                          endpoint=endpoint, message=f"held: {what_changed}")


def record_held(run: Release, why: str, figures: dict[str, str] | None = None) -> None:
    """The hold in the endpoint's history."""
    record_release(run.workspace, ReleaseEvent(
        endpoint=run.name, action="held", request=run.cursor.request_id, model=run.model.name,
        version=run.model.version, deployment=run.cursor.new, reason=why,
        figures=figures or {}, actor=run.cursor.actor,
        previous=":".join(deployment_model(run.workspace.get_endpoint(run.name),
                                           run.cursor.old) or ()) or (run.cursor.old or "")))


def _taken_over(run: Release, what_changed: str) -> ReleaseOutcome:
    """A person (or another run) moved this release on while it was watched: it stops,
    writes nothing, and says who has it now."""
    endpoint = run.workspace.get_endpoint(run.name)
    recorded = RecordedRelease.of(endpoint.tags if endpoint else {})
    by = f"run {recorded.run}" if recorded.run else "someone else"
    message = (f"stopped: {what_changed}; the release is now at step {recorded.step or 'none'}"
               f", moved by {by}" + (f" ({recorded.reason})" if recorded.reason else ""))
    report_decision(run.name, "taken over", [f"**Taken over**: {message}.",
                                              "This run wrote nothing more."])
    return ReleaseOutcome(outcome="held", released=False, serving=run.cursor.old,
                          endpoint=endpoint, message=message)


def watch_figures(verdict: WatchVerdict | None) -> dict[str, str]:
    """The watch's figures of the new deployment for the release history."""
    if verdict is None:
        return {}
    new, current = verdict.new, verdict.current
    figures = {"canary errors": f"{new.errors}/{new.requests}"}
    if new.judged_answers:
        figures["canary exact"] = f"{new.exact_answers}/{new.judged_answers}"
    if current and current.median_latency_ms and new.median_latency_ms is not None:
        figures["latency ratio"] = f"{new.median_latency_ms / current.median_latency_ms:.2f}"
    return figures


def _first_release(
    workspace: Workspace, request: FinetuneRequest, plan: FinetunePlan, model: RegisteredModel,
    this_run: str, decision: GateDecision,
) -> ReleaseOutcome:
    """No endpoint yet: make it, deploy, route all traffic; the model is production."""
    new = plan.deployment_name
    # Step 7's endpoint and deployment, the endpoint made already claimed for this release:
    # a run killed before the traffic moves leaves a release the recovery settles.
    create_endpoint_and_deployment(
        workspace, request, plan, model, this_run,
        EndpointSpec(name=plan.endpoint_name, tags={
            **plan.managed_tags(this_run, model),
            **release_tags(plan.request_id, "deploying", None, new, this_run)},
            description=f"Serves the {model.name} model in production (canary releases)",
            owner=plan.request_id),
    )
    hold_after_rollout_step("first-deployment-created")
    endpoint = workspace.get_endpoint(plan.endpoint_name)
    cursor = ReleaseCursor.seen(endpoint, request_id=plan.request_id, run=this_run, new=new)
    endpoint = record_step(workspace, cursor, "promoted", traffic={new: 100})
    endpoint = record_step(workspace, cursor.at(endpoint), "done")
    workspace.set_model_stage(model.name, model.version, "production", decision.tags())
    reports.emit("rollout.promoted", plan.endpoint_name, workspace.kind, {
        "model": model.name, "version": model.version, "deployment": new, "first": True})
    record_release(workspace, ReleaseEvent(
        endpoint=plan.endpoint_name, action="first-release", request=plan.request_id,
        model=model.name, version=model.version, deployment=new,
        reason="the endpoint did not exist; the gate passed against the base model"))
    report_decision(plan.endpoint_name, "first release", [
        f"{plan.endpoint_name} did not exist: it was created and {model.name}:{model.version} "
        f"takes all traffic (deployment {new}). Later canary releases onto it are compared "
        "with this model."])
    return ReleaseOutcome(outcome="first-release", released=True, serving=new, endpoint=endpoint,
                          message=f"first release: {plan.endpoint_name} created, {new} at 100 %")


def _promote_after_contract(run: Release) -> ReleaseOutcome:
    contract = check_contract(run.workspace, run.name, run.cursor.new,
                              probes(run)[0][:3], 90.0)
    if not all(r.ok for r in contract):
        return _roll_back(run, None, "the new deployment broke the scoring contract")
    return promote(run, "nothing served on the endpoint; the contract checks passed")


def promote(run: Release, why: str, figures: dict[str, str] | None = None) -> ReleaseOutcome:
    """100 % to the new deployment (recorded in the same write, with the end it heads to
    and why), then the promotion's end."""
    run.write("promoted", traffic={run.cursor.new: 100}, ending=run.promoted_as,
              reason=f"{run.asked} ({why})" if run.asked else why)
    hold_after_rollout_step("promoted")
    return finish_promoting(run, why, figures)


def finish_promoting(run: Release, why: str, figures: dict[str, str] | None = None
                     ) -> ReleaseOutcome:
    """From ``promoted``: production, retirement, deletion, history, artifact."""
    old, new, model = run.cursor.old, run.cursor.new, run.model
    why = f"{run.asked} ({why})" if run.asked else why
    endpoint, retired = finish_promotion(
        run.workspace, run.cursor, run.timeout_minutes,
        after_delete=lambda: hold_after_rollout_step("old-deleted"),
        model=(model.name, model.version), why=why, figures=figures, action=run.promoted_as)
    run.cursor = run.cursor.at(endpoint)
    reports.emit("rollout.promoted", run.name, run.workspace.kind, {
        "model": model.name, "version": model.version, "deployment": new, "previous": old,
        "previous_model": retired, "reason": why})
    lines = [f"**Promoted** {model.name}:{model.version} (deployment {new}) to 100 % of "
             f"{run.name}.", f"Why: {why}."]
    if old:
        lines.append(f"Previous deployment {old} ({retired or 'model unknown'}): "
                     + ("kept at 0 %" if run.cursor.keep_previous else "deleted") + ".")
    report_decision(run.name, "promoted", lines)
    return ReleaseOutcome(outcome="promoted", released=True, serving=new, endpoint=endpoint,
                          message=f"promoted {new} to 100 % ({why})")


def _roll_back(run: Release, verdict: WatchVerdict | None, why: str) -> ReleaseOutcome:
    """All traffic back to the old deployment (recorded in the same write), then the new
    one deleted and its model rejected."""
    if run.cursor.old:
        run.write("rolled-back", traffic={run.cursor.old: 100},
                  mirror={} if run.settings.mirror_percent else None, reason=why,
                  ending="canary-failed")
    return _finish_roll_back(run, verdict, why)


def _finish_roll_back(run: Release, verdict: WatchVerdict | None, why: str,
                      ending: str = "canary-failed") -> ReleaseOutcome:
    old, new, model = run.cursor.old, run.cursor.new, run.model
    why = f"{run.asked}: withdrawn, {why}" if run.asked else why
    figures = {"chatft-canary-error-rate": f"{verdict.new.error_rate:.4f}"} if verdict else {}
    endpoint = finish_rollback(run.workspace, run.cursor, why,
                               {**figures, **watch_figures(verdict)}, run.timeout_minutes,
                               model=(model.name, model.version), action=ending)
    reports.emit("rollout.rolled-back", run.name, run.workspace.kind, {
        "model": model.name, "version": model.version, "deployment": new, "restored": old,
        "reason": why})
    report_decision(run.name, "rolled back", [
        f"**Rolled back**: {old or 'nothing'} takes 100 % of {run.name} again; the "
        f"new deployment {new} ({model.name}:{model.version}) was deleted and the version "
        "tagged rejected.", f"Why: {why}."])
    return ReleaseOutcome(outcome="rolled-back", released=False, serving=old, endpoint=endpoint,
                          message=f"rolled back to {old}: {why}")


# -- artifacts --------------------------------------------------------------------------
def report_gate(decision: GateDecision) -> None:
    """Artifact ``rollout-gate``: every figure of the comparison and its verdict."""
    keys = ("eval_loss", "exact_answer_rate")
    rows = [decision.new, *decision.rivals]
    table = "| model | test_sft loss | exact-answer rate | figures from |\n|---|---|---|---|\n"
    table += "\n".join(
        f"| {c.label} | " + " | ".join(
            f"{c.figures[k]:.4f}" if k in c.figures else "-" for k in keys)
        + f" | {c.source} |" for c in rows)
    verdict = "passed: the new model may take traffic" if decision.passed else (
        "failed: the new model is not deployed")
    create_markdown_artifact(
        key="rollout-gate",
        markdown=f"## Promotion gate: {verdict}\n\n{table}\n\n"
        + "\n".join(f"- {r}" for r in decision.reasons),
        description="The new model against the base model and the model in production",
    )


def report_watch(endpoint_name: str, verdict: WatchVerdict, phase: str) -> None:
    """Artifact ``rollout-canary``: what each deployment did while it was watched."""
    rows = [f for f in (verdict.current, verdict.new) if f is not None]
    table = ("| deployment | role | requests | errors | error rate | median latency (ms) | "
             "exact answers | probes | figures from |\n|---|---|---|---|---|---|---|---|---|\n")
    legend = ("\n\nFigures from the *request log*: the endpoint's per-deployment log, real "
              "traffic and the rollout's probes together; from *probes*: the probes' own "
              "results (the workspace keeps no per-deployment latency). Exact answers: probes "
              "with a known answer, answered word for word (both deployments get the same).")
    table += "\n".join(
        f"| {f.deployment} | {f.role} | {f.requests} | {f.errors} | {f.error_rate:.1%} | "
        + (f"{f.median_latency_ms:.0f}" if f.median_latency_ms is not None else "-")
        + f" | {f.exact_answers}/{f.judged_answers} | {f.probes} | {f.source} |" for f in rows)
    create_markdown_artifact(
        key="rollout-canary",
        markdown=f"## {endpoint_name}: {phase}, watched {verdict.seconds:.0f} s: "
        f"{'healthy' if verdict.healthy else 'unhealthy'}\n\n{table}{legend}\n\n"
        + "\n".join(f"- {r}" for r in verdict.reasons),
        description=f"The canary of {endpoint_name} under watch",
    )


def report_decision(endpoint_name: str, outcome: str, lines: list[str]) -> None:
    """Artifact ``rollout-decision``: what the rollout did in the end, and why."""
    create_markdown_artifact(
        key="rollout-decision",
        markdown=f"## Rollout onto {endpoint_name}: {outcome}\n\n" + "\n\n".join(lines),
        description=f"Rollout onto {endpoint_name}: {outcome}",
    )
