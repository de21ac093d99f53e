"""The data step: split percentages, shipped sample, folder source, row validation."""

import json
from pathlib import Path

import pytest

from tests.helpers import prompt_id_for
from workspaces.ultrachat import (
    SPLITS,
    DatasetError,
    prepare_dataset,
    read_jsonl,
)


def test_sample_source_writes_every_split_at_the_percentage(tmp_path):
    prepared = prepare_dataset("sample", 5, tmp_path / "dl")
    assert set(prepared.files) == set(SPLITS)
    assert prepared.rows == {"train_sft": 104, "test_sft": 12, "train_gen": 128, "test_gen": 15}
    rows = read_jsonl(Path(prepared.files["train_sft"]))
    assert len(rows) == 104
    assert all(r["prompt_id"] == prompt_id_for(r["prompt"]) for r in rows)


def test_same_input_gives_same_files(tmp_path):
    a = prepare_dataset("sample", 2, tmp_path / "a")
    b = prepare_dataset("sample", 2, tmp_path / "b")
    assert a.sha256 == b.sha256


def _row(**changes):
    row = {"prompt": "hi", "prompt_id": prompt_id_for("hi"),
           "messages": [{"content": "hi", "role": "user"}, {"content": "yo", "role": "assistant"}]}
    row.update(changes)
    return row


@pytest.mark.parametrize("row, field", [
    (_row(prompt_id="abc"), "prompt_id"),
    (_row(messages=[{"content": "hi", "role": "robot"}]), "messages[0].role"),
    ({"prompt": "hi", "messages": []}, "prompt_id"),
    (_row(messages=[{"content": 3, "role": "user"}]), "messages[0].content"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, row, field):
    folder = tmp_path / "src"
    folder.mkdir()
    for split in SPLITS:
        lines = [json.dumps(_row())] * 2 + ([json.dumps(row)] if split == "test_sft" else [])
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as info:
        prepare_dataset(str(folder), 100, tmp_path / "out")
    assert "test_sft.jsonl line 3" in str(info.value)
    assert field in str(info.value)


def test_split_pc_out_of_range_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="dataset_split_pc"):
        prepare_dataset("sample", 0, tmp_path)


def test_missing_split_file_is_named(tmp_path):
    (tmp_path / "src").mkdir()
    with pytest.raises(DatasetError, match="no train_sft.jsonl"):
        prepare_dataset(str(tmp_path / "src"), 5, tmp_path / "out")


def test_hub_loading_code_slices_splits_with_datasets(tmp_path):
    """The `datasets` path (split[0%:N%]) run offline on a local dataset repo layout."""
    from workspaces.ultrachat import SAMPLE_DIR, _download_hub_split

    repo = tmp_path / "ultrachat_200k"
    repo.mkdir()
    configs = "\n".join(f"  - split: {s}\n    path: {s}.jsonl" for s in SPLITS)
    (repo / "README.md").write_text(
        f"---\nconfigs:\n- config_name: default\n  data_files:\n{configs}\n---\n"
    )
    for split in SPLITS:
        (repo / f"{split}.jsonl").write_text((SAMPLE_DIR / f"{split}.jsonl").read_text())
    target = tmp_path / "train_sft.jsonl"
    count = _download_hub_split(str(repo), "train_sft", 10, target)
    assert count == 208  # 10 % of the 2079 shipped rows, as datasets rounds it
    first_shipped = read_jsonl(SAMPLE_DIR / "train_sft.jsonl", limit=1)[0]
    assert read_jsonl(target)[0]["prompt"] == first_shipped["prompt"]


def _source(tmp_path, name, bad_split=None, empty_content_split=None):
    folder = tmp_path / name
    folder.mkdir()
    for split in SPLITS:
        rows = [json.dumps(_row())] * 3
        if split == empty_content_split:
            rows.append(json.dumps(_row(messages=[
                {"content": "hi", "role": "user"}, {"content": "  ", "role": "assistant"}])))
        if split == bad_split:
            rows.append("{broken")
        (folder / f"{split}.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_failed_validation_leaves_nothing_behind(tmp_path):
    # Defect 1/5: a later split failing used to leave train_sft.jsonl overwritten.
    root = tmp_path / "data"
    good = prepare_dataset("sample", 5, root)
    before = {p: Path(p).read_bytes() for p in good.files.values()}
    with pytest.raises(DatasetError, match="test_gen.jsonl line 4"):
        prepare_dataset(str(_source(tmp_path, "custom", bad_split="test_gen")), 100, root)
    assert sorted(p.name for p in root.iterdir()) == [Path(good.directory).name]
    assert {p: Path(p).read_bytes() for p in good.files.values()} == before


def test_different_content_lives_in_different_folders(tmp_path):
    root = tmp_path / "data"
    sample = prepare_dataset("sample", 5, root)
    custom = prepare_dataset(str(_source(tmp_path, "custom")), 100, root)
    again = prepare_dataset("sample", 5, root)
    assert sample.directory != custom.directory
    assert again.directory == sample.directory and again.sha256 == sample.sha256
    assert Path(sample.directory).parent == root
    assert "5pc" in Path(sample.directory).name


def test_verify_prepared_notices_changed_files(tmp_path):
    from workspaces.ultrachat import verify_prepared

    prepared = prepare_dataset("sample", 5, tmp_path / "data")
    Path(prepared.files["train_sft"]).write_text(json.dumps(_row()) + "\n")
    assert "differs" in verify_prepared(prepared)


def test_empty_content_is_refused_with_file_line_and_field(tmp_path):
    folder = _source(tmp_path, "custom", empty_content_split="train_sft")
    with pytest.raises(DatasetError) as info:
        prepare_dataset(str(folder), 100, tmp_path / "out")
    assert "train_sft.jsonl line 4" in str(info.value)
    assert "messages[1].content" in str(info.value)
    assert not any((tmp_path / "out").iterdir())


@pytest.mark.parametrize("source", ["./no-such-folder", "/tmp/chatft-no-such/folder", "a/b/c"])
def test_missing_folder_is_our_error(tmp_path, source):
    with pytest.raises(DatasetError, match="no such folder"):
        prepare_dataset(source, 5, tmp_path / "out")


def test_missing_split_is_found_before_anything_is_written(tmp_path):
    folder = _source(tmp_path, "custom")
    (folder / "test_gen.jsonl").unlink()
    with pytest.raises(DatasetError, match="no test_gen.jsonl"):
        prepare_dataset(str(folder), 100, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
