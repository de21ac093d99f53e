"""Retry and cache policies shared by the tasks.

- Retries only for transient faults (:class:`~workspaces.errors.TransientWorkspaceError`),
  with exponential back-off and jitter; anything else fails the task at once.
- Cache keys hash a task's real inputs and the workspace's secret-free ``cache_scope``,
  never the workspace object (it holds clients and credentials).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prefect.cache_policies import TASK_SOURCE, CachePolicy
from prefect.client.schemas.objects import TaskRun
from prefect.context import TaskRunContext
from prefect.states import State
from prefect.tasks import exponential_backoff
from prefect.utilities.hashing import hash_objects
from pydantic import BaseModel

from workspaces.errors import TransientWorkspaceError

RETRIES = 4
RETRY_DELAYS = exponential_backoff(backoff_factor=2)
RETRY_JITTER = 0.5


def is_transient(task: Any, task_run: TaskRun, state: State) -> bool:
    """Retry only throttling, server errors, timeouts and dropped connections."""
    try:
        state.result(raise_on_failure=True)
    except TransientWorkspaceError:
        return True
    except Exception:
        return False
    return False


def transient_retries() -> dict[str, Any]:
    """Keyword arguments for ``@task`` that retry transient faults only."""
    return {
        "retries": RETRIES,
        "retry_delay_seconds": RETRY_DELAYS,
        "retry_jitter_factor": RETRY_JITTER,
        "retry_condition_fn": is_transient,
    }


def _stable(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    return value


@dataclass
class WorkspaceInputs(CachePolicy):
    """Hash the task's inputs, with the ``workspace`` argument replaced by its cache scope.

    ``required`` names inputs without which nothing is cached: a job's creation time, so a
    cached result can never stand for another job of the same name (a workspace that lost
    the job and got it submitted again keeps its identity, and its name).
    """

    exclude: list[str] = field(default_factory=list)
    required: list[str] = field(default_factory=list)

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        """The cache key: the workspace's scope plus the task's other inputs (never a client)."""
        if any(not (inputs or {}).get(name) for name in self.required):
            return None
        # Keys are one namespace across tasks: two tasks with the same inputs (the wait for
        # a job and the read of its metrics) must not take each other's results.
        task = getattr(task_ctx, "task", None)
        hashed: dict[str, Any] = {"task": getattr(task, "name", None)}
        for key, value in (inputs or {}).items():
            if key in self.exclude:
                continue
            if key == "workspace":
                hashed[key] = value.cache_scope
            else:
                hashed[key] = _stable(value)
        return hash_objects(hashed, raise_on_failure=True)


# A step is redone when its inputs or its code change.
WORKSPACE_INPUTS = WorkspaceInputs() + TASK_SOURCE
