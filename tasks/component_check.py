"""Pre-flight: the fine-tune inputs checked against the pipeline component's own interface.

The workspace publishes the interface of the component version the job will run (Azure:
the registry's ``chat_completion_pipeline``; local: its own pipeline, which keeps that
interface). Every input the job would send is checked against it before anything is
created; see :mod:`workspaces.pipeline_inputs` for the rules.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE, RUN_ID

from tasks import reports
from tasks.policies import WORKSPACE_INPUTS, transient_retries
from workspaces.interface import FoundationModel, PipelineInterface, Workspace
from workspaces.pipeline_inputs import InputCheck, check_inputs, plan_inputs


# Cached for the flow run, like the other lookups of the pre-flight: the check and the
# submission see one component version; the next run asks the registry again ("latest"
# moves when a new version ships).
@task(
    name="get-pipeline-interface",
    cache_policy=WORKSPACE_INPUTS + RUN_ID,
    **transient_retries(),
)
def get_pipeline_interface(workspace: Workspace, version: str | None) -> PipelineInterface:
    """The fine-tune component's inputs, for the pinned version or the latest one."""
    interface = workspace.get_pipeline_interface(version)
    get_run_logger().info(
        "Fine-tune pipeline %s (%s requested): %d inputs",
        interface.label, version or "latest", len(interface.inputs),
    )
    return interface


# Not cached: cheap, and a refusal must be said again on every run.
@task(name="check-finetune-inputs", cache_policy=NO_CACHE)
def check_finetune_inputs(
    interface: PipelineInterface,
    model: FoundationModel,
    parameters: dict[str, str],
    fields: dict[str, str],
    apply_model_defaults: bool,
    num_nodes: int,
    compute: str,
    requested: dict[str, str] | None = None,
) -> InputCheck:
    """Refuse the request when any input it would send is not what the component takes.

    Inputs the workspace takes but does not use are logged and listed in the
    ``pipeline-inputs`` artifact, as are the request's values (``requested``, before the
    model's defaults) that the model's ``model_specific_defaults`` replaced.
    """
    logger = get_run_logger()
    planned = plan_inputs(
        parameters, fields, model, apply_model_defaults, num_nodes, compute, requested
    )
    result = check_inputs(interface, planned)
    reports.report_pipeline_inputs(result)
    for name, reason in sorted(result.ignored.items()):
        logger.warning("Input %s is ignored by %s: %s", name, interface.label, reason)
    result.raise_for_problems()
    logger.info("All %d inputs fit %s", len(planned), interface.label)
    return result
