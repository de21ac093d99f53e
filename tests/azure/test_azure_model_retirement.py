"""Retirement tags of a registry model, read through the SDK: true-ish values and dates that
have passed refuse the model; "false" and dates still ahead only warn, with the date."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.foundation_model import get_foundation_model
from workspaces.errors import InvalidRequest

TODAY = datetime.now(UTC).date()
AHEAD = (TODAY + timedelta(days=90)).isoformat()
PAST = (TODAY - timedelta(days=1)).isoformat()


@pytest.mark.parametrize(
    ("tags", "warning"),
    [
        ({"deprecated": "false", "retired": "False"}, "deprecated='false'; not taken as retired"),
        ({"retirement_date": AHEAD}, f"retirement_date {AHEAD}: choose a successor"),
        ({"deprecation_date": f"{AHEAD}T00:00:00Z"}, f"deprecation_date {AHEAD}"),
    ],
)
def test_false_and_future_dates_warn_and_go_on(fake, workspace, prefect_server, tags, warning):
    fake.add_registry_model("Phi-3-mini-4k-instruct", "8", tags=tags)
    model = get_foundation_model(workspace, "Phi-3-mini-4k-instruct", "latest")
    assert model.version == "8"
    from workspaces.model_tags import retirement_status

    refusal, warnings = retirement_status(model)
    assert refusal is None and any(warning in w for w in warnings)


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"deprecated": "true"}, "deprecated=true"),
        ({"retired": "Yes"}, "retired=Yes"),
        ({"retirement_date": PAST}, f"retirement_date {PAST} has passed"),
        ({"deprecation_date": "01/31/2025"}, "deprecation_date 2025-01-31 has passed"),
    ],
)
def test_true_values_and_past_dates_refuse(fake, workspace, prefect_server, tags, reason):
    fake.add_registry_model("Phi-3-mini-4k-instruct", "8", tags=tags)
    with pytest.raises(InvalidRequest, match="choose another foundation_model") as info:
        get_foundation_model(workspace, "Phi-3-mini-4k-instruct", "latest")
    assert str(info.value).startswith(
        "model Phi-3-mini-4k-instruct version 8 is retired ("
    ) and reason in str(info.value)
