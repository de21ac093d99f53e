"""The checks MISSION step 3 puts on the fine-tune compute, shared by both workspaces."""

from __future__ import annotations

from workspaces.errors import InvalidRequest
from workspaces.interface import ComputeTarget, VmSize

# Sizes the walkthrough refuses for fine-tuning when the model has no allow list.
UNSUPPORTED_FINETUNE_SIZES = frozenset(
    {"standard_nc6", "standard_nc12", "standard_nc24", "standard_nc24r"}
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
