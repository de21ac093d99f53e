"""Typed parameters of ``finetune_and_deploy``: every value of MISSION.md with its default.

Prefect turns these models into the run form of the UI and validates what the UI or API
sends; a bad value is refused before anything is created, with the field named.
"""

from __future__ import annotations

import hashlib
import json
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from workspaces.model_tags import api_string
from workspaces.naming import check_endpoint_name

# Choices and bounds follow chat_completion_pipeline 0.0.57 (the component's spec.yaml), so
# the form offers nothing Azure refuses. Values only some component versions take go in
# extra_parameters: the pre-flight checks them against the version that will run.
FORM_COMPONENT = "chat_completion_pipeline 0.0.57"
SchedulerType = Literal[
    "linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
    "constant_with_warmup",
]
DeepSpeedStage = Literal[2, 3]
_CHOICES = {"lr_scheduler_type": SchedulerType, "deepspeed_stage": DeepSpeedStage}
_VERSIONS_NOTE = (
    f"Choices of {FORM_COMPONENT}; a value only another component version takes goes in "
    "extra_parameters, checked against the version that runs"
)
ExtraValue = bool | int | float | str


class TrainingParameters(BaseModel):
    """Fine-tune inputs of the chat_completion_pipeline component (MISSION step 5).

    Choices and bounds are those of chat_completion_pipeline 0.0.57; the pre-flight checks
    every input again against the component version that will run.
    """

    model_config = ConfigDict(extra="forbid")

    num_train_epochs: int = Field(3, ge=1, le=100, title="Epochs")
    per_device_train_batch_size: int = Field(1, ge=1, le=1024, title="Train batch size per device")
    per_device_eval_batch_size: int = Field(1, ge=1, le=1024, title="Eval batch size per device")
    learning_rate: float = Field(5e-6, gt=0, le=1, title="Learning rate")
    lr_scheduler_type: SchedulerType = Field(
        "cosine", title="Learning-rate scheduler", description=_VERSIONS_NOTE
    )
    gradient_accumulation_steps: int | None = Field(None, ge=1, le=1024)
    max_seq_length: int | None = Field(None, ge=16, le=131072)
    save_total_limit: int | None = Field(None, ge=-1)
    apply_lora: bool = Field(True, title="Apply LoRA")
    apply_deepspeed: bool = Field(True, title="Apply DeepSpeed (ignored on CPU)")
    deepspeed_stage: DeepSpeedStage = Field(
        2, title="DeepSpeed stage", description=_VERSIONS_NOTE
    )
    extra_parameters: dict[str, ExtraValue] = Field(
        default_factory=dict,
        title="Other component inputs",
        description="Further chat_completion_pipeline inputs by name; the pre-flight checks "
        "each name, type, choice and minimum against the component version that will run",
    )
    apply_model_specific_defaults: bool = Field(
        True,
        description="Let the model's model_specific_defaults tag override these values, "
        "as the walkthrough does",
    )

    @field_validator(*_CHOICES, mode="before")
    @classmethod
    def _component_choice(cls, value: object, info: ValidationInfo) -> object:
        # Say what the component allows, in the pre-flight's words; "2" is taken for 2.
        allowed = get_args(_CHOICES[info.field_name])
        for choice in allowed:
            if value == choice or api_string(value) == api_string(choice):
                return choice
        shown = ", ".join(f'"{c}"' for c in allowed)
        raise ValueError(f"{value} is not allowed by {FORM_COMPONENT}; allowed: {shown}")

    def as_component_inputs(self) -> dict[str, str]:
        """The values as the component takes them: strings, booleans as "true"/"false"."""
        values = self.model_dump(exclude={"extra_parameters", "apply_model_specific_defaults"})
        inputs = {k: api_string(v) for k, v in values.items() if v is not None}
        inputs.update({k: api_string(v) for k, v in self.extra_parameters.items()})
        return inputs

    def input_fields(self) -> dict[str, str]:
        """The request field behind each component input, for the pre-flight's messages."""
        fields = {k: f"training.{k}" for k in self.as_component_inputs()}
        fields.update({k: f"training.extra_parameters.{k}" for k in self.extra_parameters})
        return fields


class ScoringParameters(BaseModel):
    """Generation parameters of the sample request (MISSION step 8)."""

    model_config = ConfigDict(extra="forbid")

    temperature: float = Field(0.6, ge=0, le=2)
    top_p: float = Field(0.9, gt=0, le=1)
    do_sample: bool = True
    max_new_tokens: int = Field(200, ge=1, le=2048)


class FinetuneRequest(BaseModel):
    """One fine-tune -> register -> deploy -> score request.

    Fields left empty take the workspace's default (local: the stand-in model, the shipped
    sample and this machine; Azure: Phi-3-mini-4k-instruct, ultrachat_200k from the hub and
    the walkthrough's GPU sizes).
    """

    model_config = ConfigDict(extra="forbid")

    foundation_model: str | None = Field(
        None, description="Model name in the catalog/registry; empty = workspace default"
    )
    foundation_model_label: str = Field("latest", description="'latest' or a version")
    component_version: str | None = Field(
        None, description="Pin chat_completion_pipeline to a version; empty = latest"
    )
    dataset: str | None = Field(
        None,
        description="Hugging Face dataset id, 'sample' (shipped), or a folder of "
        "<split>.jsonl files; empty = workspace default",
    )
    dataset_split_pc: float = Field(5, gt=0, le=100, description="Percent of every split")
    download_dir: str = Field("ultrachat_200k_dataset", min_length=1)
    compute_cluster: str | None = Field(None, description="Cluster name; empty = default")
    compute_size: str | None = Field(None, description="VM size; empty = default")
    compute_max_instances: int = Field(2, ge=1, le=100)
    num_nodes_finetune: int = Field(1, ge=1, le=64)
    training: TrainingParameters = Field(default_factory=TrainingParameters)
    endpoint_name: str | None = Field(
        None, description="Empty = ultrachat-completion-<suffix>"
    )
    deployment_name: str = Field("demo")
    instance_type: str | None = Field(None, description="Empty = workspace default")
    instance_count: int = Field(1, ge=1, le=50)
    scoring: ScoringParameters = Field(default_factory=ScoringParameters)
    resubmit_failed_job: bool = Field(
        False, description="Submit a new job when this request's last job failed"
    )
    job_timeout_minutes: float = Field(720, gt=0, le=10080)
    cancel_job_on_timeout: bool = Field(
        False, description="Cancel the fine-tune job when job_timeout_minutes passes"
    )
    deployment_timeout_minutes: float = Field(90, gt=0, le=1440)
    delete_endpoint: bool = Field(
        False, description="Step 9: delete the endpoint at the end (teardown flow owns clean-up)"
    )

    @field_validator("endpoint_name")
    @classmethod
    def _endpoint_rule(cls, value: str | None) -> str | None:
        return None if value is None else check_endpoint_name(value, "endpoint_name")

    @field_validator("deployment_name")
    @classmethod
    def _deployment_rule(cls, value: str) -> str:
        return check_endpoint_name(value, "deployment_name")

    def request_id(self, workspace_scope: str) -> str:
        """A stable id of what is asked for; operational knobs do not change it."""
        identity = self.model_dump(
            mode="json",
            exclude={
                "scoring", "delete_endpoint", "job_timeout_minutes",
                "deployment_timeout_minutes", "cancel_job_on_timeout", "resubmit_failed_job",
            },
        )
        blob = json.dumps({"workspace": workspace_scope, **identity}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
