"""A canary release on Azure ML, through the real SDK against the HTTPS fake.

The first release makes the endpoint; the second is stopped right after two of its steps
(the new deployment created; the traffic promoted) and re-run, and must converge as on
the local workspace: one deployment at 100 %, the old one deleted, no second job or model
version. The fake lives in the test's process, so the run is stopped there by an error at
the step rather than by a kill -9 of a process of its own; what the re-run meets is the
same: the state Azure holds, and the step recorded in the endpoint's tags.
"""

from __future__ import annotations

import pytest

import flows.rollout as rollout_module
from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest, RolloutParameters, TrainingParameters
from tests.azure.fake_azureml.service import quota_row
from tests.helpers import run_artifacts
from workspaces.interface import TAG_ROLLOUT_STEP, TAG_STAGE

EP = "release-ep"
CANARY = RolloutParameters(strategy="canary", watch_seconds=5, watch_requests=3)


class Stopped(Exception):
    """The run stopped dead at a rollout step."""


def _request(tmp_path, lr: float) -> FinetuneRequest:
    return FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"),
                           endpoint_name=EP, rollout=CANARY,
                           training=TrainingParameters(learning_rate=lr))


def _stop_at(point: str):
    def checkpoint(reached: str) -> None:
        if reached == point:
            raise Stopped(f"stopped after {point}")
    return checkpoint


def test_a_canary_release_resumes_after_stops_at_two_steps(fake, azure_flow, tmp_path,
                                                           monkeypatch):
    first = finetune_and_deploy(request=_request(tmp_path, 5e-6))
    assert first.rollout == "first-release"
    old = first.deployment_name
    assert fake.endpoints[EP]["properties"]["traffic"] == {old: 100}

    request = _request(tmp_path, 2e-5)
    monkeypatch.setattr(rollout_module, "hold_after_rollout_step", _stop_at("deployment-created"))
    with pytest.raises(Stopped):
        finetune_and_deploy(request=request)
    endpoint = fake.endpoints[EP]
    new = endpoint["tags"]["chatft-rollout-to"]
    assert endpoint["tags"][TAG_ROLLOUT_STEP] == "deploying"
    assert endpoint["properties"]["traffic"] == {old: 100}
    assert sorted(fake.deployments[EP]) == sorted([old, new])

    monkeypatch.setattr(rollout_module, "hold_after_rollout_step", _stop_at("promoted"))
    stopped = finetune_and_deploy(request=request, return_state=True)
    assert stopped.is_failed() and "stopped after promoted" in stopped.message
    endpoint = fake.endpoints[EP]
    assert endpoint["tags"][TAG_ROLLOUT_STEP] == "promoted"
    assert endpoint["properties"]["traffic"] == {new: 100}
    # the canary share went out as Azure takes it: live shares adding up to 100
    puts = fake.sent("PUT", rf"/onlineEndpoints/{EP}$")
    canary_puts = [r.json["properties"]["traffic"] for r in puts
                   if r.json and len(r.json["properties"].get("traffic") or {}) == 2]
    assert {old: 90, new: 10} in canary_puts

    monkeypatch.setattr(rollout_module, "hold_after_rollout_step", lambda point: None)
    state = finetune_and_deploy(request=request, return_state=True)
    result = state.result()
    assert result.rollout == "promoted", result.rollout_message
    endpoint = fake.endpoints[EP]
    assert list(fake.deployments[EP]) == [new] and new == result.deployment_name
    assert endpoint["properties"]["traffic"] == {new: 100}
    assert endpoint["tags"][TAG_ROLLOUT_STEP] == "done"
    assert len(fake.sent("PUT", r"/jobs/[^/]+$")) == 2
    versions = fake.models[result.model_name]
    assert sorted(versions) == sorted([first.model_version, result.model_version])
    assert versions[result.model_version]["properties"]["tags"][TAG_STAGE] == "production"
    assert versions[first.model_version]["properties"]["tags"][TAG_STAGE] == "retired"
    # The run that got as far as promotion compared the new model with production on the
    # held-out loss Azure's finetune step logs (the base model is not evaluated there), and
    # judged the canary on its own probes (Azure Monitor has no per-deployment latency).
    gate = run_artifacts(stopped.state_details.flow_run_id, "rollout-gate")[0].data
    assert "production (" in gate and "pass test_sft loss" in gate
    assert "skip base (foundation model): not measured" in gate
    canary = run_artifacts(stopped.state_details.flow_run_id, "rollout-canary")[0].data
    assert "| probes |" in canary and "healthy" in canary
    decision = run_artifacts(state.state_details.flow_run_id, "rollout-decision")[0].data
    assert "Promoted" in decision and "finishing the promotion" in decision


def test_a_canary_without_quota_for_two_deployments_is_refused_before_training(
    fake, azure_flow, tmp_path
):
    first = finetune_and_deploy(request=_request(tmp_path, 5e-6))
    assert first.rollout == "first-release"
    jobs = len(fake.sent("PUT", r"/jobs/[^/]+$"))
    # 40 of 48 NCSv3 vCPUs in use: one more NC6s_v3 (6 vCPUs) fits, but Azure reserves
    # 20 % more for upgrades: two instances, 12 vCPUs.
    fake.quota[quota_row("standardNCSv3Family")] = (40, 48)
    state = finetune_and_deploy(request=_request(tmp_path, 2e-5), return_state=True)
    assert state.is_failed()
    assert "rollout: a canary needs room for a second deployment" in state.message
    assert "2 instance(s), 12 vCPUs; family NCSv3 has 8 of 48 dedicated vCPUs free" in (
        state.message)
    assert "Request more quota" in state.message
    assert len(fake.sent("PUT", r"/jobs/[^/]+$")) == jobs  # nothing trained
    assert list(fake.deployments[EP]) == [first.deployment_name]


def test_a_mirrored_share_goes_before_the_canary_and_is_cleared(fake, azure_flow, tmp_path):
    first = finetune_and_deploy(request=_request(tmp_path, 5e-6))
    mirrored = _request(tmp_path, 2e-5)
    mirrored.rollout = CANARY.model_copy(update={"mirror_percent": 20})
    result = finetune_and_deploy(request=mirrored)
    assert result.rollout == "promoted", result.rollout_message
    bodies = [r.json["properties"] for r in fake.sent("PUT", rf"/onlineEndpoints/{EP}$")
              if r.json]
    mirrors = [b.get("mirrorTraffic") for b in bodies]
    new, old = result.deployment_name, first.deployment_name
    # mirrored to the new deployment while the old one takes all live traffic, then cleared
    # in the write that sets the canary share
    at = mirrors.index({new: 20})
    assert bodies[at]["traffic"] == {old: 100}
    assert {old: 90, new: 10} in [b["traffic"] for b in bodies[at + 1:]]
    assert not fake.endpoints[EP]["properties"].get("mirrorTraffic")
    assert list(fake.deployments[EP]) == [new]
