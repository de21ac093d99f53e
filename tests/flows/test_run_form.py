"""The run form the Prefect UI draws from each flow's parameter schema tells the truth.

Checked on the schema Prefect builds from the flows (what ``prefect deploy`` sends):
titles, descriptions that read the same in the classic UI (which drops anything written
like an HTML tag) and values the default local model replaces said beside the field.
"""

from __future__ import annotations

import json
import re

import pytest
from prefect.utilities.callables import parameter_schema

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest
from flows.smoke_test_endpoints import smoke_test_endpoints
from flows.teardown_idle_endpoints import teardown_idle_endpoints
from workspaces.local import catalog
from workspaces.model_tags import api_string, model_specific_defaults

FLOWS = [finetune_and_deploy, smoke_test_endpoints, teardown_idle_endpoints]


def schema_of(flow) -> dict:
    return parameter_schema(flow).model_dump()


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_top_level_fields_have_titles_not_raw_names(flow) -> None:
    properties = schema_of(flow)["properties"]
    for name, field in properties.items():
        assert field["title"] != name, f"{flow.name}: field {name!r} is titled with its raw name"
    assert properties["workspace_block"]["title"] == "Workspace block"


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.name)
def test_no_text_of_the_form_looks_like_an_html_tag(flow) -> None:
    """The classic UI renders descriptions as HTML: "local-workspace/<name>" read
    "local-workspace/" there."""
    text = json.dumps(schema_of(flow))
    assert re.findall(r"<[^<>]{1,40}>", text) == []


def test_fields_the_default_model_replaces_say_the_value_the_run_uses() -> None:
    """The form showed learning rate 5e-6, batch size 1, scheduler cosine and DeepSpeed on;
    the default run used 2e-3, 8, linear and off (the model's model_specific_defaults)."""
    model = catalog.get_foundation_model(catalog.SMOLLM2_NAME)
    replaced = model_specific_defaults(model)
    training = schema_of(finetune_and_deploy)["definitions"]["TrainingParameters"]["properties"]
    shown = FinetuneRequest().training.model_dump()
    noted = 0
    for name, value in replaced.items():
        if name not in training or api_string(shown[name]) == value:
            continue  # not a form field, or the form already shows the value the run uses
        description = training[name].get("description", "")
        assert f"{model.name} runs with {value}" in description, (name, description)
        noted += 1
    assert noted >= 5  # learning rate, both batch sizes, scheduler, DeepSpeed, sequence length
    # a field the model does not change says nothing of it
    assert "runs with" not in training["num_train_epochs"].get("description", "")
    assert "runs with" not in training["apply_lora"].get("description", "")
