"""The checks of step 3 (docs/procedure.md), the same on both workspaces."""

import pytest

from workspaces.compute_rules import check_finetune_compute, check_inference_size
from workspaces.errors import InvalidRequest
from workspaces.interface import ComputeTarget, VmSize

SIZES = [
    VmSize(name="Standard_NC6s_v3", gpus=1),
    VmSize(name="Standard_NC24rs_v3", gpus=4),
    VmSize(name="Standard_NC6", gpus=1),
    VmSize(name="Standard_D4", gpus=0),
]


def compute(size: str, state: str = "Succeeded") -> ComputeTarget:
    return ComputeTarget(name="gpu-cluster-big", size=size, provisioning_state=state)


def test_gpus_per_node_come_from_the_sku():
    assert check_finetune_compute(compute("standard_nc24rs_v3"), None, SIZES, True) == 4


def test_failed_compute_is_refused():
    with pytest.raises(InvalidRequest, match="failed state, create another"):
        check_finetune_compute(compute("Standard_NC6s_v3", "Failed"), None, SIZES, True)


def test_allow_list_is_case_insensitive_and_enforced():
    assert (
        check_finetune_compute(compute("STANDARD_NC6S_V3"), ["Standard_NC6s_v3"], SIZES, True) == 1
    )
    with pytest.raises(InvalidRequest, match="allowed sizes: Standard_NC6s_v3"):
        check_finetune_compute(compute("Standard_NC24rs_v3"), ["Standard_NC6s_v3"], SIZES, True)


def test_old_nc_sizes_are_unsupported_without_allow_list():
    with pytest.raises(InvalidRequest, match="not supported for fine-tuning"):
        check_finetune_compute(compute("Standard_NC6"), None, SIZES, True)


def test_unknown_sku_lists_available_ones():
    with pytest.raises(InvalidRequest, match="available: Standard_D4, Standard_NC24rs_v3"):
        check_finetune_compute(compute("Standard_ND96"), None, SIZES, True)


def test_gpu_less_size_refused_where_gpu_required():
    with pytest.raises(InvalidRequest, match="no GPU"):
        check_finetune_compute(compute("Standard_D4"), None, SIZES, True)
    assert check_finetune_compute(compute("Standard_D4"), None, SIZES, False) == 1


def test_inference_allow_list_message():
    assert check_inference_size("Standard_NC6s_v3", None) is None
    assert "not in the model's inference_compute_allow_list" in check_inference_size(
        "Standard_DS3_v2", ["Standard_NC6s_v3"]
    )


def test_the_rule_for_compute_size_and_an_existing_cluster():
    """#14: an empty compute_size takes the cluster as it is; the same size (any case)
    passes; another size is refused naming the field, both sizes and the ways out."""
    from workspaces.compute_rules import check_existing_cluster_size

    cluster = compute("Standard_NC12s_v3")
    check_existing_cluster_size(cluster, None)
    check_existing_cluster_size(cluster, "standard_nc12s_v3")
    check_existing_cluster_size(None, "Standard_NC6s_v3")
    with pytest.raises(InvalidRequest, match="^compute_size: Standard_NC6s_v3") as info:
        check_existing_cluster_size(cluster, "Standard_NC6s_v3")
    assert "Standard_NC12s_v3" in str(info.value) and "compute_cluster" in str(info.value)
