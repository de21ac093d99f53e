"""A release stays safe on Azure ML when something else touches its endpoint.

The claim, take-over, hand-edit and recovery cases of tests/flows/test_rollout_interference.py
through the real ``azure-ai-ml`` SDK against the HTTPS fake: the workspace refuses at the
write (on the read just before it, as online endpoints have no If-Match), and the fake's
state shows that nothing was written.
"""

from __future__ import annotations

import pytest
from prefect import flow

from tasks.rollout import ReleaseCursor, record_step
from tasks.rollout_recovery import settle
from workspaces.errors import ConcurrentChange, OwnershipConflict
from workspaces.interface import (
    TAG_MANAGED_BY,
    TAG_MODEL,
    TAG_MODEL_VERSION,
    TAG_REQUEST,
    DeploymentSpec,
    EndpointSpec,
)
from workspaces.release_state import RecordedRelease, release_tags

EP = "interfere-ep"
B, C = "request-b", "request-c"
TAGS = {TAG_MANAGED_BY: "chat-finetune-flows", TAG_REQUEST: B}


@pytest.fixture
def held_canary(workspace):
    """``blue`` serves version 1; request B's canary ``green`` (version 2) is held at 10 %."""
    for version in ("1", "2"):
        model = workspace.register_model("m-ultrachat-200k", version, "chatft-job", "d", TAGS)
    workspace.begin_create_endpoint(EndpointSpec(name=EP, tags=TAGS))
    for name, version in (("blue", "1"), ("green", "2")):
        workspace.begin_create_deployment(DeploymentSpec(
            endpoint_name=EP, name=name, model_id=model.id.replace(":2", f":{version}"),
            instance_type="Standard_NC6s_v3",
            tags={**TAGS, TAG_MODEL: "m-ultrachat-200k", TAG_MODEL_VERSION: version}))
    workspace.set_traffic(EP, {"blue": 90, "green": 10}, owner=B, claim=True,
                          tags=release_tags(B, "held", "blue", "green", "run-b"))
    return workspace


def _puts(fake) -> int:
    return len(fake.sent("PUT", rf"/onlineEndpoints/{EP}$"))


def test_a_held_release_is_neither_taken_over_nor_claimed(fake, held_canary):
    ws, puts = held_canary, _puts(fake)
    with pytest.raises(OwnershipConflict, match="cannot be taken over: a release is under way "
                       "or held on it"):
        ws.begin_create_endpoint(EndpointSpec(name=EP, tags={TAG_REQUEST: C}, owner=C,
                                              take_over=True))
    with pytest.raises(OwnershipConflict, match="holds a release of request request-b"):
        ws.set_traffic(EP, None, owner=C, claim=True,
                       tags=release_tags(C, "deploying", "blue", "red", "run-c"))
    assert _puts(fake) == puts  # nothing was sent to Azure
    assert fake.endpoints[EP]["properties"]["traffic"] == {"blue": 90, "green": 10}
    assert fake.endpoints[EP]["tags"]["chatft-rollout-step"] == "held"


def test_a_hand_change_refuses_the_release_s_next_write(fake, prefect_server, held_canary):
    ws = held_canary
    cursor = ReleaseCursor.seen(ws.get_endpoint(EP), request_id=B, run="run-b", old="blue",
                                new="green")
    ws.set_traffic(EP, {"blue": 100})  # an operator pulls the canary by hand
    puts = _puts(fake)

    @flow
    def promote() -> None:
        record_step(ws, cursor, "promoted", traffic={"green": 100})

    with pytest.raises(ConcurrentChange, match=r"traffic is \{'blue': 100\}, expected "
                       r"\{'blue': 90, 'green': 10\}"):
        promote()
    assert _puts(fake) == puts
    assert fake.endpoints[EP]["properties"]["traffic"] == {"blue": 100}


def test_the_recovery_holds_a_release_whose_from_deployment_is_gone(fake, prefect_server,
                                                                    held_canary, workspace):
    from prefect.client.orchestration import get_client
    from prefect.states import Completed

    @flow(name="a-release")
    def a_release() -> None:
        pass

    with get_client(sync_client=True) as client:
        dead = str(client.create_flow_run(a_release, state=Completed()).id)
    ws = held_canary
    ws.set_traffic(EP, None, tags=release_tags(B, "canary", "blue", "green", dead))
    ws.set_traffic(EP, {"green": 100})
    ws.begin_delete_deployment(EP, "blue")

    @flow
    def recover():
        return settle(ws, ws.get_endpoint(EP), "recovery-run")

    row = recover()
    assert not row.settled and "is gone (changed by hand)" in row.action
    assert "ended Completed" in row.action
    assert list(fake.deployments[EP]) == ["green"]  # the serving one was not touched
    assert fake.endpoints[EP]["properties"]["traffic"] == {"green": 100}
    assert RecordedRelease.of(fake.endpoints[EP]["tags"]).step == "held"
