"""The data task's cache: it never hands back files that differ from what it recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prefect import flow

from tasks.data import ensure_dataset
from tests.helpers import prompt_id_for
from workspaces.errors import InvalidRequest
from workspaces.ultrachat import SPLITS, prepare_dataset


@flow
def _prepare(source: str, root: str, scope: str = "ws-a"):
    return ensure_dataset(source, 5, root, scope)


def _custom(tmp_path: Path, bad_split: str) -> Path:
    folder = tmp_path / "custom"
    folder.mkdir()
    row = json.dumps({
        "prompt": "custom", "prompt_id": prompt_id_for("custom"),
        "messages": [{"role": "user", "content": "custom"},
                     {"role": "assistant", "content": "custom reply"}],
    })
    for split in SPLITS:
        extra = ["{broken"] if split == bad_split else []
        (folder / f"{split}.jsonl").write_text("\n".join([row] * 5 + extra) + "\n")
    return folder


def test_failed_custom_data_cannot_leak_into_a_cached_default(prefect_server, tmp_path):
    """Defect 1: the default request trained on a failed custom folder's rows."""
    root = str(tmp_path / "dl")
    first = _prepare("sample", root)
    with pytest.raises(InvalidRequest, match="test_gen"):
        _prepare(str(_custom(tmp_path, bad_split="test_gen")), root)
    again = _prepare("sample", root)
    reference = prepare_dataset("sample", 5, tmp_path / "reference")
    for split in SPLITS:
        text = Path(again.files[split]).read_text()
        assert "custom" not in text
        assert again.sha256[split] == first.sha256[split] == reference.sha256[split]


def test_changed_cached_files_are_prepared_again(prefect_server, tmp_path):
    root = str(tmp_path / "dl")
    first = _prepare("sample", root)
    Path(first.files["train_sft"]).write_text("tampered\n")
    again = _prepare("sample", root)
    reference = prepare_dataset("sample", 5, tmp_path / "reference")
    assert Path(again.files["train_sft"]).read_bytes() == Path(
        reference.files["train_sft"]).read_bytes()
