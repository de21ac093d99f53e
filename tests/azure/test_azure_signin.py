"""Sign-in as Azure sees it: a service principal's credential from the blocks, through MSAL,
against the fake's Microsoft Entra ID endpoints (tests/azure/fake_azureml/signin.py).

A flow run loads its workspace block once and signs in once: one OpenID discovery and one
token request, however many steps (the pre-flight's access check included) ask for the
token. A wrong secret stops the run with Entra's own reason and never shows the secret.
"""

from __future__ import annotations

import pytest

import flows.finetune_and_deploy as flow_module
from flows.finetune_and_deploy import finetune_and_deploy
from flows.parameters import FinetuneRequest
from tests.azure.conftest import make_block_workspace
from tests.azure.fake_azureml.signin import is_signin
from workspaces.errors import AuthenticationFailed


def signins(fake) -> list[str]:  # noqa: ANN001
    return [f"{r.method} {r.path.rsplit('/', 1)[-1]}" for r in fake.requests if is_signin(r)]


@pytest.fixture
def signed_in_flow(fake, prefect_server, monkeypatch, tmp_path):  # noqa: ANN001, ANN201
    for name in ("AZURE_AUTHORITY_HOST", "AZURE_CLIENT_ID", "AZURE_TENANT_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZUREML_RUN_POLLING_INTERVAL_MIN", "0")
    # A new workspace for each flow run, as each run loads its block anew.
    monkeypatch.setattr(flow_module, "load_workspace", lambda slug: make_block_workspace(fake))
    return FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))


def test_a_run_signs_in_once_and_a_rerun_once_more(fake, signed_in_flow):
    for label in ("first run", "re-run"):
        fake.requests.clear()
        finetune_and_deploy(request=signed_in_flow)
        assert signins(fake) == ["GET openid-configuration", "POST token"], label


def test_a_wrong_secret_stops_the_run_with_entras_reason_and_no_secret(
    fake, signed_in_flow, monkeypatch
):
    wrong = "wrong-secret-Zz9~Kq"
    monkeypatch.setattr(flow_module, "load_workspace",
                        lambda slug: make_block_workspace(fake, secret=wrong))
    with pytest.raises(AuthenticationFailed) as info:
        finetune_and_deploy(request=signed_in_flow)
    text = str(info.value)
    assert "AADSTS7000215" in text and "service_principal" in text
    assert wrong not in text and wrong not in repr(info.value)
    assert [r for r in fake.requests if not is_signin(r)] == []
