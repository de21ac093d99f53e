"""The ultrachat_200k data step: download or copy a percentage of every split, validate rows.

Three sources share one output layout (``<download_dir>/<split>.jsonl``):

- a Hugging Face dataset id (default ``HuggingFaceH4/ultrachat_200k``), loaded with
  ``datasets`` using split slicing ``split[0%:N%]``, as the walkthrough does;
- ``sample``: the small deterministic sample this project ships (same schema, offline);
- a local folder holding ``<split>.jsonl`` files.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

from pydantic import BaseModel

ULTRACHAT_DATASET_ID = "HuggingFaceH4/ultrachat_200k"
SAMPLE_SOURCE = "sample"
SPLIT_SIZES = {"train_sft": 207865, "test_sft": 23110, "train_gen": 256032, "test_gen": 28304}
SPLITS = tuple(SPLIT_SIZES)
ROLES = ("user", "assistant", "system")
SAMPLE_DIR = Path(__file__).parent / "local" / "sample_data"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class DatasetError(ValueError):
    """A data file or row does not follow the ultrachat schema."""


class PreparedDataset(BaseModel):
    """Where the prepared splits are and what they hold."""

    source: str
    split_pc: float
    directory: str
    files: dict[str, str]
    rows: dict[str, int]
    sha256: dict[str, str]


def prompt_id_for(prompt: str) -> str:
    """ultrachat's prompt_id: the sha256 hex digest of the prompt."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def validate_row(row: Any, file: str, line: int) -> None:
    """Raise DatasetError naming file, line and field when a row breaks the schema."""
    where = f"{file} line {line}"
    if not isinstance(row, dict):
        raise DatasetError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    for field in ("prompt", "prompt_id", "messages"):
        if field not in row:
            raise DatasetError(f"{where}: field {field!r} is missing")
    if not isinstance(row["prompt"], str) or not row["prompt"].strip():
        raise DatasetError(f"{where}: field 'prompt' must be a non-empty string")
    if not isinstance(row["prompt_id"], str) or not _SHA256_HEX.match(row["prompt_id"]):
        raise DatasetError(f"{where}: field 'prompt_id' must be a 64-character sha256 hex string")
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise DatasetError(f"{where}: field 'messages' must be a non-empty list")
    for i, message in enumerate(messages):
        field = f"messages[{i}]"
        if not isinstance(message, dict):
            raise DatasetError(f"{where}: field {field!r} must be an object")
        if message.get("role") not in ROLES:
            raise DatasetError(
                f"{where}: field '{field}.role' is {message.get('role')!r}; "
                f"allowed: {', '.join(ROLES)}"
            )
        if not isinstance(message.get("content"), str):
            raise DatasetError(f"{where}: field '{field}.content' must be a string")
    if not any(m["role"] == "assistant" for m in messages):
        raise DatasetError(f"{where}: field 'messages' holds no assistant message")


def read_jsonl(path: Path, limit: int | None = None) -> list[dict[str, Any]]:
    """Read and validate rows of a jsonl file (the first ``limit`` when given)."""
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if limit is not None and len(rows) >= limit:
                break
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(
                    f"{path.name} line {line_no}: not valid JSON ({exc.msg})"
                ) from exc
            validate_row(row, path.name, line_no)
            rows.append(row)
    return rows


def _write_jsonl(rows: list[dict[str, Any]], path: Path) -> None:
    tmp = path.with_suffix(".jsonl.tmp")
    with tmp.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _count_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def _take_percentage(source_file: Path, split_pc: float, target: Path) -> int:
    total = _count_rows(source_file)
    keep = max(1, math.ceil(total * split_pc / 100.0)) if total else 0
    rows = read_jsonl(source_file, limit=keep)
    _write_jsonl(rows, target)
    return len(rows)


def _download_hub_split(dataset_id: str, split: str, split_pc: float, target: Path) -> int:
    # Imported here: `datasets` is heavy and only needed when a hub is reachable.
    from datasets import load_dataset

    pc = f"{split_pc:g}"
    data = load_dataset(dataset_id, split=f"{split}[0%:{pc}%]")
    keep = ("prompt", "prompt_id", "messages")
    rows = [{k: r[k] for k in keep} for r in data]
    for i, row in enumerate(rows, start=1):
        validate_row(row, f"{dataset_id}:{split}", i)
    _write_jsonl(rows, target)
    return len(rows)


def prepare_dataset(source: str, split_pc: float, download_dir: Path) -> PreparedDataset:
    """Write ``<split>.jsonl`` for every split of ``source`` into ``download_dir``."""
    if not 0 < split_pc <= 100:
        raise DatasetError(f"dataset_split_pc is {split_pc}; allowed: greater than 0, at most 100")
    download_dir.mkdir(parents=True, exist_ok=True)
    folder = SAMPLE_DIR if source == SAMPLE_SOURCE else Path(source).expanduser()
    files: dict[str, str] = {}
    rows: dict[str, int] = {}
    for split in SPLITS:
        target = download_dir / f"{split}.jsonl"
        if source == SAMPLE_SOURCE or folder.is_dir():
            source_file = folder / f"{split}.jsonl"
            if not source_file.is_file():
                raise DatasetError(f"dataset folder {folder} has no {split}.jsonl")
            rows[split] = _take_percentage(source_file, split_pc, target)
        else:
            rows[split] = _download_hub_split(source, split, split_pc, target)
        files[split] = str(target.resolve())
    return PreparedDataset(
        source=source,
        split_pc=split_pc,
        directory=str(download_dir.resolve()),
        files=files,
        rows=rows,
        sha256={split: _sha256_file(Path(path)) for split, path in files.items()},
    )


def copy_split(prepared: PreparedDataset, split: str, target: Path) -> Path:
    """Copy one prepared split somewhere else (the local job keeps its own inputs)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(prepared.files[split], target)
    return target
