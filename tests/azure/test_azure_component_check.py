"""The fine-tune request is checked against chat_completion_pipeline's own interface, as
the registry serves it, before any compute or job is created (real SDK, HTTPS fake)."""

from __future__ import annotations

import pytest

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest

CREATES = r"/computes/|/jobs/[^/]+$"


def test_deepspeed_stage_1_is_refused_before_compute_or_job(fake, azure_flow, tmp_path):
    # Reproduces issue 17: the run created the compute, then submitted deepspeed_stage "1".
    request = {"dataset": "sample", "download_dir": str(tmp_path / "dl"),
               "training": {"deepspeed_stage": 1}}
    with pytest.raises(Exception, match=r'deepspeed_stage.*allowed: "2", "3"'):
        finetune_and_deploy(request=request)
    assert fake.sent("PUT", CREATES) == []


def _refused(fake, tmp_path, match, model=None, **training):
    from workspaces.errors import InvalidRequest

    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"),
                              foundation_model=model, training=training)
    with pytest.raises(InvalidRequest, match=match) as caught:
        finetune_and_deploy(request=request)
    assert fake.sent("PUT", r".") == []  # no compute, no job, nothing at all
    return str(caught.value)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        # an enum value the component refuses, in the words
        ({"deepspeed_stage": "1"},
         r'^training\.extra_parameters\.deepspeed_stage: 1 is not allowed by '
         r'chat_completion_pipeline 0\.0\.57; allowed: "2", "3"$'),
        ({"optim": "sgd"}, r'optim: sgd is not allowed .*allowed: "adamw_hf", "adamw_torch"'),
        # a name the component does not have
        ({"lora_rank": 16},
         r"training\.extra_parameters\.lora_rank: lora_rank is not an input of "
         r"chat_completion_pipeline 0\.0\.57; did you mean lora_r"),
        # a mistyped value, and a value below the component's minimum
        ({"warmup_steps": "ten"}, r"warmup_steps: ten is not an integer"),
        ({"max_grad_norm": "high"}, r"max_grad_norm: high is not a number"),
        ({"batch_size": 0}, r"batch_size: 0 is below the minimum 1 of chat_completion"),
        # an asset input cannot be given a literal
        ({"deepspeed": "ds.json"}, r"deepspeed is a uri_file input"),
    ],
)
def test_extra_parameters_are_checked_before_anything_is_created(
    fake, azure_flow, tmp_path, extra, match
):
    _refused(fake, tmp_path, match, extra_parameters=extra)


def test_a_model_default_that_breaks_the_interface_is_refused(fake, azure_flow, tmp_path):
    # (another model than the other tests': the model lookup is cached for a day)
    fake.add_registry_model("Phi-3-mini-128k-instruct", "8", tags={
        "finetune_compute_allow_list": "['Standard_NC6s_v3']",
        "inference_compute_allow_list": "['Standard_NC6s_v3']",
        "model_specific_defaults": "{'precision': '8', 'apply_lora': 'true'}",
    })
    message = _refused(fake, tmp_path, r"precision", model="Phi-3-mini-128k-instruct")
    assert message == (
        "model_specific_defaults.precision (tag of model Phi-3-mini-128k-instruct version 8): "
        '8 is not allowed by chat_completion_pipeline 0.0.57; allowed: "32", "16"'
    )


def test_the_pinned_version_is_the_one_checked(fake, azure_flow, tmp_path):
    # A version whose deepspeed_stage takes only "2": the latest (0.0.57) would take "3".
    inputs = fake.add_component("chat_completion_pipeline", "0.0.57")["inputs"]
    inputs["deepspeed_stage"]["enum"] = ["2"]
    fake.add_component("chat_completion_pipeline", "0.0.40", inputs=inputs)
    fake.add_component("chat_completion_pipeline", "0.0.57")  # latest again

    from workspaces.errors import InvalidRequest

    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"),
                              component_version="0.0.40", training={"deepspeed_stage": 3})
    with pytest.raises(InvalidRequest, match=r'deepspeed_stage: 3 is not allowed by '
                       r'chat_completion_pipeline 0\.0\.40; allowed: "2"$'):
        finetune_and_deploy(request=request)
    assert fake.sent("PUT", r".") == []
    assert len(fake.sent("GET", r"/components/chat_completion_pipeline/versions")) == 1


def test_registry_interface_read_through_the_sdk(fake, workspace):
    interface = workspace.get_pipeline_interface()
    assert interface.label == "chat_completion_pipeline 0.0.57"
    stage = interface.inputs["deepspeed_stage"]
    assert (stage.type, stage.default, stage.enum, stage.optional) == ("string", "2",
                                                                       ["2", "3"], True)
    assert interface.inputs["num_train_epochs"].min == 1
    assert interface.inputs["task_name"].optional is False
    # pinned and latest share one registry read per version
    assert workspace.get_pipeline_interface("0.0.57") == interface
    assert len(fake.sent("GET", r"/components/")) == 1


def test_what_passes_locally_passes_on_azure(fake, workspace):
    from workspaces.local.pipeline_interface import local_interface
    from workspaces.pipeline_inputs import interface_differences

    azure, local = workspace.get_pipeline_interface(), local_interface()
    assert local.mirrors == azure.label
    # Same names, types, choices; where they differ the local pipeline is stricter
    # (a minimum Azure does not declare) or only uses another default.
    for difference in interface_differences(azure, local):
        name, what = difference.split(": ", 1)
        assert what.split(" ")[0] in ("min", "default"), difference
        if what.startswith("min"):
            assert (azure.inputs[name].min or float("-inf")) <= local.inputs[name].min


def test_the_form_offers_only_what_the_component_takes(fake, workspace):
    from typing import get_args

    from flows.parameters import DeepSpeedStage, SchedulerType, TrainingParameters

    inputs = workspace.get_pipeline_interface().inputs
    assert list(get_args(SchedulerType)) == inputs["lr_scheduler_type"].enum
    assert [str(v) for v in get_args(DeepSpeedStage)] == inputs["deepspeed_stage"].enum
    schema = TrainingParameters.model_json_schema()["properties"]
    for name in ("num_train_epochs", "per_device_train_batch_size",
                 "per_device_eval_batch_size"):
        assert schema[name]["minimum"] >= inputs[name].min
