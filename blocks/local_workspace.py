"""The ``local-workspace`` block: where the embedded local workspace keeps its state."""

from __future__ import annotations

from prefect.blocks.core import Block
from pydantic import Field

from workspaces.local import LocalWorkspace


class LocalWorkspaceBlock(Block):
    """Settings of the embedded local workspace (real training, MLflow registry, endpoints).

    Attributes:
        state_dir: Folder holding models, jobs, the MLflow registry and endpoint state.
            A relative path is resolved against the working directory of the process
            that runs the flow (the worker's, when run from a deployment).
        threads_per_process: Math threads of each fine-tune job, endpoint server and
            held-out scorer. Empty: they share the machine's cores by what computes at
            the moment (a job alone takes them all; beside a generating endpoint each
            takes its share).

    Example:
        ```python
        from blocks.local_workspace import LocalWorkspaceBlock

        LocalWorkspaceBlock(state_dir="/srv/chatft").save("default", overwrite=True)
        workspace = LocalWorkspaceBlock.load("default").get_workspace()
        ```
    """

    _block_type_name = "Local Workspace"
    _block_type_slug = "local-workspace"
    _description = "The embedded local workspace of chat-finetune-flows."
    _documentation_url = "https://docs.prefect.io/v3/develop/blocks"  # type: ignore[assignment]

    state_dir: str = Field(
        default=".workspace",
        title="State directory",
        description="Folder for models, jobs, the MLflow registry and endpoints; relative "
        "paths resolve against the flow process's working directory.",
    )

    threads_per_process: int | None = Field(
        default=None,
        ge=1,
        title="Threads per process",
        description="Math threads of each fine-tune job, endpoint server and scorer; empty "
        "shares the cores by what computes (a job alone takes them all).",
    )

    def get_workspace(self) -> LocalWorkspace:
        """The local workspace this block configures, opened on its state folder."""
        name = getattr(self, "_block_document_name", None) or "(unsaved)"
        return LocalWorkspace(
            self.state_dir, chosen_by=f"state_dir of the local-workspace block {name!r}",
            threads_per_process=self.threads_per_process,
        )
