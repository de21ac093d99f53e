"""What finetune_and_deploy returns, and how its command line prints it.

Kept apart from the flow so that a command-line re-run that finds nothing changed
(:mod:`flows.unchanged_rerun`) can print the same result without importing Prefect.
"""

from __future__ import annotations

import shlex
import sys

from pydantic import BaseModel, Field

FLOW_NAME = "finetune-and-deploy"


class FinetuneResult(BaseModel):
    """What the run produced, as shown at the end of the run and returned to callers."""

    workspace: str
    request_id: str
    suffix: str
    job_name: str
    job_reused: bool
    model_name: str
    model_version: str
    endpoint_name: str
    scoring_uri: str | None
    endpoint_reused: bool
    deployment_name: str
    reply: str
    tuning_summary: str = ""
    endpoint_deleted: bool = False
    sample_request_file: str = ""
    rollout: str = Field(
        "", description="How a canary release ended: first-release, promoted, held, "
        "rolled-back, rejected, refused or already-serving (empty: strategy new-endpoint)"
    )
    rollout_message: str = ""
    flow_run_id: str = Field("", description="The flow run that produced this result")
    flow_run_name: str = ""


def already_serving_message(model: str, version: str, endpoint: str, deployment: str) -> str:
    """The release message of a model that already serves the endpoint it was asked onto."""
    return f"{model}:{version} already serves {endpoint} (deployment {deployment})"


def print_result(result: FinetuneResult) -> None:
    """The lines the command line prints at the end of a run."""
    print()
    print(
        f"Endpoint:    {result.endpoint_name}" + (" (deleted)" if result.endpoint_deleted else "")
    )
    print(f"Scoring URI: {result.scoring_uri}")
    print(f"Model:       {result.model_name} version {result.model_version}")
    print(f"Reply:       {result.reply!r}")
    print(f"Sample body: {result.sample_request_file or '(none: the model was not released)'}")
    if result.rollout:
        print(f"Release:     {result.rollout}: {result.rollout_message}")
    if not result.endpoint_deleted and result.workspace.startswith("local:"):
        # Pasteable as printed: this interpreter and the workspace this run used, whatever
        # the shell's current folder or $CHATFT_STATE_DIR is later.
        state_dir = result.workspace.removeprefix("local:").rsplit(":", 1)[0]
        print("The endpoint keeps serving. Stop and delete this workspace's endpoints with:\n  "
              + shlex.join([sys.executable, "-m", "workspaces.local.cli", "--state-dir",
                            state_dir, "endpoints", "delete", "--all"]))
