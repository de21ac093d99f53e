"""The Azure blocks: validation, round-trip through a Prefect server, and no secret leaks."""

from __future__ import annotations

import json
import logging

import pytest
from pydantic import ValidationError

from blocks import WorkspaceBlock
from blocks.azure_credentials import AzureMLCredentials
from blocks.azure_ml_workspace import AzureMLWorkspaceBlock
from tests.azure.fake_azureml.signin import CLIENT_ID, CLIENT_SECRET, TENANT_ID
from workspaces.errors import AuthenticationFailed

SECRET = "sp-secret-Q8~do-not-leak-7f3a"


def _sp() -> AzureMLCredentials:
    return AzureMLCredentials(
        auth_kind="service_principal",
        tenant_id="tenant-1",
        client_id="client-1",
        client_secret=SECRET,
    )


def test_service_principal_needs_its_fields():
    with pytest.raises(ValidationError, match="needs client_id, client_secret"):
        AzureMLCredentials(auth_kind="service_principal", tenant_id="t")
    assert AzureMLCredentials().auth_kind == "default"
    AzureMLCredentials(auth_kind="managed_identity")


def test_credential_kinds():
    from azure import identity

    assert isinstance(_sp().get_credential(), identity.ClientSecretCredential)
    assert isinstance(AzureMLCredentials().get_credential(), identity.DefaultAzureCredential)
    mi = AzureMLCredentials(auth_kind="managed_identity", client_id="c").get_credential()
    assert isinstance(mi, identity.ManagedIdentityCredential)


def test_workspace_block_needs_exactly_one_way():
    with pytest.raises(ValidationError, match="missing resource_group, workspace_name"):
        AzureMLWorkspaceBlock(subscription_id="s")
    with pytest.raises(ValidationError, match="not both"):
        AzureMLWorkspaceBlock(
            subscription_id="s", resource_group="r", workspace_name="w", config_path="config.json"
        )
    AzureMLWorkspaceBlock(config_path="config.json")


def _signing_in(secret: str) -> AzureMLCredentials:
    """A service principal of the fake's tenant: its check signs in over HTTPS, via MSAL."""
    return AzureMLCredentials(auth_kind="service_principal", tenant_id=TENANT_ID,
                              client_id=CLIENT_ID, client_secret=secret)


def test_check_failure_names_kind_and_fix_without_secret(fake, caplog):
    with caplog.at_level(logging.DEBUG), pytest.raises(AuthenticationFailed) as info:
        _signing_in(SECRET).check()
    message = str(info.value)
    assert "service_principal" in message and "client_secret has not expired" in message
    assert "AADSTS7000215: Invalid client secret provided" in message
    assert SECRET not in message and SECRET not in repr(info.value)
    assert SECRET not in caplog.text


def test_check_success(fake):
    assert "obtained a management token" in _signing_in(CLIENT_SECRET).check()
    assert [r.method for r in fake.requests] == ["GET", "POST"]  # discovery, then the token


def test_round_trip_through_prefect_server(prefect_server, caplog):
    """``prefect_server`` is the session-wide prefect_test_harness of tests/conftest.py."""
    with caplog.at_level(logging.DEBUG):
        _sp().save("chatft-azure-test", overwrite=True)
        block = AzureMLWorkspaceBlock(
            subscription_id="sub-1",
            resource_group="rg-1",
            workspace_name="ws-1",
            credentials=AzureMLCredentials.load("chatft-azure-test"),
        )
        block.save("chatft-ws-test", overwrite=True)
        loaded = AzureMLWorkspaceBlock.load("chatft-ws-test")

    assert loaded.credentials.client_secret.get_secret_value() == SECRET
    assert loaded.workspace_name == "ws-1" and loaded.registry_name == "azureml"
    for text in (
        repr(loaded),
        str(loaded),
        loaded.model_dump_json(),
        repr(block),
        json.dumps(loaded.model_dump(mode="json")),
        caplog.text,
    ):
        assert SECRET not in text
    assert isinstance(loaded, WorkspaceBlock)
    workspace = loaded.get_workspace()
    assert workspace.kind == "azure"
    assert workspace.address_scope == (
        "azure:/subscriptions/sub-1/resourceGroups/rg-1/workspaces/ws-1"
    )
    assert SECRET not in repr(workspace)


def test_config_path_block_reads_config_json(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(
        json.dumps({"subscription_id": "s", "resource_group": "r", "workspace_name": "w"})
    )
    workspace = AzureMLWorkspaceBlock(config_path=str(config)).get_workspace()
    assert workspace.address_scope == "azure:/subscriptions/s/resourceGroups/r/workspaces/w"
