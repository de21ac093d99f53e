"""The Azure Machine Learning workspace (azure-ai-ml SDK v2).

``AzureMLWorkspace`` is imported on first use: importing azure-ai-ml takes seconds, and the
credential block reads ``workspaces.azure.errors`` in every flow run, Azure or local.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from workspaces.azure.workspace import AzureMLWorkspace

__all__ = ["AzureMLWorkspace"]


def __getattr__(name: str) -> Any:
    if name == "AzureMLWorkspace":
        from workspaces.azure.workspace import AzureMLWorkspace

        return AzureMLWorkspace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
