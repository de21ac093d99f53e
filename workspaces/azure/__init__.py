"""The Azure Machine Learning workspace (azure-ai-ml SDK v2)."""

from workspaces.azure.workspace import AzureMLWorkspace

__all__ = ["AzureMLWorkspace"]
