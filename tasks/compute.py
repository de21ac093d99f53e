"""Step 3: the fine-tune compute, reused or created, and checked against the model's rules."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.policies import transient_retries
from workspaces import compute_provisioning
from workspaces.compute_rules import check_finetune_compute
from workspaces.errors import InvalidRequest, QuotaExceeded
from workspaces.interface import ComputeTarget, FoundationModel, Workspace
from workspaces.model_tags import FINETUNE_ALLOW_LIST, TagParseError, allow_list


# Not cached: a cluster can be deleted or fail between runs; looking it up is cheap.
@task(name="ensure-compute", cache_policy=NO_CACHE, **transient_retries())
def ensure_compute(
    workspace: Workspace,
    name: str,
    size: str,
    max_instances: int,
    model: FoundationModel,
    nodes: int = 1,
) -> tuple[ComputeTarget, int]:
    """Reuse the cluster or create it (Dedicated, then LowPriority, as quota allows); return
    it and GPUs/node."""
    logger = get_run_logger()
    logger.info("Checking compute %s (%s, up to %d node(s)) and its quota", name, size,
                max_instances)
    existing = workspace.get_compute(name)
    # Quota is checked before anything is created: a cluster that can never scale up
    # would only surface as a job stuck in Queued. Only tiers with room are tried.
    quota = workspace.compute_quota(existing.size if existing else size, nodes, existing)
    for note in quota.notes:
        logger.info("Quota for %s: %s", name, note)
    if quota.refusal:
        raise QuotaExceeded(quota.refusal)
    compute = compute_provisioning.ensure_compute(
        workspace, name, size, max_instances, tiers=quota.tiers
    )
    if compute.created:
        logger.info("Created compute %s of size %s, tier %s", name, compute.size, compute.tier)
    else:
        logger.info("Reusing compute %s (%s, %s)", name, compute.size, compute.provisioning_state)
    try:
        allowed = allow_list(model, FINETUNE_ALLOW_LIST)
    except TagParseError as exc:
        raise InvalidRequest(str(exc)) from exc
    gpus = check_finetune_compute(
        compute, allowed, workspace.list_vm_sizes(), workspace.requires_gpu
    )
    logger.info("Compute %s: %d device(s) per node", name, gpus)
    return compute, gpus
