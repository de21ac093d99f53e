"""The Azure ML workspace block: where the workspace is, and which credentials reach it."""

from __future__ import annotations

import functools
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field, model_validator

from blocks.azure_credentials import AzureMLCredentials
from workspaces.interface import Workspace


class AzureMLWorkspaceBlock(Block):
    """An Azure Machine Learning workspace and the registry its foundation models come from.

    Give either subscription_id, resource_group and workspace_name, or config_path (the
    config.json downloaded from the workspace page of the Azure portal).

    Example:
        ```python
        from blocks.azure_credentials import AzureMLCredentials
        from blocks.azure_ml_workspace import AzureMLWorkspaceBlock

        AzureMLWorkspaceBlock(
            subscription_id="<sub>", resource_group="<rg>", workspace_name="<ws>",
            credentials=AzureMLCredentials.load("chatft-azure"),
        ).save("chatft-workspace")

        workspace = AzureMLWorkspaceBlock.load("chatft-workspace").get_workspace()
        ```
    """

    _block_type_name = "Azure ML Workspace"
    _documentation_url = (
        "https://learn.microsoft.com/azure/machine-learning/how-to-manage-workspace"
    )

    subscription_id: str | None = Field(
        default=None, title="Subscription ID", description="Azure subscription of the workspace."
    )
    resource_group: str | None = Field(
        default=None, title="Resource group", description="Resource group of the workspace."
    )
    workspace_name: str | None = Field(
        default=None, title="Workspace name", description="Azure ML workspace name."
    )
    config_path: str | None = Field(
        default=None,
        title="config.json path",
        description="Path of the workspace's config.json on the worker, instead of the three "
        "fields above.",
    )
    registry_name: str = Field(
        default="azureml",
        title="Registry name",
        description="Registry holding the foundation models and the fine-tune pipeline.",
    )
    credentials: AzureMLCredentials = Field(
        default_factory=AzureMLCredentials,
        title="Credentials",
        description="The Azure ML Credentials block to authenticate with.",
    )

    @model_validator(mode="after")
    def _one_way_to_the_workspace(self) -> AzureMLWorkspaceBlock:
        named = [self.subscription_id, self.resource_group, self.workspace_name]
        if self.config_path and any(named):
            raise ValueError(
                "give either config_path or subscription_id/resource_group/workspace_name, not both"
            )
        if not self.config_path and not all(named):
            missing = [
                n
                for n, v in zip(
                    ("subscription_id", "resource_group", "workspace_name"), named, strict=True
                )
                if not v
            ]
            raise ValueError(
                f"missing {', '.join(missing)}: give all three, or config_path instead"
            )
        return self

    def get_workspace(self, **client_kwargs: Any) -> Workspace:
        """The AzureMLWorkspace this block describes (``client_kwargs`` go to MLClient)."""
        from workspaces.azure import AzureMLWorkspace

        credential = self.credentials.get_credential()
        return AzureMLWorkspace(
            credential,
            self.subscription_id,
            self.resource_group,
            self.workspace_name,
            config_path=self.config_path,
            registry_name=self.registry_name,
            client_kwargs=client_kwargs or None,
            # The pre-flight asks the block itself, so its message fits the chosen kind, and
            # with the workspace's own credential, so a run signs in once.
            credential_check=functools.partial(self.credentials.check, credential=credential),
        )
