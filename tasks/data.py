"""Step 4: the ultrachat_200k splits as <split>.jsonl files, validated."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.policies import WORKSPACE_INPUTS, transient_retries
from workspaces.errors import InvalidRequest
from workspaces.ultrachat import DatasetError, PreparedDataset, prepare_dataset, read_jsonl


@task(name="download-dataset", cache_policy=WORKSPACE_INPUTS, **transient_retries())
def download_dataset(source: str, split_pc: float, download_dir: str) -> PreparedDataset:
    """Download (or copy) ``split_pc`` % of every split into ``download_dir``."""
    get_run_logger().info("Preparing %g %% of dataset %s in %s (a download can take minutes)",
                          split_pc, source, download_dir)
    try:
        prepared = prepare_dataset(source, split_pc, Path(download_dir))
    except DatasetError as exc:
        raise InvalidRequest(str(exc)) from exc
    get_run_logger().info(
        "Prepared %s (%g %%): %s", source, split_pc,
        ", ".join(f"{k}={v}" for k, v in prepared.rows.items()),
    )
    return prepared


def files_present(prepared: PreparedDataset) -> bool:
    """A cached result is only usable while its files are still on disk."""
    return all(Path(p).is_file() for p in prepared.files.values())


def ensure_dataset(source: str, split_pc: float, download_dir: str) -> PreparedDataset:
    """The prepared splits, from the cache while their files exist, else prepared again."""
    prepared = download_dataset(source, split_pc, download_dir)
    if files_present(prepared):
        return prepared
    get_run_logger().info(
        "Cached dataset files are gone from %s; preparing them again", prepared.directory
    )
    return download_dataset.with_options(refresh_cache=True)(source, split_pc, download_dir)


def first_rows(prepared: PreparedDataset, split: str = "train_sft", n: int = 5) -> list[dict]:
    """The first rows of a split, flattened for a table (pandas is what the walkthrough uses)."""
    import pandas as pd

    frame = pd.DataFrame(read_jsonl(Path(prepared.files[split]), limit=n))
    frame["turns"] = frame["messages"].map(len)
    frame["first_reply"] = frame["messages"].map(
        lambda m: next((x["content"] for x in m if x["role"] == "assistant"), "")[:120]
    )
    frame["prompt"] = frame["prompt"].str.slice(0, 120)
    frame["prompt_id"] = frame["prompt_id"].str.slice(0, 12) + "…"
    return frame[["prompt_id", "prompt", "turns", "first_reply"]].to_dict(orient="records")
