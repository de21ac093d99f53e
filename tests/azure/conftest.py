"""Fixtures: one fake Azure ML server per session, reset before each test."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.azure.fake_azureml import FakeAzureML, FakeServer
from tests.azure.fake_azureml.certs import make_certificates
from tests.azure.fake_azureml.credential import FakeCredential
from tests.azure.fake_azureml.dns import HOST_NAMES, resolver
from tests.azure.fake_azureml.signin import CLIENT_ID, CLIENT_SECRET, TENANT_ID


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAzureML]:
    certs = tmp_path_factory.mktemp("certs")
    ca, cert, key = make_certificates(certs, HOST_NAMES)
    service = FakeAzureML()
    server = FakeServer(service.handle, cert, key).start()
    service.server = server
    patcher = pytest.MonkeyPatch()
    patcher.setenv("REQUESTS_CA_BUNDLE", str(ca))
    patcher.setenv("SSL_CERT_FILE", str(ca))
    patcher.setattr(socket, "getaddrinfo", resolver(server.port))
    try:
        yield service
    finally:
        patcher.undo()
        server.stop()


def _keep_azureml_cloud() -> Iterator[None]:
    before = os.environ.get("AZUREML_CURRENT_CLOUD")
    yield
    if before is None:
        os.environ.pop("AZUREML_CURRENT_CLOUD", None)
    else:
        os.environ["AZUREML_CURRENT_CLOUD"] = before


@pytest.fixture(autouse=True)
def _restore_azureml_cloud() -> Iterator[None]:
    """MLClient(cloud=...) writes AZUREML_CURRENT_CLOUD into os.environ; undo it after each
    test, or later subprocesses that import azure.ai.ml fail on the unknown fake cloud."""
    yield from _keep_azureml_cloud()


@pytest.fixture(scope="module", autouse=True)
def _restore_azureml_cloud_per_module() -> Iterator[None]:
    """The same for a module's shared fixtures, which make clients outside any one test
    (a server test after them once failed on "Unknown cloud environment FakeCloud...")."""
    yield from _keep_azureml_cloud()


@pytest.fixture(scope="session", autouse=True)
def _poll_the_fake_often() -> Iterator[None]:
    """The fake moves a job or an operation on by polls, not by time: Azure's 60 s cap on
    the wait between two reads only made these tests wait (a job: 0.5 + 1 + 2 s)."""
    from workspaces.azure import AzureMLWorkspace

    patcher = pytest.MonkeyPatch()
    patcher.setattr(AzureMLWorkspace, "max_poll_interval_s", 0.25)
    yield
    patcher.undo()


@pytest.fixture
def fake(fake_server: FakeAzureML) -> FakeAzureML:
    fake_server.reset()
    return fake_server


@pytest.fixture
def credential() -> FakeCredential:
    return FakeCredential()


@pytest.fixture
def data_files(tmp_path: Path) -> tuple[Path, Path]:
    train, test = tmp_path / "train_sft.jsonl", tmp_path / "test_sft.jsonl"
    row = '{"prompt": "hi", "prompt_id": "0", "messages": [{"role": "user", "content": "hi"}]}\n'
    train.write_text(row * 3)
    test.write_text(row)
    return train, test


def make_workspace(fake: FakeAzureML, credential: FakeCredential, **client_kwargs):  # noqa: ANN201
    """An AzureMLWorkspace whose MLClients talk to the fake (retries off unless asked)."""
    from workspaces.azure import AzureMLWorkspace

    kwargs = {
        "cloud": f"FakeCloud{fake.server.port}",
        "cloud_metadata": fake.cloud_metadata(),
        "retry_total": 0,
        **client_kwargs,
    }
    return AzureMLWorkspace(
        credential,
        fake.subscription,
        fake.resource_group,
        fake.workspace,
        metrics_endpoint=fake.base,
        client_kwargs=kwargs,
    )


def make_block_workspace(fake: FakeAzureML, secret: str = CLIENT_SECRET):  # noqa: ANN201
    """The workspace as ``load_workspace`` builds it from the blocks (a service principal
    signing in through MSAL), aimed at the fake; Azure Monitor at its regional host."""
    from blocks.azure_credentials import AzureMLCredentials
    from blocks.azure_ml_workspace import AzureMLWorkspaceBlock

    credentials = AzureMLCredentials(
        auth_kind="service_principal", tenant_id=TENANT_ID, client_id=CLIENT_ID,
        client_secret=secret,
    )
    block = AzureMLWorkspaceBlock(
        subscription_id=fake.subscription, resource_group=fake.resource_group,
        workspace_name=fake.workspace, credentials=credentials,
    )
    return block.get_workspace(
        cloud=f"FakeCloud{fake.server.port}", cloud_metadata=fake.cloud_metadata(),
        retry_total=0,
    )


@pytest.fixture
def workspace(fake: FakeAzureML, credential: FakeCredential):  # noqa: ANN201
    return make_workspace(fake, credential)


@pytest.fixture
def azure_flow(fake: FakeAzureML, credential: FakeCredential, prefect_server, monkeypatch):  # noqa: ANN201
    """The flows run on an Azure workspace whose every request goes to the HTTPS fake."""
    import flows.finetune_and_deploy as flow_module

    workspace = make_workspace(fake, credential)
    monkeypatch.setattr(flow_module, "load_workspace", lambda block: workspace)
    monkeypatch.setenv("AZUREML_RUN_POLLING_INTERVAL_MIN", "0")
    return workspace
