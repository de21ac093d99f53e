"""Local endpoints: a real server process, key auth, the scoring contract, request log."""

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.helpers import chat_body, register_model, serve, wait_deployment_ready
from workspaces.errors import InvalidRequest, QuotaExceeded, ResourceNotFound
from workspaces.interface import DeploymentSpec, EndpointSpec
from workspaces.local.endpoints import MAX_LOCAL_INSTANCES, http_client


@pytest.fixture
def endpoint(workspace, standin_mlflow_model):
    model = register_model(workspace, standin_mlflow_model)
    return serve(workspace, model, "ep-contract")


def _post(endpoint, body, key=None, headers=None):
    sent = {"Content-Type": "application/json", **(headers or {})}
    if key:
        sent["Authorization"] = f"Bearer {key}"
    return httpx.post(
        endpoint.scoring_uri,
        content=body if isinstance(body, bytes) else json.dumps(body),
        headers=sent,
        timeout=30,
    )


@pytest.mark.slow
def test_scoring_contract_and_key_auth(workspace, endpoint):
    keys = workspace.get_endpoint_keys(endpoint.name)
    primary, secondary = keys.primary.get_secret_value(), keys.secondary.get_secret_value()

    ok = _post(endpoint, chat_body(), primary)
    assert ok.status_code == 200
    assert isinstance(ok.json()["output"], str)
    assert ok.headers["azureml-model-deployment"] == "demo"
    assert _post(endpoint, chat_body(), secondary).status_code == 200

    missing = _post(endpoint, chat_body())
    assert missing.status_code == 401
    assert _post(endpoint, chat_body(), "not-the-key").status_code == 401

    bad = _post(
        endpoint, {"input_data": {"input_string": [[{"role": "bot", "content": "x"}]]}}, primary
    )
    assert bad.status_code == 400
    assert "input_data.input_string[0][0].role" in bad.json()["error"]["message"]

    big = _post(endpoint, b"{" + b" " * (1 << 20) + b"}", primary)
    assert big.status_code == 413

    unknown = _post(endpoint, chat_body(), primary, {"azureml-model-deployment": "blue"})
    assert unknown.status_code == 404


def _peak_generating(endpoint, key, requests: int, hoped: int) -> tuple[int, int, set[int]]:
    """Send ``requests`` generations at once, again until /health has seen ``hoped`` of
    them generating together (20 rounds at most); the most it saw, the instance count and
    every status. The stand-in's replies end after 10-90 tokens, tens of milliseconds: on
    a loaded machine one round's polls can miss them all."""
    health = endpoint.scoring_uri.removesuffix("/score") + "/health"
    body = chat_body("Tell me a long story about a lighthouse.", max_new_tokens=2048)
    body["input_data"]["parameters"].update(do_sample=True, temperature=2.0)
    peak, instances, statuses = 0, 0, set()
    with ThreadPoolExecutor(requests) as pool:
        for _ in range(20):
            sent = [pool.submit(_post, endpoint, body, key) for _ in range(requests)]
            while not all(f.done() for f in sent):
                # The load figures are for key holders only.
                answer = httpx.get(health, timeout=10, headers={"Authorization": f"Bearer {key}"})
                load = answer.json()["generating"]["demo"]
                peak, instances = max(peak, load["now"]), load["instances"]
            statuses |= {f.result().status_code for f in sent}
            if peak >= hoped:
                break
    return peak, instances, statuses


@pytest.mark.slow
def test_each_instance_generates_for_one_request_at_a_time(workspace, standin_mlflow_model):
    # Azure's default max_concurrent_requests_per_instance is 1: two instances answer two
    # requests together, one instance answers them one after the other.
    model = register_model(workspace, standin_mlflow_model)
    two = serve(workspace, model, "ep-two-instances", instance_count=2)
    key = workspace.get_endpoint_keys(two.name).primary.get_secret_value()
    assert _peak_generating(two, key, 2, hoped=2) == (2, 2, {200})

    one = serve(workspace, model, "ep-one-instance", instance_count=1)
    key = workspace.get_endpoint_keys(one.name).primary.get_secret_value()
    # never two at once on one instance, however many rounds it took to see one
    assert _peak_generating(one, key, 2, hoped=2) == (1, 1, {200})

    with pytest.raises(QuotaExceeded, match=rf"instance_count {MAX_LOCAL_INSTANCES + 1}: .* "
                       rf"1 to {MAX_LOCAL_INSTANCES} instances \(one per CPU core"):
        workspace.begin_create_deployment(DeploymentSpec(
            endpoint_name=one.name, name="big", model_id=model.id, instance_type="Local_CPU",
            instance_count=MAX_LOCAL_INSTANCES + 1, tags={},
        ))


@pytest.mark.slow
def test_generation_parameters_are_honoured(workspace, endpoint):
    body = chat_body(max_new_tokens=1)
    body["input_data"]["parameters"]["do_sample"] = False
    first = workspace.invoke(endpoint.name, body)
    second = workspace.invoke(endpoint.name, body)
    assert first.status_code == 200
    # greedy decoding is deterministic and one token is at most a few characters
    assert first.body == second.body
    assert len(json.loads(first.body)["output"]) <= 4


@pytest.mark.slow
def test_request_log_splits_own_traffic_from_organic(workspace, endpoint):
    start = datetime.now(UTC) - timedelta(minutes=1)
    workspace.invoke(endpoint.name, chat_body(), caller="smoke-test")
    workspace.invoke(endpoint.name, chat_body())
    workspace.invoke(endpoint.name, chat_body())
    _post(endpoint, chat_body(), "wrong")  # refused requests are not use
    activity = workspace.get_endpoint_activity(
        endpoint.name, start, datetime.now(UTC) + timedelta(minutes=1)
    )
    assert activity.requests_by_caller == {"smoke-test": 1, "organic": 2}
    assert activity.organic_requests == 2
    assert activity.requests_by_deployment == {"demo": 3}
    assert activity.last_organic_request_at is not None


@pytest.mark.slow
def test_dead_server_is_reported_and_restartable(workspace, endpoint):
    assert workspace.endpoints.stop(endpoint.name)
    listed = {e.name: e for e in workspace.list_endpoints()}
    assert listed[endpoint.name].healthy is False
    restarted = workspace.restart_endpoint(endpoint.name)
    assert restarted.healthy is True
    assert restarted.scoring_uri == endpoint.scoring_uri


@pytest.mark.slow
def test_delete_stops_the_server_and_forgets_the_endpoint(workspace, endpoint):
    workspace.begin_delete_endpoint(endpoint.name)
    assert workspace.get_endpoint(endpoint.name) is None
    with pytest.raises(httpx.ConnectError):
        httpx.get(endpoint.scoring_uri.replace("/score", "/health"), timeout=2)


def test_names_traffic_and_sizes_are_checked(workspace):
    with pytest.raises(ValueError, match="endpoint_name"):
        workspace.begin_create_endpoint(EndpointSpec(name="1-bad", description="d", tags={}))
    with pytest.raises(ResourceNotFound):
        workspace.set_traffic("nope", {"demo": 100})
    with pytest.raises(ResourceNotFound):
        workspace.begin_create_deployment(DeploymentSpec(
            endpoint_name="nope", name="demo", model_id="models:/x/1", instance_type="Local_CPU",
            instance_count=1, tags={},
        ))


def test_traffic_must_name_existing_deployments_and_sum_to_100(workspace, standin_mlflow_model):
    model = register_model(workspace, standin_mlflow_model)
    workspace.begin_create_endpoint(EndpointSpec(name="ep-traffic", description="d", tags={}))
    with pytest.raises(InvalidRequest, match="instance_type 'Standard_NC6s_v3'"):
        workspace.begin_create_deployment(DeploymentSpec(
            endpoint_name="ep-traffic", name="demo", model_id=model.id,
            instance_type="Standard_NC6s_v3", instance_count=1, tags={},
        ))
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name="ep-traffic", name="demo", model_id=model.id, instance_type="Local_CPU",
        instance_count=1, tags={},
    ))
    with pytest.raises(InvalidRequest, match="do not exist: blue"):
        workspace.set_traffic("ep-traffic", {"blue": 100})
    with pytest.raises(InvalidRequest, match="add up to 100"):
        workspace.set_traffic("ep-traffic", {"demo": 50})


def test_a_deployment_made_again_under_its_old_name_loads_its_new_model(
    workspace, standin_mlflow_model, tmp_path
):
    """Deleted, then created again with another model (a rollback, then a re-release): the
    server must load the new model, not keep serving the one it held under that name."""
    import shutil

    first = register_model(workspace, standin_mlflow_model, version="1")
    copy = tmp_path / "second-model"
    shutil.copytree(standin_mlflow_model, copy)
    second = register_model(workspace, copy, version="2")
    serve(workspace, first, "rename-ep", deployment="blue")
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name="rename-ep", name="green", model_id=first.id, instance_type="Local_CPU"))
    wait_deployment_ready(workspace, "rename-ep", "green")
    workspace.begin_delete_deployment("rename-ep", "green")
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name="rename-ep", name="green", model_id=second.id, instance_type="Local_CPU"))
    wait_deployment_ready(workspace, "rename-ep", "green")
    key = workspace.get_endpoint_keys("rename-ep").primary.get_secret_value()
    health = http_client().get(
        workspace.get_endpoint("rename-ep").scoring_uri.replace("/score", "/health"),
        headers={"Authorization": f"Bearer {key}"}).json()
    assert health["models"]["green"] == str(copy)
    assert health["models"]["blue"] == str(standin_mlflow_model)
    # and made again with the very model it had, faster than the server looks
    workspace.begin_delete_deployment("rename-ep", "green")
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name="rename-ep", name="green", model_id=second.id, instance_type="Local_CPU"))
    wait_deployment_ready(workspace, "rename-ep", "green")
    assert workspace.invoke("rename-ep", chat_body(), deployment_name="green").status_code == 200

