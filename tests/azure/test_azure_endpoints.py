"""Steps 6-9 of docs/procedure.md against the fake: register, endpoint, deployment, traffic,
score, delete."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.azure.conftest import make_workspace
from tests.azure.fake_azureml.server import Fault
from workspaces.errors import InvalidRequest
from workspaces.interface import CALLER_HEADER, TAG_MANAGED_BY, DeploymentSpec, EndpointSpec
from workspaces.naming import registered_model_description, registered_model_name

EP = "ultrachat-completion-1700000000"
TAGS = {TAG_MANAGED_BY: "chat-finetune-flows", "chatft-request": "req1"}
SAMPLE = {
    "input_data": {
        "input_string": [[{"role": "user", "content": "What is Prefect?"}]],
        "parameters": {"temperature": 0.6, "top_p": 0.9, "do_sample": True, "max_new_tokens": 200},
    },
    "params": {},
}


@pytest.fixture
def model(workspace):
    name = registered_model_name("Phi-3-mini-4k-instruct")
    return workspace.register_model(
        name,
        "1700000000",
        "chatft-job",
        registered_model_description("Phi-3-mini-4k-instruct"),
        {"chatft-request": "req1"},
    )


@pytest.fixture
def deployed(workspace, model):
    workspace.begin_create_endpoint(EndpointSpec(
        name=EP, description=f"serves {model.name}:{model.version}", tags=TAGS,
    ))
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name=EP, name="demo", model_id=model.id, instance_type="Standard_NC6s_v3",
        instance_count=1, tags=TAGS,
    ))
    return workspace.set_traffic(EP, {"demo": 100})


def test_register_model_body(fake, workspace, model):
    [put] = fake.sent("PUT", r"/models/Phi-3-mini-4k-instruct-ultrachat-200k/versions/1700000000$")
    assert put.api_version == "2023-08-01-preview"
    assert put.json["properties"] == {
        "description": "Phi-3-mini-4k-instruct fine tuned model for ultrachat 200k chat-completion",
        "tags": {"chatft-request": "req1"},
        "properties": {},
        "modelType": "mlflow_model",
        "modelUri": "azureml://jobs/chatft-job/outputs/trained_model",
        "isAnonymous": False,
        "isArchived": False,
    }
    assert model.id.endswith("/models/Phi-3-mini-4k-instruct-ultrachat-200k/versions/1700000000")
    assert workspace.get_model(model.name, model.version) == model
    assert workspace.get_model(model.name, "1") is None


def test_endpoint_body(fake, workspace):
    workspace.begin_create_endpoint(EndpointSpec(name=EP, description="serves a model", tags=TAGS))

    [put] = fake.sent("PUT", rf"/onlineEndpoints/{EP}$")
    assert put.api_version == "2022-02-01-preview"
    assert put.json["properties"]["authMode"] == "Key"
    assert put.json["properties"]["description"] == "serves a model"
    assert put.json["tags"] == TAGS
    endpoint = workspace.get_endpoint(EP)
    assert endpoint.managed and endpoint.auth_mode == "key"
    assert endpoint.scoring_uri == f"{fake.base}/score/{EP}"


def test_bad_endpoint_name_is_refused_before_any_request(fake, workspace):
    with pytest.raises(InvalidRequest, match="3-32"):
        workspace.begin_create_endpoint(EndpointSpec(name="x" * 40, description="", tags={}))
    assert not fake.sent("PUT", r"/onlineEndpoints/")


def test_deployment_body_and_traffic(fake, workspace, model, deployed):
    [put] = fake.sent("PUT", rf"/onlineEndpoints/{EP}/deployments/demo$")
    body = put.json
    assert put.api_version == "2023-04-01-preview"
    assert body["sku"] == {"name": "Default", "capacity": 1}
    assert body["tags"] == TAGS
    props = body["properties"]
    assert props["endpointComputeType"] == "Managed"
    assert props["instanceType"] == "Standard_NC6s_v3"
    assert props["model"] == model.id
    assert props["livenessProbe"] == {"initialDelay": "PT10M"}
    assert props["requestSettings"]["requestTimeout"] == "PT1M30S"

    traffic_put = fake.sent("PUT", rf"/onlineEndpoints/{EP}$")[-1]
    assert traffic_put.json["properties"]["traffic"] == {"demo": 100}
    assert deployed.traffic == {"demo": 100}
    assert [d.name for d in deployed.deployments] == ["demo"]
    assert workspace.get_deployment(EP, "demo").provisioning_state == "Succeeded"
    assert workspace.get_deployment(EP, "nope") is None


def test_invoke_sends_key_deployment_and_caller_headers(fake, workspace, deployed):
    response = workspace.invoke(EP, SAMPLE, deployment_name="demo", caller="smoke-test")

    [sent] = fake.scoring_requests
    assert sent.method == "POST" and sent.path == f"/score/{EP}"
    assert sent.headers["authorization"] == f"Bearer {fake.keys[EP]['primaryKey']}"
    assert sent.headers["azureml-model-deployment"] == "demo"
    assert sent.headers[CALLER_HEADER] == "smoke-test"
    assert sent.json == SAMPLE
    assert response.status_code == 200
    assert json.loads(response.body) == {"output": "Sure! Here is a short answer."}
    assert "authorization" not in {k.lower() for k in response.headers}


def test_invoke_without_caller_and_http_failure_as_response(fake, workspace, deployed):
    response = workspace.invoke(EP, SAMPLE, deployment_name="missing")
    assert response.status_code == 404
    assert CALLER_HEADER not in fake.scoring_requests[0].headers


def test_repeated_scoring_reads_the_endpoint_and_its_keys_once(fake, workspace, deployed):
    fake.requests.clear()
    answers = [workspace.invoke(EP, SAMPLE, deployment_name="demo") for _ in range(3)]

    assert [a.status_code for a in answers] == [200, 200, 200]
    assert len(fake.scoring_requests) == 3
    # The scoring URI and the key-auth mode were seen when the endpoint was made, and the
    # key is listed once. Each request used to read the endpoint, and the SDK's get_keys
    # read it again for its auth mode before listing the keys: three calls a request.
    assert len(fake.sent("POST", rf"/onlineEndpoints/{EP}/listKeys$")) == 1
    assert not fake.sent("GET", rf"/onlineEndpoints/{EP}$")
    assert len(fake.requests) == 3 + 1


def test_a_regenerated_key_is_read_again_and_the_request_answered(fake, workspace, deployed):
    assert workspace.invoke(EP, SAMPLE, deployment_name="demo").status_code == 200
    old_key = fake.keys[EP]["primaryKey"]
    fake.keys[EP] = {"primaryKey": "pk-regenerated", "secondaryKey": "sk-regenerated"}

    response = workspace.invoke(EP, SAMPLE, deployment_name="demo")

    assert response.status_code == 200
    assert [r.headers["authorization"] for r in fake.scoring_requests] == [
        f"Bearer {old_key}", f"Bearer {old_key}", "Bearer pk-regenerated"]
    assert len(fake.sent("POST", rf"/onlineEndpoints/{EP}/listKeys$")) == 2


def test_a_key_just_read_and_refused_is_not_read_again(fake, workspace, deployed):
    # listKeys answers keys the scoring front end refuses: the 401 is the answer, with no
    # second read (only a key kept from earlier in the session is read again).
    fake.server.inject(Fault("POST", rf"/onlineEndpoints/{EP}/listKeys$", status=200,
                             body={"primaryKey": "pk-refused", "secondaryKey": "sk-refused"}))
    fake.requests.clear()

    response = workspace.invoke(EP, SAMPLE, deployment_name="demo")

    assert response.status_code == 401
    assert len(fake.scoring_requests) == 1
    assert len(fake.sent("POST", rf"/onlineEndpoints/{EP}/listKeys$")) == 1


def test_keys_logs_and_listing(fake, workspace, deployed):
    keys = workspace.get_endpoint_keys(EP)
    assert keys.primary.get_secret_value() == fake.keys[EP]["primaryKey"]
    assert fake.keys[EP]["primaryKey"] not in repr(keys)
    assert workspace.get_deployment_logs(EP, "demo", lines=1) == "Model loaded."
    [logs] = fake.sent("POST", r"/deployments/demo/getLogs$")
    assert logs.json == {"tail": 1}
    assert [e.name for e in workspace.list_endpoints()] == [EP]


def test_delete_deployment_and_endpoint(fake, workspace, deployed):
    workspace.set_traffic(EP, {"demo": 0})  # Azure deletes no deployment with live traffic
    workspace.begin_delete_deployment(EP, "demo")
    assert fake.sent("DELETE", rf"/onlineEndpoints/{EP}/deployments/demo$")
    workspace.begin_delete_endpoint(EP)
    [delete] = fake.sent("DELETE", rf"/onlineEndpoints/{EP}$")
    assert delete.api_version == "2022-02-01-preview"
    assert workspace.get_endpoint(EP) is None


def test_endpoint_activity_from_azure_monitor(fake, workspace, deployed):
    end = datetime.now(UTC)
    fake.add_metric_point(
        EP, "demo", 3, (end - timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    fake.add_metric_point(
        EP, "demo", 2, (end - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    activity = workspace.get_endpoint_activity(EP, end - timedelta(hours=1), end)

    [query] = fake.sent("POST", r"/metrics:getBatch$")
    assert query.api_version == "2024-02-01"
    assert query.query["metricnames"] == "RequestsPerMinute"
    assert (
        query.query["metricnamespace"]
        == "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
    )
    assert query.query["filter"] == "deployment eq '*'"
    assert query.json["resourceids"] == [f"{workspace.address.arm_id}/onlineEndpoints/{EP}"]
    assert activity.available and activity.total_requests == 5
    assert activity.requests_by_deployment == {"demo": 5}
    assert activity.organic_requests == 5


def test_endpoint_activity_unavailable_is_not_idle(fake, workspace):
    from tests.azure.fake_azureml import Fault

    fake.server.inject(
        Fault(
            "POST",
            r"/metrics:getBatch$",
            status=403,
            body={"error": {"code": "AuthorizationFailed", "message": "no"}},
        )
    )
    end = datetime.now(UTC)
    activity = workspace.get_endpoint_activity(EP, end - timedelta(hours=1), end)
    assert not activity.available and "Azure Monitor" in activity.reason


def test_reading_an_endpoint_lists_its_deployments_once(fake, credential, deployed):
    # The SDK's online_endpoints.get lists the deployments itself (to fill traffic gaps);
    # listing them again for the record doubled the calls of every endpoint read.
    fake.requests.clear()
    endpoint = make_workspace(fake, credential).get_endpoint(EP)  # a new run's first read

    assert [d.name for d in endpoint.deployments] == ["demo"]
    assert endpoint.traffic == {"demo": 100}
    assert len(fake.sent("GET", rf"/onlineEndpoints/{EP}/deployments$")) == 1
    assert len(fake.sent("GET", rf"/onlineEndpoints/{EP}$")) == 1
    assert len(fake.requests) == 2


def test_listing_reads_no_deployments_of_endpoints_that_are_not_ours(fake, credential, deployed):
    for i in range(3):
        fake.add_endpoint(f"someone-elses-{i}", {"team": "search"}, {"blue": "Standard_DS3_v2"})
    fake.requests.clear()
    workspace = make_workspace(fake, credential)  # a new run's

    endpoints = {e.name: e for e in workspace.list_endpoints()}

    assert [d.name for d in endpoints[EP].deployments] == ["demo"]
    assert not endpoints["someone-elses-0"].managed
    # One listing of endpoints, one of our endpoint's deployments: none of theirs.
    assert [r.path.rsplit("/", 1)[-1] for r in fake.requests] == ["onlineEndpoints",
                                                                   "deployments"]
    # Named, theirs is read whole, deployments and all.
    assert [d.name for d in workspace.get_endpoint("someone-elses-1").deployments] == ["blue"]


def test_a_runs_listing_of_deployments_stands_until_it_writes_or_it_ages(
    fake, workspace, deployed, model, monkeypatch
):
    from workspaces.azure import workspace as azure_workspace

    workspace.get_endpoint(EP)
    fake.requests.clear()
    assert [d.name for d in workspace.get_endpoint(EP).deployments] == ["demo"]
    assert fake.sent("GET", r"/deployments$") == []  # read a moment ago by this run

    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name=EP, name="green", model_id=model.id, instance_type="Standard_NC6s_v3",
        instance_count=1, tags=TAGS,
    ))
    assert {d.name for d in workspace.get_endpoint(EP).deployments} == {"demo", "green"}
    assert len(fake.sent("GET", r"/deployments$")) == 1  # its own write: read again

    # Someone else's deployment appears on Azure; this run's listing does not show it...
    blue = json.loads(json.dumps(fake.deployments[EP]["green"]).replace("green", "blue"))
    fake.deployments[EP]["blue"] = blue
    assert {d.name for d in workspace.get_endpoint(EP).deployments} == {"demo", "green"}
    # ...until the listing is older than LISTING_MAX_AGE_S.
    monkeypatch.setattr(azure_workspace, "LISTING_MAX_AGE_S", 0.0)
    assert {d.name for d in workspace.get_endpoint(EP).deployments} == {"demo", "green", "blue"}
    assert len(fake.sent("GET", r"/deployments$")) == 2  # too old to stand for a new read


def test_writes_to_another_requests_endpoint_are_refused_at_the_write(fake, workspace, deployed):
    # The endpoint belongs to req1; a second request reads it just before each write.
    from workspaces.errors import OwnershipConflict

    theirs = {**TAGS, "chatft-request": "req2"}
    with pytest.raises(OwnershipConflict, match="belongs to request req1.*this request is req2"):
        workspace.begin_create_endpoint(EndpointSpec(
            name=EP, description="other", tags=theirs, owner="req2",
        ))
    with pytest.raises(OwnershipConflict, match="belongs to request req1"):
        workspace.begin_create_deployment(DeploymentSpec(
            endpoint_name=EP, name="green", model_id="azureml:m:2",
            instance_type="Standard_NC6s_v3", instance_count=1, tags=theirs, owner="req2",
        ))
    with pytest.raises(OwnershipConflict, match="belongs to request req1"):
        workspace.set_traffic(EP, {"demo": 100}, owner="req2")
    endpoint = workspace.get_endpoint(EP)
    assert endpoint.tags["chatft-request"] == "req1"
    assert endpoint.traffic == {"demo": 100}
    assert [d.name for d in endpoint.deployments] == ["demo"]

    workspace.begin_create_endpoint(EndpointSpec(
        name=EP, description="taken over", tags=theirs, owner="req2", take_over=True,
    ))
    endpoint = workspace.get_endpoint(EP)
    assert endpoint.tags["chatft-request"] == "req2"
    assert endpoint.traffic == {"demo": 100}  # taking over moves no traffic by itself


def test_a_model_version_of_another_request_is_refused(fake, workspace, model):
    from workspaces.errors import OwnershipConflict

    with pytest.raises(OwnershipConflict, match=f"version {model.version} belongs to request req1"):
        workspace.register_model(model.name, model.version, "chatft-job", "d",
                                 {"chatft-request": "req2"}, owner="req2")
    same = workspace.register_model(model.name, model.version, "chatft-job", "d",
                                    {"chatft-request": "req1"}, owner="req1")
    assert same.id == model.id
