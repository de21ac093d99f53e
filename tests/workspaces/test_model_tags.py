"""The model's steering tags are parsed as literals, never evaluated."""

import pytest

from tests.helpers import retirement_notice
from workspaces.interface import FoundationModel
from workspaces.model_tags import (
    TagParseError,
    allow_list,
    model_specific_defaults,
)


def model(**tags: str) -> FoundationModel:
    return FoundationModel(name="m", version="1", id="azureml://registries/azureml/models/m/versions/1",
                           tags=tags)


def test_allow_lists_and_defaults_are_read_from_literals():
    m = model(finetune_compute_allow_list="['Standard_NC6s_v3', 'Standard_NC12s_v3']",
              model_specific_defaults="{'learning_rate': 2e-5, 'apply_lora': True}")
    assert allow_list(m, "finetune_compute_allow_list") == ["Standard_NC6s_v3", "Standard_NC12s_v3"]
    assert allow_list(m, "inference_compute_allow_list") is None
    assert model_specific_defaults(m) == {"learning_rate": "2e-05", "apply_lora": "true"}


def test_code_in_a_tag_is_refused_not_run(tmp_path):
    marker = tmp_path / "ran"
    m = model(model_specific_defaults=f"__import__('pathlib').Path('{marker}').touch()")
    with pytest.raises(TagParseError, match="model_specific_defaults"):
        model_specific_defaults(m)
    assert not marker.exists()


def test_wrong_literal_type_is_named():
    with pytest.raises(TagParseError, match="must be a dict"):
        model_specific_defaults(model(model_specific_defaults="['a']"))


def test_retirement_tags_are_noticed():
    assert retirement_notice(model()) is None
    assert "2025-01-01" in retirement_notice(model(retirement_date="2025-01-01"))


@pytest.mark.parametrize("tag", [
    "-" * 5000 + "1",      # RecursionError in the parser
    "-" * 20000 + "1",     # MemoryError in the parser
    "{'a': '" + "x" * 70000 + "'}",  # longer than any real tag
])
def test_a_pathological_tag_is_a_clear_error_naming_model_and_tag(tag):
    """Defect 6: a pathological tag ended in a bare MemoryError."""
    with pytest.raises(TagParseError) as info:
        model_specific_defaults(model(model_specific_defaults=tag))
    assert "model_specific_defaults" in str(info.value) and "model m version 1" in str(info.value)
    assert len(str(info.value)) < 500
