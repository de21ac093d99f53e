"""Step 3: the fine-tune compute, reused or created, and checked against the model's rules."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.policies import transient_retries
from workspaces import compute_provisioning
from workspaces.compute_rules import check_existing_cluster_size, check_finetune_compute
from workspaces.errors import InvalidRequest, QuotaExceeded
from workspaces.interface import ComputeTarget, FoundationModel, Workspace
from workspaces.model_tags import FINETUNE_ALLOW_LIST, TagParseError, allow_list


# Not cached: a cluster can be deleted or fail between runs; looking it up is cheap.
@task(name="ensure-compute", cache_policy=NO_CACHE, **transient_retries())
def ensure_compute(
    workspace: Workspace,
    name: str,
    size: str | None,
    max_instances: int,
    model: FoundationModel,
    nodes: int = 1,
) -> tuple[ComputeTarget, int]:
    """Reuse the cluster or create it (Dedicated, then LowPriority, as quota allows); return
    it and GPUs/node.

    ``size`` is the request's compute_size: None takes an existing cluster whatever its
    size (a new one gets the workspace's default); a size other than the existing
    cluster's is refused before anything is created (a cluster's size cannot change).
    """
    logger = get_run_logger()
    new_size = size or workspace.default_compute_size
    logger.info("Checking compute %s (%s, up to %d node(s)) and its quota", name,
                size or f"{new_size} if created", max_instances)
    existing = workspace.get_compute(name)
    check_existing_cluster_size(existing, size)
    # Everything is checked before anything is created: quota (a cluster that can never
    # scale up would only surface as a job stuck in Queued; only tiers with room are
    # tried), the model's allow list and the workspace's sizes, against the cluster as it
    # would be.
    planned = existing or ComputeTarget(name=name, size=new_size, provisioning_state="Planned")
    quota = workspace.compute_quota(planned.size, nodes, existing)
    for note in quota.notes:
        logger.info("Quota for %s: %s", name, note)
    if quota.refusal:
        raise QuotaExceeded(quota.refusal)
    try:
        allowed = allow_list(model, FINETUNE_ALLOW_LIST)
    except TagParseError as exc:
        raise InvalidRequest(str(exc)) from exc
    sizes = workspace.list_vm_sizes()
    check_finetune_compute(planned, allowed, sizes, workspace.requires_gpu)
    compute = compute_provisioning.ensure_compute(
        workspace, name, new_size, max_instances, tiers=quota.tiers, size_asked=size is not None
    )
    if compute.created:
        logger.info("Created compute %s of size %s, tier %s", name, compute.size, compute.tier)
    else:
        logger.info("Reusing compute %s (%s, %s)", name, compute.size, compute.provisioning_state)
    gpus = check_finetune_compute(compute, allowed, sizes, workspace.requires_gpu)
    logger.info("Compute %s: %d device(s) per node", name, gpus)
    return compute, gpus
