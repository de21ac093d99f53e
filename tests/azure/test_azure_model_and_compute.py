"""Steps 2-3 of docs/procedure.md against the fake: the requests azure-ai-ml sends and the
rules applied."""

from __future__ import annotations

import pytest

from tests.azure.fake_azureml import Fault
from tests.azure.fake_azureml.service import (
    REGIONAL_DEDICATED,
    REGIONAL_LOW_PRIORITY,
    quota_row,
)
from workspaces.compute_provisioning import ensure_compute
from workspaces.compute_rules import check_finetune_compute
from workspaces.errors import InvalidRequest, QuotaExceeded, ResourceNotFound
from workspaces.model_tags import FINETUNE_ALLOW_LIST, allow_list, model_specific_defaults

COMPUTES = "/computes/"


def test_foundation_model_lookup_by_label_latest(fake, workspace):
    model = workspace.get_foundation_model("Phi-3-mini-4k-instruct")

    [discovery] = fake.sent("GET", r"/registries/azureml/discovery$")
    assert discovery.api_version == "v1.0"
    listing, version_get = fake.sent("GET", r"/registries/azureml/models/Phi-3-mini-4k-instruct/")
    assert listing.path.endswith("/versions")
    assert listing.query["$orderBy"] == "createdtime desc" and listing.query["$top"] == "1"
    assert listing.api_version == "2021-10-01-dataplanepreview"
    assert version_get.path.endswith("/versions/7")
    assert model.id == "azureml://registries/azureml/models/Phi-3-mini-4k-instruct/versions/7"
    assert allow_list(model, FINETUNE_ALLOW_LIST) == [
        "Standard_NC6s_v3",
        "Standard_NC12s_v3",
        "Standard_NC24rs_v3",
    ]
    assert model_specific_defaults(model) == {"apply_lora": "true", "precision": "16"}


def test_foundation_model_by_version_and_unknown_model(fake, workspace):
    model = workspace.get_foundation_model("Phi-3-mini-4k-instruct", label="7")
    assert model.version == "7"
    assert not fake.sent("GET", r"/models/Phi-3-mini-4k-instruct/versions$")
    with pytest.raises(ResourceNotFound, match="Phi-4-unknown"):
        workspace.get_foundation_model("Phi-4-unknown")


def test_existing_compute_is_reused(fake, workspace):
    fake.add_compute("gpu-cluster-big", "Standard_NC6s_v3")
    compute = ensure_compute(workspace, "gpu-cluster-big", "Standard_NC6s_v3")

    assert compute.size == "Standard_NC6s_v3" and not compute.created
    [get] = fake.sent("GET", COMPUTES)
    assert get.api_version == "2023-08-01-preview"
    assert not fake.sent("PUT", COMPUTES)


def test_missing_compute_is_created_dedicated(fake, workspace):
    compute = ensure_compute(workspace, "gpu-cluster-big", "Standard_NC6s_v3", max_instances=2)

    [put] = fake.sent("PUT", COMPUTES + "gpu-cluster-big$")
    props = put.json["properties"]
    assert put.api_version == "2023-08-01-preview"
    assert props["computeType"] == "AmlCompute"
    assert props["properties"]["vmSize"] == "Standard_NC6s_v3"
    assert props["properties"]["vmPriority"] == "Dedicated"
    assert props["properties"]["scaleSettings"] == {
        "maxNodeCount": 2,
        "minNodeCount": 0,
        "nodeIdleTimeBeforeScaleDown": "PT2M",
    }
    assert compute.created and compute.provisioning_state == "Succeeded"


def test_dedicated_refused_falls_back_to_low_priority(fake, workspace):
    fake.server.inject(
        Fault(
            "PUT",
            COMPUTES,
            status=400,
            body={"error": {"code": "BadRequest", "message": "Dedicated capacity unavailable"}},
            when=lambda r: r.json["properties"]["properties"]["vmPriority"] == "Dedicated",
        )
    )
    compute = ensure_compute(workspace, "gpu-cluster-big", "Standard_NC6s_v3")

    puts = fake.sent("PUT", COMPUTES)
    assert [p.json["properties"]["properties"]["vmPriority"] for p in puts] == [
        "Dedicated",
        "LowPriority",
    ]
    assert compute.tier == "LowPriority"


def test_both_tiers_refused_says_size_not_available(fake, workspace):
    fake.server.inject(
        Fault(
            "PUT",
            COMPUTES,
            status=400,
            times=2,
            body={"error": {"code": "OutOfQuota", "message": "Not enough quota for NCSv3"}},
        )
    )
    with pytest.raises(QuotaExceeded, match="compute size not available in workspace"):
        ensure_compute(workspace, "gpu-cluster-big", "Standard_NC6s_v3")
    assert len(fake.sent("PUT", COMPUTES)) == 2


def test_gpus_per_node_come_from_list_sizes(fake, workspace):
    fake.add_compute("big", "Standard_NC24rs_v3")
    model = workspace.get_foundation_model("Phi-3-mini-4k-instruct")
    gpus = check_finetune_compute(
        workspace.get_compute("big"),
        allow_list(model, FINETUNE_ALLOW_LIST),
        workspace.list_vm_sizes(),
        requires_gpu=True,
    )
    assert gpus == 4
    [sizes] = fake.sent("GET", r"/locations/eastus/vmSizes$")
    assert sizes.api_version == "2023-08-01-preview"


@pytest.mark.parametrize(
    ("size", "state", "allowed", "message"),
    [
        ("Standard_NC6s_v3", "Failed", None, "failed state, create another"),
        ("Standard_DS3_v2", "Succeeded", ["Standard_NC6s_v3"], "does not allow"),
        ("Standard_NC6", "Succeeded", None, "not supported for fine-tuning"),
        ("Standard_ND40rs_v2", "Succeeded", None, "available: Standard_DS3_v2"),
    ],
)
def test_compute_checks(fake, workspace, size, state, allowed, message):
    fake.add_compute("c", size, state=state)
    with pytest.raises(InvalidRequest, match=message):
        check_finetune_compute(workspace.get_compute("c"), allowed, workspace.list_vm_sizes(), True)


def test_check_access(fake, workspace, credential):
    assert "ws-chatft in eastus" in workspace.check_access()
    assert "https://localhost" in credential.scopes[0]
    [get] = fake.sent("GET", rf"{fake.ws_path}$")
    assert get.api_version == "2024-10-01-preview"


def test_check_access_refused(fake, workspace):
    from workspaces.errors import AuthenticationFailed

    fake.server.inject(
        Fault(
            "GET",
            rf"{fake.ws_path}$",
            403,
            {"error": {"code": "AuthorizationFailed", "message": "denied"}},
        )
    )
    with pytest.raises(AuthenticationFailed, match="AzureML Data Scientist"):
        workspace.check_access()


def test_quota_is_read_from_the_rows_azure_names_in_words(fake, workspace):
    fits = workspace.compute_quota("Standard_NC6s_v3", nodes=2)
    assert fits.tiers == ["Dedicated", "LowPriority"] and fits.refusal is None
    [usages] = fake.sent("GET", r"/locations/eastus/usages$")
    assert usages.api_version == "2023-08-01-preview"

    # The family row has room, the regional dedicated total does not; workspace-scoped
    # copies of the family row are not added on top (that would count 40 twice).
    fake.quota[quota_row("standardNCSv3Family")] = (40, 60)
    fake.quota[REGIONAL_DEDICATED] = (40, 48)
    check = workspace.compute_quota("Standard_NC12s_v3", nodes=1)
    assert check.tiers == ["LowPriority"]
    assert "Dedicated: 12 vCPUs needed, family NCSv3 20 of 60 free; region 8 of 48 free" in (
        check.notes[0]
    )


def test_dedicated_quota_zero_tries_only_low_priority(fake, workspace):
    fake.quota[quota_row("standardNCSv3Family")] = (0, 0)
    check = workspace.compute_quota("Standard_NC6s_v3", nodes=1)
    assert check.tiers == ["LowPriority"]
    compute = ensure_compute(workspace, "gpu-cluster-big", "Standard_NC6s_v3", tiers=check.tiers)
    [put] = fake.sent("PUT", COMPUTES)
    assert put.json["properties"]["properties"]["vmPriority"] == "LowPriority"
    assert compute.tier == "LowPriority"


def test_no_tier_with_room_is_refused_naming_the_tiers(fake, workspace):
    fake.quota[quota_row("standardNCSv3Family")] = (0, 0)
    fake.quota[REGIONAL_LOW_PRIORITY] = (98, 100)
    check = workspace.compute_quota("Standard_NC6s_v3", nodes=1)
    assert check.tiers == []
    assert check.refusal.startswith(
        "no tier has quota for 1 node(s) of Standard_NC6s_v3 (6 vCPUs each). Considered: "
        "Dedicated: 6 vCPUs needed, family NCSv3 0 of 0 free; region 140 of 148 free. "
        "LowPriority: 6 vCPUs needed, region 2 of 100 free. Request more quota"
    )


def test_an_existing_cluster_keeps_its_tier_and_its_own_nodes_are_not_counted(fake, workspace):
    # Two busy nodes of the cluster itself use the whole family quota.
    fake.add_compute("gpu-cluster-big", "Standard_NC6s_v3", nodes=2)
    fake.quota[quota_row("standardNCSv3Family")] = (12, 12)
    existing = workspace.get_compute("gpu-cluster-big")
    check = workspace.compute_quota("Standard_NC6s_v3", 2, existing)
    assert check.tiers == ["Dedicated"], check.notes
    assert "not counting the cluster's own 12" in check.notes[0]
    # A third node would need 6 more.
    assert workspace.compute_quota("Standard_NC6s_v3", 3, existing).refusal

    # A LowPriority cluster is judged on low-priority quota, not the dedicated rows.
    fake.add_compute("spot", "Standard_NC6s_v3", priority="LowPriority")
    fake.quota[quota_row("standardNCSv3Family")] = (0, 0)
    spot = workspace.get_compute("spot")
    assert spot.tier == "LowPriority"
    check = workspace.compute_quota("Standard_NC6s_v3", 1, spot)
    assert check.tiers == ["LowPriority"] and check.refusal is None
    assert check.notes == [
        "LowPriority (cluster spot is LowPriority): 6 vCPUs needed, region 100 of 100 free"
    ]
