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

import os
import time
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from flows.parameters import FinetuneRequest, RolloutParameters
from flows.preflight import FinetunePlan
from tasks import reports
from tasks.endpoints import create_deployment, create_endpoint, sample_requests
from tasks.finetune import get_job_metrics
from tasks.release_gate import (
    Contender,
    GateDecision,
    GateMargins,
    job_figures,
    judge,
    same_held_out_data,
)
from tasks.rollout import (
    RolloutPlan,
    WatchLimits,
    WatchVerdict,
    check_contract,
    delete_deployment,
    record_step,
    step_tags,
    watch_canary,
)
from workspaces.interface import (
    MANAGED_BY_VALUE,
    TAG_FLOW_RUN,
    TAG_MANAGED_BY,
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_REQUEST,
    TAG_ROLLOUT_FROM,
    TAG_ROLLOUT_STEP,
    TAG_STAGE,
    DeploymentSpec,
    Endpoint,
    EndpointSpec,
    JobMetrics,
    RegisteredModel,
    Workspace,
)

# A step not followed by the next within this long (beyond its own wait) is taken for a
# dead run's, and the smoke test undoes it.
EXPIRY_MARGIN_S = 15 * 60
PROBE_SEEDS = 5
# Tests hold a run right after a step ("<point>:<marker file>") to kill it there with -9.
HOLD_ENV = "CHATFT_HOLD_AFTER_ROLLOUT"


def _checkpoint(point: str) -> None:
    held = os.environ.get(HOLD_ENV, "")
    if held.partition(":")[0] == point:
        Path(held.partition(":")[2]).touch()
        time.sleep(3600)


class ReleaseOutcome(BaseModel):
    """How a release ended, for the run's result and its final state."""

    outcome: str = Field(description="first-release, promoted, held, rolled-back, rejected, "
                         "already-serving")
    released: bool = Field(description="Whether the new model now takes live traffic")
    serving: str | None = Field(description="The deployment taking all (or most) traffic")
    endpoint: Endpoint | None = None
    message: str


def _tags(plan: FinetunePlan, model: RegisteredModel, this_run: str) -> dict[str, str]:
    return {
        TAG_MANAGED_BY: MANAGED_BY_VALUE, TAG_FLOW_RUN: this_run, TAG_REQUEST: plan.request_id,
        TAG_MODEL: model.name, TAG_MODEL_VERSION: model.version,
    }


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
    test_gen_file = held_out["test_gen"]
    rollout = plan.rollout
    assert rollout is not None
    settings = request.rollout
    logger = get_run_logger()
    endpoint = workspace.get_endpoint(plan.endpoint_name)
    if endpoint is None or not rollout.endpoint_exists:
        # Nothing in production: the gate holds the model against the base model only.
        decision = gate(workspace, rollout, model, metrics, settings, held_out,
                        plan.parameters)
        if not decision.passed:
            return _reject(workspace, plan, model, decision, None, None)
        return _first_release(workspace, request, plan, model, this_run)
    step = endpoint.tags.get(TAG_ROLLOUT_STEP) if rollout.resume_step else None
    new = rollout.new_deployment
    # Resuming this request's own rollout: where it started from is what the endpoint
    # recorded (the traffic may already have moved).
    old = old_of(endpoint, new) if step else rollout.current_deployment
    if step == "done" or (step is None and old == new):
        return ReleaseOutcome(outcome="already-serving", released=True, serving=new,
                              endpoint=endpoint,
                              message=f"{model.name}:{model.version} already serves "
                              f"{plan.endpoint_name} (deployment {new})")
    if step == "undone":
        return ReleaseOutcome(outcome="rolled-back", released=False, serving=old,
                              endpoint=endpoint,
                              message=f"an earlier run of this request rolled {new} back; "
                              f"{old} serves {plan.endpoint_name}")
    if step == "rolled-back":
        return _roll_back(workspace, request, plan, model, old, new, None,
                          "finishing the rollback a killed run left")
    if step == "promoted":
        return _finish_promotion(workspace, request, plan, model, old, new,
                                 "finishing the promotion a killed run left")
    if step == "held" and not settings.auto_promote:
        return ReleaseOutcome(outcome="held", released=True, serving=old, endpoint=endpoint,
                              message=f"{new} is held at its canary share; re-run with "
                              "rollout.auto_promote=true to promote it")
    if step == "held":
        return _promote(workspace, request, plan, model, old, new,
                        "promoted by a re-run with auto_promote on (the canary was healthy)")
    if step:
        logger.info("Resuming this request's rollout on %s from step %s", plan.endpoint_name,
                    step)

    # 1. the gate, before anything on the endpoint changes
    decision = gate(workspace, rollout, model, metrics, settings, held_out, plan.parameters)
    if not decision.passed:
        return _reject(workspace, plan, model, decision, old, endpoint)
    workspace.set_model_stage(model.name, model.version, "candidate", decision.tags())

    # 2. claim the endpoint, create the new deployment at 0 %
    deploy_wait_s = request.deployment_timeout_minutes * 60 + EXPIRY_MARGIN_S
    endpoint = record_step(workspace, plan.endpoint_name, "deploying", plan.request_id, old,
                           new, expires_in_s=deploy_wait_s, claim=True)
    if step is None:
        reports.emit("rollout.started", plan.endpoint_name, workspace.kind, {
            "model": model.name, "version": model.version, "from": old, "to": new,
            "canary_percent": settings.canary_percent})
    create_deployment(
        workspace,
        DeploymentSpec(
            endpoint_name=plan.endpoint_name, name=new, model_id=model.id,
            instance_type=plan.instance_type, instance_count=plan.instance_count,
            tags=_tags(plan, model, this_run), owner=plan.request_id,
        ),
        request.deployment_timeout_minutes,
    )
    _checkpoint("deployment-created")
    if old is None:
        # Nothing serves yet: no traffic to compare with; the contract decides.
        return _promote_after_contract(workspace, request, plan, model, None, new,
                                       test_gen_file)

    # 3. the contract, by header, at 0 %
    bodies = _bodies(test_gen_file, plan)
    contract = check_contract(workspace, plan.endpoint_name, new, bodies[:3], 90.0)
    if not all(r.ok for r in contract):
        failed = next(r for r in contract if not r.ok)
        return _roll_back(workspace, request, plan, model, old, new, None,
                          f"the new deployment broke the scoring contract ({failed.status}: "
                          f"{failed.reason})")
    limits = WatchLimits(**settings.model_dump(include=set(WatchLimits.model_fields)))
    watch_s = settings.watch_seconds * 3 + 60 + EXPIRY_MARGIN_S
    # 4. mirrored share (Azure), then the canary share
    if settings.mirror_percent:
        record_step(workspace, plan.endpoint_name, "mirror", plan.request_id, old, new,
                    mirror={new: settings.mirror_percent}, expires_in_s=watch_s)
        mirrored = watch_canary(workspace, plan.endpoint_name, old, new, bodies, limits)
        report_watch(plan.endpoint_name, mirrored, f"mirrored {settings.mirror_percent} %")
        if not mirrored.healthy:
            return _roll_back(workspace, request, plan, model, old, new, mirrored,
                              "the new deployment failed while mirrored")
    record_step(workspace, plan.endpoint_name, "canary", plan.request_id, old, new,
                traffic={old: 100 - settings.canary_percent, new: settings.canary_percent},
                mirror={} if settings.mirror_percent else None, expires_in_s=watch_s)
    _checkpoint("canary-set")
    # 5. watch, decide
    verdict = watch_canary(workspace, plan.endpoint_name, old, new, bodies, limits)
    report_watch(plan.endpoint_name, verdict, f"canary {settings.canary_percent} %")
    if not verdict.healthy:
        return _roll_back(workspace, request, plan, model, old, new, verdict,
                          "; ".join(r for r in verdict.reasons if r.startswith("FAIL")))
    if not settings.auto_promote:
        endpoint = record_step(workspace, plan.endpoint_name, "held", plan.request_id, old, new)
        return ReleaseOutcome(outcome="held", released=True, serving=old, endpoint=endpoint,
                              message=f"the canary {new} is healthy and held at "
                              f"{settings.canary_percent} %: re-run with "
                              "rollout.auto_promote=true to promote it")
    return _promote(workspace, request, plan, model, old, new,
                    "the canary was healthy: " + "; ".join(verdict.reasons))


def old_of(endpoint: Endpoint, new: str) -> str | None:
    """The deployment a rollout started from, as its tags recorded it."""
    return endpoint.tags.get(TAG_ROLLOUT_FROM) or next(
        (d.name for d in endpoint.deployments if d.name != new), None)


def _bodies(test_gen_file: str, plan: FinetunePlan) -> list[dict[str, Any]]:
    from flows.parameters import SMOKE_SCORING

    seed = int(plan.suffix)
    return sample_requests(test_gen_file, SMOKE_SCORING.model_dump(),
                           [seed + i for i in range(PROBE_SEEDS)])


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
        production = workspace.get_model(rollout.current_model, rollout.current_version)
        label = f"production (version {rollout.current_version})"
        if production is None:
            rivals.append(Contender(label=label, source="the model is not in the registry"))
        elif not same_held_out_data(model.tags, production.tags):
            # Measured on other files: scored again on this request's, with the job's code.
            get_run_logger().info(
                "The model in production was evaluated on other held-out files; scoring it "
                "on this request's with the fine-tune job's evaluation code")
            theirs = workspace.evaluate_model(
                production, held_out["test_sft"], held_out["test_gen"], parameters)
            rivals.append(Contender(
                label=label, figures=job_figures(JobMetrics(evaluation=theirs or {})),
                source="scored again on this request's held-out files with the job's "
                "evaluation code" if theirs is not None else
                f"its job was evaluated on other held-out files and the {workspace.kind} "
                "workspace cannot score it again; train both on the same dataset and "
                "dataset_split_pc to compare them"))
        else:
            job = production.tags.get("job-name", "")
            theirs = get_job_metrics(workspace, job) if job else JobMetrics()
            rivals.append(Contender(label=label, figures=job_figures(theirs),
                                    source=f"job {job}, same held-out files"))
    decision = judge(new, rivals, GateMargins(loss=settings.gate_loss_margin,
                                              exact_answer=settings.gate_exact_answer_margin))
    logger = get_run_logger()
    for line in decision.reasons:
        (logger.warning if line.startswith("FAIL") else logger.info)("Gate: %s", line)
    report_gate(decision)
    return decision


def _reject(
    workspace: Workspace, plan: FinetunePlan, model: RegisteredModel, decision: GateDecision,
    old: str | None, endpoint: Endpoint | None,
) -> ReleaseOutcome:
    """The gate refused the model: tagged rejected with its figures; the endpoint as it was."""
    workspace.set_model_stage(model.name, model.version, "rejected", decision.tags())
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


def _first_release(
    workspace: Workspace, request: FinetuneRequest, plan: FinetunePlan, model: RegisteredModel,
    this_run: str,
) -> ReleaseOutcome:
    """No endpoint yet: make it, deploy, route all traffic; the model is production."""
    tags = _tags(plan, model, this_run)
    new = plan.rollout.new_deployment if plan.rollout else plan.deployment_name
    create_endpoint(
        workspace,
        EndpointSpec(name=plan.endpoint_name, tags={
            **tags, **step_tags(plan.request_id, "deploying", None, new, None)},
            description=f"Serves the {model.name} model in production (canary releases)",
            owner=plan.request_id),
        request.deployment_timeout_minutes,
    )
    create_deployment(
        workspace,
        DeploymentSpec(endpoint_name=plan.endpoint_name, name=new, model_id=model.id,
                       instance_type=plan.instance_type, instance_count=plan.instance_count,
                       tags=tags, owner=plan.request_id),
        request.deployment_timeout_minutes,
    )
    endpoint = record_step(workspace, plan.endpoint_name, "done", plan.request_id, None, new,
                           traffic={new: 100})
    workspace.set_model_stage(model.name, model.version, "production")
    reports.emit("rollout.promoted", plan.endpoint_name, workspace.kind, {
        "model": model.name, "version": model.version, "deployment": new, "first": True})
    report_decision(plan.endpoint_name, "first release", [
        f"{plan.endpoint_name} did not exist: it was created and {model.name}:{model.version} "
        f"takes all traffic (deployment {new}). Later canary releases onto it are compared "
        "with this model."])
    return ReleaseOutcome(outcome="first-release", released=True, serving=new, endpoint=endpoint,
                          message=f"first release: {plan.endpoint_name} created, {new} at 100 %")


def _promote_after_contract(
    workspace: Workspace, request: FinetuneRequest, plan: FinetunePlan, model: RegisteredModel,
    old: str | None, new: str, test_gen_file: str,
) -> ReleaseOutcome:
    contract = check_contract(workspace, plan.endpoint_name, new,
                              _bodies(test_gen_file, plan)[:3], 90.0)
    if not all(r.ok for r in contract):
        return _roll_back(workspace, request, plan, model, old, new, None,
                          "the new deployment broke the scoring contract")
    return _promote(workspace, request, plan, model, old, new,
                    "nothing served on the endpoint; the contract checks passed")


def _promote(
    workspace: Workspace, request: FinetuneRequest, plan: FinetunePlan, model: RegisteredModel,
    old: str | None, new: str, why: str,
) -> ReleaseOutcome:
    record_step(workspace, plan.endpoint_name, "promoted", plan.request_id, old, new,
                traffic={new: 100}, expires_in_s=EXPIRY_MARGIN_S,
                keep_previous=request.rollout.keep_previous)
    _checkpoint("promoted")
    return _finish_promotion(workspace, request, plan, model, old, new, why)


def _finish_promotion(
    workspace: Workspace, request: FinetuneRequest, plan: FinetunePlan, model: RegisteredModel,
    old: str | None, new: str, why: str,
) -> ReleaseOutcome:
    workspace.set_model_stage(model.name, model.version, "production")
    endpoint = workspace.get_endpoint(plan.endpoint_name)
    retired = _retire_previous(workspace, plan, endpoint, old)
    if old and not request.rollout.keep_previous:
        delete_deployment(workspace, plan.endpoint_name, old,
                          request.deployment_timeout_minutes)
        _checkpoint("old-deleted")
    endpoint = record_step(workspace, plan.endpoint_name, "done", plan.request_id, old, new)
    reports.emit("rollout.promoted", plan.endpoint_name, workspace.kind, {
        "model": model.name, "version": model.version, "deployment": new, "previous": old,
        "previous_model": retired, "reason": why})
    lines = [f"**Promoted** {model.name}:{model.version} (deployment {new}) to 100 % of "
             f"{plan.endpoint_name}.", f"Why: {why}."]
    if old:
        lines.append(f"Previous deployment {old} ({retired or 'model unknown'}): "
                     + ("kept at 0 %" if request.rollout.keep_previous else "deleted") + ".")
    report_decision(plan.endpoint_name, "promoted", lines)
    return ReleaseOutcome(outcome="promoted", released=True, serving=new, endpoint=endpoint,
                          message=f"promoted {new} to 100 % ({why})")


def _retire_previous(
    workspace: Workspace, plan: FinetunePlan, endpoint: Endpoint | None, old: str | None
) -> str | None:
    """Tag the model the old deployment served as retired; returns name:version."""
    if endpoint is None or old is None:
        return None
    deployment = next((d for d in endpoint.deployments if d.name == old), None)
    if deployment is None:
        return None
    name, version = deployment.tags.get(TAG_MODEL), deployment.tags.get(TAG_MODEL_VERSION)
    if not name or not version:
        return None
    found = workspace.get_model(name, version)
    if found is not None and found.tags.get(TAG_STAGE) == "production":
        workspace.set_model_stage(name, version, "retired")
    return f"{name}:{version}"


def _roll_back(
    workspace: Workspace, request: FinetuneRequest, plan: FinetunePlan, model: RegisteredModel,
    old: str | None, new: str, verdict: WatchVerdict | None, why: str,
) -> ReleaseOutcome:
    """All traffic back to ``old`` (recorded in the same write), then the new one deleted."""
    if old:
        record_step(workspace, plan.endpoint_name, "rolled-back", plan.request_id, old, new,
                    traffic={old: 100}, mirror={} if request.rollout.mirror_percent else None,
                    expires_in_s=EXPIRY_MARGIN_S)
    figures = {"chatft-rollback-reason": why[:250]}
    if verdict is not None:
        figures["chatft-canary-error-rate"] = f"{verdict.new.error_rate:.4f}"
    workspace.set_model_stage(model.name, model.version, "rejected", figures)
    delete_deployment(workspace, plan.endpoint_name, new, request.deployment_timeout_minutes)
    endpoint = record_step(workspace, plan.endpoint_name, "undone", plan.request_id, old, new)
    reports.emit("rollout.rolled-back", plan.endpoint_name, workspace.kind, {
        "model": model.name, "version": model.version, "deployment": new, "restored": old,
        "reason": why})
    report_decision(plan.endpoint_name, "rolled back", [
        f"**Rolled back**: {old or 'nothing'} takes 100 % of {plan.endpoint_name} again; the "
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
             "probes | figures from |\n|---|---|---|---|---|---|---|---|\n")
    legend = ("\n\nFigures from the *request log*: the endpoint's per-deployment log, real "
              "traffic and the rollout's probes together; from *probes*: the probes' own "
              "results (the workspace keeps no per-deployment latency).")
    table += "\n".join(
        f"| {f.deployment} | {f.role} | {f.requests} | {f.errors} | {f.error_rate:.1%} | "
        f"{f.median_latency_ms:.0f} | {f.probes} | {f.source} |"
        if f.median_latency_ms is not None else
        f"| {f.deployment} | {f.role} | {f.requests} | {f.errors} | {f.error_rate:.1%} | - | "
        f"{f.probes} | {f.source} |" for f in rows)
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
