"""Prefect blocks: workspace settings and Azure credentials that live on the Prefect server.

Every workspace block has ``get_workspace()``, which hands out a ready
:class:`~workspaces.interface.Workspace`; flows name the block by its slug
(``<block-type-slug>/<block-name>``) and never assemble credentials themselves.
"""

from __future__ import annotations

import importlib
import os
from typing import Protocol, runtime_checkable

from workspaces.interface import Workspace

# Modules whose blocks a flow can load by slug (imported so Prefect knows their classes).
BLOCK_MODULES = ("blocks.local_workspace", "blocks.azure_credentials", "blocks.azure_ml_workspace")
STATE_DIR_ENV = "CHATFT_STATE_DIR"


@runtime_checkable
class WorkspaceBlock(Protocol):
    """What a block must offer to be used as a flow's workspace."""

    def get_workspace(self) -> Workspace:
        """The workspace the block configures, connected and ready for the tasks."""
        ...


def _import_block_modules() -> None:
    for module in BLOCK_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise


def load_workspace(block: str | None) -> Workspace:
    """The workspace a flow runs against.

    ``block`` is a block slug such as ``local-workspace/default`` or
    ``azure-ml-workspace/prod``; empty means the local workspace in ``$CHATFT_STATE_DIR``
    (default ``./.workspace``).
    """
    if not block:
        from workspaces.local import LocalWorkspace

        if os.environ.get(STATE_DIR_ENV):
            return LocalWorkspace(os.environ[STATE_DIR_ENV], chosen_by=f"${STATE_DIR_ENV}")
        return LocalWorkspace(
            ".workspace",
            chosen_by=f"the default ./.workspace (no workspace_block, ${STATE_DIR_ENV} unset): "
            f"set {STATE_DIR_ENV} or name a local-workspace block to choose another",
        )
    if "/" not in block:
        raise ValueError(
            f"workspace_block {block!r} must be a block slug '<block-type>/<name>', "
            "e.g. local-workspace/default or azure-ml-workspace/prod"
        )
    from prefect.blocks.core import Block

    _import_block_modules()
    loaded = Block.load(block)
    if not isinstance(loaded, WorkspaceBlock):
        raise ValueError(f"block {block!r} is a {type(loaded).__name__}, not a workspace block")
    return loaded.get_workspace()
