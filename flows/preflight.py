"""The pre-flight of finetune_and_deploy, and the plan it leaves for the steps.

Every check that can run before anything is created, written or billed runs here, in the
order of docs/procedure.md: the workspace and credential (step 1), the foundation model
and its tags (2), the compute the job would use (3: allow list, sizes, quota, a read of
the cluster), every input the job would send against the component version that will run
(5), the serving size (7) and who owns the names the request would use. Nothing is
written to the workspace before :func:`run_preflight` returns.

Its result, :class:`FinetunePlan`, holds every default resolved once (model, compute,
instance type, dataset, data folder, endpoint name), so the steps read from one place.

Example::

    plan = run_preflight(workspace, FinetuneRequest(dataset="sample"))
    plan.endpoint_name    # 'ultrachat-completion-3735928559'
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from flows.parameters import FinetuneRequest
from tasks import reports
from tasks.component_check import check_finetune_inputs, get_pipeline_interface
from tasks.compute import ComputePlan, check_compute
from tasks.endpoints import check_endpoint_ownership, check_serving_size
from tasks.finetune import allocate_suffix
from tasks.foundation_model import get_foundation_model, resolve_finetune_parameters
from tasks.rollout import (
    RolloutPlan,
    canary_deployment_name,
    check_canary_room,
    check_rollout_target,
)
from tasks.workspace_access import check_workspace_access
from workspaces.interface import (
    DeploymentSpec,
    FoundationModel,
    RegisteredModel,
    Workspace,
    managed_tags,
)
from workspaces.naming import endpoint_name_for, registered_model_name


class FinetunePlan(BaseModel):
    """What one fine-tune request will do on one workspace, every default resolved."""

    request_id: str = Field(description="The request's identity on this workspace")
    model_version: str = Field(
        description="The version the tuned model is registered as (ten digits from the request "
        "id); the job's name, the default endpoint's name and the sample's seed carry it too"
    )
    model: FoundationModel
    parameters: dict[str, str] = Field(description="The job's fine-tune inputs, resolved")
    component_version: str = Field(description="The pipeline version the inputs were checked on")
    compute: ComputePlan
    dataset: str
    dataset_split_pc: float
    data_root: str = Field(description="Where the prepared splits are written")
    endpoint_name: str
    deployment_name: str
    instance_type: str
    instance_count: int
    rollout: RolloutPlan | None = Field(
        None, description="Where a canary release starts from (None: new-endpoint)"
    )

    def managed_tags(
        self, this_run: str, model: FoundationModel | RegisteredModel | None = None
    ) -> dict[str, str]:
        """The tags of what this request makes in ``this_run``: managed, the run, the
        request, and ``model``'s name and version when given."""
        if model is None:
            return managed_tags(self.request_id, this_run)
        return managed_tags(self.request_id, this_run, model.name, model.version)

    def deployment_spec(self, model: RegisteredModel, this_run: str) -> DeploymentSpec:
        """The deployment of ``model`` this request makes: its name and size from the plan,
        its tags, owned by the request."""
        return DeploymentSpec(
            endpoint_name=self.endpoint_name, name=self.deployment_name, model_id=model.id,
            instance_type=self.instance_type, instance_count=self.instance_count,
            tags=self.managed_tags(this_run, model), owner=self.request_id,
        )


def run_preflight(workspace: Workspace, request: FinetuneRequest) -> FinetunePlan:
    """Check everything that can be checked before anything is created, then plan.

    Args:
        workspace: where the request runs.
        request: the fine-tune request; its empty fields take the workspace's defaults.

    Returns:
        The plan the steps carry out.

    Raises:
        InvalidRequest: the request, the model's tags or a name's owner forbid the run;
            the message names the field and what is allowed.
        QuotaExceeded: the workspace has no room for the compute the job needs.
        AuthenticationFailed: the credential does not reach the workspace.
    """
    check_workspace_access(workspace)
    model = get_foundation_model(
        workspace, request.foundation_model or workspace.default_foundation_model,
        request.foundation_model_label,
    )
    reports.report_foundation_model(model, workspace.kind)
    training = request.training
    requested = training.as_component_inputs()
    parameters = resolve_finetune_parameters(
        model, requested, training.apply_model_specific_defaults
    )
    compute_name = request.compute_cluster or workspace.default_compute_name
    # The request against the component version that will run: every input's name, type,
    # choice and bounds.
    pipeline = get_pipeline_interface(workspace, request.component_version)
    check_finetune_inputs(
        pipeline, model, parameters, training.input_fields(),
        training.apply_model_specific_defaults, request.num_nodes_finetune, compute_name,
        requested=requested,
    )
    instance_type = request.instance_type or workspace.default_instance_type
    check_serving_size(workspace, model, instance_type, request.instance_count)
    compute = check_compute(
        workspace, compute_name, request.compute_size, request.compute_max_instances, model,
        request.num_nodes_finetune,
    )
    request_id = request.request_id(workspace.cache_scope)
    model_version = allocate_suffix(workspace, request_id)
    endpoint_name = request.endpoint_name or endpoint_name_for(model_version)
    deployment_name, rollout = request.deployment_name, None
    if request.rollout.strategy == "canary":
        # A release onto a live endpoint: the endpoint is another request's by design; the
        # rollout claims it at its first write, refused while another rollout is under way.
        deployment_name = canary_deployment_name(request.deployment_name, model_version)
        rollout = check_rollout_target(
            workspace, request.endpoint_name, registered_model_name(model.name), request_id,
            deployment_name, request.rollout.mirror_percent, request.delete_endpoint,
        )
        if rollout.current_deployment and rollout.resume_step is None:
            # Both deployments serve at once during a canary: the new one needs room.
            check_canary_room(workspace, instance_type, request.instance_count)
    else:
        # An endpoint or deployment another request made is refused before training (and
        # again at every write: another run may take the name while this one trains).
        check_endpoint_ownership(
            workspace, endpoint_name, request.deployment_name, request_id, request.take_over
        )
    return FinetunePlan(
        request_id=request_id, model_version=model_version, model=model, parameters=parameters,
        component_version=pipeline.version, compute=compute,
        dataset=request.dataset or workspace.default_dataset,
        dataset_split_pc=request.dataset_split_pc,
        data_root=str(workspace.local_data_root() or workspace.data_folder(request.download_dir)),
        endpoint_name=endpoint_name, deployment_name=deployment_name,
        instance_type=instance_type, instance_count=request.instance_count, rollout=rollout,
    )
