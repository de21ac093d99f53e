"""The checks step 3 of docs/procedure.md puts on the fine-tune compute, shared by both
workspaces."""

from __future__ import annotations

from workspaces.errors import InvalidRequest
from workspaces.interface import ComputeTarget, VmSize

# Sizes the walkthrough refuses for fine-tuning when the model has no allow list.
UNSUPPORTED_FINETUNE_SIZES = frozenset(
    {"standard_nc6", "standard_nc12", "standard_nc24", "standard_nc24r"}
)


def check_existing_cluster_size(existing: ComputeTarget | None, asked_size: str | None) -> None:
    """The rule for ``compute_size`` when the cluster already exists.

    A cluster's size cannot change, so a size the request names that differs from the
    existing cluster's is refused (before anything is created), never silently replaced by
    the cluster's; an empty ``compute_size`` takes the existing cluster as it is. Sizes are
    compared without case, as Azure does.
    """
    if existing is None or not asked_size or asked_size.lower() == existing.size.lower():
        return
    raise InvalidRequest(
        f"compute_size: {asked_size} was asked, but cluster {existing.name!r} already exists "
        f"with size {existing.size}, and a cluster's size cannot change. To train on "
        f"{asked_size}, set compute_cluster to a new name (a cluster of that size is created) "
        f"or delete cluster {existing.name!r}; to use the existing cluster, leave compute_size "
        f"empty or set it to {existing.size}"
    )


def check_finetune_compute(
    compute: ComputeTarget,
    allowed_sizes: list[str] | None,
    sizes: list[VmSize],
    requires_gpu: bool,
) -> int:
    """Validate the compute for fine-tuning and return the GPUs (devices) per node.

    Raises InvalidRequest with the fix in the message.
    """
    if compute.provisioning_state.lower() == "failed":
        raise InvalidRequest(
            f"compute {compute.name!r} is in failed state, create another "
            "(set compute_cluster to a new name)"
        )
    size = compute.size.lower()
    if allowed_sizes is not None:
        if size not in {s.lower() for s in allowed_sizes}:
            raise InvalidRequest(
                f"compute {compute.name!r} has size {compute.size}, which the model does not allow "
                f"for fine-tuning; allowed sizes: {', '.join(allowed_sizes)}"
            )
    elif size in UNSUPPORTED_FINETUNE_SIZES:
        raise InvalidRequest(
            f"compute size {compute.size} is not supported for fine-tuning "
            f"(unsupported: {', '.join(sorted(UNSUPPORTED_FINETUNE_SIZES))})"
        )
    match = next((s for s in sizes if s.name.lower() == size), None)
    if match is None:
        available = ", ".join(sorted(s.name for s in sizes)) or "none"
        raise InvalidRequest(
            f"compute size {compute.size} of {compute.name!r} was not found among the "
            f"workspace's VM sizes; available: {available}"
        )
    if requires_gpu and match.gpus < 1:
        raise InvalidRequest(
            f"compute size {compute.size} has no GPU; fine-tuning needs a GPU size"
        )
    # A CPU-only local machine still trains on one device.
    return max(match.gpus, 1)


def check_inference_size(instance_type: str, allowed_sizes: list[str] | None) -> str | None:
    """A warning sentence when the instance type is outside the model's inference allow list."""
    if allowed_sizes is None:
        return None
    if instance_type.lower() in {s.lower() for s in allowed_sizes}:
        return None
    return (
        f"instance type {instance_type} is not in the model's inference_compute_allow_list "
        f"({', '.join(allowed_sizes)})"
    )
