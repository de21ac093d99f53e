"""Azure's safe-rollout rules, as the fake enforces them and the real SDK meets them.

Live traffic adds up to 100 and names existing deployments; traffic is mirrored to one
deployment, at most 50 %, never one that takes live traffic; a deployment with live
traffic cannot be deleted. The rollout (a new deployment at 0 %, then a canary share, then
promotion) relies on these refusals being real.
"""

from __future__ import annotations

import pytest
from azure.core.exceptions import HttpResponseError

from workspaces.errors import InvalidRequest
from workspaces.interface import TAG_MANAGED_BY, DeploymentSpec, EndpointSpec

EP = "rollout-ep"
TAGS = {TAG_MANAGED_BY: "chat-finetune-flows", "chatft-request": "req1"}


@pytest.fixture
def two_deployments(workspace):
    model = workspace.register_model("m-ultrachat-200k", "1", "chatft-job", "d", TAGS)
    workspace.begin_create_endpoint(EndpointSpec(name=EP, tags=TAGS))
    for name in ("blue", "green"):
        workspace.begin_create_deployment(DeploymentSpec(
            endpoint_name=EP, name=name, model_id=model.id, instance_type="Standard_NC6s_v3",
            tags=TAGS,
        ))
    return workspace.set_traffic(EP, {"blue": 100})


def _mirror(workspace, live: dict[str, int], mirror: dict[str, int]) -> None:
    # Mirroring is set on the endpoint object, as the safe-rollout walkthrough does.
    operations = workspace._clients.ml.online_endpoints
    endpoint = operations.get(EP)
    endpoint.traffic = live
    endpoint.mirror_traffic = mirror
    operations.begin_create_or_update(endpoint).result()


def test_a_canary_share_is_taken_and_a_bad_split_refused(fake, workspace, two_deployments):
    assert workspace.set_traffic(EP, {"blue": 90, "green": 10}).traffic == {
        "blue": 90, "green": 10}
    with pytest.raises(InvalidRequest, match="add up to 100, not 90"):
        workspace.set_traffic(EP, {"blue": 80, "green": 10})
    with pytest.raises(InvalidRequest, match="do not exist: ghost"):
        workspace.set_traffic(EP, {"blue": 90, "ghost": 10})
    assert workspace.get_endpoint(EP).traffic == {"blue": 90, "green": 10}


def test_mirrored_traffic_goes_to_one_deployment_at_most_half(fake, workspace, two_deployments):
    _mirror(workspace, {"blue": 100}, {"green": 20})
    assert fake.endpoints[EP]["properties"]["mirrorTraffic"] == {"green": 20}
    for mirror, words in (({"green": 60}, "at most 50 percent"),
                          ({"blue": 10}, "live and mirrored"),
                          ({"green": 10, "blue": 10}, "one deployment only")):
        with pytest.raises(HttpResponseError, match=words):
            _mirror(workspace, {"blue": 100}, mirror)


def test_a_deployment_with_live_traffic_is_not_deleted(fake, workspace, two_deployments):
    with pytest.raises(InvalidRequest, match="takes 100% of the live traffic"):
        workspace.begin_delete_deployment(EP, "blue")
    assert {d.name for d in workspace.get_endpoint(EP).deployments} == {"blue", "green"}
    # Promotion, then the old deployment goes.
    workspace.set_traffic(EP, {"green": 100})
    workspace.begin_delete_deployment(EP, "blue")
    assert [d.name for d in workspace.get_endpoint(EP).deployments] == ["green"]
