"""finetune_and_deploy: fine-tune a chat model, register it, deploy it, score a sample.

Runs steps 1-8 of docs/procedure.md (and 9, deleting the endpoint, when
``delete_endpoint`` is set) against a workspace chosen by ``workspace_block``: the
embedded local workspace by default, or Azure Machine Learning through an
``azure-ml-workspace`` block. The pre-flight (:mod:`flows.preflight`) checks everything
it can before anything is created; the steps then carry out its plan.

A re-run with the same request finds the job, model version, endpoint and deployment it
made before and creates nothing new; a run killed while the job trains attaches to the
same job when started again.

Run it:
    python -m flows.finetune_and_deploy                 # local workspace, defaults
    python -m flows.finetune_and_deploy --help          # every field of the request
    python -m flows.finetune_and_deploy --training.num-train-epochs 1 --delete-endpoint
or from a Prefect server: the ``finetune-and-deploy`` deployment in prefect.yaml.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":
    # Before Prefect is imported: a re-run that nothing has changed since needs none of it.
    from flows.unchanged_rerun import answer_if_unchanged

    if answer_if_unchanged(sys.argv[1:]):
        raise SystemExit(0)

from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Completed, State

from blocks import load_workspace
from flows.cli import parse_request
from flows.deploy_step import deploy
from flows.finetune_result import FLOW_NAME, FinetuneResult, print_result
from flows.parameters import FinetuneRequest, WorkspaceBlock, form_title
from flows.preflight import FinetunePlan, run_preflight
from flows.reported_failure import install as quiet_reported_failures
from flows.rollout import ReleaseOutcome, release
from flows.startup import skip_final_collection
from flows.unchanged_rerun import command_key, forget_receipt, keep_receipt
from tasks import reports
from tasks.compute import ensure_compute
from tasks.data import ensure_dataset, first_rows
from tasks.endpoints import (
    delete_endpoint,
    reply_text,
    sample_request,
    score_sample,
)
from tasks.finetune import (
    get_job_metrics,
    job_created,
    submit_finetune_job,
    wait_for_job,
)
from tasks.foundation_model import prepare_foundation_model
from tasks.liveness import release_heartbeat
from tasks.own_traffic import record_own_requests
from tasks.registry import register_model
from workspaces.interface import (
    LINEAGE_TAGS,
    SPLIT_SHA256_TAGS,
    TAG_DATASET,
    TAG_FLOW_RUN,
    TAG_MAX_SEQ_LENGTH,
    TAG_SUFFIX,
    ComputeTarget,
    FinetuneJob,
    FinetuneJobSpec,
    JobMetrics,
    RegisteredModel,
    Workspace,
)
from workspaces.naming import (
    experiment_name_for,
    finetune_display_name,
    finetune_job_name,
    registered_model_description,
    registered_model_name,
)
from workspaces.scoring import BadReply
from workspaces.ultrachat import PreparedDataset

quiet_reported_failures()


@flow(
    name=FLOW_NAME,
    description="Fine-tune a chat model on ultrachat_200k, register, deploy and score it.",
    log_prints=True,
)
def finetune_and_deploy(
    request: Annotated[FinetuneRequest, form_title("What to fine-tune and deploy")] = (
        FinetuneRequest()  # noqa: B008 - Prefect shows the default request as the form
    ),
    workspace_block: WorkspaceBlock = "",
) -> FinetuneResult:
    """Steps 1-8 of docs/procedure.md (9 optional) on the workspace ``workspace_block`` names.

    Args:
        request: what to fine-tune and how to deploy it; empty fields take the
            workspace's defaults.
        workspace_block: where to run, as a Prefect block: local-workspace/NAME or
            azure-ml-workspace/NAME. Leave empty for the embedded local workspace in
            $CHATFT_STATE_DIR (default ./.workspace).

    Returns:
        What the run made or reused: job, model version, endpoint, the sample's reply.

    Example:
        ``finetune_and_deploy(request=FinetuneRequest(dataset="sample"))``
    """
    workspace = load_workspace(workspace_block)
    this_run = str(flow_run.get_id() or "local")
    # 1-2, and every check of 3-7: nothing is created, written or billed before it passes.
    plan = run_preflight(workspace, request)
    reports.name_run(f"{plan.model.name} -> {plan.endpoint_name}")
    # 4. data before compute exists: a bad dataset must cost nothing. The splits are
    # prepared and validated whole, so the job only ever reads checked files.
    prepared = ensure_dataset(
        plan.dataset, plan.dataset_split_pc, plan.data_root, workspace.cache_scope
    )
    reports.report_dataset(prepared, first_rows(prepared))
    # 3. the compute the pre-flight checked
    compute, gpus = ensure_compute(workspace, plan.compute)
    # 5-6. fine-tune, register
    job, metrics, tuning = fine_tune(workspace, request, plan, prepared, compute, gpus, this_run)
    registered = register(workspace, plan, job, prepared, this_run)
    # 7-8. deploy (or release onto a live endpoint), score a sample
    outcome: ReleaseOutcome | None = None
    if plan.rollout is not None:
        # The recovery leaves a release alone while its run beats (tasks/liveness.py).
        with release_heartbeat(this_run):
            outcome = release(workspace, request, plan, registered, metrics, prepared.files,
                              this_run)
        endpoint, endpoint_reused = outcome.endpoint, plan.rollout.endpoint_exists
    else:
        endpoint, endpoint_reused = deploy(workspace, request, plan, registered, this_run)
    reply, sample_file = "", Path()
    if outcome is None or outcome.serving == plan.deployment_name:
        reply, sample_file = score(workspace, request, plan, prepared, metrics)
    # 9. clean up (off by default: teardown_idle_endpoints owns clean-up)
    deleted = request.delete_endpoint and clean_up(workspace, plan.endpoint_name)

    result = FinetuneResult(
        workspace=workspace.cache_scope, request_id=plan.request_id, suffix=plan.model_version,
        job_name=job.name, job_reused=job.tags.get(TAG_FLOW_RUN) != this_run,
        model_name=registered.name, model_version=registered.version,
        endpoint_name=plan.endpoint_name,
        scoring_uri=endpoint.scoring_uri if endpoint is not None else None,
        endpoint_reused=endpoint_reused, deployment_name=plan.deployment_name, reply=reply,
        tuning_summary=tuning, endpoint_deleted=deleted,
        sample_request_file=str(sample_file) if sample_file.name else "",
        rollout=outcome.outcome if outcome else "",
        rollout_message=outcome.message if outcome else "",
        flow_run_id=this_run, flow_run_name=flow_run.get_name() or "",
    )
    logger = get_run_logger()
    logger.info(
        "Done: job %s (%s), model %s:%s (%s), endpoint %s (%s)",
        job.name, "reused" if result.job_reused else "new", registered.name,
        registered.version, "reused" if registered.tags.get(TAG_FLOW_RUN) != this_run else "new",
        plan.endpoint_name, "reused" if endpoint_reused else "new",
    )
    logger.info("Reply of the tuned model: %r", reply)
    logger.info(tuning)
    if outcome is not None:
        logger.info("Rollout: %s", outcome.message)
        return rollout_state(outcome, result)
    return result


# A correct refusal is not a failure: the run did its job, and the model is not released.
# The state's name says which way it went (the UI shows it), its type stays Completed.
ROLLOUT_STATE_NAMES = {"rejected": "Rejected", "rolled-back": "RolledBack", "held": "Held",
                       "refused": "Refused"}


def rollout_state(outcome: ReleaseOutcome, result: FinetuneResult) -> FinetuneResult | State:
    """The run's final state: Completed, named for a release that did not happen."""
    name = ROLLOUT_STATE_NAMES.get(outcome.outcome)
    if name is None:
        return result
    return Completed(name=name, message=outcome.message, data=result)


def fine_tune(
    workspace: Workspace,
    request: FinetuneRequest,
    plan: FinetunePlan,
    prepared: PreparedDataset,
    compute: ComputeTarget,
    gpus: int,
    this_run: str,
) -> tuple[FinetuneJob, JobMetrics, str]:
    """Step 5: submit the job (or attach to the request's), wait, read its metrics.

    Returns:
        The Completed job, its metrics, and the sentence saying what tuning changed.
    """
    model = plan.model
    # a local catalog model is converted once, before its first job
    prepare_foundation_model(workspace, model)
    spec = FinetuneJobSpec(
        name=finetune_job_name(plan.request_id, plan.model_version),
        display_name=finetune_display_name(
            model.name, plan.parameters, gpus, request.num_nodes_finetune
        ),
        experiment_name=experiment_name_for(model.name),
        foundation_model=model,
        compute=compute.name,
        train_file=prepared.files["train_sft"],
        test_file=prepared.files["test_sft"],
        test_gen_file=prepared.files.get("test_gen"),
        gpus_per_node=gpus,
        num_nodes=request.num_nodes_finetune,
        parameters=plan.parameters,
        # the version the pre-flight checked, so "latest" cannot move under the job
        component_version=plan.component_version,
        tags={
            **plan.managed_tags(this_run, model),
            TAG_SUFFIX: plan.model_version,
            # the data this job is given, kept on the job for the model's lineage
            TAG_DATASET: plan.dataset,
            "dataset-split-pc": f"{plan.dataset_split_pc:g}",
            # the truncation its held-out loss was measured at, for the gate's comparisons
            TAG_MAX_SEQ_LENGTH: plan.parameters.get("max_seq_length") or "default",
            **{tag: prepared.sha256[split] for split, tag in SPLIT_SHA256_TAGS.items()
               if split in prepared.sha256},
        },
    )
    job = submit_finetune_job(workspace, spec, plan.request_id, request.resubmit_failed_job)
    reused = job.tags.get(TAG_FLOW_RUN) != this_run
    artifact = reports.report_finetune_submission(job, plan.parameters, compute, gpus, reused)
    job = wait_for_job(
        workspace, job.name, request.job_timeout_minutes, request.cancel_job_on_timeout,
        job_created=job_created(job),
    )
    reports.report_finetune_outcome(artifact, job, plan.parameters, compute, gpus, reused)
    metrics = get_job_metrics(workspace, job.name, job_created(job))
    return job, metrics, reports.report_metrics(job, metrics)


def register(
    workspace: Workspace,
    plan: FinetunePlan,
    job: FinetuneJob,
    prepared: PreparedDataset,
    this_run: str,
) -> RegisteredModel:
    """Step 6: register the job's trained model as version ``plan.model_version``.

    Lineage comes from the job's record of its data (a reused job may have been given
    other content than the data this run prepared), never from the request.
    """
    lineage = {tag: job.tags[tag] for tag in LINEAGE_TAGS if tag in job.tags}
    if lineage.get("train-sha256", prepared.sha256["train_sft"]) != prepared.sha256["train_sft"]:
        get_run_logger().warning(
            "Job %s trained on other data than this run prepared (train_sft sha256 %s, now "
            "%s); the model's lineage names what the job trained on",
            job.name, lineage["train-sha256"][:12], prepared.sha256["train_sft"][:12],
        )
    registered = register_model(
        workspace,
        registered_model_name(plan.model.name),
        plan.model_version,
        job.name,
        registered_model_description(plan.model.name),
        {
            **plan.managed_tags(this_run),
            "base-model": plan.model.id,
            # the job whose evaluation the rollout's gate reads for this version
            "job-name": job.name,
            **lineage,
        },
    )
    reports.report_model(registered)
    return registered


def score(
    workspace: Workspace,
    request: FinetuneRequest,
    plan: FinetunePlan,
    prepared: PreparedDataset,
    metrics: JobMetrics,
) -> tuple[str, Path]:
    """Step 8: send one held-out conversation to the deployment and keep its reply.

    Returns:
        The reply ("" when it broke the scoring contract) and the file holding the body.
    """
    body = sample_request(
        prepared.files["test_gen"], request.scoring.model_dump(), seed=int(plan.model_version),
        evaluated=metrics.samples,
    )
    # The body belongs to this request (its seed, its scoring settings): it is kept in a
    # folder of the request's own, never in a folder other requests write to, and never in
    # the content-named data folder, whose identity is its data.
    sample_file = Path(plan.data_root) / "requests" / plan.request_id / "sample_score.json"
    response = score_sample(
        workspace, plan.endpoint_name, plan.deployment_name, body, str(sample_file)
    )
    try:
        reply = reply_text(response)
    except BadReply as exc:
        # The deployment answered, but not with a usable reply: say so, as the smoke test would.
        get_run_logger().warning(
            "The sample reply breaks the scoring contract (%s): %s", exc.kind, exc
        )
        reply = ""
    reports.report_score(body, response, reply, reports.evaluated_sample(metrics, body))
    record_own_requests(plan.endpoint_name, workspace.kind, "finetune-and-deploy", 1)
    return reply, sample_file


def clean_up(workspace: Workspace, endpoint_name: str) -> bool:
    """Step 9: delete the endpoint; True when it existed and is gone."""
    deleted = delete_endpoint(workspace, endpoint_name)
    if deleted:
        reports.emit(
            "endpoint.deleted",
            endpoint_name,
            workspace.kind,
            {"reason": "delete_endpoint=true in finetune-and-deploy"},
        )
    return deleted


def main(argv: list[str] | None = None) -> None:
    """``python -m flows.finetune_and_deploy``: parse the request from ``argv``, run, print."""
    argv = list(sys.argv[1:] if argv is None else argv)
    request, workspace_block = parse_request(
        FinetuneRequest, "python -m flows.finetune_and_deploy", argv
    )
    # The command as started (the flow may change the process's settings as it runs).
    command = command_key(argv)
    forget_receipt(command, workspace_block)
    result = finetune_and_deploy(request=request, workspace_block=workspace_block)
    keep_receipt(command, workspace_block, request, result)
    print_result(result)


if __name__ == "__main__":
    main()
    skip_final_collection()
