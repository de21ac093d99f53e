"""What one finetune_and_deploy run asks Azure that it already knows: settings that do not
change during a run (the workspace itself, the region's VM sizes) are read once."""

from __future__ import annotations

import flows.finetune_and_deploy as flow_module
from flows.parameters import FinetuneRequest
from tests.azure.conftest import make_workspace


def test_a_run_reads_the_workspace_and_vm_sizes_once(fake, credential, prefect_server,
                                                      monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("AZUREML_RUN_POLLING_INTERVAL_MIN", "0")
    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))
    for run in ("first", "re-run"):
        # Each flow run loads its workspace (and so its SDK clients) anew.
        workspace = make_workspace(fake, credential)
        monkeypatch.setattr(flow_module, "load_workspace", lambda block, ws=workspace: ws)
        fake.requests.clear()

        result = flow_module.finetune_and_deploy(request=request)

        assert result.reply, run
        assert len(fake.sent("GET", rf"^{fake.ws_path}$")) == 1, run
        assert len(fake.sent("GET", r"/vmSizes$")) == 1, run


def test_a_rerun_reads_its_endpoint_once_and_lists_its_deployments_once(
    fake, credential, prefect_server, monkeypatch, tmp_path
) -> None:
    monkeypatch.setenv("AZUREML_RUN_POLLING_INTERVAL_MIN", "0")
    request = FinetuneRequest(dataset="sample", download_dir=str(tmp_path / "dl"))
    monkeypatch.setattr(flow_module, "load_workspace",
                        lambda block: make_workspace(fake, credential))
    first = flow_module.finetune_and_deploy(request=request)
    fake.requests.clear()

    again = flow_module.finetune_and_deploy(request=request)

    endpoint = f"/onlineEndpoints/{again.endpoint_name}"
    assert again.reply == first.reply
    # The pre-flight's ownership check, the reuse of the endpoint and the traffic check
    # each need the endpoint's state and tags as they are now; its deployments are listed
    # once, and the deployment itself is read once, when it is reused.
    assert len(fake.sent("GET", rf"{endpoint}/deployments$")) == 1
    assert len(fake.sent("GET", rf"{endpoint}/deployments/demo$")) == 1
    assert len(fake.sent("GET", rf"{endpoint}$")) <= 3
