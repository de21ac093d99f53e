"""Typed parameters of the three flows: every value with its default and its rules.

Prefect turns these models into the run form of the UI and validates what the UI or API
sends against their JSON schema; a bad value is refused before a run exists, with the
field named. ``flows.cli`` builds each flow's command line from the same models, so titles
and descriptions here are what people read in the form and in ``--help``: plain words.
"""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationInfo,
    field_validator,
    model_validator,
)

from workspaces.local import catalog
from workspaces.model_tags import api_string, model_specific_defaults
from workspaces.naming import check_endpoint_name
from workspaces.training_bounds import field_limits
from workspaces.training_bounds import problem as bound_problem
from workspaces.ultrachat import SAMPLE_SOURCE

# Azure's endpoint/deployment name rules (workspaces.naming.check_endpoint_name) written
# into the schema, so the server refuses a bad name before a run exists: 3-32 characters,
# a letter first, letters, digits and single hyphens, a letter or digit last.
ENDPOINT_NAME_PATTERN = r"^[a-zA-Z](-?[a-zA-Z0-9])*$"
EndpointName = Annotated[
    str, Field(min_length=3, max_length=32, pattern=ENDPOINT_NAME_PATTERN)
]

# The flows' second parameter. A plain string whose empty value means the embedded local
# workspace, so the run form draws one text box (an optional type draws a string/None
# switch), and the server refuses a malformed slug before the run exists. Prefect block
# type slugs and block names are lowercase letters, digits and dashes.
WORKSPACE_BLOCK_PATTERN = r"^([a-z0-9-]+/[a-z0-9-]+)?$"
# (Prefect takes the form's title and description from the flow's docstring.)
WorkspaceBlock = Annotated[str, Field(pattern=WORKSPACE_BLOCK_PATTERN, max_length=200,
                                      json_schema_extra={"title": "Workspace block"})]


def form_title(title: str) -> Any:
    """The form's title for a flow parameter (Prefect titles it with the raw name else)."""
    return Field(json_schema_extra={"title": title})



def _plain_optional_fields(schema: dict[str, Any]) -> None:
    """Show an optional field in Prefect's run form as one input that may stay empty.

    Pydantic writes ``X | None = None`` as ``anyOf: [X, null]`` with ``default: null``; the
    form draws that as a switch whose second half reads 'Property is type "None"'. Written
    as X alone and without a default, the form shows a single input, and the server still
    accepts an empty value: Prefect's validator lets an optional property that has no
    default be null (prefect.utilities.schema_tools.validation._fix_null_typing).
    """
    for prop in schema.get("properties", {}).values():
        branches = prop.get("anyOf")
        if not branches or len(branches) != 2 or {"type": "null"} not in branches:
            continue
        other = next(b for b in branches if b != {"type": "null"})
        if "type" in other and prop.get("default", 0) is None:
            del prop["anyOf"], prop["default"]
            prop.update(other)


class FormModel(BaseModel):
    """A parameter model: unknown fields refused, optional fields drawn plainly.

    Booleans are ``StrictBool`` in every model: true/false only, never "yes" or 1, whether
    a request comes from the UI, the API or a Python dict.
    """

    model_config = ConfigDict(extra="forbid", json_schema_extra=_plain_optional_fields)


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


# The form cannot know the workspace a run will use, but a person filling it in should
# see the value the run will take, not one the model replaces without a word. The local
# default model's own model_specific_defaults are read here and said beside each field they
# replace (Azure's Phi-3-mini tag is read by the run; the pipeline-inputs artifact lists it).
_LOCAL_DEFAULT_MODEL = catalog.get_foundation_model(catalog.SMOLLM2_NAME)
_LOCAL_MODEL_DEFAULTS = model_specific_defaults(_LOCAL_DEFAULT_MODEL)


def _replaced(name: str, shown: object, description: str = "") -> dict[str, str]:
    """``description`` plus, when the local default model replaces ``shown``, its value."""
    value = _LOCAL_MODEL_DEFAULTS.get(name)
    if value is None or (shown is not None and api_string(shown) == value):
        return {"description": description} if description else {}
    note = (f"With 'Use the model's recommended settings' on, the local default model "
            f"{_LOCAL_DEFAULT_MODEL.name} runs with {value} instead of the value shown")
    return {"description": f"{description}. {note}" if description else note}


class TrainingParameters(FormModel):
    """How the model is trained (inputs of the chat_completion_pipeline component).

    Choices and bounds are those of chat_completion_pipeline 0.0.57; the pre-flight checks
    every input again against the component version that will run.
    """

    model_config = ConfigDict(title="Training")

    num_train_epochs: int = Field(3, **field_limits("num_train_epochs"), title="Epochs")
    per_device_train_batch_size: int = Field(
        1, **field_limits("per_device_train_batch_size"), title="Train batch size per device",
        **_replaced("per_device_train_batch_size", 1),
    )
    per_device_eval_batch_size: int = Field(
        1, **field_limits("per_device_eval_batch_size"), title="Eval batch size per device",
        **_replaced("per_device_eval_batch_size", 1),
    )
    learning_rate: float = Field(
        5e-6, **field_limits("learning_rate"), title="Learning rate",
        **_replaced("learning_rate", 5e-6, "Step size of the optimiser"),
    )
    lr_scheduler_type: SchedulerType = Field(
        "cosine", title="Learning-rate scheduler",
        **_replaced("lr_scheduler_type", "cosine", _VERSIONS_NOTE),
    )
    gradient_accumulation_steps: int | None = Field(
        None, **field_limits("gradient_accumulation_steps"), title="Gradient accumulation steps",
        description="Batches added up before each update; empty = the component's default",
    )
    max_seq_length: int | None = Field(
        None, **field_limits("max_seq_length"), title="Longest sequence (tokens)",
        **_replaced("max_seq_length", None,
                    "Longer conversations are cut; empty = the model's default"),
    )
    save_total_limit: int | None = Field(
        None, **field_limits("save_total_limit"), title="Checkpoints kept",
        description="-1 = keep all; empty = the component's default",
    )
    apply_lora: StrictBool = Field(True, title="Apply LoRA", **_replaced("apply_lora", True))
    apply_deepspeed: StrictBool = Field(
        True, title="Apply DeepSpeed (ignored on CPU)", **_replaced("apply_deepspeed", True)
    )
    deepspeed_stage: DeepSpeedStage = Field(
        2, title="DeepSpeed stage", description=_VERSIONS_NOTE
    )
    extra_parameters: dict[str, ExtraValue] = Field(
        default_factory=dict,
        title="Other component inputs",
        description="Further chat_completion_pipeline inputs by name, held to the same "
        "bounds as the fields above (lora_dropout 0 to below 1, for one); the pre-flight "
        "checks each name, type, choice and minimum against the component version that will run",
    )
    apply_model_specific_defaults: StrictBool = Field(
        True, title="Use the model's recommended settings",
        description="The model's recommended values (its model_specific_defaults tag) replace "
        "the ones above where it names them, as the walkthrough does; the local default "
        f"model {_LOCAL_DEFAULT_MODEL.name} names "
        + ", ".join(f"{k}={v}" for k, v in sorted(_LOCAL_MODEL_DEFAULTS.items())),
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

    @field_validator("extra_parameters")
    @classmethod
    def _extra_within_bounds(cls, values: dict[str, ExtraValue]) -> dict[str, ExtraValue]:
        # The same bounds as the form's fields: a value given by name gets no way around them.
        problems = [f"{name}: {p}" for name, value in values.items()
                    if (p := bound_problem(name, value))]
        if problems:
            raise ValueError("; ".join(problems))
        return values

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


class ScoringParameters(FormModel):
    """How the deployed model writes its reply to the sample conversation."""

    model_config = ConfigDict(title="Reply generation")

    temperature: float = Field(0.6, ge=0, le=2, title="Temperature",
                               description="Higher = more varied replies")
    top_p: float = Field(0.9, gt=0, le=1, title="Top p",
                         description="Sample only from the most likely words adding up to this")
    do_sample: StrictBool = Field(True, title="Sample",
                            description="Off = always the most likely next word")
    max_new_tokens: int = Field(200, ge=1, le=2048, title="Longest reply (tokens)")


# Gate margins beyond these make the gate a formality (docs/rollout.md): a test_sft loss
# 0.1 higher is the gap between a tuned and an untuned model on the sample; 10 points of
# exact answers is a third of what tuning gains on it.
MAX_LOSS_MARGIN = 0.1
MAX_EXACT_ANSWER_MARGIN = 0.1
# The watch sends its probes one at a time to each of two deployments and a reply takes
# about a second, so more than this many requests per deployment cannot be had in its
# window (3 x watch_seconds + 60 s) without real traffic.
PROBE_SECONDS = 1.0


class RolloutParameters(FormModel):
    """How a new model reaches an endpoint that already serves one (docs/rollout.md)."""

    model_config = ConfigDict(title="Release onto a live endpoint")

    strategy: Literal["new-endpoint", "canary"] = Field(
        "new-endpoint", title="Release strategy",
        description="new-endpoint = a new endpoint (or the named one) takes the model at "
        "once; canary = the named endpoint_name keeps serving its model while the new one is "
        "compared, tried, given a share of traffic and watched, then promoted or rolled back",
    )
    canary_percent: int = Field(
        10, ge=1, le=50, title="Canary share (%)",
        description="Share of live traffic the new deployment takes while it is watched",
    )
    mirror_percent: int = Field(
        0, ge=0, le=50, title="Mirrored share first (%, Azure only)",
        description="Azure: copy this share of live traffic to the new deployment before "
        "the canary (replies discarded); 0 = no mirror step. The local workspace has none",
    )
    watch_seconds: float = Field(
        60, ge=5, le=86400, title="Watch at least (seconds)",
        description="How long the canary is watched before a decision",
    )
    watch_requests: int = Field(
        10, ge=1, le=10000, title="Requests to watch per deployment",
        description="Requests each deployment must have answered before a decision; the "
        "rollout sends probes to make up what real traffic does not bring",
    )
    max_error_rate: float = Field(
        0.05, ge=0, le=1, title="Largest error rate of the new deployment",
        description="Share of its requests answered with a server error (5xx, 408, 424)",
    )
    max_latency_ratio: float = Field(
        2.0, ge=1, le=100, title="Largest latency ratio (new / current)",
        description="Median latency of the new deployment over the current one's",
    )
    gate_loss_margin: float = Field(
        0.0, ge=0, le=MAX_LOSS_MARGIN, title="Gate: test loss margin",
        description="The new model's held-out loss may exceed the production and base "
        f"models' by at most this much (at most {MAX_LOSS_MARGIN:g}: beyond it the gate "
        "would pass a clearly worse model)",
    )
    gate_exact_answer_margin: float = Field(
        0.0, ge=0, le=MAX_EXACT_ANSWER_MARGIN, title="Gate: exact-answer margin",
        description="The new model's exact-answer rate may fall below the production and "
        f"base models' by at most this much (0.05 = 5 points; at most "
        f"{MAX_EXACT_ANSWER_MARGIN:g})",
    )
    auto_promote: StrictBool = Field(
        True, title="Promote when the canary is healthy",
        description="Off = a healthy canary is held at its share until a person re-runs "
        "the request with this on",
    )
    keep_previous: StrictBool = Field(
        False, title="Keep the previous deployment",
        description="On = after promotion the old deployment stays at 0 % (it keeps costing); "
        "off = it is deleted",
    )

    @model_validator(mode="after")
    def _reachable_watch(self) -> RolloutParameters:
        window = 3 * self.watch_seconds + 60
        most = int(window / (2 * PROBE_SECONDS))
        if self.watch_requests > most:
            raise ValueError(
                f"rollout.watch_requests: {self.watch_requests} requests per deployment cannot "
                f"be probed within the watch's window of {window:g} s (3 x watch_seconds + 60; "
                f"one probe at a time, about {PROBE_SECONDS:g} s each, to two deployments): "
                f"allowed up to {most}, or raise watch_seconds"
            )
        return self

    def settings_without_effect(self) -> list[str]:
        """The fields set away from their defaults, which only a canary release reads."""
        if self.strategy == "canary":
            return []
        defaults = RolloutParameters()
        return [name for name in type(self).model_fields
                if name != "strategy" and getattr(self, name) != getattr(defaults, name)]


class FinetuneRequest(FormModel):
    """What to fine-tune, on which data and compute, and how to deploy and try it.

    Fields left empty take the workspace's default (local: SmolLM2-135M-Instruct, the shipped
    sample and this machine; Azure: Phi-3-mini-4k-instruct, ultrachat_200k from the hub and
    the walkthrough's GPU sizes).
    """

    model_config = ConfigDict(title="Fine-tune request")

    foundation_model: str | None = Field(
        None, title="Base model",
        description="Model name in the catalog or registry; empty = the workspace's default",
    )
    foundation_model_label: str = Field(
        "latest", min_length=1, title="Base model version", description="'latest' or a version"
    )
    component_version: str | None = Field(
        None, title="Fine-tune component version",
        description="Pin chat_completion_pipeline to a version; empty = the latest",
    )
    dataset: str | None = Field(
        None, title="Dataset",
        description="Hugging Face dataset id, 'sample' (shipped), or a folder of "
        "SPLIT.jsonl files; empty = the workspace's default",
    )
    dataset_split_pc: float = Field(
        5, gt=0, le=100, title="Share of the dataset (%)",
        description="Percent of every split that is used",
    )
    download_dir: str = Field(
        "ultrachat_200k_dataset", min_length=1, title="Data folder",
        description="Where an Azure run prepares the data (a folder per content, and this "
        "request's sample body under requests/): an absolute path, or a folder under the "
        "user's cache folder (~/.cache/chatft-flows/WORKSPACE/), never the current "
        "directory; the local workspace keeps both in its state",
    )
    compute_cluster: str | None = Field(
        None, title="Training cluster",
        description="Cluster name; empty = the workspace's default",
    )
    compute_size: str | None = Field(
        None, title="Training machine size",
        description="VM size of the cluster; empty = the existing cluster's size, or the "
        "workspace's default for a new cluster. A cluster's size cannot change: a size other "
        "than the existing cluster's is refused before anything is created (name a new "
        "compute_cluster, or delete the cluster)",
    )
    compute_max_instances: int = Field(2, ge=1, le=100, title="Cluster size (machines, at most)")
    num_nodes_finetune: int = Field(1, ge=1, le=64, title="Machines used for training")
    training: TrainingParameters = Field(default_factory=TrainingParameters, title="Training")
    endpoint_name: EndpointName | None = Field(
        None, title="Endpoint name",
        description="3-32 letters, digits and single hyphens, starting with a letter; "
        "empty = ultrachat-completion-NUMBER",
    )
    deployment_name: EndpointName = Field(
        "demo", title="Deployment name", description="Same rules as the endpoint name"
    )
    instance_type: str | None = Field(
        None, title="Serving machine size",
        description="Empty = the workspace's default",
    )
    instance_count: int = Field(1, ge=1, le=50, title="Serving machines")
    scoring: ScoringParameters = Field(
        default_factory=ScoringParameters, title="Reply generation"
    )
    resubmit_failed_job: StrictBool = Field(
        False, title="Retry a failed training job",
        description="Submit a new job when this request's last job failed",
    )
    job_timeout_minutes: float = Field(
        720, gt=0, le=10080, title="Training time limit (minutes)",
        description="The run stops waiting for the job after this long",
    )
    cancel_job_on_timeout: StrictBool = Field(
        False, title="Cancel the job at the time limit",
        description="Off = the job keeps running; a later run with the same request picks it up",
    )
    deployment_timeout_minutes: float = Field(
        90, gt=0, le=1440, title="Deployment time limit (minutes)"
    )
    rollout: RolloutParameters = Field(
        default_factory=RolloutParameters, title="Release onto a live endpoint"
    )
    delete_endpoint: StrictBool = Field(
        False, title="Delete the endpoint at the end",
        description="Off = it keeps serving; the teardown flow removes endpoints nobody uses",
    )
    take_over: StrictBool = Field(
        False, title="Take over another request's endpoint",
        description="Use an endpoint or deployment that another request made: it is tagged "
        "as this request's and its traffic moves here once the new deployment is ready; "
        "off = such a name is refused, before training and again at every write",
    )

    # Before the schema's pattern, so Python callers get the longer, plainer message.
    @field_validator("endpoint_name", mode="before")
    @classmethod
    def _endpoint_rule(cls, value: object) -> object:
        return check_endpoint_name(value, "endpoint_name") if isinstance(value, str) else value

    @field_validator("deployment_name", mode="before")
    @classmethod
    def _deployment_rule(cls, value: object) -> object:
        return check_endpoint_name(value, "deployment_name") if isinstance(value, str) else value

    @model_validator(mode="after")
    def _rollout_settings_mean_something(self) -> FinetuneRequest:
        ignored = self.rollout.settings_without_effect()
        if ignored:
            raise ValueError(
                f"rollout.{ignored[0]}: set to other than its default, but only a canary "
                "release reads it (with rollout.strategy new-endpoint it would be ignored; "
                "fields set: " + ", ".join(f"rollout.{name}" for name in ignored)
                + "). Set rollout.strategy to canary, or leave them at their defaults"
            )
        return self

    def request_id(self, workspace_scope: str) -> str:
        """A stable id of what is asked for; operational knobs do not change it."""
        identity = self.model_dump(
            mode="json",
            exclude={
                "scoring", "delete_endpoint", "job_timeout_minutes",
                "deployment_timeout_minutes", "cancel_job_on_timeout", "resubmit_failed_job",
                "take_over", "rollout",
            },
        )
        # The strategy decides what the request makes (its deployment's name); how the
        # canary is watched and decided are knobs a re-run may turn, such as auto_promote.
        # The default strategy adds nothing, so requests made before rollouts keep their id.
        if self.rollout.strategy != "new-endpoint":
            identity["rollout_strategy"] = self.rollout.strategy
        blob = json.dumps({"workspace": workspace_scope, **identity}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# A smoke test proves the model answers; a short reply is enough and keeps it cheap.
SMOKE_SCORING = ScoringParameters(max_new_tokens=32)


class SmokeTestRequest(FormModel):
    """Which endpoints the smoke test probes, and how."""

    model_config = ConfigDict(title="Smoke test")

    endpoint_names: list[EndpointName] | None = Field(
        None, max_length=200, title="Endpoints",
        description="Test these endpoints (managed or not); empty = every managed one",
    )
    requests_per_deployment: int = Field(
        1, ge=1, le=50, title="Conversations per deployment",
        description="Conversations sent to each deployment with traffic"
    )
    # tasks/endpoint_probes.py (DEFAULT_MAX_CONCURRENCY, MAX_CONCURRENCY_LIMIT) says why 64.
    max_concurrency: int = Field(64, ge=1, le=256, title="Deployments probed at once")
    request_timeout_s: float = Field(
        60, gt=0, le=600, title="Request time limit (seconds)",
        description="Seconds without an answer after which a request counts as timed out",
    )
    dataset: str = Field(
        SAMPLE_SOURCE, min_length=1, title="Dataset",
        description="Where the test conversations come from: 'sample' (shipped), a "
        "Hugging Face dataset id, or a folder of SPLIT.jsonl files",
    )
    dataset_split_pc: float = Field(5, gt=0, le=100, title="Share of the dataset (%)",
                                    description="Percent of the dataset prepared")
    download_dir: str | None = Field(
        None, title="Data folder",
        description="Where the conversations are prepared: an absolute path, or a folder "
        "under the workspace's data folder (local: its state; Azure: "
        "~/.cache/chatft-flows/WORKSPACE/); empty = smoke-test-dataset there",
    )
    scoring: ScoringParameters = Field(SMOKE_SCORING, title="Reply generation")
    seed: int | None = Field(
        None, ge=0, le=2**31 - 1, title="Seed",
        description="Picks the conversations; empty = new ones each run"
    )
    held_alert_hours: float = Field(
        24, gt=0, le=24 * 90, title="Report a held release after (hours)",
        description="A canary held for a person longer than this is reported once (event "
        "chatft.release.held-too-long, sent by the notification automation)")

    @field_validator("endpoint_names", mode="before")
    @classmethod
    def _endpoint_rule(cls, value: object) -> object:
        if isinstance(value, list):
            for name in value:
                if isinstance(name, str):
                    check_endpoint_name(name, "endpoint_names")
        return value


class TeardownRequest(FormModel):
    """The rules of one teardown pass."""

    model_config = ConfigDict(title="Teardown rules")

    idle_hours: float = Field(
        24, gt=0, le=24 * 365, title="Idle after (hours)",
        description="An endpoint with no organic request in this many hours is idle",
    )
    grace_minutes: float = Field(
        60, ge=0, le=60 * 24 * 30, title="Grace period (minutes)",
        description="Endpoints younger than this are never deleted"
    )
    max_deletions_per_run: int = Field(
        5, ge=0, le=1000, title="Deletions per pass (at most)",
        description="Deletions beyond this many wait for the next pass"
    )
    dry_run: StrictBool = Field(
        False, title="Dry run",
        description="Report what would be deleted; delete nothing"
    )
    delete_timeout_minutes: float = Field(
        30, gt=0, le=1440, title="Deletion time limit (minutes)",
        description="How long to wait for each deletion to finish"
    )
    price_file: str | None = Field(
        None, title="Price file",
        description="CSV of hourly prices; empty = data/vm_prices.csv",
    )


ReleaseAction = Literal["status", "promote", "abort", "rollback"]
# A rollback's canary: the fine-tune's canary settings, promoted when healthy by default
# (a person asked for the rollback), the gate margins unused (its gate is its own figures).
ROLLBACK_CANARY = RolloutParameters(strategy="canary", watch_seconds=30, watch_requests=5)


class ReleaseControlRequest(FormModel):
    """A person's action on the release of one endpoint (docs/rollout.md, "Steering a
    release"): see it, promote a held canary, abort a canary, or roll back to an earlier
    model version."""

    # The server checks a run's parameters against the schema (409 before any run): the
    # schema says what the validator below says about a reason.
    model_config = ConfigDict(title="Release control", json_schema_extra={
        "allOf": [{"if": {"properties": {"action": {"enum": ["abort", "rollback"]}},
                          "required": ["action"]},
                   "then": {"properties": {"reason": {"minLength": 1, "pattern": r"\S"}},
                            "required": ["reason"]}}]})

    endpoint_name: EndpointName = Field(
        title="Endpoint", description="The endpoint whose release to see or steer")
    action: ReleaseAction = Field(
        "status", title="Action",
        description="status = what serves, what is held, the history; promote = a held "
        "canary to 100 %; abort = a canary or held release back to the serving deployment, "
        "its model tagged rejected; rollback = an earlier model version back in production")
    reason: str = Field(
        "", max_length=250, title="Reason",
        description="Why, kept in the release history (required for abort and rollback)")
    requested_by: str = Field(
        "", max_length=100, title="Requested by",
        description="Who asks, for the history (a self-hosted Prefect server records no "
        "user; the run is recorded either way)")
    release_request: str | None = Field(
        None, max_length=100, title="Release to act on (request id)",
        description="promote/abort: act only if the endpoint's release is this request's; "
        "empty = the release the endpoint records")
    version: str | None = Field(
        None, min_length=1, max_length=64, title="Model version (rollback)",
        description="rollback: the version to put back; empty = the one that served before "
        "the current one. It must have passed its gate and never failed a gate or canary")
    immediate: StrictBool = Field(
        False, title="At once (rollback)",
        description="rollback: route all traffic to the version's deployment in one write "
        "when it is still on the endpoint (kept with keep_previous), no canary")
    canary: RolloutParameters = Field(
        ROLLBACK_CANARY, title="Rollback canary",
        description="rollback without immediate: the canary's share and watch, as for a "
        "fine-tune's release (strategy and gate margins are not used)")
    deployment_timeout_minutes: float = Field(
        30, gt=0, le=240, title="Deployment time limit (minutes)",
        description="How long a rollback's new deployment, or a deletion, may take")
    dataset: str | None = Field(
        None, min_length=1, title="Probe dataset (rollback)",
        description="Where the rollback canary's probes come from: empty = the dataset the "
        "version was trained on ('sample' when it names none)")

    @model_validator(mode="after")
    def _fits_action(self) -> ReleaseControlRequest:
        if self.action in ("abort", "rollback") and not self.reason.strip():
            raise ValueError(f"reason: required for action {self.action} (why, in a few words:"
                             " it is kept in the endpoint's release history)")
        rollback_only = [name for name in ("version", "immediate", "dataset")
                         if getattr(self, name) not in (None, False)]
        if self.action != "rollback" and rollback_only:
            raise ValueError(f"{rollback_only[0]}: only action rollback takes it (action is "
                             f"{self.action})")
        if self.action not in ("promote", "abort") and self.release_request:
            raise ValueError(f"release_request: only actions promote and abort take it "
                             f"(action is {self.action})")
        return self
