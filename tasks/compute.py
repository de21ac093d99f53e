"""Step 3 of docs/procedure.md: the fine-tune compute, checked in the pre-flight, then
reused or created.

The checks need only the request, the model's tags and reads of the workspace (the
cluster, the quota, the VM sizes), so :func:`check_compute` runs in the pre-flight, before
any data is written; :func:`ensure_compute` then creates or reuses the cluster it planned.
"""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, Field

from tasks.policies import transient_retries
from workspaces import compute_provisioning
from workspaces.compute_rules import check_existing_cluster_size, check_finetune_compute
from workspaces.errors import QuotaExceeded
from workspaces.interface import ComputeTarget, FoundationModel, VmSize, Workspace
from workspaces.model_tags import FINETUNE_ALLOW_LIST, allow_list


class ComputePlan(BaseModel):
    """The cluster the job will run on, as the pre-flight found and checked it."""

    name: str
    size: str = Field(description="The existing cluster's size, else the size to create")
    size_asked: bool = Field(description="Whether the request named compute_size")
    max_instances: int
    exists: bool
    existing: ComputeTarget | None = Field(
        None, description="The cluster as the pre-flight read it (None: there was none)")
    tiers: list[str] = Field(description="Tiers with quota, in the order to try")
    allowed_sizes: list[str] | None = Field(description="The model's allow list, if any")
    vm_sizes: list[VmSize] = Field(description="The workspace's VM sizes, for GPUs per node")
    gpus_per_node: int


# Not cached: a cluster can be deleted or fail between runs; looking it up is cheap.
@task(name="check-compute", cache_policy=NO_CACHE, **transient_retries())
def check_compute(
    workspace: Workspace,
    name: str,
    size: str | None,
    max_instances: int,
    model: FoundationModel,
    nodes: int = 1,
) -> ComputePlan:
    """Check the cluster the job would use, creating nothing.

    Args:
        workspace: where the cluster lives.
        name: the cluster (``compute_cluster``, or the workspace's default).
        size: the request's ``compute_size``: None takes an existing cluster whatever its
            size (a new one gets the workspace's default); a size other than the existing
            cluster's is refused (a cluster's size cannot change).
        max_instances: nodes the cluster may scale to when it is created.
        model: the foundation model, whose ``finetune_compute_allow_list`` applies.
        nodes: nodes the job uses (``num_nodes_finetune``), counted against the quota.

    Returns:
        The plan :func:`ensure_compute` carries out.

    Raises:
        InvalidRequest: a size the model or workspace does not allow, a failed cluster, a
            malformed allow-list tag.
        QuotaExceeded: no tier has room for ``nodes`` nodes of the size.
    """
    logger = get_run_logger()
    new_size = size or workspace.default_compute_size
    logger.info("Checking compute %s (%s, up to %d node(s)) and its quota", name,
                size or f"{new_size} if created", max_instances)
    existing = workspace.get_compute(name)
    check_existing_cluster_size(existing, size)
    # Quota first: a cluster that can never scale up would only surface as a job stuck in
    # Queued. Only tiers with room are tried.
    planned = existing or ComputeTarget(name=name, size=new_size, provisioning_state="Planned")
    quota = workspace.compute_quota(planned.size, nodes, existing)
    for note in quota.notes:
        logger.info("Quota for %s: %s", name, note)
    if quota.refusal:
        raise QuotaExceeded(quota.refusal)
    allowed = allow_list(model, FINETUNE_ALLOW_LIST)
    sizes = workspace.list_vm_sizes()
    gpus = check_finetune_compute(planned, allowed, sizes, workspace.requires_gpu)
    return ComputePlan(
        name=name, size=planned.size, size_asked=size is not None, max_instances=max_instances,
        exists=existing is not None, existing=existing, tiers=quota.tiers,
        allowed_sizes=allowed, vm_sizes=sizes,
        gpus_per_node=gpus,
    )


@task(name="ensure-compute", cache_policy=NO_CACHE, **transient_retries())
def ensure_compute(workspace: Workspace, plan: ComputePlan) -> tuple[ComputeTarget, int]:
    """Reuse the planned cluster or create it (Dedicated, then LowPriority, as quota allows).

    Args:
        workspace: where the cluster lives.
        plan: what :func:`check_compute` found and allowed.

    Returns:
        The cluster and the GPUs (devices) per node the job uses.
    """
    logger = get_run_logger()
    # The cluster as the pre-flight read it, moments ago: not read again.
    compute = compute_provisioning.ensure_compute(
        workspace, plan.name, plan.size, plan.max_instances, tiers=plan.tiers,
        size_asked=plan.size_asked, checked=True, existing=plan.existing,
    )
    if compute.created:
        logger.info("Created compute %s of size %s, tier %s", plan.name, compute.size,
                    compute.tier)
    else:
        logger.info("Reusing compute %s (%s, %s)", plan.name, compute.size,
                    compute.provisioning_state)
    # Checked again as created or as the pre-flight found it.
    gpus = check_finetune_compute(compute, plan.allowed_sizes, plan.vm_sizes,
                                  workspace.requires_gpu)
    logger.info("Compute %s: %d device(s) per node", plan.name, gpus)
    return compute, gpus
