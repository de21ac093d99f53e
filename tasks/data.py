"""The data step: the ultrachat_200k splits as <split>.jsonl files, validated whole."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task

from tasks.policies import WORKSPACE_INPUTS, transient_retries
from workspaces.ultrachat import (
    PreparedDataset,
    prepare_dataset,
    read_jsonl,
    source_fingerprint,
    verify_prepared,
)


# Cached on the source (with a fingerprint of a folder's files), the percentage, the
# absolute root and the workspace: two state directories never share an entry, and a
# cached result is used only while its files still match their recorded sha256.
@task(name="download-dataset", cache_policy=WORKSPACE_INPUTS, **transient_retries())
def download_dataset(
    source: str, split_pc: float, root: str, fingerprint: str, scope: str
) -> PreparedDataset:
    """Prepare ``split_pc`` % of every split under ``root``, in a folder named by content."""
    get_run_logger().info("Preparing %g %% of dataset %s in %s (a download can take minutes)",
                          split_pc, source, root)
    prepared = prepare_dataset(source, split_pc, Path(root))
    get_run_logger().info(
        "Prepared %s (%g %%) in %s: %s", source, split_pc, prepared.directory,
        ", ".join(f"{k}={v}" for k, v in prepared.rows.items()),
    )
    return prepared


def ensure_dataset(
    source: str, split_pc: float, root: str, scope: str = ""
) -> PreparedDataset:
    """The prepared splits: from the cache while its files match what it recorded.

    ``scope`` names the workspace (its ``cache_scope``) so caches never cross workspaces.
    """
    absolute = str(Path(root).expanduser().resolve())
    args = (source, split_pc, absolute, source_fingerprint(source), scope)
    prepared = download_dataset(*args)
    problem = verify_prepared(prepared)
    if problem is None:
        return prepared
    get_run_logger().info("Cached dataset is not usable (%s); preparing it again", problem)
    return download_dataset.with_options(refresh_cache=True)(*args)


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
