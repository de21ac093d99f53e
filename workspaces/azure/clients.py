"""Build the azure-ai-ml clients a workspace needs: the workspace client and the registry client.

Construction follows step 1 of docs/procedure.md: ``MLClient.from_config`` when a
config.json is given,
else ``MLClient(credential, subscription_id, resource_group_name, workspace_name)``; the
registry client is ``MLClient(credential, registry_name=...)``. The registry client does
HTTP (registry discovery) when built, so it is made on first use.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from azure.ai.ml import MLClient
from azure.core.credentials import TokenCredential

from workspaces.azure import sdk_internals
from workspaces.errors import InvalidRequest

ARM_SCOPE = "https://management.azure.com/.default"


@dataclass(frozen=True)
class WorkspaceAddress:
    """Where the workspace is; no secrets."""

    subscription_id: str
    resource_group: str
    workspace_name: str

    @classmethod
    def from_config(cls, config_path: str | Path) -> WorkspaceAddress:
        """Read the portal's config.json (the same file ``MLClient.from_config`` reads)."""
        path = Path(config_path)
        if path.is_dir():
            path = path / "config.json"
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise InvalidRequest(
                f"cannot read Azure ML config file {path}: {exc.__class__.__name__}; download "
                "config.json from the workspace page of the Azure portal"
            ) from None
        missing = [
            k for k in ("subscription_id", "resource_group", "workspace_name") if not data.get(k)
        ]
        if missing:
            raise InvalidRequest(f"Azure ML config file {path} lacks {', '.join(missing)}")
        return cls(data["subscription_id"], data["resource_group"], data["workspace_name"])

    @property
    def arm_id(self) -> str:
        """The workspace's ARM resource id: the prefix of its endpoints' ids in Azure
        Monitor, and the ``wsid`` of its studio links."""
        return (
            f"/subscriptions/{self.subscription_id}/resourceGroups/{self.resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{self.workspace_name}"
        )


@dataclass
class Clients:
    """Lazily built MLClients sharing one credential and one set of client options."""

    credential: TokenCredential
    address: WorkspaceAddress
    registry_name: str = "azureml"
    config_path: str | None = None
    client_kwargs: dict[str, Any] = field(default_factory=dict)
    _ml: MLClient | None = None
    _registry: MLClient | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def arm_scope(self) -> str:
        """The token scope of ARM calls (follows a custom cloud's resource manager)."""
        metadata = self.client_kwargs.get("cloud_metadata") or {}
        manager = metadata.get("resource_manager")
        return f"{manager.rstrip('/')}/.default" if manager else ARM_SCOPE

    def _kwargs(self) -> dict[str, Any]:
        # Upload progress bars are noise in flow logs.
        return {"show_progress": False, **self.client_kwargs}

    @property
    def ml(self) -> MLClient:
        """The workspace's MLClient, built on first use (from config.json when one was
        given). Its reads of this workspace are answered from the first one from then on
        (:func:`_read_own_workspace_once`)."""
        with self._lock:
            if self._ml is None:
                if self.config_path:
                    self._ml = MLClient.from_config(
                        self.credential, path=self.config_path, **self._kwargs()
                    )
                else:
                    self._ml = MLClient(
                        self.credential,
                        subscription_id=self.address.subscription_id,
                        resource_group_name=self.address.resource_group,
                        workspace_name=self.address.workspace_name,
                        **self._kwargs(),
                    )
                _read_own_workspace_once(self._ml, self.address)
            return self._ml

    @property
    def registry(self) -> MLClient:
        """The registry's MLClient, built on first use: building it already sends a
        request (registry discovery), so a run that never reads the registry sends none."""
        with self._lock:
            if self._registry is None:
                self._registry = MLClient(
                    self.credential, registry_name=self.registry_name, **self._kwargs()
                )
            return self._registry


def _read_own_workspace_once(ml: MLClient, address: WorkspaceAddress) -> None:
    """Keep the first answer to "GET this workspace" for the client's life.

    azure-ai-ml reads the workspace again before many calls (its location before every
    endpoint or deployment PUT, its id before a job or component lookup), through the
    REST operation behind ``ml.workspaces``. Nothing the SDK reads there changes during a
    flow run, and each run builds its workspace (so this client) anew, so one read per run
    is enough. Other workspaces, and calls with extra options, go through unchanged.
    """
    operation = sdk_internals.workspace_rest_operation(ml)
    original = operation.get
    kept: dict[str, Any] = {}
    lock = threading.Lock()

    def get(*args: Any, **kwargs: Any) -> Any:
        names = dict(zip(("resource_group_name", "workspace_name"), args, strict=False))
        names.update({k: kwargs.pop(k) for k in ("resource_group_name", "workspace_name")
                      if k in kwargs})
        own = (names.get("resource_group_name") == address.resource_group
               and names.get("workspace_name") == address.workspace_name)
        if not own or kwargs:
            return original(**names, **kwargs)
        with lock:
            if "workspace" not in kept:
                kept["workspace"] = original(**names)
            return kept["workspace"]

    operation.get = get
