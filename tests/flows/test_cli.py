"""The flows' command lines come from their parameter models: every field, same rules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from flows.cli import parse_request
from flows.parameters import FinetuneRequest, SmokeTestRequest, TeardownRequest

PROJECT_DIR = Path(__file__).resolve().parents[2]
FLOWS = {
    "flows.finetune_and_deploy": FinetuneRequest,
    "flows.smoke_test_endpoints": SmokeTestRequest,
    "flows.teardown_idle_endpoints": TeardownRequest,
}


def options_of(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every leaf field as its command-line option (nested models are dotted)."""
    found = set()
    for name, field in model.model_fields.items():
        option = prefix + name.replace("_", "-")
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            found |= options_of(nested, option + ".")
        else:
            found.add("--" + option)
    return found


@pytest.mark.parametrize("module", sorted(FLOWS))
def test_help_lists_every_field_with_its_description(module: str) -> None:
    # the real entry point, as a person types it
    shown = subprocess.run([sys.executable, "-m", module, "--help"], cwd=PROJECT_DIR,
                           capture_output=True, text=True, check=True).stdout
    missing = {o for o in options_of(FLOWS[module]) | {"--workspace-block"} if o not in shown}
    assert not missing
    for field in FLOWS[module].model_fields.values():
        if field.description:
            # argparse wraps lines; compare the words
            assert " ".join(field.description.split()[:4]) in " ".join(shown.split())


def test_values_reach_the_request_nested_and_listed() -> None:
    request, block = parse_request(FinetuneRequest, "prog", [
        "--dataset", "sample", "--training.num-train-epochs", "1", "--no-training.apply-lora",
        "--endpoint-name", "my-endpoint", "--workspace-block", "azure-ml-workspace/prod",
    ])
    assert block == "azure-ml-workspace/prod"
    assert request.dataset == "sample" and request.endpoint_name == "my-endpoint"
    assert request.training.num_train_epochs == 1 and request.training.apply_lora is False
    assert request.deployment_name == "demo"  # untouched fields keep their defaults

    smoke, block = parse_request(SmokeTestRequest, "prog",
                                 ["--endpoint-names", "ep-one", "--endpoint-names", "ep-two"])
    assert smoke.endpoint_names == ["ep-one", "ep-two"] and block == ""
    teardown, _ = parse_request(TeardownRequest, "prog", ["--dry-run", "--idle-hours", "2"])
    assert teardown.dry_run and teardown.idle_hours == 2


def test_no_arguments_is_the_default_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # `make demo` runs the module bare; environment variables never set a field
    monkeypatch.setenv("dataset", "from-the-environment")
    monkeypatch.setenv("DATASET", "from-the-environment")
    assert parse_request(FinetuneRequest, "prog", []) == (FinetuneRequest(), "")


@pytest.mark.parametrize(("request_cls", "argv", "named"), [
    (FinetuneRequest, ["--endpoint-name", "1abc"], "--endpoint-name"),
    (FinetuneRequest, ["--deployment-name", "Bad_Name!"], "--deployment-name"),
    (FinetuneRequest, ["--training.num-train-epochs", "0"], "--training.num-train-epochs"),
    (SmokeTestRequest, ["--endpoint-names", "1abc"], "--endpoint-names"),
    (TeardownRequest, ["--idle-hours", "-5"], "--idle-hours"),
    (TeardownRequest, ["--now", "2030-01-01"], "--now"),
    (SmokeTestRequest, ["--workspace-block", "Azure ML/prod"], "--workspace-block"),
])
def test_bad_values_exit_2_naming_the_option(
    request_cls: type[BaseModel], argv: list[str], named: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_request(request_cls, "prog", argv)
    assert exited.value.code == 2
    assert named in capsys.readouterr().err
