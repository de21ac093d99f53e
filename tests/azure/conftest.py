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

_real_getaddrinfo = socket.getaddrinfo


def _fake_dns(host, *args, **kwargs):  # type: ignore[no-untyped-def]
    # The SDK uploads to https://<account>.blob.<storage endpoint>; *.fake.test is the fake
    # (the storage client needs ".blob.core." in the host to find the account name).
    if isinstance(host, str) and host.endswith(".fake.test"):
        host = "127.0.0.1"
    return _real_getaddrinfo(host, *args, **kwargs)


@pytest.fixture(scope="session")
def fake_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeAzureML]:
    certs = tmp_path_factory.mktemp("certs")
    ca, cert, key = make_certificates(certs, ["localhost", "*.blob.core.fake.test"])
    service = FakeAzureML()
    server = FakeServer(service.handle, cert, key).start()
    service.server = server
    patcher = pytest.MonkeyPatch()
    patcher.setenv("REQUESTS_CA_BUNDLE", str(ca))
    patcher.setenv("SSL_CERT_FILE", str(ca))
    patcher.setattr(socket, "getaddrinfo", _fake_dns)
    try:
        yield service
    finally:
        patcher.undo()
        server.stop()


@pytest.fixture(autouse=True)
def _restore_azureml_cloud() -> Iterator[None]:
    """MLClient(cloud=...) writes AZUREML_CURRENT_CLOUD into os.environ; undo it after each
    test, or later subprocesses that import azure.ai.ml fail on the unknown fake cloud."""
    before = os.environ.get("AZUREML_CURRENT_CLOUD")
    yield
    if before is None:
        os.environ.pop("AZUREML_CURRENT_CLOUD", None)
    else:
        os.environ["AZUREML_CURRENT_CLOUD"] = before


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
