"""A credential that cannot get a token stops the run in the pre-flight, through the block's
own check(): every credential the chain tried with its reason, in full, then the fix for the
chosen kind, and nothing sent to Azure ML."""

from __future__ import annotations

import pytest

import flows.finetune_and_deploy as flow_module
from blocks.azure_credentials import AzureMLCredentials
from blocks.azure_ml_workspace import AzureMLWorkspaceBlock
from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest
from workspaces.errors import AuthenticationFailed

ENV_CREDENTIALS = (
    "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET", "AZURE_TENANT_ID", "AZURE_USERNAME",
    "AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_CERTIFICATE_PATH", "MSI_ENDPOINT",
    "MSI_SECRET", "IDENTITY_SERVER_THUMBPRINT", "AZURE_POD_IDENTITY_AUTHORITY_HOST",
)


@pytest.fixture
def no_identity(fake, tmp_path, monkeypatch):
    """A worker with nothing set up: no env credentials, no Azure CLI, an empty token cache,
    and a managed-identity endpoint (the fake) that knows no identity."""
    for name in ENV_CREDENTIALS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("IDENTITY_ENDPOINT", fake.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", "header-of-the-worker")
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no az, azd or pwsh on this worker
    monkeypatch.setenv("HOME", str(tmp_path))


def _run_with(fake, credentials, monkeypatch, tmp_path):
    block = AzureMLWorkspaceBlock(
        subscription_id=fake.subscription,
        resource_group=fake.resource_group,
        workspace_name=fake.workspace,
        credentials=credentials,
    )
    workspace = block.get_workspace(
        cloud=f"FakeCloud{fake.server.port}", cloud_metadata=fake.cloud_metadata(), retry_total=0
    )
    monkeypatch.setattr(flow_module, "load_workspace", lambda slug: workspace)
    with pytest.raises(AuthenticationFailed) as info:
        finetune_and_deploy(request=FinetuneRequest(dataset="sample",
                                                    download_dir=str(tmp_path / "dl")))
    return str(info.value)


def test_default_chain_lists_every_credential_it_tried_in_full(
    fake, no_identity, prefect_server, monkeypatch, tmp_path
):
    text = _run_with(fake, AzureMLCredentials(), monkeypatch, tmp_path)
    print(f"\nUser sees: {text}")
    lines = text.splitlines()
    assert lines[0] == (
        f"Azure credential of kind 'default' could not get a token for {fake.base}/.default."
    )
    assert lines[1] == "Credentials tried, in order:"
    tried = [line.split(":", 1)[0] for line in lines[2:-1]]
    assert tried[:3] == ["- EnvironmentCredential", "- WorkloadIdentityCredential",
                         "- ManagedIdentityCredential"]
    assert "- AzureCliCredential: Azure CLI not found on path" in lines
    assert any(line.startswith("- ManagedIdentityCredential") and
               line.endswith("Identity not found") for line in lines)
    assert lines[-1].startswith("Fix: run 'az login'")
    assert "header-of-the-worker" not in text
    # stopped before Azure ML was asked anything
    assert fake.sent("GET", rf"{fake.ws_path}$") == [] and fake.sent("PUT", ".") == []


def test_managed_identity_kind_gets_its_own_advice(
    fake, no_identity, prefect_server, monkeypatch, tmp_path
):
    text = _run_with(fake, AzureMLCredentials(auth_kind="managed_identity"), monkeypatch,
                     tmp_path)
    assert "Identity not found" in text
    assert text.splitlines()[-1].startswith(
        "Fix: assign the identity to the VM/container running the worker"
    )
