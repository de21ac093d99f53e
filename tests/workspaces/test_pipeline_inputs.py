"""The shared checker: planned fine-tune inputs against a pipeline interface."""

from __future__ import annotations

import pytest

from workspaces.errors import InvalidRequest
from workspaces.interface import FoundationModel, PipelineInput, PipelineInterface
from workspaces.local.pipeline_interface import local_interface, mirrored_interface
from workspaces.pipeline_inputs import PlannedInput, check_inputs, plan_inputs

MODEL = FoundationModel(
    name="m", version="3", id="azureml://registries/r/models/m/versions/3",
    tags={"model_specific_defaults": "{'precision': '16', 'lora_r': 4}"},
)


def _one(name: str, value: str | None, field: str = "f", kind: str = "literal") -> list:
    return [PlannedInput(name=name, value=value, field=field, kind=kind)]


def test_refusal_names_field_value_and_what_the_component_allows():
    result = check_inputs(mirrored_interface(), _one("deepspeed_stage", "1",
                                                     "training.deepspeed_stage"))
    with pytest.raises(InvalidRequest) as caught:
        result.raise_for_problems()
    assert str(caught.value) == (
        'training.deepspeed_stage: 1 is not allowed by chat_completion_pipeline 0.0.57; '
        'allowed: "2", "3"'
    )


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("num_train_epochs", "2.5", "2.5 is not an integer"),
        ("num_train_epochs", "0", "0 is below the minimum 1"),
        ("learning_rate", "nan", "nan is not a number"),
        ("apply_lora", "yes", 'yes is not allowed by chat_completion_pipeline 0.0.57; '
                              'allowed: "true", "false"'),
        ("lr_scheduler_type", "inverse_sqrt", "inverse_sqrt is not allowed"),
        ("lora_rank", "8", "lora_rank is not an input of chat_completion_pipeline 0.0.57; "
                           "did you mean lora_r"),
        ("train_file_path", "x.jsonl", "train_file_path is a uri_file input"),
    ],
)
def test_each_rule(name, value, problem):
    result = check_inputs(mirrored_interface(), _one(name, value))
    assert len(result.problems) == 1 and problem in result.problems[0]


def test_maximum_boolean_and_required_inputs():
    interface = PipelineInterface(component="c", version="9", inputs={
        "steps": PipelineInput(type="integer", max=10),
        "flag": PipelineInput(type="boolean"),
        "task": PipelineInput(type="string", optional=False),
    })
    result = check_inputs(interface, _one("steps", "11") + _one("flag", "maybe"))
    assert result.problems == [
        "f: 11 is above the maximum 10 of c 9",
        'f: maybe is not a boolean of c 9; allowed: "true", "false"',
        "task: required by c 9 and not set by the request; give it in "
        "training.extra_parameters",
    ]


def test_every_planned_input_is_named_after_where_the_user_set_it():
    parameters = {"precision": "16", "lora_r": "4", "optim": "adafactor", "seed": "1"}
    fields = {"seed": "training.seed", "optim": "training.extra_parameters.optim"}
    planned = {p.name: p for p in plan_inputs(parameters, fields, MODEL, True, 2, "gpu")}
    assert planned["precision"].field == (
        "model_specific_defaults.precision (tag of model m version 3)")
    assert planned["optim"].field == "training.extra_parameters.optim"
    assert planned["seed"].field == "training.seed"
    assert planned["num_nodes_finetune"].value == "2"
    assert planned["compute_finetune"].value == "gpu"
    assert planned["mlflow_model_path"].kind == "mlflow_model"
    # the model's defaults are not theirs when the request turns them off
    off = {p.name: p for p in plan_inputs(parameters, fields, MODEL, False, 1, "gpu")}
    assert off["precision"].field == "training.precision"


def test_local_pipeline_reports_what_it_ignores_when_it_would_matter():
    planned = (_one("apply_deepspeed", "true", "training.apply_deepspeed")
               + _one("deepspeed_stage", "2", "training.deepspeed_stage")
               + _one("lora_r", "16", "training.lora_r"))
    result = check_inputs(local_interface(), planned)
    assert result.problems == []
    # deepspeed_stage "2" is the default: ignoring it changes nothing
    assert result.ignored == {
        "apply_deepspeed": "DeepSpeed does not run on this machine's CPU "
                           "(set by training.apply_deepspeed=true)"
    }


def test_local_pipeline_refuses_what_it_would_fail_on_later():
    planned = _one("lora_r", "0", "training.extra_parameters.lora_r")
    result = check_inputs(local_interface(), planned)
    assert result.problems == [
        "training.extra_parameters.lora_r: 0 is below the minimum 1 of local-finetune-pipeline 1 "
        "(interface of chat_completion_pipeline 0.0.57)"
    ]
