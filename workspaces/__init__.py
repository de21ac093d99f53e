"""The workspace layer: one interface over Azure Machine Learning and the embedded local workspace.

Tasks talk to a :class:`~workspaces.interface.Workspace` and never import azure or torch
themselves, so every flow runs unchanged on either implementation.
"""

from workspaces.errors import (
    AuthenticationFailed,
    InvalidRequest,
    JobFailed,
    QuotaExceeded,
    ResourceNotFound,
    TransientWorkspaceError,
    WorkspaceError,
)
from workspaces.interface import Workspace

__all__ = [
    "AuthenticationFailed",
    "InvalidRequest",
    "JobFailed",
    "QuotaExceeded",
    "ResourceNotFound",
    "TransientWorkspaceError",
    "Workspace",
    "WorkspaceError",
]
