"""Requests run at once never share a name or a model, and never steal an endpoint.

Both tests run two whole flows at the same time, in two threads of one process, on the
2-layer stand-in.
"""

from __future__ import annotations

import hashlib
import threading
import time
from types import SimpleNamespace

import pytest

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest, TrainingParameters
from tests.helpers import run_logs
from workspaces.interface import TAG_REQUEST
from workspaces.naming import endpoint_name_for, suffix_for

STANDIN = "phi3-tiny-standin"


def _request(learning_rate: float, **fields) -> FinetuneRequest:
    return FinetuneRequest(
        foundation_model=STANDIN,
        training=TrainingParameters(num_train_epochs=1, learning_rate=learning_rate),
        dataset_split_pc=3,
        **fields,
    )


def _run_together(*requests: FinetuneRequest) -> list:
    states: list = [None] * len(requests)

    def run(i: int) -> None:
        states[i] = finetune_and_deploy(request=requests[i], return_state=True)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return states


def test_suffixes_of_many_requests_differ_and_stay_put():
    # Request ids are the first 16 hex digits of a sha256, as FinetuneRequest makes them.
    ids = [hashlib.sha256(str(i).encode()).hexdigest()[:16] for i in range(5000)]
    suffixes = {suffix_for(request_id) for request_id in ids}
    assert len(suffixes) == len(ids)
    assert all(len(s) == 10 and s.isdigit() for s in suffixes)
    assert all(len(endpoint_name_for(s)) <= 32 for s in suffixes)
    assert suffix_for("00000000ffffffff") == suffix_for("00000000ffffffff")


@pytest.mark.slow
def test_requests_started_in_the_same_second_each_get_their_own_model_and_endpoint(
    prefect_server, workspace, monkeypatch
):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    # The same second for both: the suffix used to be the epoch second.
    frozen = SimpleNamespace(time=lambda: 1_800_000_000.0, monotonic=time.monotonic,
                             sleep=time.sleep)
    monkeypatch.setattr("tasks.finetune.time", frozen)
    states = _run_together(_request(1e-3), _request(2e-3))
    results = [state.result() for state in states]

    assert len({r.suffix for r in results}) == 2
    assert len({r.endpoint_name for r in results}) == 2
    assert len({r.model_version for r in results}) == 2
    assert not any(r.endpoint_reused or r.job_reused for r in results)
    for result in results:
        model = workspace.get_model(result.model_name, result.model_version)
        assert model.tags[TAG_REQUEST] == result.request_id
        assert model.tags["job-name"] == result.job_name
        endpoint = workspace.get_endpoint(result.endpoint_name)
        assert endpoint.tags[TAG_REQUEST] == result.request_id
        assert [d.model_id for d in endpoint.deployments] == [model.id]
        assert endpoint.traffic == {result.deployment_name: 100}


@pytest.mark.slow
def test_two_requests_racing_for_one_endpoint_leave_one_owner(prefect_server, workspace,
                                                              monkeypatch):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    requests = [_request(rate, endpoint_name="shared-ep") for rate in (1e-3, 2e-3)]
    states = _run_together(*requests)
    ids = [r.request_id(workspace.cache_scope) for r in requests]
    completed = [i for i, state in enumerate(states) if state.is_completed()]
    assert len(completed) == 1, [state.message for state in states]
    winner, loser = completed[0], 1 - completed[0]
    assert states[loser].is_failed()
    refusal = states[loser].message + "\n" + "\n".join(
        log.message for log in run_logs(states[loser].state_details.flow_run_id))
    assert f"endpoint shared-ep belongs to request {ids[winner]}" in refusal
    assert f"this request is {ids[loser]}" in refusal

    endpoint = workspace.get_endpoint("shared-ep")
    won = states[winner].result()
    assert endpoint.tags[TAG_REQUEST] == ids[winner]
    assert endpoint.traffic == {won.deployment_name: 100}
    model = workspace.get_model(won.model_name, won.model_version)
    assert [d.model_id for d in endpoint.deployments] == [model.id]
    assert all(d.tags.get(TAG_REQUEST) == ids[winner] for d in endpoint.deployments)
