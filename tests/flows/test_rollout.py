"""Canary releases onto one live endpoint, end to end on the local workspace.

One chain shares the training: a first release creates the endpoint; a better model is
promoted onto the same URL; a model tuned on wrong answers is rejected by the gate and
changes nothing; a model whose deployment starts failing under the canary share is rolled
back. Each step is read back from the workspace the way a user would: the endpoint's
deployments, traffic and tags, the registry's aliases and tags, the run's state and
artifacts.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest, RolloutParameters, TrainingParameters
from tests.helpers import chat_body, run_artifacts
from workspaces.interface import TAG_ROLLOUT_STEP, TAG_STAGE
from workspaces.local import LocalWorkspace
from workspaces.local.state import read_json

STANDIN = "phi3-tiny-standin"
ENDPOINT = "rollout-ep"
WRONG_ANSWERS = str(
    Path(__file__).resolve().parents[2] / "workspaces" / "local" / "sample_data_wrong_answers"
)
FAST_WATCH = RolloutParameters(strategy="canary", watch_seconds=5, watch_requests=4)


def _request(tmp_path: Path, epochs: int, lr: float, **fields) -> FinetuneRequest:
    return FinetuneRequest(
        foundation_model=STANDIN, endpoint_name=ENDPOINT,
        dataset_split_pc=fields.pop("dataset_split_pc", 3),
        download_dir=str(tmp_path / "dl"), rollout=fields.pop("rollout", FAST_WATCH),
        training=TrainingParameters(num_train_epochs=epochs, learning_rate=lr,
                                    apply_model_specific_defaults=False),
        **fields,
    )


def _stage(ws: LocalWorkspace, name: str, version: str) -> str | None:
    model = ws.get_model(name, version)
    assert model is not None
    return model.tags.get(TAG_STAGE)


def _aliases(ws: LocalWorkspace, name: str) -> dict[str, str]:
    from workspaces.local import mlflow_store

    registered = mlflow_store.client(ws.tracking_uri).get_registered_model(name)
    return {alias: str(version) for alias, version in registered.aliases.items()}


def _snapshot(ws: LocalWorkspace) -> dict:
    endpoint = ws.get_endpoint(ENDPOINT)
    assert endpoint is not None
    return {"traffic": endpoint.traffic, "tags": endpoint.tags, "uri": endpoint.scoring_uri,
            "deployments": sorted(d.name for d in endpoint.deployments)}


def _fail_new_deployment_at_canary(ws: LocalWorkspace, stop: threading.Event) -> None:
    """A fault drill, as an operator would run one: once the canary share is set, the new
    deployment answers every request with HTTP 500."""
    config_file = ws.root / "endpoints" / ENDPOINT / "endpoint.json"
    while not stop.is_set():
        config = read_json(config_file) or {}
        tags = config.get("tags", {})
        if tags.get(TAG_ROLLOUT_STEP) == "canary":
            new = tags["chatft-rollout-to"]
            ws.endpoints.set_simulation(ENDPOINT, new, {
                "status_code": 500, "body": '{"error": {"code": "Boom", "message": "drill"}}'})
            return
        time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_first_release_promotion_gate_rejection_and_rollback(
    prefect_server, workspace, tmp_path, monkeypatch
):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))

    # 1. first release: the endpoint does not exist, the model takes all traffic
    first = finetune_and_deploy(request=_request(tmp_path, 1, 5e-4))
    assert first.rollout == "first-release" and first.reply
    ep = _snapshot(workspace)
    assert ep["traffic"] == {first.deployment_name: 100}
    assert ep["tags"][TAG_ROLLOUT_STEP] == "done"
    assert _stage(workspace, first.model_name, first.model_version) == "production"
    assert _aliases(workspace, first.model_name) == {
        "production": workspace.get_model(first.model_name, first.model_version).tags[
            "mlflow-version"]}

    # 2. a better model (more training on the same data) is promoted onto the same URL.
    # The stand-in's figures on these settings (test_sft loss): base 0.301, first 0.296,
    # this one 0.293, wrong answers 0.417, the last one 0.292.
    state = finetune_and_deploy(request=_request(tmp_path, 2, 1e-3), return_state=True)
    better = state.result()
    assert state.is_completed() and state.name == "Completed", state.message
    assert better.rollout == "promoted", better.rollout_message
    ep = _snapshot(workspace)
    assert ep["uri"] == first.scoring_uri
    assert ep["traffic"] == {better.deployment_name: 100}
    assert ep["deployments"] == [better.deployment_name]  # the old one is deleted
    assert _stage(workspace, better.model_name, better.model_version) == "production"
    assert _stage(workspace, first.model_name, first.model_version) == "retired"
    assert set(_aliases(workspace, better.model_name)) == {"production"}
    artifacts = {a.key: a for a in run_artifacts(state.state_details.flow_run_id)}
    assert {"rollout-gate", "rollout-canary", "rollout-decision"} <= set(artifacts)
    assert "passed" in artifacts["rollout-gate"].data
    assert "production (" in artifacts["rollout-gate"].data  # compared with version 1
    assert "Promoted" in artifacts["rollout-decision"].data
    canary = artifacts["rollout-canary"].data
    assert "| request log |" in canary and "healthy" in canary
    # the endpoint answers, from the new model
    reply = workspace.invoke(ENDPOINT, chat_body(), timeout_s=60)
    assert reply.status_code == 200
    assert reply.headers["azureml-model-deployment"] == better.deployment_name

    # 3. a model tuned on wrong answers loses the gate: registered, rejected, nothing moved
    before = _snapshot(workspace)
    state = finetune_and_deploy(
        request=_request(tmp_path, 2, 1e-3, dataset=WRONG_ANSWERS), return_state=True)
    wrong = state.result()
    assert state.is_completed() and state.name == "Rejected", (state.name, state.message)
    assert wrong.rollout == "rejected"
    assert "not released" in state.message
    assert _snapshot(workspace) == before
    rejected = workspace.get_model(wrong.model_name, wrong.model_version)
    assert rejected.tags[TAG_STAGE] == "rejected" and rejected.tags["chatft-gate"] == "failed"
    assert float(rejected.tags["chatft-gate-eval_loss"]) > float(
        rejected.tags["chatft-gate-production-eval_loss"])
    gate = run_artifacts(state.state_details.flow_run_id, "rollout-gate")[0].data
    assert "FAIL" in gate

    # 4. a deployment that fails under the canary share is rolled back
    stop = threading.Event()
    drill = threading.Thread(target=_fail_new_deployment_at_canary, args=(workspace, stop))
    drill.start()
    try:
        state = finetune_and_deploy(request=_request(tmp_path, 3, 5e-4), return_state=True)
    finally:
        stop.set()
        drill.join()
    failed = state.result()
    assert state.is_completed() and state.name == "RolledBack", (state.name, state.message)
    assert failed.rollout == "rolled-back" and "error rate" in failed.rollout_message
    after = _snapshot(workspace)
    assert after["traffic"] == {better.deployment_name: 100}
    assert after["deployments"] == [better.deployment_name]
    assert after["tags"][TAG_ROLLOUT_STEP] == "undone"
    assert _stage(workspace, failed.model_name, failed.model_version) == "rejected"
    assert _stage(workspace, better.model_name, better.model_version) == "production"

    # 5. a model evaluated on other held-out files (another share of the dataset): the
    # model in production is scored again on this request's files, with the job's code.
    state = finetune_and_deploy(
        request=_request(tmp_path, 2, 1e-3, dataset_split_pc=4), return_state=True)
    other = state.result()
    assert other.rollout in ("promoted", "rejected"), other.rollout_message
    gate = run_artifacts(state.state_details.flow_run_id, "rollout-gate")[0].data
    assert "scored again on this request's held-out files" in gate, gate
    production_row = next(line for line in gate.splitlines() if line.startswith("| production"))
    assert production_row.count("| - ") == 0, production_row  # both figures measured


def test_canary_requests_are_checked_before_anything_is_made(
    prefect_server, workspace, monkeypatch
):
    from flows.preflight import run_preflight
    from workspaces.errors import InvalidRequest

    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    canary = RolloutParameters(strategy="canary")
    with pytest.raises(InvalidRequest, match="endpoint_name: rollout.strategy canary"):
        run_preflight(workspace, FinetuneRequest(foundation_model=STANDIN, rollout=canary))
    with pytest.raises(InvalidRequest, match="rollout.mirror_percent"):
        run_preflight(workspace, FinetuneRequest(
            foundation_model=STANDIN, endpoint_name=ENDPOINT,
            rollout=RolloutParameters(strategy="canary", mirror_percent=10)))
    with pytest.raises(InvalidRequest, match="delete_endpoint"):
        run_preflight(workspace, FinetuneRequest(
            foundation_model=STANDIN, endpoint_name=ENDPOINT, rollout=canary,
            delete_endpoint=True))
    for field, value in (("canary_percent", 51), ("canary_percent", 0),
                         ("mirror_percent", 60), ("max_error_rate", 2)):
        with pytest.raises(ValidationError, match=field):
            RolloutParameters(**{field: value})
    assert not (workspace.root / "endpoints").exists() or not list(
        (workspace.root / "endpoints").iterdir())


def test_a_canary_onto_a_foreign_endpoint_or_another_family_is_refused_naming_the_field(
    prefect_server, workspace, standin_mlflow_model, monkeypatch
):
    from flows.preflight import run_preflight
    from tests.helpers import register_model, serve
    from workspaces.errors import InvalidRequest

    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    model = register_model(workspace, standin_mlflow_model)
    serve(workspace, model, "hand-made", tags={})  # no managed-by tag: not ours
    serve(workspace, model, "standin-ep")  # serves phi3-tiny-standin-ultrachat-200k
    canary = RolloutParameters(strategy="canary")
    with pytest.raises(InvalidRequest, match="endpoint_name: endpoint hand-made is not managed"):
        run_preflight(workspace, FinetuneRequest(
            foundation_model=STANDIN, endpoint_name="hand-made", rollout=canary))
    with pytest.raises(InvalidRequest, match=(
            "endpoint_name: endpoint standin-ep serves phi3-tiny-standin-ultrachat-200k, a "
            "model of another base family than this request's "
            r"\(SmolLM2-135M-Instruct-ultrachat-200k\)")):
        run_preflight(workspace, FinetuneRequest(endpoint_name="standin-ep", rollout=canary))
    # nothing moved on either endpoint
    assert workspace.get_endpoint("standin-ep").traffic == {"demo": 100}
    assert [d.name for d in workspace.get_endpoint("hand-made").deployments] == ["demo"]
