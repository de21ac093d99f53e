"""Step 3: the fine-tune compute, reused or created, and checked against the model's rules."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.policies import transient_retries
from workspaces.compute_rules import check_finetune_compute
from workspaces.errors import InvalidRequest, QuotaExceeded, WorkspaceError
from workspaces.interface import ComputeTarget, FoundationModel, Workspace
from workspaces.model_tags import FINETUNE_ALLOW_LIST, TagParseError, allow_list

TIERS = ("Dedicated", "LowPriority")


# Not cached: a cluster can be deleted or fail between runs; looking it up is cheap.
@task(name="ensure-compute", cache_policy=NO_CACHE, **transient_retries())
def ensure_compute(
    workspace: Workspace, name: str, size: str, max_instances: int, model: FoundationModel
) -> tuple[ComputeTarget, int]:
    """Reuse the cluster or create it (Dedicated, then LowPriority); return it and GPUs/node."""
    logger = get_run_logger()
    compute = workspace.get_compute(name)
    if compute is not None:
        logger.info("Reusing compute %s (%s, %s)", name, compute.size, compute.provisioning_state)
    else:
        failures = []
        for tier in TIERS:
            try:
                compute = workspace.create_compute(name, size, tier, max_instances)
                logger.info("Created compute %s of size %s, tier %s", name, size, tier)
                break
            except (QuotaExceeded, InvalidRequest) as exc:
                failures.append(f"{tier}: {exc}")
                logger.warning("Could not create %s with tier %s: %s", name, tier, exc)
        if compute is None:
            raise QuotaExceeded(
                f"compute size {size} not available in workspace ({'; '.join(failures)})"
            )
    try:
        allowed = allow_list(model, FINETUNE_ALLOW_LIST)
    except TagParseError as exc:
        raise InvalidRequest(str(exc)) from exc
    try:
        gpus = check_finetune_compute(
            compute, allowed, workspace.list_vm_sizes(), workspace.requires_gpu
        )
    except WorkspaceError:
        raise
    logger.info("Compute %s: %d device(s) per node", name, gpus)
    return compute, gpus
