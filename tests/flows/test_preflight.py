"""The pre-flight of finetune_and_deploy: everything checkable before billing comes first.

Each test gives a request that is wrong in one way and checks that nothing was created:
no compute, no job, no endpoint.
"""

from __future__ import annotations

import json

import pytest

from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest
from workspaces.errors import WorkspaceError
from workspaces.ultrachat import SPLITS, prompt_id_for


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
        "shared-endpoint", "made by another request",
        {"managed-by": "chat-finetune-flows", "chatft-request": "other-request-1"},
    )
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
