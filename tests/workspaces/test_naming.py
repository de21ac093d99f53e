"""Names the procedure derives, and Azure's endpoint name rules."""

import pytest

from workspaces.naming import (
    check_endpoint_name,
    endpoint_name_for,
    experiment_name_for,
    finetune_display_name,
    registered_model_description,
    registered_model_name,
)

WALKTHROUGH = {
    "num_train_epochs": "3",
    "per_device_train_batch_size": "1",
    "per_device_eval_batch_size": "1",
    "learning_rate": "5e-06",
    "lr_scheduler_type": "cosine",
    "apply_lora": "true",
    "apply_deepspeed": "true",
    "deepspeed_stage": "2",
}


def test_display_name_of_the_walkthrough_defaults():
    name = finetune_display_name(
        "Phi-3-mini-4k-instruct", WALKTHROUGH, gpus_per_node=1, num_nodes=1
    )
    assert name == "Phi-3-mini-4k-instruct-ultrachat-bs1-cosine-ds2-lora-save_limit-1-seqlen-1"


def test_display_name_multiplies_batch_by_accumulation_gpus_and_nodes():
    params = {
        **WALKTHROUGH,
        "gradient_accumulation_steps": "4",
        "per_device_train_batch_size": "2",
        "apply_deepspeed": "false",
        "apply_lora": "false",
        "save_total_limit": "2",
        "max_seq_length": "512",
    }
    del params["lr_scheduler_type"]
    name = finetune_display_name("org/model", params, gpus_per_node=4, num_nodes=2)
    assert name == "org-model-ultrachat-bs64-linear-nods-nolora-save_limit2-seqlen512"


def test_model_registration_names():
    assert registered_model_name("microsoft/Phi-3") == "microsoft-Phi-3-ultrachat-200k"
    assert registered_model_description("Phi-3-mini-4k-instruct") == (
        "Phi-3-mini-4k-instruct fine tuned model for ultrachat 200k chat-completion"
    )
    assert experiment_name_for("Phi-3-mini-4k-instruct") == "chat_completion_Phi-3-mini-4k-instruct"


def test_endpoint_name_from_suffix():
    assert endpoint_name_for("1732358400") == "ultrachat-completion-1732358400"


@pytest.mark.parametrize(
    "bad, reason",
    [
        ("ab", "3-32"),
        ("x" * 33, "3-32"),
        ("1abc", "start with a letter"),
        ("abc-", "end with a letter or digit"),
        ("ab_c", "letters, digits and hyphens"),
        ("ab--c", "consecutive hyphens"),
    ],
)
def test_bad_endpoint_names_are_refused_with_the_rule(bad, reason):
    with pytest.raises(ValueError, match="endpoint_name") as info:
        check_endpoint_name(bad)
    assert reason in str(info.value)
