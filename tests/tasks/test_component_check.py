"""The pre-flight on the local workspace: the same check against the local pipeline's own
interface, before the local compute or a job exists; ignored inputs are reported."""

from __future__ import annotations

import pytest
from prefect import flow

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest, TrainingParameters
from tasks.component_check import check_finetune_inputs, get_pipeline_interface
from tests.helpers import run_artifacts
from workspaces.errors import InvalidRequest
from workspaces.local import LocalWorkspace


@pytest.fixture
def workspace(tmp_path):
    # The pre-flight reads the catalog's entry only: no model needs building for these runs.
    return LocalWorkspace(tmp_path / "workspace")


def _nothing_created(workspace) -> bool:
    return not (workspace.root / "computes").exists() and not (workspace.root / "jobs").exists()


def test_deepspeed_stage_1_is_refused_locally_before_compute(
    prefect_server, workspace, tmp_path, monkeypatch
):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    # from the form, the value is refused with the component's choices
    with pytest.raises(Exception, match=r'deepspeed_stage[\s\S]*allowed: "2", "3"'):
        finetune_and_deploy(request={"training": {"deepspeed_stage": 1},
                                     "download_dir": str(tmp_path / "dl")})
    # through extra_parameters, the pre-flight refuses it against the local interface
    request = FinetuneRequest(download_dir=str(tmp_path / "dl"),
                              training={"extra_parameters": {"deepspeed_stage": "1"}})
    with pytest.raises(InvalidRequest) as caught:
        finetune_and_deploy(request=request)
    assert str(caught.value) == (
        "training.extra_parameters.deepspeed_stage: 1 is not allowed by "
        "local-finetune-pipeline 1 (interface of chat_completion_pipeline 0.0.57); "
        'allowed: "2", "3"'
    )
    assert _nothing_created(workspace)


def test_inputs_the_local_pipeline_ignores_are_reported(prefect_server, workspace, caplog):
    training = TrainingParameters(apply_deepspeed=True, deepspeed_stage=3,
                                  extra_parameters={"optim": "adafactor"})

    @flow
    def preflight() -> list[str]:
        model = workspace.get_foundation_model(workspace.default_foundation_model)
        interface = get_pipeline_interface(workspace, None)
        result = check_finetune_inputs(
            interface, model, training.as_component_inputs(), training.input_fields(),
            True, 1, workspace.default_compute_name,
        )
        return sorted(result.ignored)

    state = preflight(return_state=True)
    assert state.result() == ["apply_deepspeed", "deepspeed_stage", "optim"]
    [artifact] = run_artifacts(state.state_details.flow_run_id, "pipeline-inputs")
    assert ("| `deepspeed_stage` | `3` | training.deepspeed_stage | ignored: DeepSpeed does "
            "not run on this machine's CPU") in artifact.data
    assert "| `optim` | `adafactor` | training.extra_parameters.optim | ignored:" in artifact.data
    assert "Input deepspeed_stage is ignored by local-finetune-pipeline" in caplog.text
    assert _nothing_created(workspace)
