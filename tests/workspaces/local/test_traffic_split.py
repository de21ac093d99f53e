"""The local endpoint's traffic split is real: a canary share is met within the binomial
bounds, the deployment header routes, and the request log counts each deployment."""

from __future__ import annotations

import math
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest

from tests.helpers import chat_body, register_model, serve
from workspaces.interface import DeploymentSpec

REQUESTS = 1000
CANARY = 10


@pytest.mark.slow
def test_a_ten_percent_canary_gets_ten_percent(workspace, standin_mlflow_model):
    model = register_model(workspace, standin_mlflow_model)
    serve(workspace, model, "ep-split", deployment="blue")
    workspace.begin_create_deployment(DeploymentSpec(
        endpoint_name="ep-split", name="green", model_id=model.id, instance_type="Local_CPU",
    ))
    deadline = time.monotonic() + 120
    while workspace.get_deployment("ep-split", "green").provisioning_state == "Creating":
        assert time.monotonic() < deadline, "green never loaded"
        time.sleep(0.2)
    workspace.set_traffic("ep-split", {"blue": 100 - CANARY, "green": CANARY})
    start = datetime.now(UTC) - timedelta(seconds=5)
    body = chat_body(max_new_tokens=1)

    def send(_: int) -> str:
        response = workspace.invoke("ep-split", body)
        assert response.status_code == 200, response.body
        return response.headers["azureml-model-deployment"]

    started = time.monotonic()
    # Two at a time: one per instance of blue, whose queue Azure-like limits cap at two.
    with ThreadPoolExecutor(max_workers=2) as pool:
        served = list(pool.map(send, range(REQUESTS)))
    took = time.monotonic() - started
    green = served.count("green")
    # 4.5 standard deviations of Binomial(1000, 0.1): a correct split fails once in ~150,000.
    sd = math.sqrt(REQUESTS * CANARY / 100 * (1 - CANARY / 100))
    low, high = REQUESTS * CANARY / 100 - 4.5 * sd, REQUESTS * CANARY / 100 + 4.5 * sd
    print(f"\n{green} of {REQUESTS} requests to the {CANARY}% canary "
          f"(allowed {low:.0f}-{high:.0f}); {REQUESTS / took:.0f} requests/s")
    assert low <= green <= high

    # The header routes, whatever the split says.
    assert {send_to("green", workspace, body) for _ in range(20)} == {"green"}
    activity = workspace.get_endpoint_activity(
        "ep-split", start, datetime.now(UTC) + timedelta(minutes=1)
    )
    assert activity.requests_by_deployment == {"blue": served.count("blue"),
                                               "green": green + 20}


def send_to(deployment: str, workspace, body) -> str:
    response = workspace.invoke("ep-split", body, deployment_name=deployment)
    assert response.status_code == 200, response.body
    return response.headers["azureml-model-deployment"]
