"""Every write to an endpoint checks its owner at that moment, atomically: two requests
racing for one name end with one owner and one clear refusal, and the loser moves nothing."""

from __future__ import annotations

import threading
import time

import pytest

from tests.helpers import MANAGED_TAGS, register_model
from workspaces.errors import OwnershipConflict
from workspaces.interface import TAG_REQUEST, DeploymentSpec, EndpointSpec


def _tags(request_id: str) -> dict[str, str]:
    return {**MANAGED_TAGS, TAG_REQUEST: request_id}


def _ready(workspace, name: str, deployment: str | None = None, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while True:
        current = (workspace.get_endpoint(name) if deployment is None
                   else workspace.get_deployment(name, deployment))
        if current is not None and current.provisioning_state != "Creating":
            return current
        assert time.monotonic() < deadline, f"{name}/{deployment} stuck"
        time.sleep(0.2)


def test_requests_creating_one_endpoint_at_once_leave_one_owner(workspace):
    outcomes: dict[str, str] = {}
    start = threading.Barrier(8)

    def create(request_id: str) -> None:
        start.wait()
        try:
            workspace.begin_create_endpoint(EndpointSpec(
                name="race-ep", description="d", tags=_tags(request_id), owner=request_id,
            ))
            outcomes[request_id] = "created"
        except OwnershipConflict as exc:
            outcomes[request_id] = str(exc)

    threads = [threading.Thread(target=create, args=(f"req-{i}",)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r, outcome in outcomes.items() if outcome == "created"]
    assert len(winners) == 1
    assert workspace.get_endpoint("race-ep").tags[TAG_REQUEST] == winners[0]
    for loser, message in outcomes.items():
        if loser != winners[0]:
            assert f"endpoint race-ep belongs to request {winners[0]}" in message
            assert f"this request is {loser}" in message
            assert "take_over=true" in message


def test_the_loser_can_neither_deploy_nor_route(workspace, standin_mlflow_model):
    mine = register_model(workspace, standin_mlflow_model, version="1")
    theirs = register_model(workspace, standin_mlflow_model, version="2")
    workspace.begin_create_endpoint(EndpointSpec(
        name="owned-ep", description="d", tags=_tags("req-a"), owner="req-a",
    ))
    _ready(workspace, "owned-ep")
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name="owned-ep", name="blue", model_id=mine.id, instance_type="Local_CPU",
        instance_count=1, tags=_tags("req-a"), owner="req-a",
    ))
    assert _ready(workspace, "owned-ep", "blue").provisioning_state == "Succeeded"
    workspace.set_traffic("owned-ep", {"blue": 100}, owner="req-a")

    with pytest.raises(OwnershipConflict, match="belongs to request req-a.*this request is req-b"):
        workspace.begin_create_endpoint(EndpointSpec(
            name="owned-ep", description="d", tags=_tags("req-b"), owner="req-b",
        ))
    with pytest.raises(OwnershipConflict, match="belongs to request req-a"):
        workspace.begin_create_deployment(DeploymentSpec(
            endpoint_name="owned-ep", name="green", model_id=theirs.id, instance_type="Local_CPU",
            instance_count=1, tags=_tags("req-b"), owner="req-b",
        ))
    with pytest.raises(OwnershipConflict, match="belongs to request req-a"):
        workspace.set_traffic("owned-ep", {"blue": 100}, owner="req-b")
    endpoint = workspace.get_endpoint("owned-ep")
    assert endpoint.traffic == {"blue": 100}
    assert [d.name for d in endpoint.deployments] == ["blue"]
    assert endpoint.tags[TAG_REQUEST] == "req-a"

    # Taking over is explicit, and re-tags the endpoint; its traffic stays where it was.
    workspace.begin_create_endpoint(EndpointSpec(
        name="owned-ep", description="d", tags=_tags("req-b"), owner="req-b", take_over=True,
    ))
    endpoint = workspace.get_endpoint("owned-ep")
    assert endpoint.tags[TAG_REQUEST] == "req-b"
    assert endpoint.traffic == {"blue": 100}
    with pytest.raises(OwnershipConflict, match="belongs to request req-b"):
        workspace.set_traffic("owned-ep", {"blue": 100}, owner="req-a")


def test_a_model_version_of_another_request_is_refused_not_reused(workspace, tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "MLmodel").write_text("flavors: {}\n")
    workspace.registry.register("m", "7", str(tmp_path / "model"), None, "d",
                                {TAG_REQUEST: "req-a"}, owner="req-a")
    again = workspace.registry.register("m", "7", str(tmp_path / "model"), None, "d",
                                        {TAG_REQUEST: "req-a"}, owner="req-a")
    assert again.tags[TAG_REQUEST] == "req-a"
    with pytest.raises(OwnershipConflict, match="model m version 7 belongs to request req-a"):
        workspace.registry.register("m", "7", str(tmp_path / "model"), None, "d",
                                    {TAG_REQUEST: "req-b"}, owner="req-b")
