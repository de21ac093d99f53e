"""The Azure credential block: which identity the Azure ML workspace acts as.

Kinds: the default chain (``DefaultAzureCredential`` without the interactive browser, for
scheduled runs), a service principal with a client secret, a managed identity, or a
workload identity (federated token, e.g. on Kubernetes). The secret is a ``SecretStr`` and is
read only when the credential is built.
"""

from __future__ import annotations

import os
from typing import Literal

from azure.core.credentials import TokenCredential
from azure.core.exceptions import AzureError
from prefect.blocks.core import Block
from pydantic import Field, SecretStr, model_validator

from workspaces.azure.errors import credential_failure
from workspaces.errors import AuthenticationFailed

ARM_SCOPE = "https://management.azure.com/.default"
AuthKind = Literal["default", "service_principal", "managed_identity", "workload_identity"]
FIXES: dict[str, str] = {
    "default": "run 'az login', or set AZURE_TENANT_ID/AZURE_CLIENT_ID/AZURE_CLIENT_SECRET, "
    "or use a managed identity on the worker",
    "service_principal": "check tenant_id and client_id, and that client_secret has not expired "
    "(Entra ID > App registrations > Certificates & secrets)",
    "managed_identity": "assign the identity to the VM/container running the worker; give "
    "client_id for a user-assigned identity",
    "workload_identity": "check the federated credential of the app registration, and "
    "AZURE_FEDERATED_TOKEN_FILE on the worker",
}


class AzureMLCredentials(Block):
    """Credentials for Azure Machine Learning, handed out as an azure-identity credential.

    Attributes:
        auth_kind: default chain, service principal, managed identity or workload identity.
        tenant_id: Entra ID tenant (service principal; workload identity).
        client_id: application (client) id (service principal; optional otherwise).
        client_secret: the service principal's secret.
        token_file_path: federated token file (workload identity; default from env).

    Example:
        ```python
        from blocks.azure_credentials import AzureMLCredentials

        AzureMLCredentials(
            auth_kind="service_principal",
            tenant_id="<tenant>", client_id="<app id>", client_secret="<secret>",
        ).save("chatft-azure")

        credential = AzureMLCredentials.load("chatft-azure").get_credential()
        ```
    """

    _block_type_name = "Azure ML Credentials"
    _documentation_url = "https://learn.microsoft.com/python/api/overview/azure/identity-readme"

    auth_kind: AuthKind = Field(
        default="default",
        title="Authentication kind",
        description="default: DefaultAzureCredential without browser login; service_principal: "
        "tenant, client id and secret; managed_identity; workload_identity.",
    )
    tenant_id: str | None = Field(
        default=None, title="Tenant ID", description="Microsoft Entra ID tenant (directory) id."
    )
    client_id: str | None = Field(
        default=None,
        title="Client ID",
        description="Application (client) id of the service principal, or of a user-assigned "
        "managed identity.",
    )
    client_secret: SecretStr | None = Field(
        default=None, title="Client secret", description="Secret of the service principal."
    )
    token_file_path: str | None = Field(
        default=None,
        title="Federated token file",
        description="Workload identity token file; defaults to AZURE_FEDERATED_TOKEN_FILE.",
    )

    @model_validator(mode="after")
    def _fields_for_kind(self) -> AzureMLCredentials:
        required = {"service_principal": ("tenant_id", "client_id", "client_secret")}
        missing = [f for f in required.get(self.auth_kind, ()) if not getattr(self, f)]
        if missing:
            raise ValueError(
                f"auth_kind {self.auth_kind!r} needs {', '.join(missing)}; "
                "fill them in or choose another kind"
            )
        return self

    def get_credential(self) -> TokenCredential:
        """The azure-identity credential for this kind."""
        from azure import identity

        if self.auth_kind == "service_principal":
            assert self.client_secret is not None
            return identity.ClientSecretCredential(
                self.tenant_id, self.client_id, self.client_secret.get_secret_value()
            )
        if self.auth_kind == "managed_identity":
            return identity.ManagedIdentityCredential(client_id=self.client_id)
        if self.auth_kind == "workload_identity":
            token_file = self.token_file_path or os.environ.get("AZURE_FEDERATED_TOKEN_FILE")
            return identity.WorkloadIdentityCredential(
                tenant_id=self.tenant_id, client_id=self.client_id, token_file_path=token_file
            )
        return identity.DefaultAzureCredential(exclude_interactive_browser_credential=True)

    def check(self, scope: str = ARM_SCOPE, credential: TokenCredential | None = None) -> str:
        """Ask a token for Azure Resource Manager; raise AuthenticationFailed with the fix.

        ``credential`` is the one this block already handed out (the workspace's): asking
        it, not a new one, signs in once per run, and the token is then at hand for the
        steps that follow. The message lists every credential the chain tried with its
        reason, in full, then the fix for this kind; the secret never appears in it.
        """
        secret = self.client_secret.get_secret_value() if self.client_secret else ""
        try:
            (credential or self.get_credential()).get_token(scope)
        except (AzureError, ValueError) as exc:
            raise AuthenticationFailed(credential_failure(
                exc,
                f"Azure credential of kind {self.auth_kind!r} could not get a token for {scope}",
                FIXES[self.auth_kind],
                (secret,),
            )) from None
        return f"Azure credential of kind {self.auth_kind!r} obtained a management token"
