"""Every use of azure-ai-ml's private internals, in one module.

Each function below does one thing the public API of azure-ai-ml 1.35 does not serve (its
comment says why) through the SDK's private parts. They are held only by the pin
``azure-ai-ml>=1.35,<1.36`` in pyproject.toml. :data:`INTERNALS` names each private part
with the shape used here; tests/azure/test_azure_sdk_internals.py checks them against the
installed SDK, failing with the name of the one a newer version changed, and checks that
no other module of the project reaches into the SDK's private parts.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from azure.ai.ml import MLClient
from azure.ai.ml.entities import OnlineEndpoint, Workspace


def workspace_rest_operation(ml: MLClient) -> Any:
    """The REST operation every workspace read of ``ml`` goes through.

    azure-ai-ml reads the workspace again before many calls (its location before every
    endpoint or deployment PUT, its id before job and component lookups) through this one
    operation, and offers no public way to keep the first answer: clients.py wraps its
    ``get`` so a client reads its own workspace once.
    """
    return ml.workspaces._operation


def workspace_id(ws: Workspace) -> str | None:
    """The workspace's immutable ARM ``properties.workspaceId``.

    It tells a workspace from a deleted one made again under the same name (cache keys
    need that); azure-ai-ml 1.35 keeps it in a private attribute only.
    """
    return getattr(ws, "_workspace_id", None) or vars(ws).get("workspace_id")


def read_online_endpoint(ml: MLClient, name: str) -> OnlineEndpoint:
    """The endpoint from one GET (raises ResourceNotFoundError when there is none).

    ``online_endpoints.get`` also lists the endpoint's deployments, only to add zero shares
    to its traffic map; every caller here lists them itself (or needs none), so the REST
    operation behind ``get`` is called and its answer converted as ``get`` converts it.
    """
    operations = ml.online_endpoints
    rest = operations._online_operation.get(
        resource_group_name=operations._resource_group_name,
        workspace_name=operations._workspace_name,
        endpoint_name=name,
        **operations._init_kwargs,
    )
    return OnlineEndpoint._from_rest_object(rest)


def endpoint_keys(ml: MLClient, name: str) -> Any:
    """The keys of a key-auth endpoint from one request (``primary_key``, ``secondary_key``).

    ``online_endpoints.get_keys`` reads the endpoint for its auth mode before listing the
    keys; when the mode is known, the SDK's own next step lists them at once.
    """
    return ml.online_endpoints._get_online_credentials(name=name, auth_mode="key")


def run_children(ml: MLClient, run_id: str) -> Iterable[Any]:
    """The child runs (steps) of a job or step, as run history lists them.

    ``jobs.list(parent_job_name=)`` reads the parent over ARM before asking run history:
    for a job just read that is a second read, and a step has no ARM record to read.
    """
    return ml.jobs._runs_operations.get_run_children(run_id)


def run_details(ml: MLClient, run_id: str) -> Any:
    """Run history's details of a job or step: the only place a failure's text is kept;
    azure-ai-ml has no public call that returns it."""
    return ml.jobs._runs_operations.get_run_details(run_id)


@dataclass(frozen=True)
class Internal:
    """A private part of azure-ai-ml used above, with the shape relied on.

    ``locate`` finds it on an ``MLClient``; ``params`` are the parameters it is called
    with (None: not called, only read).
    """

    name: str
    used_for: str
    locate: Callable[[MLClient], Any]
    params: tuple[str, ...] | None = None


def _run_operations(ml: MLClient) -> Any:
    # The property builds run history's client (a discovery request); its type suffices.
    prop = inspect.getattr_static(type(ml.jobs), "_runs_operations")
    return typing.get_type_hints(prop.fget)["return"] if isinstance(prop, property) else prop


INTERNALS: tuple[Internal, ...] = (
    Internal("WorkspaceOperations._operation.get", "reading the workspace once per client",
             lambda ml: ml.workspaces._operation.get, ("resource_group_name", "workspace_name")),
    Internal("Workspace._workspace_id", "telling a workspace from a new one of the same name",
             lambda ml: Workspace(name="probe", workspace_id="probe-id")._workspace_id),
    Internal("OnlineEndpointOperations._online_operation.get", "reading an endpoint in one GET",
             lambda ml: ml.online_endpoints._online_operation.get,
             ("resource_group_name", "workspace_name", "endpoint_name")),
    Internal("OnlineEndpointOperations._resource_group_name", "reading an endpoint in one GET",
             lambda ml: ml.online_endpoints._resource_group_name),
    Internal("OnlineEndpointOperations._workspace_name", "reading an endpoint in one GET",
             lambda ml: ml.online_endpoints._workspace_name),
    Internal("OnlineEndpointOperations._init_kwargs", "reading an endpoint in one GET",
             lambda ml: ml.online_endpoints._init_kwargs),
    Internal("OnlineEndpoint._from_rest_object", "reading an endpoint in one GET",
             lambda ml: OnlineEndpoint._from_rest_object, ("obj",)),
    Internal("OnlineEndpointOperations._get_online_credentials",
             "listing a key-auth endpoint's keys in one request",
             lambda ml: ml.online_endpoints._get_online_credentials, ("name", "auth_mode")),
    Internal("JobOperations._runs_operations.get_run_children", "listing a job's steps",
             lambda ml: _run_operations(ml).get_run_children, ("self", "run_id")),
    Internal("JobOperations._runs_operations.get_run_details", "a failed job's error text",
             lambda ml: _run_operations(ml).get_run_details, ("self", "run_id")),
)
