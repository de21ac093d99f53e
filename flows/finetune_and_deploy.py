"""finetune_and_deploy: fine-tune a chat model, register it, deploy it, score a sample.

Runs MISSION.md steps 1-8 (and 9, deleting the endpoint, when ``delete_endpoint`` is set)
against a workspace chosen by ``workspace_block``: the embedded local workspace by
default, or Azure Machine Learning through an ``azure-ml-workspace`` block.

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

from pathlib import Path

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import BaseModel

from blocks import load_workspace
from flows.cli import parse_request
from flows.parameters import FinetuneRequest, WorkspaceBlock
from tasks import reports
from tasks.component_check import check_finetune_inputs, get_pipeline_interface
from tasks.compute import ensure_compute
from tasks.data import ensure_dataset, first_rows
from tasks.endpoints import (
    check_endpoint_ownership,
    create_deployment,
    create_endpoint,
    delete_endpoint,
    reply_text,
    route_traffic,
    sample_request,
    score_sample,
)
from tasks.finetune import allocate_suffix, get_job_metrics, submit_finetune_job, wait_for_job
from tasks.foundation_model import (
    check_workspace_access,
    get_foundation_model,
    prepare_foundation_model,
    resolve_finetune_parameters,
)
from tasks.own_traffic import record_own_requests
from tasks.registry import register_model
from workspaces.compute_rules import check_inference_size
from workspaces.errors import InvalidRequest
from workspaces.interface import (
    LINEAGE_TAGS,
    MANAGED_BY_VALUE,
    SPLIT_SHA256_TAGS,
    TAG_DATASET,
    TAG_FLOW_RUN,
    TAG_MANAGED_BY,
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_REQUEST,
    TAG_SUFFIX,
    FinetuneJobSpec,
)
from workspaces.model_tags import INFERENCE_ALLOW_LIST, TagParseError, allow_list
from workspaces.naming import (
    endpoint_name_for,
    experiment_name_for,
    finetune_display_name,
    finetune_job_name,
    registered_model_description,
    registered_model_name,
)
from workspaces.scoring import BadReply


class FinetuneResult(BaseModel):
    """What the run produced, as shown at the end of the run and returned to callers."""

    workspace: str
    request_id: str
    suffix: str
    job_name: str
    job_reused: bool
    model_name: str
    model_version: str
    endpoint_name: str
    scoring_uri: str | None
    endpoint_reused: bool
    deployment_name: str
    reply: str
    tuning_summary: str = ""
    endpoint_deleted: bool = False
    sample_request_file: str = ""


@flow(
    name="finetune-and-deploy",
    description="Fine-tune a chat model on ultrachat_200k, register, deploy and score it.",
    log_prints=True,
)
def finetune_and_deploy(
    request: FinetuneRequest = FinetuneRequest(),  # noqa: B008 - Prefect shows it as the form
    workspace_block: WorkspaceBlock = "",
) -> FinetuneResult:
    """MISSION steps 1-8 (9 optional) on the workspace named by ``workspace_block``.

    Args:
        request: what to fine-tune and how to deploy it; empty fields take the
            workspace's defaults.
        workspace_block: where to run, as a Prefect block: local-workspace/<name> or
            azure-ml-workspace/<name>. Leave empty for the embedded local workspace in
            $CHATFT_STATE_DIR (default ./.workspace).
    """
    logger = get_run_logger()
    workspace = load_workspace(workspace_block)
    this_run = str(flow_run.get_id() or "local")

    # 1-2. workspace, foundation model, parameters (the pre-flight gate: nothing is
    # created or billed before these pass)
    check_workspace_access(workspace)
    model_name = request.foundation_model or workspace.default_foundation_model
    model = get_foundation_model(workspace, model_name, request.foundation_model_label)
    reports.report_foundation_model(model, workspace.kind)
    parameters = resolve_finetune_parameters(
        model,
        request.training.as_component_inputs(),
        request.training.apply_model_specific_defaults,
    )
    # The request against the component version that will run: every input's name, type,
    # choice and minimum, before any compute exists.
    pipeline = get_pipeline_interface(workspace, request.component_version)
    check_finetune_inputs(
        pipeline,
        model,
        parameters,
        request.training.input_fields(),
        request.training.apply_model_specific_defaults,
        request.num_nodes_finetune,
        request.compute_cluster or workspace.default_compute_name,
        requested=request.training.as_component_inputs(),
    )
    instance_type = request.instance_type or workspace.default_instance_type
    try:
        inference_problem = check_inference_size(
            instance_type, allow_list(model, INFERENCE_ALLOW_LIST)
        )
    except TagParseError as exc:
        raise InvalidRequest(str(exc)) from exc
    if inference_problem:
        raise InvalidRequest(f"instance_type: {inference_problem}")
    serving_problem = workspace.deployment_size_problem(instance_type, request.instance_count)
    if serving_problem:
        raise InvalidRequest(serving_problem)

    request_id = request.request_id(workspace.cache_scope)
    suffix = allocate_suffix(workspace, request_id)
    endpoint_name = request.endpoint_name or endpoint_name_for(suffix)
    reports.name_run(f"{model.name} -> {endpoint_name}")

    # 3. data, before any compute: a bad dataset must cost nothing. The splits are
    # prepared and validated whole here, so the job only ever reads checked files.
    source = request.dataset or workspace.default_dataset
    # Local: inside the workspace's state (one folder per content); Azure: download_dir.
    data_root = workspace.local_data_root() or request.download_dir
    prepared = ensure_dataset(
        source, request.dataset_split_pc, str(data_root), workspace.cache_scope
    )
    reports.report_dataset(prepared, first_rows(prepared))

    # Names: an endpoint or deployment another request made is refused before training.
    check_endpoint_ownership(
        workspace, endpoint_name, request.deployment_name, request_id, request.take_over
    )

    # 4. compute: its rules (allow list, sizes, quota) are checked before it is created;
    # the job below is the only step after it.
    compute, gpus = ensure_compute(
        workspace,
        request.compute_cluster or workspace.default_compute_name,
        request.compute_size,  # empty: the existing cluster's size, else the default
        request.compute_max_instances,
        model,
        request.num_nodes_finetune,
    )

    # 5. fine-tune job (a local catalog model is converted once, before its first job)
    prepare_foundation_model(workspace, model)
    display_name = finetune_display_name(model.name, parameters, gpus, request.num_nodes_finetune)
    spec = FinetuneJobSpec(
        name=finetune_job_name(request_id, suffix),
        display_name=display_name,
        experiment_name=experiment_name_for(model.name),
        foundation_model=model,
        compute=compute.name,
        train_file=prepared.files["train_sft"],
        test_file=prepared.files["test_sft"],
        test_gen_file=prepared.files.get("test_gen"),
        gpus_per_node=gpus,
        num_nodes=request.num_nodes_finetune,
        parameters=parameters,
        # the version the pre-flight checked, so "latest" cannot move under the job
        component_version=pipeline.version,
        tags={
            TAG_MANAGED_BY: MANAGED_BY_VALUE,
            TAG_FLOW_RUN: this_run,
            TAG_REQUEST: request_id,
            TAG_SUFFIX: suffix,
            TAG_MODEL: model.name,
            TAG_MODEL_VERSION: model.version,
            # the data this job is given, kept on the job for the model's lineage
            TAG_DATASET: source,
            "dataset-split-pc": f"{request.dataset_split_pc:g}",
            **{tag: prepared.sha256[split] for split, tag in SPLIT_SHA256_TAGS.items()
               if split in prepared.sha256},
        },
    )
    job = submit_finetune_job(workspace, spec, request_id, request.resubmit_failed_job)
    job_reused = job.tags.get(TAG_FLOW_RUN) != this_run
    job_artifact = reports.report_finetune_submission(job, parameters, compute, gpus, job_reused)
    job = wait_for_job(
        workspace, job.name, request.job_timeout_minutes, request.cancel_job_on_timeout
    )
    reports.report_finetune_outcome(job_artifact, job, parameters, compute, gpus, job_reused)
    metrics = get_job_metrics(workspace, job.name)
    tuning = reports.report_metrics(job, metrics)

    # 6. register. Lineage comes from the job's record of its data (a reused job may have
    # been given other content than the data prepared by this run), never from the request.
    lineage = {tag: job.tags[tag] for tag in LINEAGE_TAGS if tag in job.tags}
    if lineage.get("train-sha256", prepared.sha256["train_sft"]) != prepared.sha256["train_sft"]:
        logger.warning(
            "Job %s trained on other data than this run prepared (train_sft sha256 %s, now "
            "%s); the model's lineage names what the job trained on",
            job.name, lineage["train-sha256"][:12], prepared.sha256["train_sft"][:12],
        )
    registered_name = registered_model_name(model.name)
    registered = register_model(
        workspace,
        registered_name,
        suffix,
        job.name,
        registered_model_description(model.name),
        {
            TAG_MANAGED_BY: MANAGED_BY_VALUE,
            TAG_FLOW_RUN: this_run,
            TAG_REQUEST: request_id,
            "base-model": model.id,
            **lineage,
        },
    )
    reports.report_model(registered)

    # 7. deploy
    resource_tags = {
        TAG_MANAGED_BY: MANAGED_BY_VALUE,
        TAG_FLOW_RUN: this_run,
        TAG_REQUEST: request_id,
        TAG_MODEL: registered.name,
        TAG_MODEL_VERSION: registered.version,
    }
    endpoint = create_endpoint(
        workspace,
        endpoint_name,
        f"Serves {registered.name} version {registered.version} "
        "(ultrachat_200k chat-completion fine-tune)",
        resource_tags,
        request.deployment_timeout_minutes,
        take_over=request.take_over,
    )
    endpoint_reused = endpoint.tags.get(TAG_FLOW_RUN) != this_run
    create_deployment(
        workspace,
        endpoint_name,
        request.deployment_name,
        registered.id,
        instance_type,
        request.instance_count,
        resource_tags,
        request.deployment_timeout_minutes,
    )
    endpoint = route_traffic(
        workspace, endpoint_name, {request.deployment_name: 100}, owner=request_id
    )
    reports.report_endpoint(endpoint, request.deployment_name, endpoint_reused)
    reports.emit(
        "endpoint.deployed",
        endpoint_name,
        workspace.kind,
        {
            "model": registered.name,
            "version": registered.version,
            "deployment": request.deployment_name,
            "scoring_uri": endpoint.scoring_uri,
            "reused": endpoint_reused,
        },
    )

    # 8. score a sample
    body = sample_request(
        prepared.files["test_gen"], request.scoring.model_dump(), seed=int(suffix)
    )
    # The body belongs to this request (its seed, its scoring settings): it is kept in a
    # folder of the request's own, never in a folder other requests write to, and never in
    # the content-named data folder, whose identity is its data.
    sample_file = Path(data_root) / "requests" / request_id / "sample_score.json"
    response = score_sample(
        workspace, endpoint_name, request.deployment_name, body, str(sample_file)
    )
    try:
        reply = reply_text(response)
    except BadReply as exc:
        # The deployment answered, but not with a usable reply: say so, as the smoke test would.
        logger.warning("The sample reply breaks the scoring contract (%s): %s", exc.kind, exc)
        reply = ""
    reports.report_score(body, response, reply, reports.base_reply_to(metrics, body))
    record_own_requests(endpoint_name, workspace.kind, "finetune-and-deploy", 1)

    # 9. clean up (off by default: teardown_idle_endpoints owns clean-up)
    deleted = False
    if request.delete_endpoint:
        deleted = delete_endpoint(workspace, endpoint_name)
        if deleted:
            reports.emit(
                "endpoint.deleted",
                endpoint_name,
                workspace.kind,
                {"reason": "delete_endpoint=true in finetune-and-deploy"},
            )

    result = FinetuneResult(
        workspace=workspace.cache_scope,
        request_id=request_id,
        suffix=suffix,
        job_name=job.name,
        job_reused=job_reused,
        model_name=registered.name,
        model_version=registered.version,
        endpoint_name=endpoint_name,
        scoring_uri=endpoint.scoring_uri,
        endpoint_reused=endpoint_reused,
        deployment_name=request.deployment_name,
        reply=reply,
        tuning_summary=tuning,
        endpoint_deleted=deleted,
        sample_request_file=str(sample_file),
    )
    logger.info(
        "Done: job %s (%s), model %s:%s (%s), endpoint %s (%s)",
        job.name,
        "reused" if job_reused else "new",
        registered.name,
        registered.version,
        "reused" if registered.tags.get(TAG_FLOW_RUN) != this_run else "new",
        endpoint_name,
        "reused" if endpoint_reused else "new",
    )
    logger.info("Reply of the tuned model: %r", reply)
    logger.info(tuning)
    return result


def main(argv: list[str] | None = None) -> None:
    request, workspace_block = parse_request(
        FinetuneRequest, "python -m flows.finetune_and_deploy", argv
    )
    result = finetune_and_deploy(request=request, workspace_block=workspace_block)
    print()
    print(
        f"Endpoint:    {result.endpoint_name}" + (" (deleted)" if result.endpoint_deleted else "")
    )
    print(f"Scoring URI: {result.scoring_uri}")
    print(f"Model:       {result.model_name} version {result.model_version}")
    print(f"Reply:       {result.reply!r}")
    print(f"Sample body: {result.sample_request_file}")
    if not result.endpoint_deleted and result.workspace.startswith("local:"):
        print(
            "The endpoint keeps serving. Stop and delete local endpoints with: "
            "make endpoints-delete"
        )


if __name__ == "__main__":
    main()
