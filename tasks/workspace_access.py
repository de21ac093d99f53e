"""Step 1 of docs/procedure.md: the credential reaches the workspace, checked first."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.policies import transient_retries
from workspaces.interface import Workspace


@task(name="check-workspace-access", cache_policy=NO_CACHE, **transient_retries())
def check_workspace_access(workspace: Workspace) -> str:
    """Fail early when the credential or workspace does not work.

    Args:
        workspace: the workspace a block or the environment names.

    Returns:
        One line saying what was reached (workspace, region, or the local state folder).

    Raises:
        AuthenticationFailed: the credential was refused or lacks a permission.
        ResourceNotFound: the workspace does not exist where the block says.
    """
    get_run_logger().info("Checking access to the %s workspace", workspace.kind)
    summary = workspace.check_access()
    get_run_logger().info("Workspace reachable: %s", summary)
    return summary
