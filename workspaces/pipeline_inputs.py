"""The inputs a fine-tune request will send, checked against the pipeline's own interface.

Both workspaces publish the interface of the fine-tune pipeline they run
(:meth:`~workspaces.interface.Workspace.get_pipeline_interface`): Azure reads it from the
registry's ``chat_completion_pipeline`` version, the local workspace declares its own. The
pre-flight plans every input the job will carry (our own fields, the training form,
``training.extra_parameters`` and the model's ``model_specific_defaults``) and checks each
against that interface before anything is created: the name exists, the value has the
input's type, is one of its enum values, is not below its minimum (or above its maximum),
and every required input is set.

Example::

    planned = plan_inputs(parameters, fields, model, True, num_nodes=1, compute="gpu")
    result = check_inputs(interface, planned)
    result.raise_for_problems()
    # InvalidRequest: training.deepspeed_stage: 1 is not allowed by
    #   chat_completion_pipeline 0.0.57; allowed: "2", "3"
"""

from __future__ import annotations

import difflib
import math
import re

from pydantic import BaseModel, Field

from workspaces.errors import InvalidRequest
from workspaces.interface import FoundationModel, PipelineInput, PipelineInterface
from workspaces.model_tags import model_specific_defaults

# Inputs our own fields fill in on every job (step 5 of docs/procedure.md), and where they
# come from.
FINETUNE_STEP_INPUTS = (
    "compute_model_import",
    "compute_preprocess",
    "compute_finetune",
    "compute_model_evaluation",
)
LITERAL_TYPES = frozenset({"string", "integer", "number", "boolean"})
_INTEGER = re.compile(r"[+-]?\d+")


class PlannedInput(BaseModel):
    """One input the job will send, and the request field it comes from."""

    name: str
    value: str | None = Field(
        description="As the API takes it (a string); None when only known after compute "
        "exists (GPUs per node): then only the name and kind are checked"
    )
    field: str = Field(description="Where the user sets it, e.g. training.deepspeed_stage")
    kind: str = Field(default="literal", description="literal, or the asset type we send")
    replaced: str | None = Field(
        default=None,
        description="The request's own value, when the model's model_specific_defaults "
        "replaced it (the job sends ``value``, not this)",
    )


class InputCheck(BaseModel):
    """The outcome of checking planned inputs against one interface."""

    interface: str = Field(description="e.g. chat_completion_pipeline 0.0.57")
    mirrors: str | None = None
    checked: list[PlannedInput] = Field(default_factory=list)
    problems: list[str] = Field(default_factory=list)
    ignored: dict[str, str] = Field(
        default_factory=dict, description="Input -> why this workspace does not use it"
    )

    def raise_for_problems(self) -> None:
        """Refuse the request, naming every field, value and what the component allows."""
        if self.problems:
            raise InvalidRequest("; ".join(self.problems))


def plan_inputs(
    parameters: dict[str, str],
    fields: dict[str, str],
    model: FoundationModel,
    apply_model_defaults: bool,
    num_nodes: int,
    compute: str,
    requested: dict[str, str] | None = None,
) -> list[PlannedInput]:
    """Every input the fine-tune job will send, each with the request field behind it.

    ``parameters`` are the resolved fine-tune inputs (form, extra_parameters, then the
    model's defaults); ``fields`` names the form field of each (see
    ``TrainingParameters.input_fields``); a value the model's ``model_specific_defaults``
    put in is named after that tag, and the request's value it replaced (from
    ``requested``, the inputs before the defaults) is kept beside it.
    """
    requested = requested or {}
    defaults = model_specific_defaults(model) if apply_model_defaults else {}
    planned = [
        PlannedInput(name="mlflow_model_path", value=model.id, field="foundation_model",
                     kind="mlflow_model"),
        PlannedInput(name="train_file_path", value=None, field="dataset", kind="uri_file"),
        PlannedInput(name="test_file_path", value=None, field="dataset", kind="uri_file"),
        *(PlannedInput(name=n, value=compute, field="compute_cluster")
          for n in FINETUNE_STEP_INPUTS),
        PlannedInput(name="num_nodes_finetune", value=str(num_nodes), field="num_nodes_finetune"),
        # GPUs per node come from the cluster's size, known once the compute is resolved.
        PlannedInput(name="number_of_gpu_to_use_finetuning", value=None, field="compute_size"),
    ]
    for name, value in parameters.items():
        replaced = None
        if name in defaults and defaults[name] == value:
            field = (f"model_specific_defaults.{name} (tag of model {model.name} "
                     f"version {model.version})")
            if name in requested and requested[name] != value:
                replaced = f"{requested[name]} ({fields.get(name, f'training.{name}')})"
        else:
            field = fields.get(name, f"training.{name}")
        planned.append(PlannedInput(name=name, value=value, field=field, replaced=replaced))
    return planned


def check_inputs(interface: PipelineInterface, planned: list[PlannedInput]) -> InputCheck:
    """Check each planned input against ``interface``; collect problems and ignored inputs."""
    result = InputCheck(interface=interface.label, mirrors=interface.mirrors, checked=planned)
    for item in planned:
        declared = interface.inputs.get(item.name)
        if declared is None:
            result.problems.append(_unknown(interface, item))
            continue
        problem = _check_value(interface, item, declared)
        if problem:
            result.problems.append(f"{item.field}: {problem}")
        elif declared.ignored and item.value is not None and item.value != declared.default:
            result.ignored[item.name] = f"{declared.ignored} (set by {item.field}={item.value})"
    sent = {item.name for item in planned}
    for name, declared in sorted(interface.inputs.items()):
        if not declared.optional and declared.default is None and name not in sent:
            result.problems.append(
                f"{name}: required by {interface.label} and not set by the request; "
                "give it in training.extra_parameters"
            )
    return result


def interface_differences(reference: PipelineInterface, other: PipelineInterface) -> list[str]:
    """How ``other`` differs from ``reference``, one sentence per input (names, types,
    enums, bounds, defaults); empty when they take the same inputs the same way."""
    out: list[str] = []
    ref, oth = (f"{i.component} {i.version}" for i in (reference, other))
    for name in sorted(set(reference.inputs) | set(other.inputs)):
        a, b = reference.inputs.get(name), other.inputs.get(name)
        if a is None or b is None:
            out.append(f"{name}: only in {oth if a is None else ref}")
            continue
        for attr in ("type", "enum", "min", "max", "default", "optional"):
            if getattr(a, attr) != getattr(b, attr):
                out.append(
                    f"{name}: {attr} {_show(getattr(b, attr))} in {oth}, "
                    f"{_show(getattr(a, attr))} in {ref}"
                )
    return out


def _unknown(interface: PipelineInterface, item: PlannedInput) -> str:
    close = difflib.get_close_matches(item.name, list(interface.inputs), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return f"{item.field}: {item.name} is not an input of {interface.label}{hint}"


def _check_value(
    interface: PipelineInterface, item: PlannedInput, declared: PipelineInput
) -> str | None:
    label = interface.label
    if declared.type not in LITERAL_TYPES or item.kind != "literal":
        if item.kind != declared.type:
            sent = "a literal value" if item.kind == "literal" else f"a {item.kind}"
            return (f"{item.name} is a {declared.type} input of {label}; the request sends "
                    f"{sent}" + (" (extra_parameters take literal values only)"
                                 if item.kind == "literal" else ""))
        return None
    if item.value is None:
        return None
    value = item.value.strip()
    number: float | None = None
    if declared.type == "integer":
        if not _INTEGER.fullmatch(value):
            return f"{item.value} is not an integer, as input {item.name} of {label} requires"
        number = int(value)
    elif declared.type == "number":
        try:
            number = float(value)
        except ValueError:
            number = None
        if number is None or not math.isfinite(number):
            return f"{item.value} is not a number, as input {item.name} of {label} requires"
    elif declared.type == "boolean" and value.lower() not in ("true", "false"):
        return f"{item.value} is not a boolean of {label}; allowed: \"true\", \"false\""
    if declared.enum is not None and value not in declared.enum:
        allowed = ", ".join(f'"{v}"' for v in declared.enum)
        return f"{item.value} is not allowed by {label}; allowed: {allowed}"
    if number is not None and declared.min is not None and number < declared.min:
        return f"{item.value} is below the minimum {_show(declared.min)} of {label}"
    if number is not None and declared.max is not None and number > declared.max:
        return f"{item.value} is above the maximum {_show(declared.max)} of {label}"
    return None


def _show(value: object) -> str:
    if value is None:
        return "none"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, list):
        return "[" + ", ".join(f'"{v}"' for v in value) + "]"
    return str(value)
