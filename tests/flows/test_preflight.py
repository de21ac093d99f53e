"""The pre-flight of finetune_and_deploy: everything checkable before billing comes first.

Each test gives a request that is wrong in one way and checks that nothing was created:
no compute, no job, no endpoint.
"""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest
from tests.helpers import prompt_id_for, run_artifacts
from workspaces.errors import WorkspaceError
from workspaces.interface import EndpointSpec
from workspaces.ultrachat import SPLITS


def _row(content: str = "yo") -> str:
    return json.dumps({
        "prompt": "hi", "prompt_id": prompt_id_for("hi"),
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": content}],
    })


def _folder(tmp_path, name: str, missing: str | None = None, bad_split: str | None = None):
    folder = tmp_path / name
    folder.mkdir()
    for split in SPLITS:
        if split == missing:
            continue
        rows = [_row()] * 3 + (["{not json"] if split == bad_split else [])
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def _nothing_created(ws) -> None:
    assert ws.get_compute(ws.default_compute_name) is None, "compute was created"
    assert not (ws.root / "jobs").exists() or not any((ws.root / "jobs").iterdir())
    assert ws.list_endpoints() == []


@pytest.mark.parametrize("missing, bad_split", [("test_gen", None), (None, "test_gen")])
def test_bad_dataset_fails_before_compute_exists(
    prefect_server, workspace, tmp_path, monkeypatch, missing, bad_split
):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    folder = _folder(tmp_path, "data", missing, bad_split)
    with pytest.raises(WorkspaceError, match="test_gen"):
        finetune_and_deploy(request=FinetuneRequest(
            dataset=str(folder), download_dir=str(tmp_path / "dl")))
    _nothing_created(workspace)


def test_endpoint_of_another_request_is_refused_before_training(
    prefect_server, workspace, tmp_path, monkeypatch
):
    """Defect 4: a request naming another request's endpoint took its traffic."""
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    workspace.begin_create_endpoint(
        EndpointSpec(
            name="shared-endpoint", description="made by another request",
            tags={"managed-by": "chat-finetune-flows", "chatft-request": "other-request-1"},
        ))
    request = FinetuneRequest(endpoint_name="shared-endpoint", download_dir=str(tmp_path / "dl"))
    with pytest.raises(WorkspaceError, match="other-request-1") as info:
        finetune_and_deploy(request=request)
    assert "take_over" in str(info.value)
    assert workspace.get_compute(workspace.default_compute_name) is None
    assert not (workspace.root / "jobs").exists()
    assert workspace.get_endpoint("shared-endpoint").tags["chatft-request"] == "other-request-1"


def test_booleans_are_strict_even_from_a_dict():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="apply_lora"):
        FinetuneRequest.model_validate({"training": {"apply_lora": "yes"}})
    with pytest.raises(ValidationError, match="take_over"):
        FinetuneRequest.model_validate({"take_over": 1})
    assert FinetuneRequest.model_validate_json('{"training": {"apply_lora": false}}'
                                              ).training.apply_lora is False


STANDIN = "phi3-tiny-standin"


@pytest.fixture
def bare(tmp_path, monkeypatch):
    """A local workspace with no model built: these requests must stop before one is needed."""
    from workspaces.local import LocalWorkspace

    ws = LocalWorkspace(tmp_path / "workspace")
    monkeypatch.setenv("CHATFT_STATE_DIR", str(ws.root))
    return ws


def test_a_size_other_than_the_existing_clusters_is_refused(prefect_server, bare, tmp_path):
    """Defect 6: compute_size was silently ignored once a cluster of another size existed."""
    bare.create_compute("local-cpu", "Local_CPU", "Dedicated", 1)
    request = FinetuneRequest(foundation_model=STANDIN, compute_size="Standard_NC6s_v3",
                              download_dir=str(tmp_path / "dl"))
    with pytest.raises(WorkspaceError, match="compute_size") as info:
        finetune_and_deploy(request=request)
    message = str(info.value)
    print(f"\nUser sees: {message}")
    # the field, both sizes, and the ways out
    for words in ("Standard_NC6s_v3", "local-cpu", "Local_CPU", "compute_cluster", "delete"):
        assert words in message
    assert bare.get_compute("local-cpu").size == "Local_CPU"
    assert not (bare.root / "jobs").exists()
    assert bare.list_endpoints() == []


def test_a_model_missing_from_the_catalog_is_refused_before_compute(prefect_server, bare, tmp_path):
    """Defect 6: a model id the catalog cannot give reached a failed job, unnamed."""
    request = FinetuneRequest(foundation_model="example-org/no-such-model",
                              download_dir=str(tmp_path / "dl"))
    with pytest.raises(WorkspaceError, match="foundation_model") as info:
        finetune_and_deploy(request=request)
    message = str(info.value)
    print(f"\nUser sees: {message}")
    assert "example-org/no-such-model" in message
    assert STANDIN in message and "SmolLM2-135M-Instruct" in message  # what it offers
    _nothing_created(bare)


def test_more_instances_than_the_local_workspace_serves_is_refused_before_compute(
    prefect_server, bare, tmp_path
):
    from workspaces.local.endpoints import MAX_LOCAL_INSTANCES

    request = FinetuneRequest(foundation_model=STANDIN, instance_count=MAX_LOCAL_INSTANCES + 1,
                              download_dir=str(tmp_path / "dl"))
    with pytest.raises(WorkspaceError, match=f"instance_count {MAX_LOCAL_INSTANCES + 1}") as info:
        finetune_and_deploy(request=request)
    assert f"1 to {MAX_LOCAL_INSTANCES} instances" in str(info.value)
    _nothing_created(bare)


def _read_only(path):
    """Make ``path`` a folder nobody can write in, root included (chattr +i for root)."""
    import os
    import subprocess

    if os.geteuid() == 0:
        done = subprocess.run(["chattr", "+i", str(path)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot make {path} read-only as root: {done.stderr.decode()}")
        return lambda: subprocess.run(["chattr", "-i", str(path)], check=True)
    path.chmod(0o555)
    return lambda: path.chmod(0o755)


def test_a_read_only_jobs_folder_is_our_error_before_compute(prefect_server, bare, tmp_path):
    """Defect 6: a read-only jobs/ folder gave a raw OSError."""
    jobs = bare.root / "jobs"
    jobs.mkdir(parents=True)
    undo = _read_only(jobs)
    try:
        with pytest.raises(WorkspaceError, match="jobs") as info:
            finetune_and_deploy(request=FinetuneRequest(
                foundation_model=STANDIN, download_dir=str(tmp_path / "dl")))
    finally:
        undo()
    message = str(info.value)
    print(f"\nUser sees: {message}")
    assert str(jobs) in message and "writable" in message
    _nothing_created(bare)


def test_a_read_only_state_dir_names_the_setting_that_chose_it(
    prefect_server, tmp_path, monkeypatch
):
    """Defect 6: the message blamed a block even when CHATFT_STATE_DIR set the path."""
    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("CHATFT_STATE_DIR", str(state))
    undo = _read_only(state)
    try:
        with pytest.raises(WorkspaceError, match="CHATFT_STATE_DIR") as info:
            finetune_and_deploy(request=FinetuneRequest(download_dir=str(tmp_path / "dl")))
    finally:
        undo()
    message = str(info.value)
    print(f"\nUser sees: {message}")
    assert str(state) in message and "block" not in message
    assert list(state.iterdir()) == []


@pytest.mark.parametrize("name, value", [
    ("lora_dropout", 5), ("num_train_epochs", 1_000_000), ("learning_rate", 1e9),
])
def test_extra_parameters_are_held_to_the_forms_bounds(
    prefect_server, workspace, tmp_path, monkeypatch, name, value
):
    """#21: extra_parameters got around the bounds (a job failed, trained 1e6 epochs, or
    the value was silently replaced)."""
    from prefect.exceptions import ParameterTypeError

    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    with pytest.raises(ValidationError, match=rf"training.extra_parameters\n.*{name}: "):
        FinetuneRequest(training={"extra_parameters": {name: value}})
    # As a person gives it in the run form: the same refusal, before the flow does anything.
    with pytest.raises(ParameterTypeError, match=rf"{name}: {re.escape(str(value))} is above"):
        finetune_and_deploy(request={"foundation_model": "phi3-tiny-standin",
                                     "download_dir": str(tmp_path / "dl"),
                                     "training": {"extra_parameters": {name: value}}})
    _nothing_created(workspace)


def test_values_the_models_defaults_replace_are_reported_as_replaced(
    prefect_server, workspace, tmp_path, monkeypatch
):
    monkeypatch.setenv("CHATFT_STATE_DIR", str(workspace.root))
    # An unservable size stops the run right after the inputs are checked and reported.
    state = finetune_and_deploy(
        request=FinetuneRequest(
            foundation_model="phi3-tiny-standin", instance_type="Standard_DS1",
            training={"learning_rate": 0.5, "extra_parameters": {"max_seq_length": 64}},
            download_dir=str(tmp_path / "dl"),
        ),
        return_state=True,
    )
    assert state.is_failed()
    [artifact] = run_artifacts(state.state_details.flow_run_id, key="pipeline-inputs")
    markdown = artifact.data
    assert "Replaced by the model's model_specific_defaults" in markdown
    assert ("`learning_rate`: the request's 0.5 (training.learning_rate) was replaced by "
            "`1e-3`") in markdown
    assert ("`max_seq_length`: the request's 64 (training.extra_parameters.max_seq_length) "
            "was replaced by `256`") in markdown
    _nothing_created(workspace)


def _state_files(ws) -> set[str]:
    return {str(p.relative_to(ws.root)) for p in ws.root.rglob("*")} if ws.root.exists() else set()


@pytest.mark.parametrize("case", ["size outside the allow list", "malformed allow list"])
def test_compute_rules_refuse_before_anything_is_written(
    prefect_server, bare, tmp_path, monkeypatch, case
):
    """#22: these were refused only after the data folder was written."""
    from workspaces.local import catalog

    tags = dict(catalog.CATALOG[STANDIN]["tags"])
    if case == "malformed allow list":
        tags["finetune_compute_allow_list"] = "['Local_CPU', "
    monkeypatch.setitem(catalog.CATALOG, STANDIN, {**catalog.CATALOG[STANDIN], "tags": tags})
    size = "Standard_DS1" if case == "size outside the allow list" else None
    assert bare.cache_scope  # a workspace used before: its identity file exists
    before = _state_files(bare)
    with pytest.raises(WorkspaceError, match="finetune_compute_allow_list|allowed sizes"):
        finetune_and_deploy(request=FinetuneRequest(
            foundation_model=STANDIN, compute_size=size, download_dir=str(tmp_path / "dl")))
    assert _state_files(bare) == before
    assert not (tmp_path / "dl").exists()
