"""MISSION steps 2-3 against the fake: the requests azure-ai-ml sends and the rules applied."""

from __future__ import annotations

import pytest

from tests.azure.fake_azureml import Fault
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


def test_quota_is_read_from_the_region_usages(fake, workspace):
    assert workspace.compute_quota_problem("Standard_NC6s_v3", nodes=2) is None
    fake.quota["standardNCSv3Family"] = (40, 48)
    problem = workspace.compute_quota_problem("Standard_NC12s_v3", nodes=1)
    assert "needs 12 vCPUs of quota family standardNCSv3Family" in problem
    assert "allows 48 and 40 are in use" in problem
    [usages] = fake.sent("GET", r"/locations/eastus/usages$")[-1:]
    assert usages.api_version == "2023-08-01-preview"
