"""A real kill -9 of a canary release after each of its steps, then a re-run; and the
smoke test and the teardown meeting a rollout whose run died: left alone while the run
beats, undone (at its canary share) or finished (once promoted) by the smoke test alone
when it has gone silent.

The run is held right after a step (``CHATFT_HOLD_AFTER_ROLLOUT``) and its whole process
group killed. What is left is read from the workspace's files, then one re-run of the
same request must converge: one deployment (the new model's) at 100 %, the old one gone,
no second model version, no process nobody knows.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import (
    FinetuneRequest,
    RolloutParameters,
    TeardownRequest,
    TrainingParameters,
)
from flows.smoke_test_endpoints import smoke_test_endpoints
from flows.teardown_idle_endpoints import teardown_idle_endpoints
from tasks.liveness import HEARTBEAT_ENV, liveness_bound_s
from tests.flows.test_kill_matrix import _model_versions, _unknown, kill_flow_when
from tests.helpers import run_artifacts, wait_past_liveness
from workspaces.fault_injection import ROLLOUT_HOLD_ENV
from workspaces.interface import TAG_ROLLOUT_STEP, TAG_STAGE
from workspaces.local import LocalWorkspace
from workspaces.local.state import read_json

STANDIN = "phi3-tiny-standin"
ENDPOINT = "crash-ep"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
WATCH = RolloutParameters(strategy="canary", watch_seconds=5, watch_requests=3)


def _request(tmp_path: Path, epochs: int, lr: float) -> FinetuneRequest:
    return FinetuneRequest(
        foundation_model=STANDIN, endpoint_name=ENDPOINT, dataset_split_pc=3,
        download_dir=str(tmp_path / "dl"), rollout=WATCH,
        training=TrainingParameters(num_train_epochs=epochs, learning_rate=lr,
                                    apply_model_specific_defaults=False),
    )


def _config(ws: LocalWorkspace) -> dict:
    return read_json(ws.root / "endpoints" / ENDPOINT / "endpoint.json") or {}


def _kill_after(point: str, request: FinetuneRequest, tmp_path: Path) -> None:
    """Run the request in its own process, held after ``point``; kill -9 its group there."""
    marker = tmp_path / f"held-{point}"
    marker.unlink(missing_ok=True)
    kill_flow_when(marker.exists, request, tmp_path / "flow.log", point,
                   {ROLLOUT_HOLD_ENV: f"{point}:{marker}"}, deadline_s=900)


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_kill_9_after_each_rollout_step_then_rerun_converges(
    prefect_server, workspace, tmp_path, monkeypatch
):
    root = workspace.root.resolve()
    monkeypatch.setenv("CHATFT_STATE_DIR", str(root))
    # Runs beat every 2 s, so a killed one is known dead 23 s later, not after minutes.
    monkeypatch.setenv(HEARTBEAT_ENV, "2")
    first = finetune_and_deploy(request=_request(tmp_path, 1, 5e-4))
    old = first.deployment_name
    request = _request(tmp_path, 2, 1e-3)

    # After each kill: what the endpoint says (its step) matches what it does (traffic).
    expected = {
        "deployment-created": ("deploying", lambda t, new: t == {old: 100}),
        "canary-set": ("canary", lambda t, new: t == {old: 90, new: 10}),
        "promoted": ("promoted", lambda t, new: t == {new: 100}),
        "old-deleted": ("promoted", lambda t, new: t == {new: 100}),
    }
    for point, (step, traffic_ok) in expected.items():
        _kill_after(point, request, tmp_path)
        config = _config(workspace)
        new = config["tags"]["chatft-rollout-to"]
        assert config["tags"][TAG_ROLLOUT_STEP] == step, point
        assert traffic_ok(config["traffic"], new), (point, config["traffic"])
        assert _model_versions(workspace) == 2, point
        assert len(config["deployments"]) == (1 if point == "old-deleted" else 2), point
        assert _unknown(root) == [], point

    result = finetune_and_deploy(request=request)
    config = _config(workspace)
    assert result.rollout == "promoted", result.rollout_message
    assert list(config["deployments"]) == [result.deployment_name] != [old]
    assert config["traffic"] == {result.deployment_name: 100}
    assert config["tags"][TAG_ROLLOUT_STEP] == "done"
    assert _model_versions(workspace) == 2
    assert _unknown(root) == []
    assert workspace.get_model(result.model_name, result.model_version).tags[
        TAG_STAGE] == "production"

    # A third release dies under its canary share. While it is under way the teardown
    # keeps the endpoint whatever its idleness; a smoke test right away leaves it alone (its
    # run beat a moment ago); once the run has been silent past the bound, the next pass
    # undoes it and notifies.
    _kill_after("canary-set", _request(tmp_path, 3, 5e-4), tmp_path)
    killed_at = time.monotonic()
    dead = _config(workspace)["tags"]["chatft-rollout-to"]
    teardown = teardown_idle_endpoints(
        request=TeardownRequest(idle_hours=0.0001, grace_minutes=0, dry_run=False))
    assert ENDPOINT not in teardown.named("deleted")
    [row] = [d for d in teardown.decisions if d.endpoint == ENDPOINT and not d.deployment]
    assert "rollout is under way (step canary" in row.reason
    if time.monotonic() - killed_at < liveness_bound_s() - 8:
        early = smoke_test_endpoints(return_state=True)
        assert _config(workspace)["tags"][TAG_ROLLOUT_STEP] == "canary", early.message
        [found] = run_artifacts(early.state_details.flow_run_id, "rollout-recovery")
        assert "under way, left alone" in found.data
    wait_past_liveness(killed_at)
    state = smoke_test_endpoints(return_state=True)
    assert state.is_completed(), state.message
    config = _config(workspace)
    assert config["traffic"] == {result.deployment_name: 100}
    assert list(config["deployments"]) == [result.deployment_name]
    assert config["tags"][TAG_ROLLOUT_STEP] == "undone"
    recovery = run_artifacts(state.state_details.flow_run_id, "rollout-recovery")
    assert recovery and dead in recovery[0].data and "rolled back" in recovery[0].data
    assert "silent for" in recovery[0].data
    dead_version = dead.rsplit("-", 1)[1]
    assert workspace.get_model(result.model_name, dead_version).tags[TAG_STAGE] == "rejected"
    assert _unknown(root) == []

    # A fourth release dies right after its promotion was written (the new deployment at
    # 100 %, the old one still there): the smoke test alone finishes it once the run is
    # silent: the old deployment deleted, the new model production, the old one retired.
    fourth = _request(tmp_path, 2, 7e-4)
    # a margin so that this model, whatever its figures against the third, gets that far,
    # and a canary judged on errors only (latency on a loaded machine is not at stake here)
    fourth.rollout = WATCH.model_copy(update={"gate_loss_margin": 0.1,
                                              "gate_exact_answer_margin": 0.1,
                                              "max_latency_ratio": 100})
    _kill_after("promoted", fourth, tmp_path)
    killed_at = time.monotonic()
    config = _config(workspace)
    promoted = config["tags"]["chatft-rollout-to"]
    assert config["tags"][TAG_ROLLOUT_STEP] == "promoted"
    assert config["traffic"] == {promoted: 100} and len(config["deployments"]) == 2
    wait_past_liveness(killed_at)
    state = smoke_test_endpoints(return_state=True)
    assert state.is_completed(), state.message
    config = _config(workspace)
    assert list(config["deployments"]) == [promoted]
    assert config["traffic"] == {promoted: 100}
    assert config["tags"][TAG_ROLLOUT_STEP] == "done"
    recovery = run_artifacts(state.state_details.flow_run_id, "rollout-recovery")
    assert recovery and "promotion finished" in recovery[0].data
    version = promoted.rsplit("-", 1)[1]
    assert workspace.get_model(result.model_name, version).tags[TAG_STAGE] == "production"
    assert workspace.get_model(result.model_name, result.model_version).tags[
        TAG_STAGE] == "retired"
    assert _unknown(root) == []
