"""The embedded local workspace: real training, a real MLflow registry, real HTTP endpoints.

Everything lives under one state directory (``.workspace/`` by default), so jobs and
endpoints outlive the flow run that made them and are found again after a restart.
"""

from workspaces.local.workspace import LocalWorkspace

__all__ = ["LocalWorkspace"]
