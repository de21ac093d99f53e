"""The ultrachat_200k data step: download or copy a percentage of every split, validate rows.

Three sources share one output layout, ``<root>/<source>-<pc>pc-<content hash>/<split>.jsonl``:

- a Hugging Face dataset id (default ``HuggingFaceH4/ultrachat_200k``), loaded with
  ``datasets`` using split slicing ``split[0%:N%]``, as the walkthrough does;
- ``sample``: the small deterministic sample this project ships (same schema, offline);
- a local folder holding ``<split>.jsonl`` files.

A prepared dataset's identity is its content: the splits are written into a fresh staging
folder, validated whole, and only then renamed into a folder named by the source, the
percentage and the hash of what was written (one ``rename``, so a reader sees all of it or
nothing). A failed download or validation removes the staging folder; two requests with
different data can never share a folder; a folder whose files no longer match their
recorded sha256 is never handed back (:func:`verify_prepared`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from workspaces.chat_messages import message_problem
from workspaces.errors import ParseError
from workspaces.file_digest import sha256_of

ULTRACHAT_DATASET_ID = "HuggingFaceH4/ultrachat_200k"
SAMPLE_SOURCE = "sample"
SPLIT_SIZES = {"train_sft": 207865, "test_sft": 23110, "train_gen": 256032, "test_gen": 28304}
SPLITS = tuple(SPLIT_SIZES)
SAMPLE_DIR = Path(__file__).parent / "local" / "sample_data"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class DatasetError(ParseError):
    """A data file or row does not follow the ultrachat schema."""


class PreparedDataset(BaseModel):
    """Where the prepared splits are and what they hold."""

    source: str
    split_pc: float
    directory: str
    files: dict[str, str]
    rows: dict[str, int]
    sha256: dict[str, str]


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
        problem = message_problem(message, f"messages[{i}]", require_text=True)
        if problem:
            raise DatasetError(f"{where}: {problem}")
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


def _count_rows(path: Path) -> int:
    with path.open(encoding="utf-8") as handle:
        return sum(1 for line in handle if line.strip())


def _take_percentage(source_file: Path, split_pc: float, target: Path) -> int:
    total = _count_rows(source_file)
    if not total:
        raise DatasetError(f"{source_file.name} holds no rows; every split needs at least one")
    keep = max(1, math.ceil(total * split_pc / 100.0)) if total else 0
    # The whole source file is validated, not only the rows kept: a broken file is the
    # user's to fix whatever percentage this request takes.
    rows = read_jsonl(source_file)[:keep]
    _write_jsonl(rows, target)
    return len(rows)


def _download_hub_split(dataset_id: str, split: str, split_pc: float, target: Path) -> int:
    # Imported here: `datasets` is heavy and only needed when a hub is reachable.
    from datasets import load_dataset

    pc = f"{split_pc:g}"
    try:
        data = load_dataset(dataset_id, split=f"{split}[0%:{pc}%]")
    except Exception as exc:  # the library's own errors vary by cause; ours names the source
        raise DatasetError(
            f"dataset {dataset_id!r} split {split} could not be loaded from the Hugging Face "
            f"hub ({exc.__class__.__name__}: {str(exc)[:300]}); give a reachable dataset id, "
            "'sample', or a folder of <split>.jsonl files"
        ) from exc
    keep = ("prompt", "prompt_id", "messages")
    rows = [{k: r[k] for k in keep} for r in data]
    for i, row in enumerate(rows, start=1):
        validate_row(row, f"{dataset_id}:{split}", i)
    _write_jsonl(rows, target)
    return len(rows)


def _folder_name(source: str, split_pc: float, digest: str) -> str:
    # Readable and safe on every filesystem: the source's last part, then the hash.
    tail = Path(source.rstrip("/")).name or "dataset"
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", tail).strip("-.")[:40] or "dataset"
    return f"{slug}-{split_pc:g}pc-{digest[:16]}"


def content_hash(sha256: dict[str, str]) -> str:
    """One hash over every split's file hash: the prepared dataset's identity."""
    blob = json.dumps(sha256, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _source_folder(source: str) -> Path | None:
    """The folder a source names, None for a hub id; raises DatasetError for a missing path."""
    if source == SAMPLE_SOURCE:
        return SAMPLE_DIR
    folder = Path(source).expanduser()
    if folder.is_dir():
        return folder
    # A hub id is "owner/name"; anything that looks like a path is a folder that is missing,
    # and must be said so here rather than by the datasets library.
    looks_like_path = (
        source.startswith((".", "/", "~")) or os.sep in source.strip("/").replace("/", "", 1)
        or folder.exists()
    )
    if looks_like_path:
        raise DatasetError(
            f"dataset {source!r}: no such folder; give a folder holding "
            f"{', '.join(s + '.jsonl' for s in SPLITS)}, 'sample', or a Hugging Face dataset id"
        )
    return None


def source_fingerprint(source: str) -> str:
    """What a cache key must hold so a changed source folder is prepared again.

    A folder (or the shipped sample) is named by its split files' sizes and modification
    times; a hub id by itself. The prepared files are still checked against their sha256
    on every reuse (:func:`verify_prepared`), so a fingerprint that misses a change costs a
    re-preparation at worst, never wrong data.
    """
    try:
        folder = _source_folder(source)
    except DatasetError:
        return f"missing:{source}"
    if folder is None:
        return f"hub:{source}"
    parts = []
    for split in SPLITS:
        try:
            stat = (folder / f"{split}.jsonl").stat()
            parts.append(f"{split}:{stat.st_size}:{stat.st_mtime_ns}")
        except OSError:
            parts.append(f"{split}:absent")
    return f"folder:{folder.resolve()}:" + ",".join(parts)


def _matches(folder: Path, sha256: dict[str, str]) -> bool:
    return all(
        (folder / f"{split}.jsonl").is_file()
        and sha256_of(folder / f"{split}.jsonl") == digest
        for split, digest in sha256.items()
    )


def _move_into_place(staging: Path, final: Path, sha256: dict[str, str]) -> None:
    """Rename the staging folder to its content name in one step.

    The same content already in place (another run prepared it) is kept; a folder of that
    name whose files were changed since is set aside and replaced.
    """
    try:
        os.rename(staging, final)
        return
    except OSError:
        if not final.is_dir():
            raise
    if _matches(final, sha256):
        return
    discard = final.with_name(f".discard-{uuid.uuid4().hex}")
    os.rename(final, discard)
    os.rename(staging, final)
    shutil.rmtree(discard, ignore_errors=True)


def prepare_dataset(source: str, split_pc: float, root: Path) -> PreparedDataset:
    """Prepare every split of ``source`` under ``root``, in a folder named by its content.

    Nothing is left under ``root`` when the source is missing or a row is invalid.
    """
    if not 0 < split_pc <= 100:
        raise DatasetError(f"dataset_split_pc is {split_pc}; allowed: greater than 0, at most 100")
    folder = _source_folder(source)
    if folder is not None:
        missing = [s for s in SPLITS if not (folder / f"{s}.jsonl").is_file()]
        if missing:
            raise DatasetError(
                f"dataset folder {folder} has no {', '.join(m + '.jsonl' for m in missing)}"
            )
    try:
        root.mkdir(parents=True, exist_ok=True)
        staging = root / f".staging-{uuid.uuid4().hex}"
        staging.mkdir()
    except OSError as exc:
        raise DatasetError(
            f"cannot write prepared data under {root} ({exc.strerror}); make it writable"
        ) from exc
    try:
        rows: dict[str, int] = {}
        for split in SPLITS:
            target = staging / f"{split}.jsonl"
            if folder is not None:
                rows[split] = _take_percentage(folder / f"{split}.jsonl", split_pc, target)
            else:
                rows[split] = _download_hub_split(source, split, split_pc, target)
        # Validated whole, as the job will read it, before it gets a name.
        for split in SPLITS:
            read_jsonl(staging / f"{split}.jsonl")
        sha256 = {split: sha256_of(staging / f"{split}.jsonl") for split in SPLITS}
        final = root / _folder_name(source, split_pc, content_hash(sha256))
        _move_into_place(staging, final, sha256)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    prepared = PreparedDataset(
        source=source,
        split_pc=split_pc,
        directory=str(final.resolve()),
        files={split: str((final / f"{split}.jsonl").resolve()) for split in SPLITS},
        rows=rows,
        sha256=sha256,
    )
    problem = verify_prepared(prepared)
    if problem:
        raise DatasetError(f"prepared data in {final} does not match what was written: {problem}")
    return prepared


def verify_prepared(prepared: PreparedDataset) -> str | None:
    """None when every file is present with its recorded sha256, else what is wrong."""
    for split, path in prepared.files.items():
        file = Path(path)
        if not file.is_file():
            return f"{file} is missing"
        if sha256_of(file) != prepared.sha256.get(split):
            return f"{file} differs from its recorded sha256"
    return None
